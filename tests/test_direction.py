"""Tests of the direction test on signed vectors (stats.direction_test over the Rust engine).

References: a float64 numpy computation of D, D_norm and the held-out agreement straight from
their definitions; a numpy brute force over every sign pattern (exact) or over the Monte Carlo
signs the t null uses (stats.monte_carlo_signs); planted synthetic data; the FWER rate of pure
noise over many datasets.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dense_plantain import stats
from fresh_python import run_python, thread_runs


def unit_view(delta: np.ndarray, width: int) -> np.ndarray:
    """[pairs x units x width] float64 view of unit-major columns."""
    n, cols = delta.shape
    return np.asarray(delta, dtype=np.float64).reshape(n, cols // width, width)


def numpy_stats(x: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """D, D_norm and agreement count per (pattern, unit): x is [n x units x W], signs [P x n]."""
    y = signs[:, :, None, None].astype(np.float64) * x[None]  # P x n x U x W
    total = y.sum(axis=1)  # P x U x W
    ss = (x**2).sum(axis=(0, 2))  # U
    d = (total**2).sum(axis=2) - ss[None]
    held_out = ((y * (total[:, None] - y)).sum(axis=3) > 0).sum(axis=1)  # P x U
    with np.errstate(invalid="ignore", divide="ignore"):
        d_norm = np.where(ss > 0, d / np.where(ss > 0, ss, 1.0), 0.0)
    return d, d_norm, held_out


def all_patterns(n: int) -> np.ndarray:
    j = np.arange(2 ** (n - 1))[:, None]
    bits = (j >> np.arange(n - 1)[None]) & 1
    return np.concatenate([np.ones((j.size, 1), dtype=np.int8), (1 - 2 * bits).astype(np.int8)], axis=1)


def brute_p(x: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (not p) of patterns reaching the observed D, agreement and the max D_norm."""
    d_obs, dn_obs, a_obs = (v[0] for v in numpy_stats(x, np.ones((1, x.shape[0]), dtype=np.int8)))
    d, dn, a = numpy_stats(x, signs)
    scale = np.abs(np.einsum("iuw,juw->uij", x, x)).sum(axis=(1, 2))
    tol = 1e-9 * scale
    zero = (x == 0).all(axis=(0, 2))
    mx = np.where(zero[None], -np.inf, dn).max(axis=1)
    count_d = (d >= d_obs[None] - tol[None]).sum(axis=0)
    count_a = (a >= a_obs[None]).sum(axis=0)
    ss = (x**2).sum(axis=(0, 2))
    bar = dn_obs - tol / np.where(ss > 0, ss, 1.0)
    count_max = np.where(zero, len(signs), (mx[:, None] >= bar[None]).sum(axis=0))
    return count_d, count_a, count_max


@pytest.mark.parametrize(
    ("n", "units", "width", "dtype"),
    [(3, 4, 1, np.float64), (9, 30, 4, np.float32), (25, 40, 16, np.float64), (41, 5, 128, np.float32)],
)
def test_observed_statistics_match_numpy(n, units, width, dtype):
    rng = np.random.default_rng(n)
    delta = (rng.normal(size=(n, units * width)) + 0.3).astype(dtype)
    res = stats.direction_test(delta, width, permutations=20, exact=False)
    x = unit_view(delta, width)
    d, dn, a = (v[0] for v in numpy_stats(x, np.ones((1, n), dtype=np.int8)))
    ss = (x**2).sum(axis=(0, 2))
    np.testing.assert_allclose(res.D, d, rtol=0, atol=1e-10 * ss.max())
    np.testing.assert_allclose(res.D_norm, dn, rtol=0, atol=1e-12 * n)
    np.testing.assert_array_equal(res.agree, a / n)
    assert res.D_norm.min() >= -1 and res.D_norm.max() <= n - 1


@pytest.mark.parametrize("n", [8, 9, 10, 11, 12])
def test_exact_p_equals_brute_force(n):
    rng = np.random.default_rng(100 + n)
    units, width = 6, 3
    x = rng.normal(size=(n, units, width))
    x[:, 1] += 0.8  # a unit with a direction
    x[:, 2] = 0.0  # an all-zero unit
    x[:, 3] *= 1e-3  # a small-scale unit
    delta = x.reshape(n, units * width)
    res = stats.direction_test(delta, width, permutations=2 ** (n - 1))
    assert res.exact and res.n_permutations == 2 ** (n - 1)
    cd, ca, cm = brute_p(x, all_patterns(n))
    total = 2 ** (n - 1)
    np.testing.assert_array_equal(res.p * total, cd)
    np.testing.assert_array_equal(res.agree_p * total, ca)
    np.testing.assert_array_equal(res.p_max * total, cm)
    assert res.p[2] == res.p_max[2] == res.agree_p[2] == 1.0
    assert res.p_max[1] < 0.05


def test_monte_carlo_equals_brute_force_on_the_t_nulls_signs():
    n, units, width, perms, seed = 20, 7, 5, 3000, 11
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, units, width))
    x[:, 0] += 0.4
    delta = x.reshape(n, units * width)
    res = stats.direction_test(delta, width, permutations=perms, seed=seed)
    assert not res.exact
    signs = stats.monte_carlo_signs(n, seed, 0, perms)
    cd, ca, cm = brute_p(x, signs)
    np.testing.assert_array_equal(res.p, (1 + cd) / (perms + 1))
    np.testing.assert_array_equal(res.agree_p, (1 + ca) / (perms + 1))
    np.testing.assert_array_equal(res.p_max, (1 + cm) / (perms + 1))


def test_chunking_and_progress_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    delta = rng.normal(size=(14, 50 * 4))
    whole = stats.direction_test(delta, 4, permutations=40_000, exact=False, seed=2)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(stats, "_DIRECTION_CALL_WORK", 1)  # one engine chunk per call
    parts = stats.direction_test(
        delta, 4, permutations=40_000, exact=False, seed=2, progress=lambda a, b: calls.append((a, b))
    )
    assert calls == [(16_384, 40_000), (32_768, 40_000), (40_000, 40_000)]
    for name in ("D", "D_norm", "p", "p_max", "agree", "agree_p"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(parts, name), err_msg=name)


THREAD_SCRIPT = """
import json, numpy as np
from dense_plantain import stats
rng = np.random.default_rng(8)
delta = rng.normal(size=(23, 300 * 6)).astype(np.float32)
r = stats.direction_test(delta, 6, permutations=5000, seed=4)
print(json.dumps({"threads": stats.threads(), "p": r.p.tolist(), "p_max": r.p_max.tolist(),
                  "agree_p": r.agree_p.tolist(), "D": r.D.tolist()}))
"""


def test_monte_carlo_is_thread_count_invariant():
    runs = thread_runs(THREAD_SCRIPT)
    assert runs["1"] == runs["2"] == runs["3"]
    # The instruction sets give the same bits (the AVX-512 kernel is written with intrinsics).
    for isa in ("baseline", "avx2"):
        run = json.loads(run_python(THREAD_SCRIPT, {"DENSE_PLANTAIN_NUM_THREADS": "2", "DENSE_PLANTAIN_SIMD": isa}))
        run.pop("threads")
        assert run == runs["1"], isa


def rotation(direction: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    """An orthogonal matrix rotating by ``angle`` in the plane of ``direction`` and a random
    orthogonal vector (everything orthogonal to that plane stays put)."""
    e1 = direction / np.linalg.norm(direction)
    e2 = rng.normal(size=direction.size)
    e2 -= (e2 @ e1) * e1
    e2 /= np.linalg.norm(e2)
    c, s = np.cos(angle), np.sin(angle)
    return (
        np.eye(direction.size)
        + (c - 1.0) * (np.outer(e1, e1) + np.outer(e2, e2))
        + s * (np.outer(e2, e1) - np.outer(e1, e2))
    )


def test_planted_rotation_found_norm_change_not():
    """Units 0..9 rotate a common direction at (about) constant norm; units 10..19 scale random-direction
    vectors by 1.6 (norm up, no common direction); units 20..59 are unchanged noise."""
    rng = np.random.default_rng(21)
    n, width, units = 25, 16, 60
    a = np.empty((n, units, width))
    b = np.empty((n, units, width))
    for u in range(units):
        if u < 10:
            mean = rng.normal(size=width)
            mean *= 3.0 / np.linalg.norm(mean)
            a[:, u] = mean + 0.3 * rng.normal(size=(n, width))
            # Rotated; the norm kept up to a 5 % per-prompt jitter with no consistent sign.
            b[:, u] = (a[:, u] @ rotation(mean, 0.6, rng).T) * (1.0 + 0.05 * rng.normal(size=(n, 1)))
        elif u < 20:
            a[:, u] = rng.normal(size=(n, width))
            b[:, u] = 1.6 * a[:, u]
        else:
            a[:, u] = rng.normal(size=(n, width))
            b[:, u] = a[:, u] + 0.3 * rng.normal(size=(n, width))
    delta = (b - a).reshape(n, units * width)
    res = stats.direction_test(delta, width, permutations=4000, seed=1)
    # Magnitude (norm of the vector) per prompt: the RMS-like statistic of the magnitude test.
    mag = stats.paired(np.linalg.norm(b, axis=2) - np.linalg.norm(a, axis=2))
    ratio = np.linalg.norm(b[:, :10], axis=2) / np.linalg.norm(a[:, :10], axis=2)
    assert np.abs(ratio - 1).max() < 0.25 and np.abs(np.log(ratio).mean()) < 0.03
    assert (res.p_max[:10] <= 0.05).all(), res.p_max[:10]
    assert (res.agree[:10] >= 0.9).all()
    assert (res.p_max[10:] > 0.05).all(), res.p_max[10:]
    assert (np.abs(mag.t[10:20]) > 5).all()
    assert (np.abs(mag.t[:10]) < 3).all(), mag.t[:10]


def test_pure_noise_fwer_is_five_percent():
    """2000 pure-noise datasets (units of very different scales), exact null with n = 10: the
    share with any unit at p_max <= 0.05 is 25/512 = 4.9 % by construction; within 5 +/- 1.4 %."""
    rng = np.random.default_rng(0)
    n, units, width, datasets = 10, 6, 3, 2000
    scales = np.repeat(10.0 ** np.arange(-3, 3), width)
    rejected = 0
    for _ in range(datasets):
        delta = rng.normal(size=(n, units * width)) * scales
        rejected += bool((stats.direction_test(delta, width, permutations=512).p_max <= 0.05).any())
    rate = rejected / datasets
    assert 0.036 <= rate <= 0.064, rate


def test_refusals_name_the_problem():
    with pytest.raises(stats.StatsInputError, match="multiple of the vector width 3"):
        stats.direction_test(np.zeros((5, 10)), 3)
    bad = np.zeros((5, 12))
    bad[2, 7] = np.nan
    with pytest.raises(stats.StatsInputError, match="pair 2, unit 1, column 3"):
        stats.direction_test(bad, 4)
    with pytest.raises(stats.StatsInputError, match="at least 3"):
        stats.direction_test(np.zeros((2, 4)), 2)
    with pytest.raises(stats.StatsInputError, match="out of reach"):
        stats.direction_test(np.ones((40, 4)), 2, exact=True)
