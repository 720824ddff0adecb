"""Issue 14 closing note, speed: the vectorised d_z interval and the weighted pair bootstrap against
the slow reference solver, scipy.stats.nct and a numpy recount; same seed, same counts at any
thread count."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from dense_plantain import stats
from dense_plantain.analysis import intervals
from fresh_python import thread_runs


@pytest.mark.parametrize("n", [6, 25])
def test_vectorised_d_z_interval_equals_the_reference_solver_and_scipy_nct(n):
    rng = np.random.default_rng(n)
    t = np.concatenate([rng.normal(0.0, 3.0, 3000), [0.0, 40.0, -120.0, 1e-9, np.inf, np.nan]])
    lo, hi = intervals.d_z_interval(t, n)
    ok = np.isfinite(t)
    assert np.isnan(lo[~ok]).all() and np.isnan(hi[~ok]).all()
    df = float(n - 1)
    for p, bound in ((0.975, lo), (0.025, hi)):
        ref = intervals._noncentrality_reference(df, p, t[ok])
        nc = bound[ok] * np.sqrt(n)
        # The documented tolerance: NC_TOL * max(1, |nc|) relative to the root (plus the reference's own).
        np.testing.assert_array_less(np.abs(nc - ref), 2 * intervals.NC_TOL * np.maximum(1.0, np.abs(ref)) + 1e-12)
        # Independent CDF: scipy.stats.nct at the bound gives back p (every 50th unit).
        sub = slice(None, None, 50)
        cdf = sps.nct.cdf(t[ok][sub], df, nc[sub])
        np.testing.assert_allclose(cdf, p, atol=1e-9)


def test_weighted_bootstrap_counts_equal_a_numpy_recount_for_each_tail():
    rng = np.random.default_rng(5)
    n, m, draws = 11, 700, 120
    diff = rng.normal(0.2, 1.0, (n, m))
    diff[:, 0] = 1.5  # constant: +inf in every draw
    diff[:, 1] = 0.0  # all zero: t = 0
    diff[:, 2] = np.where(np.arange(n) % 4 == 0, -0.7, 0.41)  # two values: tied pairs
    diff[:, 3] = 1e6 + 1e-4 * rng.normal(size=n)  # far from zero, small spread
    diff[0, 3] -= 1e5
    idx = stats.bootstrap_indices(n, draws, 9)
    for tail in ("two", "greater", "less"):
        boot = stats.bootstrap_counts(
            diff, t_thresholds=(1.3, 3.0), d_thresholds=(0.6,), draws=draws, seed=9, tail=tail
        )
        want = []
        for rows in idx:
            x = diff[rows]
            mean, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
            const = (x == x[0]).all(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(const, np.sign(x[0]) * np.inf, mean / (sd / np.sqrt(n)))
                d = np.where(const, np.sign(x[0]) * np.inf, mean / sd)
            t[const & (x[0] == 0)] = 0.0
            d[const & (x[0] == 0)] = 0.0
            tv, dv = {"two": (np.abs(t), np.abs(d)), "greater": (t, d), "less": (-t, -d)}[tail]
            want.append([(tv > 1.3).sum(), (tv > 3.0).sum(), (dv > 0.6).sum()])
        np.testing.assert_array_equal(boot.counts, np.array(want), err_msg=tail)
    with pytest.raises(stats.StatsInputError, match="tail must be one of"):
        stats.bootstrap_counts(diff, draws=3, tail="up")  # type: ignore[arg-type]


def test_bootstrap_counts_do_not_depend_on_the_thread_count(tmp_path):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "diff.npy", rng.normal(0.1, 1.0, (14, 5000)))
    # The package as this interpreter imports it (installed, or the source tree on PYTHONPATH).
    code = f"""
        import json, numpy as np
        from dense_plantain import stats
        d = np.load({str(tmp_path / "diff.npy")!r})
        c = stats.bootstrap_counts(d, draws=50, seed=4, tail="greater").counts
        print(json.dumps({{"threads": stats.threads(), "counts": c.tolist()}}))
    """
    runs = thread_runs(code, ("1", "2"))
    assert runs["1"] == runs["2"]
    assert np.asarray(runs["1"]["counts"]).shape[0] == 50
