"""Whole-command latency: the `dense-plantain analyze` process against MNE's permutation_t_test.

Writes a seeded synthetic capture of 25 pairs x 16,320 units (the Klein 4B plantain layout), then
in one run:

* times the whole ``python -m dense_plantain analyze CAPTURE --out DIR -q --permutations 10000
  --monte-carlo`` process (interpreter start, imports, reading, statistics, results.json, the
  three figures), best and median of ``--repeats`` runs;
* times ``mne.stats.permutation_t_test(diff, n_permutations=10000)`` on the same differences,
  inside this process after MNE is imported (MNE's import is not charged to it);

and prints both with the ratio MNE / analyze. Run from the repository root:

    PYTHONPATH=python python3 benches/bench_analyze.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from dense_plantain import store, units  # noqa: E402

N_PAIRS = 25
PERMUTATIONS = 10_000


def cpu() -> dict[str, object]:
    info: dict[str, object] = {"cores": os.cpu_count(), "machine": platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and "model" not in info:
            info["model"] = value.strip()
        if key.strip() == "flags" and "flags" not in info:
            flags = value.split()
            info["simd"] = [f for f in flags if f.startswith(("avx", "sse4", "fma"))]
    return info


def make_capture(folder: Path) -> tuple[Path, np.ndarray]:
    layout = units.build_layout(units.KLEIN_4B)
    rng = np.random.default_rng(2026)
    m = layout.n_units
    block = layout.labels()["block_index"]
    shared = rng.normal(size=(N_PAIRS, len(layout.blocks)))
    diff = 0.6 * shared[:, block] * rng.normal(size=m) + rng.normal(size=(N_PAIRS, m))
    diff[:, : m // 8] += 0.9  # some units with a real shift
    a = (3.0 + rng.gamma(2.0, 0.5, size=(N_PAIRS, m))).astype(np.float32)
    b = (a + diff).astype(np.float32)
    pairs = [{"id": f"p{i:02d}", "a": f"prompt a {i}", "b": f"prompt b {i}"} for i in range(N_PAIRS)]
    path = store.write_capture(folder / "bench.safetensors", a, b, {**layout.to_metadata(), "pairs": pairs})
    return path, np.asarray(b, np.float64) - np.asarray(a, np.float64)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_analyze(capture: Path, folder: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (user + sys, all threads) of each whole analyze process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    wall, cpu_s = [], []
    for k in range(repeats):
        out = folder / f"results{k}"
        cmd = [sys.executable, "-m", "dense_plantain", "analyze", str(capture), "--out", str(out), "-q"]
        cmd += ["--permutations", str(PERMUTATIONS), "--monte-carlo"]
        cpu0, start = _children_cpu(), time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall.append(time.perf_counter() - start)
        cpu_s.append(_children_cpu() - cpu0)
    return wall, cpu_s


def time_mne(diff: np.ndarray) -> tuple[float, float]:
    """Wall and CPU seconds of MNE's permutation_t_test (one job), MNE already imported."""
    from mne.stats import permutation_t_test

    cpu0, start = time.process_time(), time.perf_counter()
    permutation_t_test(diff, n_permutations=PERMUTATIONS, tail=0, n_jobs=1, verbose=False)
    return time.perf_counter() - start, time.process_time() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        capture, diff = make_capture(Path(tmp))
        analyze, analyze_cpu = time_analyze(capture, Path(tmp), args.repeats)
        mne_s, mne_cpu = time_mne(diff)
    best, median = min(analyze), statistics.median(analyze)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu(),
        "shape": [N_PAIRS, int(diff.shape[1])],
        "permutations": PERMUTATIONS,
        "analyze_s": analyze,
        "analyze_best_s": best,
        "analyze_median_s": median,
        "analyze_cpu_s": analyze_cpu,
        "mne_permutation_t_test_s": mne_s,
        "mne_permutation_t_test_cpu_s": mne_cpu,
        "load_average": os.getloadavg(),
        "ratio_mne_over_analyze_median": mne_s / median,
    }
    print(
        f"whole `dense-plantain analyze`, {N_PAIRS} x {diff.shape[1]:,}, P = {PERMUTATIONS:,}: "
        f"median {median:.2f} s (best {best:.2f} s, {len(analyze)} runs)"
    )
    print(f"MNE permutation_t_test, same data, n_permutations = {PERMUTATIONS:,}: {mne_s:.2f} s")
    print(f"ratio MNE / analyze: {mne_s / median:.1f}x (median), {mne_s / best:.1f}x (best)")
    cpu_med = statistics.median(analyze_cpu)
    print(
        f"CPU seconds (user + sys): analyze {cpu_med:.2f} s (median), MNE {mne_cpu:.2f} s, "
        f"ratio {mne_cpu / cpu_med:.1f}x"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
