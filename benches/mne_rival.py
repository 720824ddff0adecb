"""The rival of the CPU benches: MNE-Python's ``mne.stats.permutation_t_test``, timed in fresh
interpreters.

Each of ``processes`` interpreters imports MNE (not charged), loads the differences and calls
``permutation_t_test(diff, n_permutations=P, tail=0, n_jobs=1)`` twice:

* ``cold``, the process's first call: what a script that runs it once pays. It builds several
  [P x units] float64 temporaries (1.3 GB each at 10,000 x 16,320), and the kernel's work to map
  that fresh memory is much of its time: on this project's 2-core VM it took 3.7-5.1 s in most
  processes and 8-14 s in some, the first after other work. User CPU was about 2 s either way;
  the rest is system time, the kernel finding huge pages for numpy's large arrays. So one
  figure says little;
* ``warm``, the second call in the same process (a notebook calling it again): 2.6-5.3 s here.

Ratios should be taken against the median of each, with the range printed beside it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

CALLS = r"""
import json, resource, sys, time
import numpy as np
from mne.stats import permutation_t_test
diff = np.load(sys.argv[1])
out = []
for _ in range(2):
    r0, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    permutation_t_test(diff, n_permutations=int(sys.argv[2]), tail=0, n_jobs=1, rng=int(sys.argv[3]), verbose=False)
    wall, r1 = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    out.append([wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime])
print(json.dumps(out))
"""


def time_mne(diff: np.ndarray, folder: Path, processes: int, permutations: int, rng: int = 0) -> dict[str, list[float]]:
    """Seconds of the cold and the warm call in each of ``processes`` fresh interpreters, one
    entry a process: wall (``cold_s``, ``warm_s``), CPU = user + system (``cold_cpu_s``,
    ``warm_cpu_s``) and the system part alone (``cold_sys_s``, ``warm_sys_s``)."""
    path = Path(folder) / "mne-rival-diff.npy"
    np.save(path, np.asarray(diff, dtype=np.float64))
    res: dict[str, list[float]] = {f"{c}{k}": [] for c in ("cold", "warm") for k in ("_s", "_cpu_s", "_sys_s")}
    for _ in range(processes):
        cmd = [sys.executable, "-c", CALLS, str(path), str(permutations), str(rng)]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        for call, (wall, user, system) in zip(("cold", "warm"), json.loads(text.strip().splitlines()[-1])):
            res[f"{call}_s"].append(wall)
            res[f"{call}_cpu_s"].append(user + system)
            res[f"{call}_sys_s"].append(system)
    path.unlink()
    return res


def spread(xs: list[float]) -> str:
    """``median M s (lo-hi, k runs)``."""
    return f"median {statistics.median(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f}, {len(xs)} runs)"


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("mne")


def describe(res: dict[str, list[float]], call: str) -> str:
    """One call's line: wall spread, median CPU and its system part (``call``: cold or warm)."""
    cpu, system = statistics.median(res[f"{call}_cpu_s"]), statistics.median(res[f"{call}_sys_s"])
    return f"{spread(res[f'{call}_s'])}; CPU median {cpu:.2f} s, of it system {system:.2f} s"
