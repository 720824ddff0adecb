"""Whole-command latency: the `dense-plantain analyze` process against MNE's permutation_t_test.

Writes a seeded synthetic capture of 25 pairs x 16,320 units (the Klein 4B plantain layout), then
in one run:

* times the whole ``python -m dense_plantain analyze CAPTURE --out DIR -q --permutations 10000
  --monte-carlo`` process (interpreter start, imports, reading, statistics, results.json,
  units.csv, results.md and the four figures, drawn by the figure worker beside the statistics),
  best and median of ``--repeats`` runs, wall and CPU seconds (the worker's CPU included);
* times ``mne.stats.permutation_t_test(diff, n_permutations=10000, n_jobs=1)`` on the same
  differences in ``--mne-processes`` fresh interpreters (MNE's import not charged to it), each
  calling it twice: the first call ("cold", what a script that runs it once pays) took 3.7 to
  14 s between processes here, the slow ones mostly system time (the kernel mapping fresh memory
  for its [10,000 x 16,320] float64 temporaries); the second ("warm", a notebook calling it
  again) took 2.6-5.3 s. Both are printed, with both ratios (see ``mne_rival.py``);

then one in-process run split into its parts as the
command runs them (imports, starting the figure worker, reading, the statistics without and with
the pair bootstrap, the worker drawing the figures as the analysis reports its stages, writing
the folder: text here while the worker finishes; then the worker's own CPU, and for reference the
same figures drawn in this process after importing matplotlib) with CPU seconds per part.
``--exact`` also times ``analyze --exact`` (all 2^24 sign patterns) on data where about half the
units are strong (|t| > 3 for about 51 %), with its peak memory, against MNE's 10,000-permutation
Monte Carlo on the same data (cold and warm), ``--repeats`` runs. Run from the repository root:

    PYTHONPATH=python python3 benches/bench_analyze.py [--repeats 3] [--mne-processes 3] [--exact] [--json out.json]
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
from mne_rival import describe, spread, time_mne  # noqa: E402

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


def make_capture(folder: Path, strong_half: bool = False) -> tuple[Path, np.ndarray]:
    """The bench capture; ``strong_half``: every other unit shifted by 1.45 sd instead of an
    eighth by 0.9 (|t| > 3 for about half the units, as the reference card's data)."""
    layout = units.build_layout(units.KLEIN_4B)
    rng = np.random.default_rng(2026)
    m = layout.n_units
    block = layout.labels()["block_index"]
    shared = rng.normal(size=(N_PAIRS, len(layout.blocks)))
    diff = 0.6 * shared[:, block] * rng.normal(size=m) + rng.normal(size=(N_PAIRS, m))
    if strong_half:
        diff[:, ::2] += 1.45
    else:
        diff[:, : m // 8] += 0.9  # some units with a real shift
    a = (3.0 + rng.gamma(2.0, 0.5, size=(N_PAIRS, m))).astype(np.float32)
    b = (a + diff).astype(np.float32)
    pairs = [{"id": f"p{i:02d}", "a": f"prompt a {i}", "b": f"prompt b {i}"} for i in range(N_PAIRS)]
    name = "strong.safetensors" if strong_half else "bench.safetensors"
    path = store.write_capture(folder / name, a, b, {**layout.to_metadata(), "pairs": pairs})
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


# One analyze run in a fresh interpreter, the CLI's steps one by one, CPU and wall per step.
BREAKDOWN = r"""
import json, os, resource, sys, time
marks = []
def mark(name):
    t = os.times()
    marks.append((name, time.perf_counter(), t.user + t.system))
mark("start")
import numpy
mark("importing numpy")
from dense_plantain import cli  # what `python -m dense_plantain` imports first
mark("importing the CLI (click, capture defaults, units)")
from dense_plantain.report.worker import start_figure_worker
worker = start_figure_worker()  # as analyze does, before the statistics are imported
mark(f"starting the figure worker ({'none: drawn here' if worker is None else 'its process runs on'})")
from dense_plantain import analysis, report
mark("importing the analysis (scipy.special) and report")
from dense_plantain.store import read_capture
cap = read_capture(sys.argv[1])
mark("reading the capture")
kw = dict(permutations=int(sys.argv[2]), exact=False)
analysis.analyze(cap, bootstrap=0, **kw)
mark("statistics and nulls (bootstrap off)")
ahead = {}
if worker is not None:  # as the command does: the figures drawn as the analysis reports its stages
    from dense_plantain.report import figures
    ahead["on_partial"] = figures.draw_ahead_with(worker)
result = analysis.analyze(cap, **kw, **ahead)
mark("statistics and nulls with the default bootstrap (the worker drawing ahead)")
report.write_results(result, os.path.join(sys.argv[3], "folder"), worker=worker)
mark("writing the folder: text here, figures in the worker (until both done)")
if worker is not None:
    worker.close()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
worker_cpu = usage.ru_utime + usage.ru_stime
steps = [("interpreter start (CPU before the first import; wall not known)", 0.0, marks[0][2])]
steps += [(b[0], b[1] - a[1], b[2] - a[2]) for a, b in zip(marks, marks[1:])]
steps.append(("the figure worker's own CPU (matplotlib import, drawing; beside the above)", 0.0, worker_cpu))
marks.clear()
mark("start")
from dense_plantain.report import figures
import matplotlib.figure, matplotlib.backends.backend_agg
mark("for reference, not in the command: importing matplotlib here")
figures.write_figures(result, sys.argv[3])
mark("for reference, not in the command: drawing the figures here, one after another")
steps += [(b[0], b[1] - a[1], b[2] - a[2]) for a, b in zip(marks, marks[1:])]
print(json.dumps(steps))
"""


def breakdown(capture: Path, folder: Path) -> list[tuple[str, float, float]]:
    """(step, wall s, CPU s) of one in-process analyze; the bootstrap's share is the difference of
    the two statistics steps."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    out = folder / "figures"
    out.mkdir()
    cmd = [sys.executable, "-c", BREAKDOWN, str(capture), str(PERMUTATIONS), str(out)]
    text = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True).stdout
    return [tuple(step) for step in json.loads(text.strip().splitlines()[-1])]


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak resident memory (MiB) of one run of ``cmd``, measured by a wrapper process."""
    code = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    code += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, env=env, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="analyze runs (and --exact runs)")
    parser.add_argument("--mne-processes", type=int, default=3, help="fresh MNE interpreters per data set")
    parser.add_argument("--exact", action="store_true", help="also time analyze --exact on half-strong data")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        capture, diff = make_capture(Path(tmp))
        analyze, analyze_cpu = time_analyze(capture, Path(tmp), args.repeats)
        mne = time_mne(diff, Path(tmp), args.mne_processes, PERMUTATIONS)
        steps = breakdown(capture, Path(tmp))
        exact_record = None
        if args.exact:
            strong, strong_diff = make_capture(Path(tmp), strong_half=True)
            t = strong_diff.mean(0) / (strong_diff.std(0, ddof=1) / np.sqrt(N_PAIRS))
            ex_wall, ex_cpu, peaks = [], [], []
            for k in range(args.repeats):
                # Through the memory wrapper (its own start, about 0.03 s, is charged to the run).
                cmd = [sys.executable, "-m", "dense_plantain", "analyze", str(strong), "--exact", "-q"]
                cpu0, start = _children_cpu(), time.perf_counter()
                peaks.append(peak_rss_mib([*cmd, "--out", str(Path(tmp) / f"results-exact{k}")]))
                ex_wall.append(time.perf_counter() - start)
                ex_cpu.append(_children_cpu() - cpu0)
            mne_strong = time_mne(strong_diff, Path(tmp), args.mne_processes, PERMUTATIONS)
            exact_record = {
                "share_abs_t_gt_3": float((np.abs(t) > 3).mean()),
                "analyze_exact_s": ex_wall,
                "analyze_exact_cpu_s": ex_cpu,
                "peak_rss_mib": max(peaks),
                "mne_permutation_t_test": mne_strong,
            }
    best, med = min(analyze), median(analyze)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu(),
        "simd_env": os.environ.get("DENSE_PLANTAIN_SIMD"),
        "shape": [N_PAIRS, int(diff.shape[1])],
        "permutations": PERMUTATIONS,
        "analyze_s": analyze,
        "analyze_best_s": best,
        "analyze_median_s": med,
        "analyze_cpu_s": analyze_cpu,
        "mne_permutation_t_test": mne,
        "load_average": os.getloadavg(),
        "ratio_mne_cold_over_analyze_median": median(mne["cold_s"]) / med,
        "ratio_mne_warm_over_analyze_median": median(mne["warm_s"]) / med,
        "breakdown": [{"step": a, "wall_s": w, "cpu_s": c} for a, w, c in steps],
        "exact_half_strong": exact_record,
    }

    print(f"whole `dense-plantain analyze`, {N_PAIRS} x {diff.shape[1]:,}, P = {PERMUTATIONS:,}: {spread(analyze)}")
    print(f"MNE permutation_t_test, same data, n_permutations = {PERMUTATIONS:,}, n_jobs = 1:")
    print(f"  first call in a fresh interpreter (cold): {describe(mne, 'cold')}")
    print(f"  second call in the same interpreter (warm): {describe(mne, 'warm')}")
    print(
        f"ratio MNE / analyze (medians): {median(mne['cold_s']) / med:.1f}x cold, "
        f"{median(mne['warm_s']) / med:.1f}x warm"
    )
    cpu_med = median(analyze_cpu)
    print(f"CPU seconds (user + sys), analyze: median {cpu_med:.2f} s")
    print("one in-process run, by step (wall s / CPU s):")
    total_cpu = sum(c for name, _, c in steps if not name.startswith("for reference"))
    for name, w, c in steps:
        share = "" if name.startswith("for reference") else f"  ({100 * c / total_cpu:4.1f} % of CPU)"
        print(f"  {name:78s} {w:6.2f} / {c:5.2f}{share}")
    if exact_record is not None:
        r = exact_record
        m = r["mne_permutation_t_test"]
        ex = median(r["analyze_exact_s"])
        print(
            f"whole `analyze --exact` (2^{N_PAIRS - 1} patterns), half-strong data (|t| > 3 for "
            f"{100 * r['share_abs_t_gt_3']:.0f} % of units): {spread(r['analyze_exact_s'])}, CPU median "
            f"{median(r['analyze_exact_cpu_s']):.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB"
        )
        print(f"MNE permutation_t_test (10,000) on the same data: cold {describe(m, 'cold')}")
        print(f"  warm {describe(m, 'warm')}")
        print(
            f"analyze --exact / MNE (medians, goal <= 0.5): {ex / median(m['cold_s']):.2f} against cold, "
            f"{ex / median(m['warm_s']):.2f} against warm"
        )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
