"""Tests of the statistics engine (dense_plantain.stats over the Rust extension).

Every number is checked against an independent computation: scipy's paired t-test, a numpy
brute force over sign patterns (flip the raw differences, two-pass sd), MNE-Python's exact
permutation t-test, or a numpy re-implementation of split-half reliability.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from dense_plantain import stats
from dense_plantain.errors import AnalysisError
from fresh_python import run_python

# Not 3 and 5: a constant unit's |t| under a pattern is sqrt((n-1) k^2 / (n^2 - k^2)), which is
# exactly 5 for n = 12, k = 10 (and 3 for n = 8); at such exact ties a float brute force may land
# on either side of the threshold, while the engine (closed form) says "not above".
T_THR = (2.0, 3.2, 4.7)
D_THR = (0.8, 1.5)


# --- independent references ------------------------------------------------------------------


def brute_null(diff: np.ndarray, signs: np.ndarray, t_thr=T_THR, d_thr=D_THR):
    """Counts and max |t| for each row of ``signs`` ([P x n] of +-1), by flipping the raw
    differences and recomputing t two-pass, with the documented sd = 0 convention."""
    n = diff.shape[0]
    y = signs[:, :, None].astype(np.float64) * diff[None, :, :]
    mean = y.mean(axis=1)
    sd = np.sqrt(((y - mean[:, None, :]) ** 2).sum(axis=1) / (n - 1))
    constant = (y == y[:, :1, :]).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(mean / (sd / np.sqrt(n)))
    t = np.where(constant, np.where(y[:, 0, :] == 0, 0.0, np.inf), t)
    d = t / np.sqrt(n)
    t_counts = np.zeros((t.shape[0], len(t_thr)), dtype=np.int64)
    d_counts = np.zeros((t.shape[0], len(d_thr)), dtype=np.int64)
    for k, c in enumerate(t_thr):
        t_counts[:, k] = (t > c).sum(axis=1)
    for k, c in enumerate(d_thr):
        d_counts[:, k] = (d > c).sum(axis=1)
    return t_counts, d_counts, t.max(axis=1)


def exact_signs(n: int) -> np.ndarray:
    """All 2^(n-1) patterns in the documented order: bit i-1 of j flips pair i."""
    j = np.arange(2 ** (n - 1))[:, None]
    bits = (j >> np.arange(n - 1)[None, :]) & 1
    return np.concatenate([np.ones((j.size, 1), dtype=np.int64), 1 - 2 * bits], axis=1)


def probe_like(n: int, m: int, seed: int) -> np.ndarray:
    """Differences with shared pair factors (correlated units) and effects on a third of units."""
    rng = np.random.default_rng(seed)
    effect = np.where(np.arange(m) % 3 == 0, rng.normal(0, 0.8, m), 0.0)
    factor = rng.normal(size=(n, (m + 15) // 16)).repeat(16, axis=1)[:, :m]
    return effect + 0.6 * factor + 0.8 * rng.normal(size=(n, m))


# --- paired statistics -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 1), (5, 7), (25, 300), (12, 2049)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paired_matches_scipy(shape, dtype):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    a = rng.normal(3.0, 1.0, size=shape).astype(dtype)
    b = (a + rng.normal(0.4, 1.0, size=shape)).astype(dtype)
    diff = stats.paired_diff(a, b)
    assert diff.dtype == np.float64 and diff.flags.c_contiguous
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    np.testing.assert_array_equal(diff, b64 - a64)
    res = stats.paired(diff)
    ref = scipy.stats.ttest_rel(b64, a64, axis=0)
    n = shape[0]
    np.testing.assert_allclose(res.t, ref.statistic, rtol=1e-11)
    np.testing.assert_allclose(res.d, ref.statistic / np.sqrt(n), rtol=1e-11)
    np.testing.assert_allclose(res.mean, (b64 - a64).mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res.sd, (b64 - a64).std(axis=0, ddof=1), rtol=1e-12)
    assert res.n_pairs == n


def test_paired_handles_huge_and_tiny_magnitudes():
    rng = np.random.default_rng(1)
    base = rng.normal(1.0, 1.0, size=(6, 4))
    for scale in (1e300, 1e-300):
        res = stats.paired(base * scale)
        ref = scipy.stats.ttest_1samp(base, 0.0, axis=0)
        np.testing.assert_allclose(res.t, ref.statistic, rtol=1e-11)
        np.testing.assert_allclose(res.mean / scale, base.mean(axis=0), rtol=1e-12)


# --- exact null ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [8, 9, 10, 11, 12])
def test_exact_null_matches_brute_force(n):
    diff = probe_like(n, 61, seed=n)
    diff[:, 5] = 0.0  # all-zero unit: t = 0 under every pattern
    diff[:, 9] = 0.5  # constant unit: |t| = inf at the identity, finite elsewhere
    null = stats.sign_flip_null(diff, T_THR, D_THR, permutations=10, exact=True)
    assert null.exact and null.n_permutations == 2 ** (n - 1)
    t_counts, d_counts, max_t = brute_null(diff, exact_signs(n))
    np.testing.assert_array_equal(null.t_counts, t_counts)
    np.testing.assert_array_equal(null.d_counts, d_counts)
    assert null.max_abs_t[0] == np.inf and max_t[0] == np.inf
    np.testing.assert_allclose(null.max_abs_t[1:], max_t[1:], rtol=1e-9)


def test_exact_null_with_weak_units():
    # Three noise units: most patterns have no unit near any threshold, so the max |t| comes from
    # units the engine first skips (its deferred pass must find them).
    n = 12
    diff = np.random.default_rng(4).normal(size=(n, 3))
    null = stats.sign_flip_null(diff, T_THR, D_THR, permutations=2 ** (n - 1))
    t_counts, d_counts, max_t = brute_null(diff, exact_signs(n))
    np.testing.assert_array_equal(null.t_counts, t_counts)
    np.testing.assert_array_equal(null.d_counts, d_counts)
    np.testing.assert_allclose(null.max_abs_t, max_t, rtol=1e-9)
    assert np.median(max_t) < 3.0


def test_exact_null_without_degenerate_units_and_no_thresholds():
    n = 10
    diff = probe_like(n, 33, seed=4)
    null = stats.sign_flip_null(diff, t_thresholds=(), d_thresholds=(), permutations=2**9)
    assert null.exact and null.t_counts.shape == (512, 0) and null.d_counts.shape == (512, 0)
    _, _, max_t = brute_null(diff, exact_signs(n))
    np.testing.assert_allclose(null.max_abs_t, max_t, rtol=1e-9)


def test_exact_fwer_p_matches_mne():
    mne_stats = pytest.importorskip("mne.stats")
    n = 10
    diff = probe_like(n, 40, seed=7)
    null = stats.sign_flip_null(diff, permutations=2 ** (n - 1))
    assert null.exact
    p = stats.fwer_p(np.abs(stats.paired(diff).t), null)
    t_obs, p_mne, h0 = mne_stats.permutation_t_test(diff, n_permutations=2**n, tail=0, verbose=False)
    np.testing.assert_allclose(np.sort(null.max_abs_t), h0, rtol=1e-9)
    np.testing.assert_array_equal(p, p_mne)
    np.testing.assert_allclose(stats.paired(diff).t, t_obs, rtol=1e-9)


# --- Monte Carlo null ----------------------------------------------------------------------------


def test_monte_carlo_matches_brute_force_on_its_own_signs():
    n, m = 25, 150
    diff = probe_like(n, m, seed=11)
    diff[:, 3] = -2.0
    null = stats.sign_flip_null(diff, T_THR, D_THR, permutations=300, seed=42)
    assert not null.exact and null.n_permutations == 300 and null.seed == 42
    signs = stats.monte_carlo_signs(n, 42, 0, 300)
    assert signs.shape == (300, n) and set(np.unique(signs)) <= {-1, 1} and (signs[:, 0] == 1).all()
    t_counts, d_counts, max_t = brute_null(diff, signs)
    np.testing.assert_array_equal(null.t_counts, t_counts)
    np.testing.assert_array_equal(null.d_counts, d_counts)
    finite = np.isfinite(max_t)
    np.testing.assert_array_equal(np.isfinite(null.max_abs_t), finite)
    np.testing.assert_allclose(null.max_abs_t[finite], max_t[finite], rtol=1e-9)


def test_monte_carlo_signs_are_fair_coins():
    signs = stats.monte_carlo_signs(25, 3, 0, 20000)[:, 1:]
    flips = (signs == -1).mean(axis=0)
    assert np.all(np.abs(flips - 0.5) < 5 * np.sqrt(0.25 / 20000))
    # Pairs flip independently: correlations between columns near 0.
    corr = np.corrcoef(signs.T.astype(float))
    assert np.abs(corr[np.triu_indices(24, 1)]).max() < 5 / np.sqrt(20000)


def test_monte_carlo_approaches_the_exact_null():
    n, m, perms = 12, 200, 20000
    diff = probe_like(n, m, seed=5)
    exact = stats.sign_flip_null(diff, T_THR, D_THR, permutations=perms, exact=True)
    mc = stats.sign_flip_null(diff, T_THR, D_THR, permutations=perms, exact=False, seed=9)
    assert exact.exact and not mc.exact
    series = [(exact.max_abs_t, mc.max_abs_t)]
    series += [(exact.t_counts[:, k], mc.t_counts[:, k]) for k in range(len(T_THR))]
    series += [(exact.d_counts[:, 0], mc.d_counts[:, 0])]
    for ref, sample in series:
        for q in (10, 50, 90, 99):
            x = np.percentile(ref, q)
            f = np.mean(ref <= x)
            tol = 5 * np.sqrt(f * (1 - f) / perms) + 1e-12
            assert abs(np.mean(sample <= x) - f) <= tol, (q, x)
    for k in range(len(T_THR)):  # p99 of counts within sampling error (checked above) and close
        assert abs(stats.null_p99(mc.t_counts[:, k]) - stats.null_p99(exact.t_counts[:, k])) <= max(
            2.0, 0.15 * stats.null_p99(exact.t_counts[:, k])
        )


def test_same_seed_same_null_other_seed_other_null():
    diff = probe_like(20, 100, seed=1)
    a = stats.sign_flip_null(diff, permutations=500, seed=7)
    b = stats.sign_flip_null(diff, permutations=500, seed=7)
    c = stats.sign_flip_null(diff, permutations=500, seed=8)
    np.testing.assert_array_equal(a.t_counts, b.t_counts)
    np.testing.assert_array_equal(a.max_abs_t, b.max_abs_t)
    assert not np.array_equal(a.max_abs_t, c.max_abs_t)


def test_chunking_and_ranges_do_not_change_results(monkeypatch):
    diff = probe_like(16, 300, seed=2)
    whole_mc = stats.sign_flip_null(diff, permutations=3000, seed=1)
    whole_exact = stats.sign_flip_null(diff, permutations=2**15, exact=True)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(stats, "_CHUNK_LIMITS", (700, 700))
    part_mc = stats.sign_flip_null(diff, permutations=3000, seed=1, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(700, 3000), (1400, 3000), (2100, 3000), (2800, 3000), (3000, 3000)]
    monkeypatch.setattr(stats, "_CHUNK_LIMITS", (5000, 5000))
    part_exact = stats.sign_flip_null(diff, permutations=2**15, exact=True)
    for part, whole in ((part_mc, whole_mc), (part_exact, whole_exact)):
        np.testing.assert_array_equal(part.t_counts, whole.t_counts)
        np.testing.assert_array_equal(part.d_counts, whole.d_counts)
        np.testing.assert_array_equal(part.max_abs_t, whole.max_abs_t)
    from dense_plantain import _stats

    full_c, full_mx = _stats.sign_flip_monte_carlo(diff, [3.0, 5.0], [0.8], 1, 0, 3000)
    np.testing.assert_array_equal(full_c[:, :2], whole_mc.t_counts)
    for lo, hi in ((0, 1234), (1234, 2999), (2999, 3000), (5, 5)):
        c, mx = _stats.sign_flip_monte_carlo(diff, [3.0, 5.0], [0.8], 1, lo, hi)
        np.testing.assert_array_equal(c, full_c[lo:hi])
        np.testing.assert_array_equal(mx, full_mx[lo:hi])
    for lo, hi in ((0, 777), (777, 20000), (20000, 32768)):
        c, mx = _stats.sign_flip_exact(diff, [3.0, 5.0], [0.8], lo, hi)
        np.testing.assert_array_equal(c[:, :2], whole_exact.t_counts[lo:hi])
        np.testing.assert_array_equal(mx, whole_exact.max_abs_t[lo:hi])


NULL_SCRIPT = """
import json, numpy as np
from dense_plantain import stats
rng = np.random.default_rng(3)
diff = rng.normal(0.2, 1.0, size=(25, 1500)) + rng.normal(size=(25, 1)) * 0.5
mc = stats.sign_flip_null(diff, permutations=5000, seed=11)
ex = stats.sign_flip_null(stats.paired_diff(np.zeros((14, 800)), diff[:14, :800]), permutations=2**13)
sh = stats.split_half(diff, n_splits=20, seed=4)
# 1,499 / 1,494 units: the products' last tile is partial (3 or 6 of 8 units: one or both halves of 4)
bs = [
    stats.bootstrap_counts(diff[:, :m], draws=203, seed=5, tail=tail).counts.tolist()
    for m, tail in ((1499, "two"), (1494, "less"), (1494, "two"))
]
# one-sided tallies, three groups: exact (the signed sweeps: one and several thresholds) and
# Monte Carlo (the signed Monte Carlo kernel, whose counting has one path per instruction set)
def tally(tail, exact):
    m = 800 if exact else 1500
    r = stats.sign_flip_tallies(diff[:14, :m] if exact else diff, partitions=[np.arange(m) % 3],
                                tail=tail, exact=exact, permutations=3000, seed=8)
    groups = ((None, None), (0, 0), (0, 1), (0, 2))
    return [r.histogram(i, *g).tolist() for i in range(3) for g in groups] + [
        r.fwer_p().tolist(), r.fwer_p(null="max_abs").tolist()]
tl = [tally(tail, exact) for tail in ("greater", "less") for exact in (True, False)]
print(json.dumps({
    "threads": stats.threads(), "simd": stats.simd_variant(),
    "mc": [mc.t_counts.tolist(), mc.d_counts.tolist(), mc.max_abs_t.tolist()],
    "ex": [ex.t_counts.tolist(), ex.max_abs_t.tolist()], "sh": sh.r.tolist(), "bs": bs, "tl": tl,
}))
"""


def test_bit_identical_across_thread_counts_and_instruction_sets():
    runs = {}
    for threads in ("1", "2"):
        runs[threads] = json.loads(run_python(NULL_SCRIPT, {"DENSE_PLANTAIN_NUM_THREADS": threads}))
        assert runs[threads]["threads"] == int(threads)
    runs["rayon"] = json.loads(run_python(NULL_SCRIPT, {"DENSE_PLANTAIN_NUM_THREADS": "", "RAYON_NUM_THREADS": "3"}))
    assert runs["rayon"]["threads"] == 3
    for simd in ("baseline", "avx2"):
        runs[simd] = json.loads(run_python(NULL_SCRIPT, {"DENSE_PLANTAIN_SIMD": simd}))
    assert runs["baseline"]["simd"] == "baseline"
    ref = runs["1"]
    for name, other in runs.items():
        for key in ("mc", "ex", "sh", "bs", "tl"):
            assert other[key] == ref[key], (name, key)


def test_pool_survives_fork():
    code = """
    import os, sys, numpy as np
    from dense_plantain import stats
    diff = np.random.default_rng(0).normal(size=(25, 400))
    before = stats.sign_flip_null(diff, permutations=2000, seed=1)
    pid = os.fork()
    if pid == 0:
        after = stats.sign_flip_null(diff, permutations=2000, seed=1)
        ok = np.array_equal(before.max_abs_t, after.max_abs_t) and stats.threads() == 2
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
    run_python(code, {"DENSE_PLANTAIN_NUM_THREADS": "2"}, timeout=60)


def test_many_permutations_run_in_bounded_memory():
    # 2 million permutations over 40 units: outputs only (the engine streams permutations).
    diff = probe_like(25, 40, seed=8)
    null = stats.sign_flip_null(diff, t_thresholds=(3.0,), d_thresholds=(), permutations=2_000_000, seed=2)
    assert null.t_counts.shape == (2_000_000, 1) and np.isfinite(null.max_abs_t).all()
    signs = stats.monte_carlo_signs(25, 2, 1_999_900, 2_000_000)
    t_counts, _, max_t = brute_null(diff, signs, t_thr=(3.0,), d_thr=())
    np.testing.assert_array_equal(null.t_counts[-100:], t_counts)
    np.testing.assert_allclose(null.max_abs_t[-100:], max_t, rtol=1e-9)


# --- summaries of the null -------------------------------------------------------------------------


def test_null_p99_is_the_linear_percentile():
    assert stats.null_p99(np.arange(101)) == 99.0
    assert stats.null_p99(np.arange(100)) == pytest.approx(98.01)
    assert stats.null_p99(np.zeros(1000, dtype=np.int64)) == 0.0


def _fake_null(max_abs_t, exact):
    max_abs_t = np.asarray(max_abs_t, dtype=np.float64)
    return stats.SignFlipNull(
        np.zeros((max_abs_t.size, 0), np.int64),
        np.zeros((max_abs_t.size, 0), np.int64),
        max_abs_t,
        exact,
        max_abs_t.size,
        0,
        (),
        (),
    )


def test_fwer_p_formulas():
    mc = _fake_null([1.0, 2.0, 3.0, 4.0], exact=False)
    # (1 + #{max >= x}) / (P + 1)
    np.testing.assert_allclose(
        stats.fwer_p([0.5, 2.0, 2.5, 4.0, 9.0, -3.0], mc), [5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5, 3 / 5]
    )
    ex = _fake_null([9.0, 1.0, 2.0, 3.0], exact=True)  # row 0 = identity (the observed max)
    # #{patterns incl. identity: max >= x} / 2^(n-1)
    np.testing.assert_allclose(stats.fwer_p([0.5, 2.0, 2.5, 9.0], ex), [4 / 4, 3 / 4, 2 / 4, 1 / 4])


def test_monte_carlo_fwer_p_counts_exceedances():
    diff = probe_like(25, 200, seed=3)
    null = stats.sign_flip_null(diff, permutations=999, seed=5)
    t = np.abs(stats.paired(diff).t)
    expected = (1 + (null.max_abs_t[None, :] >= t[:, None]).sum(axis=1)) / 1000
    np.testing.assert_array_equal(stats.fwer_p(t, null), expected)


def test_auto_exact_choice():
    diff = probe_like(11, 10, seed=0)
    assert stats.sign_flip_null(diff, permutations=1024).exact
    assert stats.sign_flip_null(diff, permutations=1024).n_permutations == 1024
    assert not stats.sign_flip_null(diff, permutations=1023).exact
    assert stats.sign_flip_null(diff, permutations=10, exact=True).n_permutations == 1024


# --- split-half ------------------------------------------------------------------------------------


def numpy_split_half(diff: np.ndarray, assignments: np.ndarray) -> np.ndarray:
    out = []
    for row in assignments:
        ts = []
        for half in (diff[row], diff[~row]):
            k = half.shape[0]
            ts.append(half.mean(axis=0) / (half.std(axis=0, ddof=1) / np.sqrt(k)))
        out.append(np.corrcoef(ts[0], ts[1])[0, 1])
    return np.array(out)


@pytest.mark.parametrize("n", [4, 7, 25])
def test_split_half_matches_numpy(n):
    diff = probe_like(n, 500, seed=n)
    sh = stats.split_half(diff, n_splits=30, seed=2)
    assert sh.assignments.shape == (30, n) and sh.assignments.dtype == bool
    assert (sh.assignments.sum(axis=1) == n // 2).all()
    np.testing.assert_allclose(sh.r, numpy_split_half(diff, sh.assignments), rtol=1e-10, atol=1e-12)


def test_split_assignments_are_seeded_and_stable():
    a = stats.split_assignments(25, 100, 0)
    np.testing.assert_array_equal(a[:10], stats.split_assignments(25, 10, 0))
    assert not np.array_equal(a, stats.split_assignments(25, 100, 1))
    assert len({row.tobytes() for row in a}) > 95  # distinct splits
    # Each pair lands in the first half about 12/25 of the time.
    freq = stats.split_assignments(25, 4000, 5).mean(axis=0)
    assert np.all(np.abs(freq - 12 / 25) < 5 * np.sqrt(0.25 / 4000))


def test_split_half_leaves_out_infinite_t():
    diff = probe_like(8, 60, seed=1)
    diff[:, 7] = 1.5  # constant: t = inf in both halves of every split
    sh = stats.split_half(diff, n_splits=5, seed=0)
    keep = np.ones(60, dtype=bool)
    keep[7] = False
    np.testing.assert_allclose(sh.r, numpy_split_half(diff[:, keep], sh.assignments), rtol=1e-10)
    flat = np.ones((6, 3))
    assert np.isnan(stats.split_half(flat, n_splits=2).r).all()  # nothing finite to correlate


# --- degenerate and bad input -------------------------------------------------------------------


def test_constant_units_follow_the_documented_convention():
    diff = probe_like(9, 5, seed=2)
    diff[:, 1] = 0.0
    diff[:, 2] = 0.1  # 0.1 is not exact in binary: constancy is decided by equality, not sd
    diff[:, 3] = -4.0
    res = stats.paired(diff)
    assert (res.t[1], res.d[1], res.sd[1]) == (0.0, 0.0, 0.0)
    assert (res.t[2], res.d[2], res.sd[2]) == (np.inf, np.inf, 0.0)
    assert (res.t[3], res.d[3]) == (-np.inf, -np.inf)
    null = stats.sign_flip_null(diff, t_thresholds=(3.0, 1e6), d_thresholds=(0.8,), permutations=256)
    assert null.exact and null.max_abs_t[0] == np.inf
    # Both constant non-zero units count above every threshold at the identity only.
    signs = exact_signs(9)
    t_counts, d_counts, max_t = brute_null(np.where(diff == 0.1, 0.5, diff), signs, (3.0, 1e6), (0.8,))
    np.testing.assert_array_equal(null.t_counts, t_counts)
    np.testing.assert_array_equal(null.d_counts, d_counts)
    assert null.t_counts[0, 1] == 2 and (null.t_counts[1:, 1] == 0).all()
    p = stats.fwer_p(np.abs(res.t), null)
    assert p[2] == p[3] == 1 / 256 and p[1] == 1.0
    mc = stats.sign_flip_null(diff, permutations=5000, exact=False, seed=1)
    drew_identity = (stats.monte_carlo_signs(9, 1, 0, 5000) == 1).all(axis=1).sum()
    assert stats.fwer_p(np.abs(res.t), mc)[2] == (1 + drew_identity) / 5001


def test_non_finite_input_names_the_pair_and_unit():
    a = np.zeros((5, 8))
    b = np.ones((5, 8))
    b[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"B has a non-finite value nan at pair 2, unit 5"):
        stats.paired_diff(a, b)
    a[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"A has a non-finite value inf at pair 4, unit 0"):
        stats.paired_diff(a, np.ones((5, 8)))
    with pytest.raises(ValueError, match=r"B - A has a non-finite value inf at pair 0, unit 0"):
        stats.paired_diff(np.full((3, 1), -1e308), np.full((3, 1), 1e308))
    bad = np.ones((4, 3))
    bad[3, 2] = -np.inf
    for fn in (stats.paired, stats.split_half, stats.sign_flip_null):
        with pytest.raises(ValueError, match=r"pair 3, unit 2"):
            fn(bad)


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((2, 4)), np.ones((2, 4)), "at least 3"),
        (np.zeros((5, 4)), np.ones((5, 3)), "shape"),
        (np.zeros((5, 0)), np.zeros((5, 0)), "no units"),
        (np.zeros(5), np.ones(5), "2-D"),
        (np.zeros((5, 2), dtype=complex), np.ones((5, 2), dtype=complex), "real numbers"),
    ],
)
def test_bad_shapes_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message) as info:
        stats.paired_diff(a, b)
    assert isinstance(info.value, AnalysisError)


def test_bad_settings_are_refused():
    diff = probe_like(6, 4, seed=0)
    for kwargs, message in [
        ({"t_thresholds": (-1.0,)}, "t threshold"),
        ({"d_thresholds": (np.nan,)}, "d threshold"),
        ({"permutations": 0}, "permutations"),
        ({"permutations": 2.5}, "permutations"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
    ]:
        with pytest.raises(ValueError, match=message):
            stats.sign_flip_null(diff, **kwargs)
    with pytest.raises(ValueError, match="exact enumeration"):
        stats.sign_flip_null(probe_like(40, 3, seed=0), exact=True)
    with pytest.raises(ValueError, match="at least 4 pairs"):
        stats.split_half(probe_like(3, 4, seed=0))
    with pytest.raises(ValueError, match="n_splits"):
        stats.split_half(diff, n_splits=0)
    with pytest.raises(ValueError):
        stats.fwer_p(np.array([np.nan]), stats.sign_flip_null(diff, permutations=10))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        stats.null_p99(np.zeros((3, 2)))
    from dense_plantain import _stats

    with pytest.raises(ValueError, match="C-contiguous"):
        _stats.paired(np.asfortranarray(diff))
    with pytest.raises(ValueError, match="range"):
        _stats.sign_flip_exact(diff, [3.0], [], 10, 40)


def test_threads_reports_the_pool():
    assert stats.threads() >= 1
    assert stats.simd_variant() in {"avx512", "avx2", "baseline"}


# --- observed counts through the null's route, and fwer_p at identity-equivalent patterns ------


def _tie_units(n: int, k: int, m: int, seed: int) -> np.ndarray:
    """[n x m]: k of n differences equal to one scale, the rest 0; |t| = sqrt((n-1) k / (n-k))
    exactly (t = 3 for n = 10, k = 5; t = 5 for n = 26, k = 13; d = 0.8 for n = 25, k = 10).
    Half the units are scaled by powers of two (the tie survives exactly), half by random floats
    (the tie is off by an ulp either way)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, m))
    for u in range(m):
        x[rng.choice(n, k, replace=False), u] = 2.0 ** rng.integers(-6, 6) if u % 2 else rng.uniform(0.01, 10)
    return x


@pytest.mark.parametrize("n,k", [(10, 5), (25, 10), (26, 13)])
def test_observed_counts_are_the_null_identity_row_at_ties(n, k):
    thr_t, thr_d = (3.0, 4.0, 5.0), (0.8,)
    x = _tie_units(n, k, 200, seed=n)
    # Premise: two-pass t puts the tie units on the threshold (or within a few ulp of it).
    t = np.abs(stats.paired(x).t)
    assert np.isclose(t, np.sqrt((n - 1) * k / (n - k)), rtol=1e-13).all()
    obs = stats.observed_counts(x, thr_t, thr_d)
    if n <= 10:
        null = stats.sign_flip_null(x, thr_t, thr_d, permutations=2 ** (n - 1), exact=True)
        row_t, row_d, row_max = null.t_counts[0], null.d_counts[0], null.max_abs_t[0]
    else:  # exact pattern 0 alone (the full enumeration would take long)
        c, mx = stats._stats.sign_flip_exact(x, list(thr_t), list(thr_d), 0, 1)
        row_t, row_d, row_max = c[0, :3], c[0, 3:], mx[0]
    np.testing.assert_array_equal(obs.t_counts, row_t)
    np.testing.assert_array_equal(obs.d_counts, row_d)
    assert obs.max_abs_t == row_max


@pytest.mark.parametrize("n", [6, 20, 45])
def test_observed_counts_match_float64_without_ties(n):
    rng = np.random.default_rng(n)
    x = rng.normal(0.5, 1, size=(n, 400))
    x[:, 3] = 0.0  # t = 0 (engine) / NaN (paired): never counted
    x[:, 4] = 1.5  # constant, |t| = inf: counted everywhere
    obs = stats.observed_counts(x, T_THR, D_THR)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.abs(x.mean(axis=0) / (x.std(axis=0, ddof=1) / np.sqrt(n)))
    ref = np.where(np.isnan(ref), 0.0, ref)
    ref[4] = np.inf
    np.testing.assert_array_equal(obs.t_counts, [(ref > c).sum() for c in T_THR])
    np.testing.assert_array_equal(obs.d_counts, [(ref / np.sqrt(n) > c).sum() for c in D_THR])
    assert obs.max_abs_t == np.inf
    finite = stats.observed_counts(np.delete(x, 4, axis=1), T_THR, D_THR).max_abs_t
    assert finite == pytest.approx(np.delete(ref, 4).max(), rel=1e-12)
    if n <= 20:
        null = stats.sign_flip_null(x, T_THR, D_THR, permutations=2**19, exact=True)
        np.testing.assert_array_equal(obs.t_counts, null.t_counts[0])
        np.testing.assert_array_equal(obs.d_counts, null.d_counts[0])


def test_fwer_p_counts_patterns_that_only_flip_zero_differences():
    """Flipping a pair whose difference is 0 gives the observed data again; the null's |t| for
    it comes from another float route than stats.paired's and may sit an ulp below. One unit
    per trial, so the unit's |t| is the max (where the ulp matters); p compared exactly, as a
    count over the 2^(n-1) patterns."""
    n = 8
    rng = np.random.default_rng(0)
    flips = np.array([[1] + [-1 if (j >> (i - 1)) & 1 else 1 for i in range(1, n)] for j in range(2 ** (n - 1))])
    for _ in range(60):
        x = rng.normal(0.8, 1, size=(n, 1))
        x[[2, 5], 0] = 0.0
        obs = np.abs(stats.paired(x).t)
        null = stats.sign_flip_null(x, T_THR, D_THR, permutations=2 ** (n - 1), exact=True)
        got = stats.fwer_p(obs, null)[0]
        # Float64 brute force on the raw differences (two-pass t for every pattern).
        y = flips * x[:, 0]
        t_all = np.abs(y.mean(axis=1) / (y.std(axis=1, ddof=1) / np.sqrt(n)))
        at_least = int((t_all >= t_all[0] * (1 - 1e-12)).sum())
        assert at_least >= 4  # the 4 patterns that flip only the zero pairs
        assert got * 2 ** (n - 1) == at_least


def test_monte_carlo_fwer_p_counts_draws_of_the_identity():
    n = 5  # 16 patterns: many Monte Carlo draws are the identity
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 1, size=(n, 30))
    obs = np.abs(stats.paired(x).t)
    mc = stats.sign_flip_null(x, T_THR, D_THR, permutations=400, exact=False, seed=2)
    signs = stats.monte_carlo_signs(n, 2, 0, 400)
    identity = (signs == 1).all(axis=1)
    assert identity.sum() > 0
    top = obs.argmax()
    p = stats.fwer_p(obs, mc)[top]
    # The top unit's |t| is the max over units under the identity: each identity draw counts.
    expected = 1 + ((mc.max_abs_t >= obs[top] * (1 - 1e-10)) | identity).sum()
    assert p == expected / 401


# --- streaming tallies -----------------------------------------------------------------------------


def _partitions_for(m: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.arange(m) % 2, rng.integers(0, 3, m)]


@pytest.mark.parametrize("exact", [True, False])
def test_tallies_equal_the_materialised_null(exact):
    n, m = 11, 60
    diff = probe_like(n, m, seed=3)
    parts = _partitions_for(m, 1)
    kw = dict(t_thresholds=T_THR, d_thresholds=D_THR, seed=5)
    tal = stats.sign_flip_tallies(diff, partitions=parts, permutations=3000, exact=exact, **kw)
    null = stats.sign_flip_null(diff, permutations=3000, exact=exact, **kw)
    assert tal.exact == exact and tal.n_permutations == null.n_permutations
    assert tal.includes_identity == exact
    groups = [(None, None, np.arange(m))] + [
        (pi, g, np.flatnonzero(p == g)) for pi, p in enumerate(parts) for g in range(int(p.max()) + 1)
    ]
    for pi, g, cols in groups:
        gnull = null if pi is None else stats.sign_flip_null(diff[:, cols], permutations=3000, exact=exact, **kw)
        counts = np.concatenate([gnull.t_counts, gnull.d_counts], axis=1)
        for k in range(counts.shape[1]):
            c = counts[:, k]
            np.testing.assert_array_equal(tal.histogram(k, pi, g), np.bincount(c, minlength=cols.size + 1))
            for q in (0, 1, 37.5, 50, 95, 99, 99.9, 100):
                assert tal.percentile(q, k, pi, g) == np.percentile(c, q), (pi, g, k, q)
            assert tal.median(k, pi, g) == np.median(c)
            assert tal.max_count(k, pi, g) == c.max()
            for at in (0, 1, 3, int(c.max())):
                assert tal.n_at_least(at, k, pi, g) == int((c >= at).sum())
    t = stats.paired(diff).t
    np.testing.assert_array_equal(tal.fwer_p(t), stats.fwer_p(np.abs(t), null))
    np.testing.assert_allclose(tal.stat_obs, np.abs(t), rtol=1e-9)
    obs = stats.observed_counts(diff, T_THR, D_THR)
    assert [tal.observed(k) for k in range(5)] == [*obs.t_counts, *obs.d_counts]


TALLY_SCRIPT = """
import json, numpy as np
from dense_plantain import stats
rng = np.random.default_rng(0)
diff = rng.normal(0.3, 1, size=(13, 300))
out = {}
for tail in ("two", "greater"):
    for exact in (True, False):
        t = stats.sign_flip_tallies(diff, partitions=[np.arange(300) % 4], tail=tail, exact=exact,
                                    permutations=2000, seed=3)
        out[f"{tail}{exact}"] = [t.histogram(0, 0, 1).tolist(), t.fwer_p().tolist()]
print(json.dumps(out))
"""


def test_tallies_identical_across_thread_counts():
    runs = [json.loads(run_python(TALLY_SCRIPT, {"DENSE_PLANTAIN_NUM_THREADS": k})) for k in ("1", "2", "3")]
    assert runs[0] == runs[1] == runs[2]


def test_tallies_one_sided_exact_match_mne():
    mne_stats = pytest.importorskip("mne.stats")
    n = 9
    diff = probe_like(n, 30, seed=11)
    t = stats.paired(diff).t
    for tail, mne_tail in (("greater", 1), ("less", -1), ("two", 0)):
        tal = stats.sign_flip_tallies(diff, tail=tail, exact=True)
        assert tal.n_permutations == (2**n if tail != "two" else 2 ** (n - 1))
        _, p_mne, _ = mne_stats.permutation_t_test(diff, n_permutations=2**n, tail=mne_tail, verbose=False)
        # MNE's one-sided test compares signed t with the max |t| null: our null="max_abs".
        np.testing.assert_allclose(tal.fwer_p(t, null="max_abs"), p_mne, rtol=1e-12, err_msg=tail)
        # The max-t null is never less powerful (max t <= max |t| pattern by pattern).
        assert (tal.fwer_p(t) <= p_mne + 1e-15).all()


def _brute_one_sided(diff, signs, thresholds, tail):
    n = diff.shape[0]
    y = signs[:, :, None].astype(np.float64) * diff[None, :, :]
    mean = y.mean(axis=1)
    sd = np.sqrt(((y - mean[:, None, :]) ** 2).sum(axis=1) / (n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / np.sqrt(n))
    t = t if tail == "greater" else -t
    return np.stack([(t > c).sum(axis=1) for c in thresholds], axis=1), t.max(axis=1)


@pytest.mark.parametrize("tail", ["greater", "less"])
def test_tallies_one_sided_counts_match_brute_force(tail):
    n, m = 8, 40
    diff = probe_like(n, m, seed=2)
    j = np.arange(2**n)[:, None]
    signs = 1 - 2 * ((j >> np.arange(n)[None, :]) & 1)  # all 2^n patterns, pair 0 free
    counts, max_t = _brute_one_sided(diff, signs, T_THR, tail)
    tal = stats.sign_flip_tallies(diff, t_thresholds=T_THR, d_thresholds=(), tail=tail, exact=True)
    for k in range(len(T_THR)):
        np.testing.assert_array_equal(tal.histogram(k), np.bincount(counts[:, k], minlength=m + 1))
    t = stats.paired(diff).t
    t_side = t if tail == "greater" else -t
    want = (max_t[:, None] >= t_side[None, :] * (1 - 1e-9) - 1e-12).sum(axis=0) / 2**n
    np.testing.assert_allclose(tal.fwer_p(t), want)
    assert tal.observed(0) == int((t_side > T_THR[0]).sum())


def _brute_max_t(diff, tail):
    """Per pattern (all 2^n, pair 0 free) the max of t (of -t for less) over the units, float64,
    with the project's convention for equal values: t = +-inf when every flipped value is the
    same non-zero number (numpy's own sd of equal values need not be exactly 0)."""
    n = diff.shape[0]
    j = np.arange(2**n)[:, None]
    signs = 1 - 2 * ((j >> np.arange(n)[None, :]) & 1)
    y = signs[:, :, None].astype(np.float64) * diff[None, :, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = y.mean(axis=1) / (y.std(axis=1, ddof=1) / np.sqrt(n))
    equal = (y == y[:, :1, :]).all(axis=1)
    t = np.where(equal, np.where(y[:, 0, :] > 0, np.inf, np.where(y[:, 0, :] < 0, -np.inf, 0.0)), t)
    return (t if tail == "greater" else -t).max(axis=1)


@pytest.mark.parametrize("tail", ["greater", "less"])
def test_tallies_one_sided_equal_magnitude_units_match_brute_force(tail):
    # Unit 0's |differences| are all equal: it takes the closed form. Over these seeds its pair 0
    # is sometimes in the minority (its S has the other sign than pair 0), sometimes balanced
    # (t = 0), and some patterns have a negative max t, where a spurious S = 0 or a class left
    # out of the max changes p_maxT of the units with a negative observed t.
    n, m = 6, 4
    negative_max = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        diff = rng.normal(size=(n, m)) + rng.normal(0, 1.5, size=m)
        diff[:, 0] = rng.choice([-1.0, 1.0], size=n) * 0.7
        t = stats.paired(diff).t
        tal = stats.sign_flip_tallies(diff, t_thresholds=(0.5, 3.0), d_thresholds=(), tail=tail, exact=True)
        max_t = _brute_max_t(diff, tail)
        negative_max += int((max_t < 0).any())
        side = t if tail == "greater" else -t
        want = (max_t[:, None] >= side[None, :] - 1e-9 * np.abs(side[None, :]) - 1e-12).mean(axis=0)
        np.testing.assert_allclose(tal.fwer_p(t), want, rtol=0, atol=1e-15, err_msg=f"seed {seed}")
        np.testing.assert_allclose(tal.fwer_p(), want, rtol=0, atol=1e-15, err_msg=f"seed {seed}")
    assert negative_max >= 3  # the case this test is for


@pytest.mark.parametrize("tail", ["greater", "less"])
@pytest.mark.parametrize("exact", [True, False])
def test_tallies_one_sided_groups_in_one_run_equal_runs_over_each_group(tail, exact):
    # The one-sided tallies count every group in one run over cells of units with the same
    # labels, each cell padded with all-zero columns to a multiple of 8. Against runs over each
    # group's units alone: the same histograms, and for all units the same max-t null (padding
    # must stay out of the max and the min: these data have patterns with a negative max t).
    n, m = 6, 4
    rng = np.random.default_rng(6)
    diff = rng.normal(size=(n, m)) + rng.normal(0, 1.5, size=m)
    diff[:, 0] = rng.choice([-1.0, 1.0], size=n) * 0.7
    assert (_brute_max_t(diff, tail) < 0).sum() >= 5
    kind = np.array([0, 1, 0, 1])
    region = np.array([2, 0, 0, 2])
    kw = {"t_thresholds": (0.5, 3.0), "d_thresholds": (0.4,), "tail": tail, "exact": exact}
    if not exact:
        kw.update(permutations=3000, seed=7)
    one = stats.sign_flip_tallies(diff, partitions=[kind, region], **kw)
    alone = stats.sign_flip_tallies(diff, **kw)
    t = stats.paired(diff).t
    np.testing.assert_array_equal(one.fwer_p(t), alone.fwer_p(t))
    np.testing.assert_array_equal(one.fwer_p(t, null="max_abs"), alone.fwer_p(t, null="max_abs"))
    for k in range(3):
        np.testing.assert_array_equal(one.histogram(k), alone.histogram(k))
        for pi, labels in enumerate((kind, region)):
            for g in np.unique(labels):
                sub = stats.sign_flip_tallies(np.ascontiguousarray(diff[:, labels == g]), **kw)
                np.testing.assert_array_equal(one.histogram(k, pi, int(g)), sub.histogram(k), err_msg=f"{pi} {g}")


def test_tallies_one_sided_monte_carlo_draws_pair_zero_too():
    n, m = 10, 20
    diff = probe_like(n, m, seed=4) + 0.5
    a = stats.sign_flip_tallies(diff, tail="greater", exact=False, permutations=4000, seed=1)
    b = stats.sign_flip_tallies(diff, tail="greater", exact=True)
    # Monte Carlo over all 2^n patterns approaches the exact one-sided null.
    for k in range(2):
        assert abs(a.percentile(50, k) - b.percentile(50, k)) <= 2
    np.testing.assert_allclose(a.fwer_p(), b.fwer_p(), atol=0.03)


def test_equal_magnitude_unit_is_constant_under_one_pattern():
    # Issue 14 section 5: unit 1 = v for 11 pairs and -v for one; flipping that pair makes it constant.
    n, v = 12, 3.0
    diff = np.zeros((n, 2))
    diff[:, 0] = 2.0
    diff[:, 1] = v
    diff[5, 1] = -v
    null = stats.sign_flip_null(diff, T_THR, D_THR, permutations=2 ** (n - 1))
    j = 1 << 4  # flips pair 5
    assert null.max_abs_t[j] == np.inf
    p = stats.fwer_p(np.abs(stats.paired(diff).t), null)
    assert p[0] == 2 / 2048
    tal = stats.sign_flip_tallies(diff, exact=True)
    assert tal.fwer_p()[0] == 2 / 2048
    signs = exact_signs(n)
    t_counts, d_counts, max_t = brute_null(diff, signs)
    np.testing.assert_array_equal(null.t_counts, t_counts)
    np.testing.assert_array_equal(null.d_counts, d_counts)
    np.testing.assert_allclose(null.max_abs_t, max_t, rtol=1e-12)


def test_fwer_p_ties_hold_at_huge_t():
    # Near-constant units: |t| ~ 1e4 .. 1e6, where the null's |t| has relative error ~1e-16 t^2.
    rng = np.random.default_rng(0)
    n = 10
    diff = 1.0 + rng.normal(0, 1, size=(n, 6)) * np.array([1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 1e-2])
    null = stats.sign_flip_null(diff, permutations=2 ** (n - 1))
    t = np.abs(stats.paired(diff).t)
    p = stats.fwer_p(t, null)
    # The identity always counts, and is the only pattern reaching the largest |t|.
    assert p[np.argmax(t)] == 1 / 2 ** (n - 1)
    # Independent: float64 two-pass t of every other pattern (all far from the huge |t|), plus the identity.
    _, _, max_other = brute_null(diff, exact_signs(n)[1:])
    brute = (1 + (max_other[:, None] >= t[None, :]).sum(axis=0)) / 2 ** (n - 1)
    np.testing.assert_array_equal(p, brute)
    assert t.max() > 1e5
    tal = stats.sign_flip_tallies(diff, exact=True)
    np.testing.assert_array_equal(tal.fwer_p(t), brute)


def test_exact_null_that_cannot_fit_is_refused_fast():
    import time

    diff = probe_like(30, 2000, seed=0)
    t0 = time.perf_counter()
    with pytest.raises(stats.StatsInputError, match="Monte Carlo"):
        stats.sign_flip_tallies(diff, exact=True, time_limit_s=5.0)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(stats.StatsInputError, match="GiB"):
        stats.sign_flip_null(probe_like(37, 10, 0)[:33], exact=True)  # 2^32 rows: 128 GiB


def test_tallies_bad_input():
    diff = probe_like(6, 10, seed=0)
    with pytest.raises(stats.StatsInputError, match="tail"):
        stats.sign_flip_tallies(diff, tail="both")  # type: ignore[arg-type]
    with pytest.raises(stats.StatsInputError, match="partition 0"):
        stats.sign_flip_tallies(diff, partitions=[np.arange(9)])
    tal = stats.sign_flip_tallies(diff, partitions=[np.arange(10) % 2])
    with pytest.raises(stats.StatsInputError, match="group"):
        tal.percentile(99, 0, 0, 5)
    with pytest.raises(stats.StatsInputError, match="does not match"):
        tal.fwer_p(stats.paired(diff).t + 1.0)


def test_monte_carlo_identity_draws_count_at_huge_t():
    # n = 5: 16 patterns, so about P/16 draws reproduce the data; at |t| ~ 1e5 the null's |t| is
    # off by ~1e-6 relative, far beyond a fixed 1e-10 tolerance on t, but each draw must count.
    rng = np.random.default_rng(2)
    n, P = 5, 2000
    diff = 1.0 + rng.normal(0, 1, size=(n, 3)) * np.array([1e-5, 3e-6, 1e-6])
    t = np.abs(stats.paired(diff).t)
    assert t.min() > 3e4
    signs = stats.monte_carlo_signs(n, 0, 0, P)
    identity_draws = int((signs == 1).all(axis=1).sum())
    _, _, max_t = brute_null(diff, signs[~(signs == 1).all(axis=1)])
    want = (1 + identity_draws + (max_t[:, None] >= t[None, :]).sum(axis=0)) / (P + 1)
    null = stats.sign_flip_null(diff, permutations=P, exact=False)
    np.testing.assert_array_equal(stats.fwer_p(t, null), want)
    tal = stats.sign_flip_tallies(diff, permutations=P, exact=False)
    np.testing.assert_array_equal(tal.fwer_p(t), want)
