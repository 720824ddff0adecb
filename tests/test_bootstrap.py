"""Tests of the pair bootstrap (stats.bootstrap_counts over the Rust engine).

Reference: a numpy pair bootstrap that takes the same resampling indices
(stats.bootstrap_indices), recomputes t and d_z two-pass in float64 with the documented
convention for constant units, and counts; numpy's percentile for the interval; a numpy
split-half for the median r.
"""

from __future__ import annotations

import numpy as np
import pytest

from dense_plantain import stats
from fresh_python import thread_runs

T_THR = (2.0, 3.0, 5.0)
D_THR = (0.5, 0.8)


def numpy_t_d(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit t and d_z of [n x units], two-pass; constant units are +/-inf (0 if all 0)."""
    n = y.shape[0]
    mean = y.mean(axis=0)
    sd = np.sqrt(((y - mean) ** 2).sum(axis=0) / (n - 1))
    constant = (y == y[:1]).all(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / np.sqrt(n))
        d = mean / sd
    degenerate = np.where(y[0] == 0, 0.0, np.copysign(np.inf, y[0]))
    return np.where(constant, degenerate, t), np.where(constant, degenerate, d)


def numpy_bootstrap(diff: np.ndarray, idx: np.ndarray) -> np.ndarray:
    rows = []
    for draw in idx:
        t, d = numpy_t_d(diff[draw])
        rows.append([(np.abs(t) > c).sum() for c in T_THR] + [(np.abs(d) > c).sum() for c in D_THR])
    return np.array(rows, dtype=np.int64)


def test_counts_equal_numpy_with_the_same_indices():
    rng = np.random.default_rng(1)
    n, m = 12, 400
    diff = rng.normal(size=(n, m)) + np.where(np.arange(m) % 4 == 0, 1.0, 0.0)
    diff[:, 5] = 0.0  # all zero: t = 0 in every draw
    diff[:, 6] = 0.25  # constant: inf in every draw
    diff[:, 7] = np.where(np.arange(n) < 3, 1.0, 2.0)  # constant in draws that miss pairs 0..2
    res = stats.bootstrap_counts(diff, t_thresholds=T_THR, d_thresholds=D_THR, draws=300, seed=9)
    assert res.counts.shape == (300, 5) and res.indices.shape == (300, n)
    np.testing.assert_array_equal(res.indices, stats.bootstrap_indices(n, 300, 9))
    np.testing.assert_array_equal(res.counts, numpy_bootstrap(diff, res.indices.astype(np.int64)))
    np.testing.assert_array_equal(res.t_counts, res.counts[:, :3])
    np.testing.assert_array_equal(res.d_counts, res.counts[:, 3:])
    # The draws really resample: counts vary, and indices repeat pairs.
    assert res.counts[:, 1].std() > 0
    assert (np.array([len(set(r)) for r in res.indices]) < n).mean() > 0.9


def test_interval_is_numpy_percentile():
    rng = np.random.default_rng(2)
    diff = rng.normal(size=(15, 200)) + 0.5
    res = stats.bootstrap_counts(diff, draws=500, seed=3)
    for k in range(3):
        lo, hi = res.interval(k)
        np.testing.assert_allclose((lo, hi), np.percentile(res.counts[:, k], [2.5, 97.5]), rtol=1e-12)
        lo, hi = res.interval(k, level=0.8)
        np.testing.assert_allclose((lo, hi), np.percentile(res.counts[:, k], [10, 90]), rtol=1e-12)
    with pytest.raises(stats.StatsInputError, match="out of range"):
        res.interval(3)
    with pytest.raises(stats.StatsInputError, match="between 0 and 1"):
        res.interval(0, level=1.0)
    with pytest.raises(stats.StatsInputError, match="without splits"):
        res.split_interval()


def test_indices_prefix_and_range():
    a = stats.bootstrap_indices(20, 10, 5)
    b = stats.bootstrap_indices(20, 50, 5)
    np.testing.assert_array_equal(a, b[:10])
    assert b.min() >= 0 and b.max() <= 19
    # Roughly uniform over pairs.
    hist = np.bincount(stats.bootstrap_indices(10, 5000, 1).ravel(), minlength=10)
    assert np.abs(hist - 5000).max() < 5 * np.sqrt(5000)
    assert not np.array_equal(a, stats.bootstrap_indices(20, 10, 6))


def numpy_split_median(diff: np.ndarray, assignments: np.ndarray) -> float:
    rs = []
    for row in assignments:
        t1, _ = numpy_t_d(diff[row])
        t2, _ = numpy_t_d(diff[~row])
        keep = np.isfinite(t1) & np.isfinite(t2)
        if keep.sum() >= 2 and t1[keep].std() > 0 and t2[keep].std() > 0:
            rs.append(np.corrcoef(t1[keep], t2[keep])[0, 1])
    return float(np.median(rs)) if rs else float("nan")


def test_split_median_r_matches_numpy():
    rng = np.random.default_rng(4)
    n, m = 10, 120
    diff = rng.normal(size=(n, m)) + rng.normal(size=m)
    res = stats.bootstrap_counts(diff, draws=20, seed=2, splits=15)
    assignments = stats.split_assignments(n, 15, 2)
    assert res.split_median_r is not None
    for b in range(20):
        want = numpy_split_median(diff[res.indices[b].astype(np.int64)], assignments)
        np.testing.assert_allclose(res.split_median_r[b], want, rtol=1e-10)
    lo, hi = res.split_interval()
    finite = res.split_median_r[np.isfinite(res.split_median_r)]
    np.testing.assert_allclose((lo, hi), np.percentile(finite, [2.5, 97.5]), rtol=1e-12)


THREAD_SCRIPT = """
import json, numpy as np
from dense_plantain import stats
rng = np.random.default_rng(8)
diff = rng.normal(size=(25, 3000)) + 0.4
r = stats.bootstrap_counts(diff, draws=400, seed=4)
print(json.dumps({"threads": stats.threads(), "counts": r.counts.tolist()}))
"""


def test_thread_count_invariant():
    runs = thread_runs(THREAD_SCRIPT)
    assert runs["1"] == runs["2"] == runs["3"]


def test_refusals():
    with pytest.raises(stats.StatsInputError, match="at least 1"):
        stats.bootstrap_counts(np.ones((5, 3)), draws=0)
    with pytest.raises(stats.StatsInputError, match="threshold"):
        stats.bootstrap_counts(np.ones((5, 3)), t_thresholds=(-1.0,))
    with pytest.raises(stats.StatsInputError, match="at least 4"):
        stats.bootstrap_counts(np.ones((3, 3)), splits=5)
