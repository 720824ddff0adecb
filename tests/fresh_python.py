"""Python code run in a fresh interpreter, for what a process reads once at start.

The statistics pool's thread count (``DENSE_PLANTAIN_NUM_THREADS``, ``RAYON_NUM_THREADS``) and the
instruction set of the hot loops (``DENSE_PLANTAIN_SIMD``) are fixed when the extension first runs,
so the tests that vary them start a new interpreter per setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any


def run_python(code: str, env_extra: dict[str, str], timeout: float = 120) -> str:
    """Run ``code`` (dedented) with ``env_extra`` added to this environment; its stdout. Fails the test on an error."""
    env = {**os.environ, **env_extra}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def thread_runs(code: str, threads: tuple[str, ...] = ("1", "2", "3")) -> dict[str, dict[str, Any]]:
    """``code``'s JSON record under each ``DENSE_PLANTAIN_NUM_THREADS`` in ``threads``, by thread count.

    ``code`` prints one JSON object whose ``"threads"`` is ``stats.threads()``; each run must report
    the thread count it was given (checked here, then removed, so the records compare as results).
    """
    runs = {}
    for count in threads:
        run = json.loads(run_python(code, {"DENSE_PLANTAIN_NUM_THREADS": count}))
        assert run.pop("threads") == int(count)
        runs[count] = run
    return runs
