"""analysis.analyze against independent computations: scipy, a brute-force sign-flip enumeration."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
from scipy import stats as sps

from dense_plantain import analysis, store
from dense_plantain.errors import AnalysisError, CaptureFileError
from synthetic_captures import correlated_pairs, paired_t, probe_meta, small_layout, write

PLANTED = {"joint[1]": 1.6, "single[2]": 1.1}


@pytest.fixture
def an_layout():
    return small_layout()


@pytest.fixture
def an_capture(tmp_path, an_layout):
    """12 pairs: Monte Carlo null (2^11 > 1000 permutations)."""
    a, b = correlated_pairs(an_layout, 12, planted=PLANTED, seed=1)
    return write(tmp_path / "twelve.safetensors", a, b, an_layout, **probe_meta(12))


@pytest.fixture
def an_capture10(tmp_path, an_layout):
    """10 pairs: 512 distinct sign patterns, small enough for the exact null and a brute force."""
    a, b = correlated_pairs(an_layout, 10, planted=PLANTED, seed=2)
    return write(tmp_path / "ten.safetensors", a, b, an_layout, **probe_meta(10))


def _diff(path):
    cap = store.read_capture(path)
    return cap.b.astype(np.float64) - cap.a.astype(np.float64), cap


def _brute_force_sign_flips(diff: np.ndarray):
    """Every sign pattern with the first pair fixed at +1, t recomputed from scratch each time."""
    n, m = diff.shape
    t_counts, d_counts, max_t = [], [], []
    for rest in itertools.product((1.0, -1.0), repeat=n - 1):
        flipped = diff * np.array((1.0,) + rest)[:, None]
        t = paired_t(flipped)
        d = flipped.mean(axis=0) / flipped.std(axis=0, ddof=1)
        t_counts.append([(np.abs(t) > 3).sum(), (np.abs(t) > 5).sum()])
        d_counts.append((np.abs(d) > 0.8).sum())
        max_t.append(np.abs(t).max())
    return np.array(t_counts), np.array(d_counts), np.array(max_t)


def test_per_unit_t_d_p_match_scipy(an_capture):
    result = analysis.analyze(an_capture, permutations=200, splits=20)
    diff, cap = _diff(an_capture)
    ref = sps.ttest_rel(cap.b.astype(np.float64), cap.a.astype(np.float64), axis=0)
    np.testing.assert_allclose(result.t, ref.statistic, rtol=1e-9)
    np.testing.assert_allclose(result.p, ref.pvalue, rtol=1e-7)
    np.testing.assert_allclose(result.d, diff.mean(0) / diff.std(0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(result.mean_diff, diff.mean(0), rtol=1e-9)


def test_counts_and_max_t_match_scipy(an_capture):
    record = analysis.analyze(an_capture, permutations=200, splits=20).to_json()
    diff, cap = _diff(an_capture)
    t = sps.ttest_rel(cap.b.astype(np.float64), cap.a.astype(np.float64), axis=0).statistic
    d = diff.mean(0) / diff.std(0, ddof=1)
    expected = {
        ("t", 3.0): (np.abs(t) > 3).sum(),
        ("t", 5.0): (np.abs(t) > 5).sum(),
        ("d", 0.8): (np.abs(d) > 0.8).sum(),
    }
    got = {(row["metric"], row["threshold"]): row["count"] for row in record["thresholds"]}
    assert got == {k: int(v) for k, v in expected.items()}
    for row in record["thresholds"]:
        assert row["fraction"] == pytest.approx(row["count"] / t.size)
    assert record["max_abs_t"] == pytest.approx(np.abs(t).max(), rel=1e-9)
    assert record["n_pairs"] == 12 and record["n_units"] == t.size
    # The planted effects are there: without them the count would sit near zero.
    assert got[("t", 3.0)] >= 8


def test_top_blocks_match_a_loop_over_blocks(an_capture, an_layout):
    record = analysis.analyze(an_capture, permutations=200, splits=20).to_json()
    diff, cap = _diff(an_capture)
    t = sps.ttest_rel(cap.b.astype(np.float64), cap.a.astype(np.float64), axis=0).statistic
    d = diff.mean(0) / diff.std(0, ddof=1)
    names = an_layout.labels()["block"]
    expected = []
    for block in dict.fromkeys(names):
        sel = names == block
        expected.append(
            (block, np.abs(t[sel]).max(), int((np.abs(t[sel]) > 3).sum()), int(sel.sum()), np.median(np.abs(d[sel])))
        )
    expected.sort(key=lambda row: -row[1])
    got = record["top_blocks"]
    assert [row["block"] for row in got] == [row[0] for row in expected]
    for row, (_block, max_t, n3, n_units, med_d) in zip(got, expected):
        assert row["max_abs_t"] == pytest.approx(max_t, rel=1e-9)
        assert (row["n_t_gt3"], row["n_units"]) == (n3, n_units)
        assert row["median_abs_d"] == pytest.approx(med_d, rel=1e-9)
    assert {row["block"] for row in got[:2]} == set(PLANTED)


def test_exact_null_p99_and_fwer_match_brute_force(an_capture10):
    result = analysis.analyze(an_capture10, permutations=1000, splits=10, group_nulls=False)
    record = result.to_json()
    assert record["null"]["mode"] == "exact" and record["null"]["n_permutations"] == 2**9
    diff, _ = _diff(an_capture10)
    t_counts, d_counts, max_t = _brute_force_sign_flips(diff)
    columns = [t_counts[:, 0], t_counts[:, 1], d_counts]
    for row, counts in zip(record["thresholds"], columns):
        assert row["null_p99"] == pytest.approx(np.percentile(counts, 99))
        assert row["null_max"] == counts.max()
        if row["null_p99"] > 0:
            assert row["ratio"] == pytest.approx(row["count"] / np.percentile(counts, 99))
    # Exact max-statistic p: k / 2^(n-1), k = patterns (the observed one included) whose max |t|
    # is at least the unit's |t|, ties within a relative 1e-10. Compared as integers k, so an
    # off-by-one in the count (one pattern, 1 / 512) fails.
    n_patterns = 2 ** (diff.shape[0] - 1)
    assert max_t.shape == (n_patterns,)
    abs_t = np.abs(paired_t(diff))
    expected_k = (max_t[None, :] >= abs_t[:, None] * (1 - 1e-10)).sum(axis=1)
    assert expected_k.min() >= 1  # the identity pattern always counts
    got_k = np.asarray(result.p_maxT, dtype=np.float64) * n_patterns
    np.testing.assert_array_equal(got_k, np.round(got_k))  # p is a multiple of 1 / 2^(n-1)
    np.testing.assert_array_equal(np.round(got_k).astype(np.int64), expected_k)


def test_zero_p99_gives_no_ratio(tmp_path):
    """One unit with a huge, steady effect next to two noise units: only the observed sign
    pattern pushes a unit past |t| > 5, so the null p99 of that count is 0 and its max is 1."""
    n = 10
    rng = np.random.default_rng(5)
    a = rng.normal(10, 1, size=(n, 3)).astype(np.float32)
    b = (a + rng.normal(0, 1, size=a.shape)).astype(np.float32)
    b[:, 0] = a[:, 0] + 5.0 + rng.normal(0, 0.05, size=n)
    path = store.write_capture(tmp_path / "steady.safetensors", a, b, {"blocks": [{"name": "only", "n_units": 3}]})
    record = analysis.analyze(path, permutations=1000, splits=10).to_json()
    diff, _ = _diff(path)
    t_counts, _, _ = _brute_force_sign_flips(diff)
    assert np.percentile(t_counts[:, 1], 99) == 0  # the premise, checked independently
    row = next(r for r in record["thresholds"] if r["metric"] == "t" and r["threshold"] == 5.0)
    assert row["count"] == 1
    assert row["null_p99"] == 0 and row["ratio"] is None
    assert row["null_max"] == t_counts[:, 1].max() >= 1
    json.dumps(record, allow_nan=False)  # no Infinity or NaN slipped in


def test_q_values_match_scipy_bh(an_capture):
    result = analysis.analyze(an_capture, permutations=100, splits=10)
    _, cap = _diff(an_capture)
    p = sps.ttest_rel(cap.b.astype(np.float64), cap.a.astype(np.float64), axis=0).pvalue
    np.testing.assert_allclose(result.q, sps.false_discovery_control(p, method="bh"), rtol=1e-9)


def test_split_half_summary_matches_recomputed_halves(an_capture):
    result = analysis.analyze(an_capture, permutations=100, splits=30, seed=4)
    diff, _ = _diff(an_capture)
    assignments = result.split_half.assignments
    assert assignments.shape == (30, 12)
    assert set(assignments.sum(axis=1)) <= {6}
    r = [sps.pearsonr(paired_t(diff[half]), paired_t(diff[~half])).statistic for half in assignments]
    sh = result.to_json()["split_half"]
    assert sh["n_splits"] == 30
    assert sh["median"] == pytest.approx(np.median(r), rel=1e-6)
    assert sh["q25"] == pytest.approx(np.percentile(r, 25), rel=1e-6)
    assert sh["q75"] == pytest.approx(np.percentile(r, 75), rel=1e-6)


def test_group_tables_count_attention_mlp_and_regions(an_capture10, an_layout):
    result = analysis.analyze(an_capture10, permutations=1000, splits=10)
    labels = an_layout.labels()
    diff, _ = _diff(an_capture10)
    t = paired_t(diff)
    groups = {(g["axis"], g["group"]): g for g in result.to_json()["groups"]}
    assert set(groups) == {("kind", "attention"), ("kind", "mlp"), ("region", "image"), ("region", "all")}
    for (axis, name), g in groups.items():
        sel = labels[axis] == name
        assert g["n_units"] == int(sel.sum())
        row = g["thresholds"][0]
        assert row["count"] == int((np.abs(t[sel]) > 3).sum())
        # Each group's null is its own: the brute-force count over just its units.
        t_counts, _, _ = _brute_force_sign_flips(diff[:, sel])
        assert row["null_p99"] == pytest.approx(np.percentile(t_counts[:, 0], 99))


def test_foreign_capture_with_only_blocks_gets_the_overall_table(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 10)).astype(np.float32)
    b = (a + rng.normal(size=a.shape) + np.r_[np.full(4, 2.0), np.zeros(6)]).astype(np.float32)
    path = store.write_capture(
        tmp_path / "foreign.safetensors",
        a,
        b,
        {"blocks": [{"name": "early", "n_units": 4}, {"name": "late", "n_units": 6}]},
    )
    record = analysis.analyze(path, permutations=100, splits=10).to_json()
    assert record["groups"] == []
    assert [row["block"] for row in record["top_blocks"]][0] == "early"
    assert record["layout"]["labelled"] is False
    assert record["conditions"] == {"probe": "foreign", "a": "A", "b": "B"}


def test_record_has_settings_versions_and_provenance(an_capture):
    record = analysis.analyze(an_capture, permutations=150, seed=7, splits=12).to_json()
    assert record["settings"]["permutations"] == 150 and record["seed"] == 7
    assert record["settings"]["splits"] == 12 and record["split_half"]["n_splits"] == 12
    assert record["null"] == {
        **record["null"],
        "method": "sign-flip",
        "mode": "monte-carlo",
        "n_permutations": 150,
        "seed": 7,
    }
    assert {"dense_plantain", "numpy", "scipy", "python"} <= set(record["versions"])
    (source,) = record["sources"]
    assert source["sha256"] == hashlib.sha256(an_capture.read_bytes()).hexdigest()
    meta = source["metadata"]
    assert meta["probe"]["label_b"] == "expressive pose" and len(meta["pairs"]) == 12
    assert "readouts" not in meta  # per-unit detail stays in units.csv / the layout summary
    assert record["conditions"] == {"probe": "synthetic-pose", "a": "T-pose", "b": "expressive pose"}


def test_forced_exact_and_forced_monte_carlo(an_capture10):
    exact = analysis.analyze(an_capture10, permutations=10, exact=True, splits=5, group_nulls=False)
    assert exact.null_exact and exact.null_permutations == 2**9
    mc = analysis.analyze(an_capture10, permutations=64, exact=False, splits=5, group_nulls=False)
    assert not mc.null_exact and mc.null_permutations == 64
    # Monte Carlo max-statistic p can never be below 1 / (P + 1).
    assert mc.p_maxT.min() >= 1 / 65 - 1e-12


def test_progress_reaches_the_total_over_all_null_runs(an_capture10):
    calls = []
    analysis.analyze(
        an_capture10, permutations=1000, splits=5, progress=lambda done, total: calls.append((done, total))
    )
    totals = {total for _, total in calls}
    # One sweep counts the full null and every group's (attention, MLP, image, pooled) together.
    assert totals == {2**9}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 2**9  # the run reported its end


def test_too_few_pairs_is_an_analysis_error(tmp_path, an_layout):
    a, b = correlated_pairs(an_layout, 2)
    path = write(tmp_path / "two.safetensors", a, b, an_layout)
    with pytest.raises(AnalysisError, match=r"two\.safetensors.*only 2 pair"):
        analysis.analyze(path)


def test_nan_names_pair_and_unit(tmp_path, an_layout):
    a, b = correlated_pairs(an_layout, 5)
    b[3, 17] = np.nan
    path = write(tmp_path / "nan.safetensors", a, b, an_layout, **probe_meta(5))
    with pytest.raises(CaptureFileError, match=r"nan\.safetensors.*pair-03.*unit 17"):
        analysis.analyze(path)


def test_three_pairs_run_without_split_half(tmp_path, an_layout):
    a, b = correlated_pairs(an_layout, 3, planted=PLANTED)
    path = write(tmp_path / "three.safetensors", a, b, an_layout)
    record = analysis.analyze(path).to_json()
    assert record["split_half"]["median"] is None and "4 pairs" in record["split_half"]["note"]
    assert record["null"]["mode"] == "exact" and record["null"]["n_permutations"] == 4


def test_bh_q_handles_nan_and_matches_scipy():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=50) ** 3
    q = analysis.bh_q(np.r_[p, np.nan])
    np.testing.assert_allclose(q[:-1], sps.false_discovery_control(p), rtol=1e-12)
    assert np.isnan(q[-1])


def test_threshold_counts_agree_with_the_null_identity_at_exact_ties(tmp_path):
    """|t| = 3 exactly (5 of 10 differences equal, 5 zero): the observed count must be the
    exact null's identity row (the observed data), whatever side of 3 two-pass t lands on."""
    n, m = 10, 64
    rng = np.random.default_rng(8)
    a = np.zeros((n, m), dtype=np.float32)
    b = np.zeros((n, m), dtype=np.float32)
    for u in range(m):
        b[rng.choice(n, 5, replace=False), u] = rng.uniform(0.01, 10)
    path = store.write_capture(tmp_path / "ties.safetensors", a, b, {"blocks": [{"name": "only", "n_units": m}]})
    result = analysis.analyze(path, permutations=1000, splits=10, group_nulls=False)
    assert result.null_exact
    diff, _ = _diff(path)
    row = next(r for r in result.thresholds if r.metric == "t" and r.threshold == 3.0)
    from dense_plantain.analysis import designs, driver

    opts = driver.null_options(analysis.inputs.settings(1000, None, 0, 10, False))
    null = designs.PairedDesign(diff).null(opts, [], None)
    assert row.count == null.observed(0)  # the identity pattern, through the null's own route
    t_counts, _, _ = _brute_force_sign_flips(diff)
    assert row.null_histogram.sum() == t_counts.shape[0] == 2 ** (n - 1)


# --- golden numbers: the analysis before the design/driver refactor ---------------------------


def _same_numbers(got, want, where: str) -> None:
    """Every number of ``want`` (the fixture) in ``got``: ints and strings equal, floats to 1e-12.

    Keys that the fixture lacks (added to results.json later) are not compared."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        for key, value in want.items():
            assert key in got, f"{where}.{key} missing"
            _same_numbers(got[key], value, f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _same_numbers(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, str):
        assert got is not None, where
        if np.isnan(want):
            assert np.isnan(got), where
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-300), where
    else:
        assert got == want, where


def test_golden_results(tmp_path):
    """results.json numbers and per-unit arrays equal those saved by the pre-refactor code (659d1eb)."""
    import golden

    want = json.loads(golden.FIXTURE.read_text(encoding="utf-8"))
    got = golden.golden_records(tmp_path)
    assert set(got) == set(want)
    for name in want:
        if name != "contrast_welch":
            # Sign-flip nulls stream fixed-size tallies now: per-pattern max |t| values are not
            # kept, so their percentiles are not reported (every other number is unchanged).
            for key in ("max_abs_t_p95", "max_abs_t_p99"):
                want[name]["null"].pop(key)
                assert got[name]["null"][key] is None
        _same_numbers(got[name], want[name], name)


# --- hostile capture files (issue 10) ---------------------------------------------------------


def _raw_capture(path, a, b, meta):
    from safetensors.numpy import save_file

    save_file({"a": a, "b": b}, str(path), metadata={store.META_KEY: json.dumps(meta)})
    return path


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.float16])
def test_wrong_dtypes_are_refused_naming_file_and_tensor(tmp_path, an_layout, dtype):
    a, b = correlated_pairs(an_layout, 5, seed=3)
    meta = {**an_layout.to_metadata(), "format": 1}
    path = _raw_capture(tmp_path / "bad.safetensors", a, b.astype(dtype), meta)
    with pytest.raises(CaptureFileError) as err:
        store.read_capture(path)
    text = str(err.value)
    assert str(path) in text and "'b'" in text and np.dtype(dtype).name in text


def test_float64_is_read_as_is(tmp_path, an_layout):
    a, b = correlated_pairs(an_layout, 6, seed=4)
    a64 = a.astype(np.float64) + 1e-9  # not representable in float32
    meta = {**an_layout.to_metadata(), "format": 1}
    path = _raw_capture(tmp_path / "f64.safetensors", a64, b.astype(np.float64), meta)
    cap = store.read_capture(path)
    assert cap.a.dtype == np.float64 and np.array_equal(cap.a, a64)
    result = analysis.analyze(path, permutations=20, splits=4)
    np.testing.assert_allclose(result.t, paired_t(b.astype(np.float64) - a64), rtol=1e-10)


@pytest.mark.parametrize("value", ["false", "true", 0, None])
def test_partial_must_be_a_boolean(tmp_path, an_layout, value):
    a, b = correlated_pairs(an_layout, 5, seed=3)
    meta = {**an_layout.to_metadata(), "format": 1, "partial": value}
    path = _raw_capture(tmp_path / "p.safetensors", a, b, meta)
    with pytest.raises(CaptureFileError, match="'partial'.*true or false"):
        store.read_capture(path)


def test_infinite_t_is_kept_in_json_and_shown(tmp_path, an_layout):
    from dense_plantain.report import cells, records, tables

    a, b = correlated_pairs(an_layout, 8, seed=5)
    a, b = a.copy(), b.copy()
    j = an_layout.block("single[1]").start + 3
    a[:, j] = np.float32(2.0)  # exactly representable: a constant non-zero difference, t = +inf by definition
    b[:, j] = np.float32(2.5)
    path = write(tmp_path / "inf.safetensors", a, b, an_layout, **probe_meta(8))
    result = analysis.analyze(path, permutations=50, splits=4)
    diff = b.astype(np.float64) - a.astype(np.float64)
    assert np.ptp(diff[:, j]) == 0 and diff[0, j] > 0  # the premise, computed independently
    rec = json.loads(records.results_json_text(result.to_json()))
    name = an_layout.unit_names()[j]
    assert rec["max_abs_t"] == "inf" and rec["max_abs_t_unit"] == name
    top = rec["top_blocks"][0]
    assert top["block"] == "single[1]" and top["max_abs_t"] == "inf" and top["max_unit"] == name
    assert analysis.records.read_number(rec["max_abs_t"]) == float("inf")
    md = tables.results_markdown(rec)
    assert f"| ∞ | {name}, max-statistic p" in md
    assert f"max\\|t\\|=∞ ({name}" in md
    assert cells.number("-inf") == "−∞" and cells.number(None) == "—"


# --- matched compare by pair id, shared B prompts ----------------------------------------------


def test_matched_compare_pairs_by_id_not_position(tmp_path, an_layout):
    a1, b1 = correlated_pairs(an_layout, 8, planted=PLANTED, seed=6)
    a2, b2 = correlated_pairs(an_layout, 8, seed=7)
    ids = [f"id{i}" for i in range(8)]
    p1 = write(tmp_path / "one.safetensors", a1, b1, an_layout, **probe_meta(8, ids=ids))
    order = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    p2 = write(
        tmp_path / "two.safetensors", a2[order], b2[order], an_layout, **probe_meta(8, ids=[ids[k] for k in order])
    )
    result = analysis.compare(p1, p2, pairing="matched", permutations=30, splits=4)
    expected = paired_t((b1.astype(np.float64) - a1) - (b2.astype(np.float64) - a2))
    np.testing.assert_allclose(result.t, expected, rtol=1e-9)
    assert result.design == "contrast-paired"
    auto = analysis.compare(p1, p2, permutations=30, splits=4)  # same ids, other order: still matched
    assert auto.design == "contrast-paired"


def test_matched_compare_refuses_different_ids(tmp_path, an_layout):
    a1, b1 = correlated_pairs(an_layout, 6, seed=6)
    p1 = write(tmp_path / "one.safetensors", a1, b1, an_layout, **probe_meta(6))
    ids = [f"pair-{i:02d}" for i in range(5)] + ["other"]
    p2 = write(tmp_path / "two.safetensors", a1, b1, an_layout, **probe_meta(6, ids=ids))
    with pytest.raises(AnalysisError, match=r"ids differ.*'pair-05'.*'other'"):
        analysis.compare(p1, p2, pairing="matched", permutations=10, splits=4)


def test_shared_b_prompts_are_named(tmp_path, an_layout):
    from dense_plantain.report import cells

    a1, b1 = correlated_pairs(an_layout, 6, seed=8)
    a2, _ = correlated_pairs(an_layout, 6, seed=9)
    meta1 = probe_meta(6, name="one")
    meta2 = probe_meta(6, name="two")
    for p in meta2["pairs"]:
        p["a"] = "a different A prompt " + p["id"]  # A differs, B texts are the same as capture 1's
    p1 = write(tmp_path / "one.safetensors", a1, b1, an_layout, **meta1)
    p2 = write(tmp_path / "two.safetensors", a2, b1, an_layout, **meta2)
    result = analysis.compare(p1, p2, permutations=20, splits=4)
    # (B1 - A1) - (B2 - A2) with B1 = B2 is A2 - A1, unit for unit.
    np.testing.assert_allclose(result.t, paired_t(a2.astype(np.float64) - a1), rtol=1e-9)
    rec = result.to_json()
    assert rec["conditions"]["shared_b"] is True
    assert "is A2 − A1" in cells.title(rec)
    other = write(tmp_path / "three.safetensors", a2, b1, an_layout, **probe_meta(6, name="three"))
    meta_b = probe_meta(6)
    meta_b["pairs"][0]["b"] = "another B"
    four = write(tmp_path / "four.safetensors", a1, b1, an_layout, **meta_b)
    assert "shared_b" not in analysis.compare(other, four, permutations=20, splits=4).to_json()["conditions"]


# --- the null's summaries and the design protocol -----------------------------------------------


def test_null_summaries_match_the_null_counts(an_capture):
    result = analysis.analyze(an_capture, permutations=300, splits=4)
    for row in result.thresholds + [r for g in result.groups for r in g.thresholds]:
        hist = np.asarray(row.null_histogram)
        counts = np.repeat(np.arange(hist.size), hist)  # the per-permutation counts, in order
        assert counts.size == result.null_permutations
        assert row.null_p99 == np.percentile(counts, 99)
        assert row.null_max == counts.max() and row.null_median == np.median(counts)
        assert row.null_n_above_p99 == int((counts > row.null_p99).sum())


def test_both_nulls_satisfy_the_protocol(an_capture, tmp_path, an_layout):
    from dense_plantain import nulls
    from dense_plantain.analysis import designs, driver

    diff = _diff(an_capture)[0]
    opts = driver.null_options(analysis.inputs.settings(100, None, 0, 4, True))
    for design in (designs.PairedDesign(diff), designs.WelchDesign(diff[:6], diff[6:])):
        null = design.null(opts, [], None)
        assert isinstance(null, nulls.NullDistribution)
        assert null.n_permutations == 100 and not null.exact and not null.includes_identity


def test_fwer_rule_exact_counts_the_identity_once():
    from dense_plantain import nulls

    null_max = np.array([5.0, 1.0, 6.0, 4.999999999999])  # row 0: the identity
    p = nulls.fwer_p(null_max, np.array([5.0, 0.5, np.nan]), exact=True, n_permutations=4, identity_row=0)
    # 5.0: identity + 6.0 + 4.999999999999 (within the 1e-10 tie rule) = 3 of 4.
    np.testing.assert_allclose(p[:2], [3 / 4, 1.0])
    assert np.isnan(p[2])
    mc = nulls.fwer_p(null_max, np.array([5.0]), exact=False, n_permutations=4, identity_row=None)
    np.testing.assert_allclose(mc, [(1 + 3) / 5])


def test_default_permutations_are_10000():
    import inspect

    from dense_plantain.cli import analyze as analyze_cmd

    assert analysis.DEFAULT_PERMUTATIONS == 10_000
    assert inspect.signature(analysis.analyze).parameters["permutations"].default == 10_000
    option = next(p for p in analyze_cmd.params if p.name == "permutations")
    assert option.default == analysis.DEFAULT_PERMUTATIONS


def test_welch_raises_the_same_input_error_as_the_paired_path():
    from dense_plantain import stats, welch

    with pytest.raises(stats.StatsInputError, match="at least 2 rows per group"):
        welch.welch(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(stats.StatsInputError):
        stats.paired_diff(np.zeros((2, 3)), np.zeros((2, 3)))
