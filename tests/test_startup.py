"""The command line's process settings (``dense_plantain._startup``), in fresh interpreters.

OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` once, when numpy or scipy loads it, so the test records
the variable at the moment numpy is first imported (a finder on ``sys.meta_path`` that only looks).
"""

from __future__ import annotations

import json

from fresh_python import run_python

RECORD_AT_NUMPY_IMPORT = """
    import importlib.abc, json, os, sys
    if os.environ.get("OPENBLAS_THREAD_TIMEOUT") == "unset":
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    seen = {}
    class Look(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "numpy" and "numpy" not in seen:
                seen["numpy"] = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
            return None
    sys.meta_path.insert(0, Look())
    import dense_plantain.cli
    import numpy
    after = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    print(json.dumps({"at_numpy": seen.get("numpy", "not imported"), "after": after}))
"""


def test_cli_sets_the_blas_spin_timeout_before_numpy_loads():
    from dense_plantain._startup import DEFAULTS

    out = json.loads(run_python(RECORD_AT_NUMPY_IMPORT, {"OPENBLAS_THREAD_TIMEOUT": "unset"}))
    assert DEFAULTS["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert out == {"at_numpy": "4", "after": "4"}


def test_a_users_own_value_is_kept():
    out = json.loads(run_python(RECORD_AT_NUMPY_IMPORT, {"OPENBLAS_THREAD_TIMEOUT": "12"}))
    assert out == {"at_numpy": "12", "after": "12"}


def test_importing_the_package_alone_sets_nothing():
    code = """
        import os, json
        os.environ.pop('OPENBLAS_THREAD_TIMEOUT', None)
        import dense_plantain, dense_plantain.analysis, dense_plantain.report
        print(json.dumps(os.environ.get('OPENBLAS_THREAD_TIMEOUT')))
    """
    assert json.loads(run_python(code, {})) is None
