"""Issue 14 closing note: block summaries that follow --tail, and Welch's design with one-sided tests
and a within-sample bootstrap; against numpy brute forces and scipy.stats.ttest_ind."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from dense_plantain import analysis, report, welch
from dense_plantain.analysis import BLOCK_T
from synthetic_captures import correlated_pairs, probe_meta, small_layout, write

PLANTED = {"joint[1]": 1.4, "single[2]": -1.2}


@pytest.fixture
def layout():
    return small_layout()


def _capture(tmp_path, layout, n, seed, name="cap"):
    a, b = correlated_pairs(layout, n, planted=PLANTED, seed=seed)
    path = write(tmp_path / f"{name}.safetensors", a, b, layout, **probe_meta(n))
    return path, a.astype(np.float64), b.astype(np.float64)


def _welch_t_d(x1, x2):
    n1, n2 = len(x1), len(x2)
    m1, m2 = x1.mean(0), x2.mean(0)
    v1, v2 = x1.var(0, ddof=1), x2.var(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (m1 - m2) / np.sqrt(v1 / n1 + v2 / n2)
        d = (m1 - m2) / np.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    return t, d


@pytest.mark.parametrize("tail", ["two", "greater", "less"])
def test_block_summaries_follow_the_tail(tmp_path, layout, tail):
    path, a, b = _capture(tmp_path, layout, 9, seed=21)
    res = analysis.analyze(path, tail=tail, permutations=64, splits=4, bootstrap=0, group_nulls=False)
    diff = b - a
    t = diff.mean(0) / (diff.std(0, ddof=1) / np.sqrt(len(diff)))
    d = diff.mean(0) / diff.std(0, ddof=1)
    sign = {"two": None, "greater": 1.0, "less": -1.0}[tail]
    st, sd = (np.abs(t), np.abs(d)) if sign is None else (sign * t, sign * d)
    by_name = {blk.block: blk for blk in res.blocks}
    for blk in layout.blocks:
        got = by_name[blk.name]
        assert got.tail == tail
        assert got.n_t_gt3 == int((st[blk.units] > BLOCK_T).sum())
        assert got.max_abs_t == pytest.approx(st[blk.units].max(), rel=1e-9)
        assert got.median_abs_d == pytest.approx(np.median(sd[blk.units]), rel=1e-9)
    tops = [blk.max_abs_t for blk in res.blocks]
    assert tops == sorted(tops, reverse=True)
    out = tmp_path / f"res-{tail}"
    report.write_results(res, out)
    md = (out / "results.md").read_text()
    word = {"two": "max \\|t\\|", "greater": "max t", "less": "min t"}[tail]
    assert f"**Top blocks by {word}:**" in md
    if tail == "less":  # shown as min t, t < -3 and the median d with their own sign
        first = res.blocks[0]
        assert f"min t={-first.max_abs_t:,.2f}" in md and "units at t<-3" in md


@pytest.mark.parametrize("tail,alternative", [("greater", "greater"), ("less", "less")])
def test_one_sided_welch_equals_a_brute_force_label_shuffle_and_scipy(tmp_path, layout, tail, alternative):
    n1, n2 = 4, 5
    p1, a1, b1 = _capture(tmp_path, layout, n1, seed=31, name="w1")
    p2, a2, b2 = _capture(tmp_path, layout, n2, seed=32, name="w2")
    x1, x2 = b1 - a1, b2 - a2
    res = analysis.compare(
        p1, p2, pairing="unmatched", tail=tail, permutations=1000, splits=4, bootstrap=0, group_nulls=False
    )
    assert res.null_exact and res.null_permutations == 126
    np.testing.assert_allclose(res.p, sps.ttest_ind(x1, x2, equal_var=False, alternative=alternative).pvalue, rtol=1e-9)

    rows = np.concatenate([x1, x2])
    sign = 1.0 if tail == "greater" else -1.0
    t_obs, _ = _welch_t_d(x1, x2)
    maxima, max_abs, counts = [], [], []
    for pick in itertools.combinations(range(n1 + n2), n1):
        mask = np.zeros(n1 + n2, bool)
        mask[list(pick)] = True
        t, d = _welch_t_d(rows[mask], rows[~mask])
        maxima.append(np.nanmax(sign * t))
        max_abs.append(np.nanmax(np.abs(t)))
        counts.append([(sign * t > 3).sum(), (sign * t > 5).sum(), (sign * d > 0.8).sum()])
    maxima, max_abs, counts = np.array(maxima), np.array(max_abs), np.array(counts)
    rest = np.delete(maxima, 0)  # labelling 0 is the observed one: counted for every unit
    want = (1 + (rest[None, :] >= sign * t_obs[:, None] * (1 - 1e-10)).sum(axis=1)) / 126
    np.testing.assert_allclose(res.p_maxT, want, rtol=1e-12)
    for k, th in enumerate(res.thresholds):
        assert th.count == counts[0, k]
        assert th.null_p99 == pytest.approx(np.percentile(counts[:, k], 99), abs=1e-12)
        assert th.null_max == counts[:, k].max()

    mne_like = analysis.compare(
        p1, p2, pairing="unmatched", tail=tail, fwer_null="max_abs", permutations=1000, splits=4, bootstrap=0
    )
    rest = np.delete(max_abs, 0)
    want = (1 + (rest[None, :] >= sign * t_obs[:, None] * (1 - 1e-10)).sum(axis=1)) / 126
    np.testing.assert_allclose(mne_like.p_maxT, want, rtol=1e-12)
    out = tmp_path / f"res-{tail}"
    report.write_results(res, out)
    assert "the label-shuffle null counts t > c (or t < −c) per labelling" in (out / "results.md").read_text()


@pytest.mark.parametrize("tail", ["two", "less"])
def test_welch_bootstrap_equals_a_numpy_resample_within_each_sample(tmp_path, layout, tail):
    p1, a1, b1 = _capture(tmp_path, layout, 7, seed=41, name="b1")
    p2, a2, b2 = _capture(tmp_path, layout, 6, seed=42, name="b2")
    x1, x2 = b1 - a1, b2 - a2
    draws = 150
    res = analysis.compare(p1, p2, pairing="unmatched", tail=tail, permutations=50, splits=4, seed=5, bootstrap=draws)
    rec = res.to_json()["bootstrap"]
    counts, idx1, idx2 = welch.bootstrap_counts(x1, x2, ((3.0, 5.0), (0.8,)), draws=draws, seed=5, tail=tail)
    sign = {"two": None, "less": -1.0}[tail]
    want = []
    for r1, r2 in zip(idx1, idx2, strict=True):
        t, d = _welch_t_d(x1[r1], x2[r2])
        tv, dv = (np.abs(t), np.abs(d)) if sign is None else (sign * t, sign * d)
        want.append([(tv > 3).sum(), (tv > 5).sum(), (dv > 0.8).sum()])
    want = np.array(want)
    np.testing.assert_array_equal(counts, want)
    for k, row in enumerate(rec["thresholds"]):
        lo, hi = np.percentile(want[:, k], [2.5, 97.5])
        assert (row["low"], row["high"]) == pytest.approx((lo, hi), abs=1e-9)
        assert row["count"] == res.thresholds[k].count
    assert rec["note"] is None and "within each sample" in rec["method"]


def test_by_contrasts_follow_the_tail_and_the_welch_report_says_so(tmp_path, layout):
    n = 12
    a, b = correlated_pairs(layout, n, planted=PLANTED, seed=51)
    meta = probe_meta(n)
    cloth = ["loose", "fitted"] * 6
    for pair, level in zip(meta["pairs"], cloth, strict=True):
        pair["factors"] = {"clothing": level}
    path = write(tmp_path / "by.safetensors", a, b, layout, **meta)
    diff = b.astype(np.float64) - a.astype(np.float64)
    res = analysis.analyze(path, by="clothing", tail="less", permutations=300, splits=4, bootstrap=0)
    rec = res.to_json()["by"]
    assert rec["contrast_tail"] == "less"
    cl = np.array(cloth)
    x1, x2 = diff[cl == "loose"], diff[cl == "fitted"]
    t, d = _welch_t_d(x1, x2)
    (contrast,) = rec["contrasts"]
    assert [th["count"] for th in contrast["thresholds"]] == [(t < -3).sum(), (t < -5).sum(), (d < -0.8).sum()]
    assert all(th["tail"] == "less" for th in contrast["thresholds"])
    np.testing.assert_allclose(res.extra_columns["by_clothing_loose_t"], t, rtol=1e-9)
    out = tmp_path / "res"
    report.write_results(res, out)
    assert "label-shuffle null, one-sided, first sample's mean B − A below" in (out / "results.md").read_text()
