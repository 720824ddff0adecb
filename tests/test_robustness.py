"""Issue 14: seeds, one-sided tests, intervals, analysis by factor level; each against an
independent computation (MNE's exact permutation_t_test, scipy's tests and intervals, numpy brute
forces and bootstraps, a numpy Welch by level)."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
from scipy import integrate, optimize
from scipy import stats as sps

from dense_plantain import analysis, report, stats, store
from dense_plantain.analysis import intervals
from dense_plantain.analysis.driver import bh_q
from dense_plantain.errors import AnalysisError
from dense_plantain.stats import StatsInputError
from synthetic_captures import correlated_pairs, paired_t, probe_meta, small_layout, write

PLANTED = {"joint[1]": 1.4, "single[2]": -1.2}


@pytest.fixture
def layout():
    return small_layout()


def _capture(tmp_path, layout, n, seed, name="cap", factors=None, planted=PLANTED):
    a, b = correlated_pairs(layout, n, planted=planted, seed=seed)
    meta = probe_meta(n)
    if factors is not None:
        for pair, levels in zip(meta["pairs"], factors, strict=True):
            pair["factors"] = dict(levels)
    return write(tmp_path / f"{name}.safetensors", a, b, layout, **meta), a.astype(np.float64), b.astype(np.float64)


def _units_csv(folder):
    with open(folder / "units.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _signed_t_d(diff):
    t = paired_t(diff)
    d = diff.mean(axis=0) / diff.std(axis=0, ddof=1)
    return t, d


# --- 2. one-sided tests ---------------------------------------------------------------------


@pytest.mark.parametrize("tail,mne_tail,alternative", [("greater", 1, "greater"), ("less", -1, "less")])
def test_one_sided_p_maxT_equals_mne_exact_and_parametric_p_equals_scipy(tmp_path, layout, tail, mne_tail, alternative):
    import mne.stats

    n = 10
    path, a, b = _capture(tmp_path, layout, n, seed=4)
    diff = b - a
    mne_like = analysis.analyze(
        path, tail=tail, fwer_null="max_abs", permutations=2**n, exact=True, splits=5, bootstrap=0, group_nulls=False
    )
    assert mne_like.null_exact and mne_like.null_permutations == 2**n  # every pair's sign free
    _, p_mne, _ = mne.stats.permutation_t_test(diff, n_permutations=2**n, tail=mne_tail, verbose=False)
    np.testing.assert_allclose(mne_like.p_maxT, p_mne, rtol=1e-12)

    # The default statistic: max t (min t for "less") of every one of the 2^n patterns, brute force.
    res = analysis.analyze(path, tail=tail, permutations=2**n, splits=5, bootstrap=0, group_nulls=False)
    sign = 1.0 if tail == "greater" else -1.0
    patterns = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    t_obs, d_obs = _signed_t_d(diff)
    null_max, counts = [], []
    for s in patterns:
        t, d = _signed_t_d(diff * s[:, None])
        null_max.append((sign * t).max())
        counts.append([(sign * t > 3).sum(), (sign * t > 5).sum(), (sign * d > 0.8).sum()])
    null_max, counts = np.array(null_max), np.array(counts)
    want = (null_max[None, :] >= sign * t_obs[:, None] * (1 - 1e-10)).sum(axis=1) / 2**n
    np.testing.assert_allclose(res.p_maxT, want, rtol=1e-12)
    assert (res.p_maxT <= p_mne + 1e-15).all()  # max t is never less powerful than max |t|
    for k, th in enumerate(res.thresholds):
        assert th.tail == tail
        assert th.count == counts[0, k]  # pattern 0 is the identity
        assert th.null_p99 == pytest.approx(np.percentile(counts[:, k], 99), abs=1e-12)
        assert th.null_max == counts[:, k].max()

    scipy_res = sps.ttest_rel(b, a, alternative=alternative)
    np.testing.assert_allclose(res.p, scipy_res.pvalue, rtol=1e-9)
    np.testing.assert_allclose(res.q, sps.false_discovery_control(scipy_res.pvalue), rtol=1e-9)
    rec = res.to_json()
    assert rec["tail"] == tail and rec["null"]["tail"] == tail
    assert rec["null"]["fwer_statistic"] == ("max t" if tail == "greater" else "min t")
    assert mne_like.to_json()["null"]["fwer_statistic"].startswith("max |t|")


def test_two_sided_default_is_unchanged_and_matched_compare_is_one_sided(tmp_path, layout):
    p1, a1, b1 = _capture(tmp_path, layout, 8, seed=5, name="one")
    p2, a2, b2 = _capture(tmp_path, layout, 8, seed=6, name="two")
    res = analysis.analyze(p1, permutations=200, splits=5, bootstrap=0)
    np.testing.assert_allclose(res.p, sps.ttest_rel(b1, a1).pvalue, rtol=1e-9)
    assert res.to_json()["tail"] == "two"
    # Welch's one-sided path: tests/test_robust_tail.py.
    # The matched path is one-sided too: a paired t of diff1 - diff2.
    res = analysis.compare(p1, p2, pairing="matched", tail="less", permutations=200, splits=5, bootstrap=0)
    want = sps.ttest_rel(b1 - a1, b2 - a2, alternative="less").pvalue
    np.testing.assert_allclose(res.p, want, rtol=1e-9)
    with pytest.raises(AnalysisError, match="--tail must be one of"):
        analysis.analyze(p1, tail="up")


def test_bh_q_refuses_p_outside_the_unit_interval():
    with pytest.raises(StatsInputError, match=r"p\[0\] = -1.0"):
        bh_q(np.array([-1.0, 0.5, 0.7]))
    for bad in ([0.2, 1.5], [0.1, np.inf]):
        with pytest.raises(StatsInputError, match="must lie in"):
            bh_q(np.array(bad))
    p = np.array([0.01, np.nan, 0.04, 0.5, 0.03])
    q = bh_q(p)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[~np.isnan(p)], sps.false_discovery_control(p[~np.isnan(p)]), rtol=1e-12)


# --- 3. intervals ---------------------------------------------------------------------------


def _nct_cdf(t: float, df: int, nc: float) -> float:
    """P(T <= t) for T = (Z + nc) / sqrt(V / df), integrated over V ~ chi2(df) (no noncentral-t code)."""
    f = lambda v: sps.norm.cdf(t * np.sqrt(v / df) - nc) * sps.chi2.pdf(v, df)  # noqa: E731
    return integrate.quad(f, 0.0, np.inf, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


def _d_z_root(t: float, n: int, p: float) -> float:
    """Brute force: the noncentrality where the noncentral t CDF at t equals p, by bracketing."""
    g = lambda nc: _nct_cdf(t, n - 1, nc) - p  # noqa: E731
    return optimize.brentq(g, t - 15.0, t + 15.0, xtol=1e-11) / np.sqrt(n)


def test_unit_intervals_equal_scipy_and_a_root_find(tmp_path, layout):
    n = 9
    path, a, b = _capture(tmp_path, layout, n, seed=8)
    res = analysis.analyze(path, permutations=100, splits=5, bootstrap=0)
    ci = sps.ttest_rel(b, a).confidence_interval(0.95)
    np.testing.assert_allclose(res.intervals["ci_low"], ci.low, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.intervals["ci_high"], ci.high, rtol=1e-9, atol=1e-12)
    for u in range(0, layout.n_units, 9):
        t = float(res.t[u])
        assert res.intervals["d_ci_low"][u] == pytest.approx(_d_z_root(t, n, 0.975), abs=1e-7)
        assert res.intervals["d_ci_high"][u] == pytest.approx(_d_z_root(t, n, 0.025), abs=1e-7)
    assert (res.intervals["d_ci_low"] <= res.d).all() and (res.d <= res.intervals["d_ci_high"]).all()
    out = tmp_path / "res"
    report.write_results(res, out)
    rows = _units_csv(out)
    np.testing.assert_allclose([float(r["ci_low"]) for r in rows], ci.low, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([float(r["d_ci_high"]) for r in rows], res.intervals["d_ci_high"], rtol=1e-9)


def test_constant_unit_has_no_d_interval_and_welch_intervals_equal_scipy(tmp_path, layout):
    diff = np.random.default_rng(3).normal(size=(8, 5))
    diff[:, 0] = 2.0  # t = inf
    lo, hi = intervals.d_z_interval(stats.paired(diff).t, 8)
    assert np.isnan(lo[0]) and np.isnan(hi[0]) and np.isfinite(lo[1:]).all()
    p1, a1, b1 = _capture(tmp_path, layout, 8, seed=9, name="w1")
    p2, a2, b2 = _capture(tmp_path, layout, 6, seed=10, name="w2")
    res = analysis.compare(p1, p2, pairing="unmatched", permutations=50, splits=5)
    ci = sps.ttest_ind(b1 - a1, b2 - a2, equal_var=False).confidence_interval(0.95)
    np.testing.assert_allclose(res.intervals["ci_low"], ci.low, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.intervals["ci_high"], ci.high, rtol=1e-9, atol=1e-12)
    assert np.isnan(res.intervals["d_ci_low"]).all()
    assert res.to_json()["bootstrap"]["split_half_note"] == "not computed for Welch's design"


@pytest.mark.parametrize("tail", ["two", "greater"])
def test_bootstrap_intervals_equal_a_numpy_pair_bootstrap(tmp_path, layout, tail):
    n, draws = 12, 300
    path, a, b = _capture(tmp_path, layout, n, seed=12)
    diff = b - a
    res = analysis.analyze(path, permutations=100, splits=8, seed=3, bootstrap=draws, tail=tail, bootstrap_splits=6)
    rec = res.to_json()["bootstrap"]
    assert rec["draws"] == draws and rec["seed"] == 3
    idx = stats.bootstrap_indices(n, draws, 3)  # the seeded draws: which pairs each draw takes
    sign = 1.0 if tail == "greater" else None
    counts, medians = [], []
    assignments = stats.split_assignments(n, 6, 3)
    for rows in idx:
        x = diff[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            t, d = _signed_t_d(x)
        tv, dv = (np.abs(t), np.abs(d)) if sign is None else (t, d)
        counts.append([(tv > 3).sum(), (tv > 5).sum(), (dv > 0.8).sum()])
        r = []
        for half in assignments:
            with np.errstate(divide="ignore", invalid="ignore"):
                t1, t2 = paired_t(x[half]), paired_t(x[~half])
            ok = np.isfinite(t1) & np.isfinite(t2)
            r.append(np.corrcoef(t1[ok], t2[ok])[0, 1] if ok.sum() > 2 else np.nan)
        r = np.array(r)
        medians.append(np.median(r[np.isfinite(r)]) if np.isfinite(r).any() else np.nan)
    counts = np.array(counts, dtype=np.float64)
    for k, row in enumerate(rec["thresholds"]):
        lo, hi = np.percentile(counts[:, k], [2.5, 97.5])
        assert (row["low"], row["high"]) == pytest.approx((lo, hi), abs=1e-9)
        assert row["count"] == res.thresholds[k].count
    medians = np.array(medians)
    lo, hi = np.percentile(medians[np.isfinite(medians)], [2.5, 97.5])
    assert (rec["split_half"]["low"], rec["split_half"]["high"]) == pytest.approx((lo, hi), abs=1e-6)
    out = tmp_path / f"res-{tail}"
    report.write_results(res, out)
    md = (out / "results.md").read_text()
    first = rec["thresholds"][0]
    assert f"[95% bootstrap {first['low']:,.0f}–{first['high']:,.0f}]" in md
    assert "### Pair bootstrap" in md
    off = analysis.analyze(path, permutations=100, splits=8, bootstrap=0)
    assert "bootstrap" not in off.to_json()


# --- 4. by factor level ---------------------------------------------------------------------


def _welch_t(x1, x2):
    return (x1.mean(0) - x2.mean(0)) / np.sqrt(x1.var(0, ddof=1) / len(x1) + x2.var(0, ddof=1) / len(x2))


def test_by_factor_levels_and_contrasts_equal_numpy(tmp_path, layout):
    body = ["heavy", "slim", "average"] * 4  # 3 levels, 4 pairs each
    cloth = ["loose", "fitted"] * 6
    factors = [{"body": x, "clothing": y} for x, y in zip(body, cloth)]
    path, a, b = _capture(tmp_path, layout, 12, seed=14, factors=factors)
    diff = b - a
    res = analysis.analyze(path, by="body", permutations=500, splits=5, bootstrap=0)
    rec = res.to_json()["by"]
    assert rec["factor"] == "body" and [lv["level"] for lv in rec["levels"]] == ["heavy", "slim", "average"]
    levels = np.array(body)
    for lv in rec["levels"]:
        x = diff[levels == lv["level"]]
        t, d = _signed_t_d(x)
        assert [th["count"] for th in lv["thresholds"]] == [
            (abs(t) > 3).sum(),
            (abs(t) > 5).sum(),
            (abs(d) > 0.8).sum(),
        ]
        # 4 pairs: the exact null is all 8 sign patterns with the first fixed; brute force its p99.
        null = []
        for s in itertools.product((1.0, -1.0), repeat=3):
            tt, _ = _signed_t_d(x * np.array((1.0, *s))[:, None])
            null.append((np.abs(tt) > 3).sum())
        assert lv["thresholds"][0]["null_p99"] == pytest.approx(np.percentile(null, 99))
        assert lv["n_pairs"] == 4
    # More than two levels: each level against all the others (Welch's t of the pair differences).
    assert rec["contrast_rule"] == "each level - all other levels"
    for c in rec["contrasts"]:
        x1, x2 = diff[levels == c["level"]], diff[levels != c["level"]]
        want = _welch_t(x1, x2)
        np.testing.assert_allclose(res.extra_columns[f"by_body_{c['level']}_t"], want, rtol=1e-9)
        np.testing.assert_allclose(want, sps.ttest_ind(x1, x2, equal_var=False).statistic, rtol=1e-9)
        assert c["thresholds"][0]["count"] == (np.abs(want) > 3).sum()
        assert c["group_sizes"] == [4, 8] and c["thresholds"][0]["null_p99"] is not None
    # Two levels: the one contrast level 1 - level 2.
    two = analysis.analyze(path, by="clothing", permutations=300, splits=5, bootstrap=0)
    crec = two.to_json()["by"]
    assert crec["contrast_rule"] == "level 1 - level 2" and len(crec["contrasts"]) == 1
    cl = np.array(cloth)
    np.testing.assert_allclose(
        two.extra_columns["by_clothing_loose_t"], _welch_t(diff[cl == "loose"], diff[cl == "fitted"]), rtol=1e-9
    )
    out = tmp_path / "by"
    report.write_results(two, out)
    rows = _units_csv(out)
    np.testing.assert_allclose(
        [float(r["by_clothing_loose_t"]) for r in rows], two.extra_columns["by_clothing_loose_t"], rtol=1e-9
    )
    assert "### By clothing" in (out / "results.md").read_text()


def test_by_refuses_a_factor_the_capture_does_not_carry(tmp_path, layout):
    factors = [{"body": x} for x in ["heavy", "slim"] * 4]
    path, _, _ = _capture(tmp_path, layout, 8, seed=15, factors=factors)
    with pytest.raises(AnalysisError, match=r"does not label its pairs with a factor 'pose'.*body \(heavy, slim\)"):
        analysis.analyze(path, by="pose")
    bare, _, _ = _capture(tmp_path, layout, 8, seed=15, name="bare")
    with pytest.raises(AnalysisError, match="carries no factors"):
        analysis.analyze(bare, by="body")
    few = [{"body": x} for x in ["heavy"] * 2 + ["slim"] * 6]
    path2, _, _ = _capture(tmp_path, layout, 8, seed=15, name="few", factors=few)
    with pytest.raises(AnalysisError, match=r"heavy \(2\) have fewer than 3 pairs"):
        analysis.analyze(path2, by="body")


# --- 1. seeds: the analysis of a multi-seed capture ----------------------------------------


def test_multi_seed_capture_gets_per_seed_counts_and_consistency(tmp_path, layout):
    n, seeds = 10, [3, 5, 9]
    per = [correlated_pairs(layout, n, planted=PLANTED, seed=s) for s in seeds]
    a_s = np.stack([p[0] for p in per])
    b_s = np.stack([p[1] for p in per])
    a = a_s.astype(np.float64).mean(0).astype(np.float32)
    b = b_s.astype(np.float64).mean(0).astype(np.float32)
    meta = {**layout.to_metadata(), **probe_meta(n), "seeds": seeds}
    path = store.write_capture(tmp_path / "seeds.safetensors", a, b, meta, extra={"a_seeds": a_s, "b_seeds": b_s})
    res = analysis.analyze(path, permutations=2**9, splits=5, bootstrap=0)
    np.testing.assert_allclose(res.t, paired_t(b.astype(np.float64) - a), rtol=1e-9)  # main: on the means
    rec = res.to_json()["seeds"]
    assert rec["seeds"] == seeds
    tvecs = []
    for k, s in enumerate(rec["per_seed"]):
        diff = b_s[k].astype(np.float64) - a_s[k]
        t, d = _signed_t_d(diff)
        tvecs.append(t)
        assert s["seed"] == seeds[k]
        assert [th["count"] for th in s["thresholds"]] == [(abs(t) > 3).sum(), (abs(t) > 5).sum(), (abs(d) > 0.8).sum()]
        null = []  # exact: 512 patterns, first pair fixed
        for sg in itertools.product((1.0, -1.0), repeat=n - 1):
            tt = paired_t(diff * np.array((1.0, *sg))[:, None])
            null.append((np.abs(tt) > 3).sum())
        assert s["thresholds"][0]["null_p99"] == pytest.approx(np.percentile(null, 99))
        ratio = s["thresholds"][0]["ratio"]
        assert ratio is None or ratio == pytest.approx(s["thresholds"][0]["count"] / np.percentile(null, 99))
    rs = [np.corrcoef(tvecs[i], tvecs[j])[0, 1] for i, j in itertools.combinations(range(3), 2)]
    cons = rec["consistency"]
    np.testing.assert_allclose([p["r"] for p in cons["pairs"]], rs, rtol=1e-9)
    assert cons["median"] == pytest.approx(np.median(rs)) and cons["min"] == pytest.approx(min(rs))
    out = tmp_path / "res"
    report.write_results(res, out)
    assert "### Noise seeds" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["seeds"]["seeds"] == seeds
    # A one-seed capture has no seeds record.
    plain, _, _ = _capture(tmp_path, layout, n, seed=1, name="plain")
    assert "seeds" not in analysis.analyze(plain, permutations=100, splits=5, bootstrap=0).to_json()


def test_cli_analyze_tail_by_and_bootstrap(tmp_path, layout):
    from click.testing import CliRunner

    from dense_plantain.cli import main

    factors = [{"body": x} for x in ["heavy", "slim"] * 5]
    path, a, b = _capture(tmp_path, layout, 10, seed=16, factors=factors)
    out = tmp_path / "cli"
    args = ["analyze", str(path), "--out", str(out), "--tail", "less", "--by", "body", "--bootstrap", "50", "-q"]
    res = CliRunner().invoke(main, [*args, "--permutations", "300", "--splits", "5"])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "results.json").read_text())
    assert rec["tail"] == "less" and rec["settings"]["bootstrap"] == 50 and rec["by"]["factor"] == "body"
    md = (out / "results.md").read_text()
    assert "Units with t < −3" in md and "one-sided, B − A < 0" in md
    rows = _units_csv(out)
    want = sps.ttest_rel(b, a, alternative="less").pvalue
    np.testing.assert_allclose([float(r["p"]) for r in rows], want, rtol=1e-8)
    bad = CliRunner().invoke(main, ["analyze", str(path), "--out", str(tmp_path / "x"), "--by", "hair", "-q"])
    assert bad.exit_code != 0 and "body (heavy, slim)" in bad.output


def test_card_says_the_tail_and_shows_the_intervals(tmp_path, layout):
    path, a, b = _capture(tmp_path, layout, 9, seed=17)
    res = analysis.analyze(path, tail="greater", permutations=2**9, splits=5, bootstrap=80)
    report.write_results(res, tmp_path / "res")
    record = report.load_results(tmp_path / "res")
    card = report.write_card(record, tmp_path / "README.md", results_dir=tmp_path / "res").read_text()
    assert "one-sided, B − A > 0" in card and "Units with t > 3" in card
    row = record["bootstrap"]["thresholds"][0]
    assert f"[95% bootstrap {row['low']:,.0f}–{row['high']:,.0f}]" in card
    t = paired_t(b - a)
    assert row["count"] == (t > 3).sum()
