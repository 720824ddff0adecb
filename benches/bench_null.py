"""Side-by-side benchmark of sign-flip nulls, one process, the same data (25 pairs x 16,320 units).

Times, for P = 10,000 Monte Carlo permutations:
  * MNE-Python's ``mne.stats.permutation_t_test`` (max-statistic null; n_permutations=P draws P
    random sign vectors, its Monte Carlo branch -- only n_permutations >= 2**n is exact), in
    fresh interpreters, cold and warm (``mne_rival.py`` says why both);
  * a numpy GEMM baseline written here: signs [P x n] @ diff [n x units] in blocks, then the
    sum-of-squares trick, counts and max |t| per permutation;
  * dense-plantain's engine (``stats.sign_flip_null``, per-permutation rows, and
    ``stats.sign_flip_tallies``, streaming histograms; two-sided, one-sided, with a 2-group
    partition of the units);
and also the engine's exact enumeration of all 2^24 patterns and 100 split-halves.

The numpy baseline is run on the engine's own sign vectors and must reproduce its counts
exactly, so the comparison is like for like. Usage:

    python benches/bench_null.py                  # everything (MNE takes ~15 s, exact ~10 s)
    python benches/bench_null.py --skip-mne --skip-exact --json out.json
    DENSE_PLANTAIN_SIMD=avx2 python benches/bench_null.py --skip-numpy --exact-log2 20

The exact tallies (the analysis's route: kind x region partitions, streaming histograms) are timed
on the bench data and on half-strong data (every other unit shifted by 1 sd: |t| > 3 for about
half the units); ``--exact-log2 L`` times 2^L of the 2^24 patterns (from pattern 5 * 2^20) and
scales the figure to all of them (24: the whole enumeration).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import mne_rival
from dense_plantain import stats

PAIRS = 25
UNITS = 16_320
T_THRESHOLDS = (3.0, 5.0)
D_THRESHOLDS = (0.8,)


def probe_like(seed: int = 0) -> np.ndarray:
    """Correlated units (shared pair factors per 64 units) with effects on a third of them."""
    rng = np.random.default_rng(seed)
    effect = np.where(np.arange(UNITS) % 3 == 0, rng.normal(0, 0.8, UNITS), 0.0)
    factor = rng.normal(size=(PAIRS, UNITS // 64 + 1)).repeat(64, axis=1)[:, :UNITS]
    return np.ascontiguousarray(effect + 0.6 * factor + 0.8 * rng.normal(size=(PAIRS, UNITS)))


def half_strong(seed: int = 1) -> np.ndarray:
    """Independent normal units, every other one shifted by 1 sd (|t| > 3 for about half)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(PAIRS, UNITS))
    x[:, ::2] += 1.0
    return np.ascontiguousarray(x)


# The analysis's partitions of the 16,320 units: kind (attention / MLP) and token region.
KIND_REGION = np.stack([(np.arange(UNITS) // 4080) % 2, np.arange(UNITS) % 3]).astype(np.uint32)


def exact_tallies(diff: np.ndarray, log2: int) -> tuple[float, float]:
    """Wall and CPU seconds of the exact two-sided tallies with the kind x region partitions over
    2^log2 of the 2^(PAIRS-1) patterns, scaled to all of them."""
    from dense_plantain import _stats

    total = 1 << (PAIRS - 1)
    start = 0 if log2 >= PAIRS - 1 else 5 << 20
    end = min(total, start + (1 << log2))
    bars = list(np.sort(np.asarray(_stats.sign_flip_unit_scores(diff, "two"))))
    step = 1 << 20  # as the driver asks: bounded memory per call
    c0, t0 = os.times(), time.perf_counter()
    for lo in range(start, end, step):
        args = (diff, list(T_THRESHOLDS), list(D_THRESHOLDS), KIND_REGION, "two", True, 0)
        _stats.sign_flip_tallies(*args, lo, min(end, lo + step), bars)
    wall = time.perf_counter() - t0
    c1 = os.times()
    scale = total / (end - start)
    return wall * scale, (c1.user - c0.user + c1.system - c0.system) * scale


def numpy_gemm_null(diff: np.ndarray, signs: np.ndarray, block: int = 500):
    """Counts of |t| > c, |d| > c and max |t| per permutation, by blocked GEMM."""
    n = diff.shape[0]
    ss = (diff**2).sum(axis=0)
    out_t = np.empty((signs.shape[0], len(T_THRESHOLDS)), dtype=np.int64)
    out_d = np.empty((signs.shape[0], len(D_THRESHOLDS)), dtype=np.int64)
    out_max = np.empty(signs.shape[0])
    for lo in range(0, signs.shape[0], block):
        s = signs[lo : lo + block].astype(np.float64) @ diff  # flipped sums [block x units]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(s) * np.sqrt((n - 1) / (n * ss - s * s))
        out_max[lo : lo + block] = t.max(axis=1)
        for k, c in enumerate(T_THRESHOLDS):
            out_t[lo : lo + block, k] = (t > c).sum(axis=1)
        for k, c in enumerate(D_THRESHOLDS):
            out_d[lo : lo + block, k] = (t > c * np.sqrt(n)).sum(axis=1)
    return out_t, out_d, out_max


def timed(fn, repeat: int = 1):
    """Best and median wall time over ``repeat`` runs, and the last result; the best run's CPU
    seconds (user + sys, all threads) are kept in ``LAST_CPU_S`` (steadier on a shared machine)."""
    global LAST_CPU_S
    times, cpus, result = [], [], None
    for _ in range(repeat):
        c0, t0 = os.times(), time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        c1 = os.times()
        cpus.append(c1.user - c0.user + c1.system - c0.system)
    LAST_CPU_S = cpus[times.index(min(times))]
    return min(times), statistics.median(times), result


LAST_CPU_S = 0.0


def machine() -> dict[str, object]:
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        cpu_flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        flags = " ".join(f for f in cpu_flags if f in ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"))
    except (OSError, StopIteration):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "cpu_flags": flags,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "engine_threads": stats.threads(),
        "simd": stats.simd_variant(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--permutations", type=int, default=10_000)
    parser.add_argument("--skip-mne", action="store_true")
    parser.add_argument("--mne-processes", type=int, default=3, help="fresh MNE interpreters (see mne_rival.py)")
    parser.add_argument("--skip-numpy", action="store_true")
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the engine's MC null (best is reported)")
    parser.add_argument("--exact-log2", type=int, default=24, help="patterns timed in the exact tallies: 2^L")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    P = args.permutations
    diff = probe_like()
    info = machine()
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()), f"load={os.getloadavg()}")
    print(f"data: {PAIRS} pairs x {UNITS} units, P = {P}")
    results: dict[str, object] = {"machine": info, "pairs": PAIRS, "units": UNITS, "permutations": P}

    stats.sign_flip_null(diff[:, :1000], permutations=100)  # start the pool
    best, median, ours = timed(
        lambda: stats.sign_flip_null(diff, T_THRESHOLDS, D_THRESHOLDS, permutations=P, exact=False, seed=0), args.repeat
    )
    results["engine_mc_s"] = {"best": best, "median": median}
    print(f"dense-plantain MC null: best {best:.4f} s, median {median:.4f} s over {args.repeat} runs")

    tally_runs = {
        "tallies_two": {},
        "tallies_two_halves": {"partitions": [np.arange(UNITS) % 2]},
        # The analysis's partitions: kind (attention / MLP) and token region (image / text / joint).
        "tallies_two_kind_region": {"partitions": [(np.arange(UNITS) // 4080) % 2, np.arange(UNITS) % 3]},
        "tallies_greater": {"tail": "greater"},
    }
    for name, kw in tally_runs.items():
        t_best, t_median, _ = timed(
            lambda kw=kw: stats.sign_flip_tallies(diff, permutations=P, exact=False, seed=0, **kw), args.repeat
        )
        results[f"engine_mc_{name}_s"] = {"best": t_best, "median": t_median, "cpu_of_best": LAST_CPU_S}
        print(f"dense-plantain MC {name}: best {t_best:.4f} s, median {t_median:.4f} s (cpu {LAST_CPU_S:.3f} s)")

    if not args.skip_numpy:
        signs = stats.monte_carlo_signs(PAIRS, 0, 0, P)
        secs, _, (t_counts, d_counts, max_t) = timed(lambda: numpy_gemm_null(diff, signs))
        same = (
            np.array_equal(t_counts, ours.t_counts)
            and np.array_equal(d_counts, ours.d_counts)
            and np.allclose(max_t, ours.max_abs_t, rtol=1e-9)
        )
        results["numpy_gemm_s"] = secs
        results["numpy_matches_engine"] = bool(same)
        print(f"numpy GEMM baseline:    {secs:.3f} s  ({secs / best:.0f}x the engine; same counts: {same})")

    if not args.skip_mne:
        with tempfile.TemporaryDirectory() as tmp:
            mne = mne_rival.time_mne(diff, Path(tmp), args.mne_processes, P)
        results["mne"] = mne
        results["mne_version"] = mne_rival.version()
        cold, warm = statistics.median(mne["cold_s"]), statistics.median(mne["warm_s"])
        print(f"MNE permutation_t_test (mne {results['mne_version']}), fresh interpreters:")
        print(f"  first call (cold): {mne_rival.describe(mne, 'cold')}")
        print(f"  second call (warm): {mne_rival.describe(mne, 'warm')}")
        t_best = results["engine_mc_tallies_two_s"]["best"]  # type: ignore[index]
        t_cpu = results["engine_mc_tallies_two_s"]["cpu_of_best"]  # type: ignore[index]
        for name, wall, cpu in (
            ("cold", cold, statistics.median(mne["cold_cpu_s"])),
            ("warm", warm, statistics.median(mne["warm_cpu_s"])),
        ):
            print(
                f"  ratio MNE {name} / engine: rows {wall / best:.0f}x by wall; tallies (two-sided) "
                f"{wall / t_best:.0f}x by wall, {cpu / max(t_cpu, 1e-9):.0f}x by CPU"
            )

    full_exact = not args.skip_exact and args.exact_log2 >= PAIRS - 1  # the whole enumeration, no partitions
    if full_exact:
        done = []
        secs, _, null = timed(
            lambda: stats.sign_flip_null(
                diff, T_THRESHOLDS, D_THRESHOLDS, permutations=1, exact=True, progress=lambda d, t: done.append(d)
            )
        )
        results["engine_exact_s"] = secs
        results["exact_patterns"] = null.n_permutations
        print(
            f"dense-plantain exact 2^{PAIRS - 1} = {null.n_permutations} patterns: {secs:.2f} s "
            f"({null.n_permutations / secs / 1e6:.2f} M patterns/s, {len(done)} progress calls; "
            f"null p99 |t|>3: {stats.null_p99(null.t_counts[:, 0]):.1f}, max |t| p95: "
            f"{np.percentile(null.max_abs_t, 95):.2f})"
        )

    if full_exact:
        secs, _, tal = timed(
            lambda: stats.sign_flip_tallies(
                diff, t_thresholds=T_THRESHOLDS, d_thresholds=D_THRESHOLDS, exact=True, time_limit_s=None
            )
        )
        results["engine_exact_tallies_s"] = secs
        print(
            f"dense-plantain exact tallies 2^{PAIRS - 1}: {secs:.2f} s ({tal.n_permutations / secs / 1e6:.2f} M "
            f"patterns/s; p99 |t|>3: {tal.percentile(99, 0):.1f})"
        )

    if not args.skip_exact:
        label = "all" if args.exact_log2 >= PAIRS - 1 else f"2^{args.exact_log2} sample of the"
        for name, data in (("bench", diff), ("half_strong", half_strong())):
            wall, cpu = exact_tallies(data, args.exact_log2)
            results[f"engine_exact_tallies_kind_region_{name}_s"] = {"wall": wall, "cpu": cpu}
            print(
                f"exact tallies, kind x region, {name} data ({label} 2^{PAIRS - 1} patterns, scaled to all): "
                f"wall {wall:.1f} s, CPU {cpu:.1f} s (goal: <= 8 s wall on 2 AVX2 cores; "
                f"{info['engine_threads']} threads, {info['simd']})"
            )

    best, median, sh = timed(lambda: stats.split_half(diff, n_splits=100, seed=0), args.repeat)
    results["split_half_100_s"] = {"best": best, "median": median, "cpu_of_best": LAST_CPU_S}
    print(
        f"split-half, 100 splits: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms, CPU of best "
        f"{LAST_CPU_S * 1000:.0f} ms (goal <= 25 ms; median r = {np.median(sh.r):.3f})"
    )

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
