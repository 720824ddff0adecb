"""compare: the contrast of contrasts, matched (paired) and unmatched (Welch + label shuffles)."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps

from dense_plantain import analysis, store, units, welch
from dense_plantain.cli import main
from dense_plantain.errors import AnalysisError
from synthetic_captures import RESULTS_FILES, SMALL_SHAPE, correlated_pairs, probe_meta, small_layout, write


@pytest.fixture
def cmp_layout():
    return small_layout()


@pytest.fixture
def cmp_matched(tmp_path, cmp_layout):
    """Two probes over the same 12 subjects: T-pose vs expressive, A-pose vs expressive."""
    ids = [f"subject-{i}" for i in range(12)]
    a1, b1 = correlated_pairs(cmp_layout, 12, planted={"joint[1]": 1.5, "single[0]": 0.8}, seed=11)
    a2, b2 = correlated_pairs(cmp_layout, 12, planted={"single[0]": 0.8}, seed=12)
    p1 = write(tmp_path / "tpose.safetensors", a1, b1, cmp_layout, **probe_meta(12, ids=ids, name="tpose"))
    p2 = write(
        tmp_path / "apose.safetensors", a2, b2, cmp_layout, **probe_meta(12, ids=ids, name="apose", label_a="A-pose")
    )
    return p1, p2


@pytest.fixture
def cmp_unmatched(tmp_path, cmp_layout):
    """Different subjects and different numbers of pairs."""
    a1, b1 = correlated_pairs(cmp_layout, 9, planted={"joint[0]": 3.0}, seed=21)
    a2, b2 = correlated_pairs(cmp_layout, 7, seed=22)
    p1 = write(tmp_path / "one.safetensors", a1, b1, cmp_layout, **probe_meta(9, name="one"))
    p2 = write(
        tmp_path / "two.safetensors",
        a2,
        b2,
        cmp_layout,
        **probe_meta(7, ids=[f"other-{i}" for i in range(7)], name="two"),
    )
    return p1, p2


def _diffs(*paths):
    out = []
    for path in paths:
        cap = store.read_capture(path)
        out.append(cap.b.astype(np.float64) - cap.a.astype(np.float64))
    return out


def _welch_t(x1, x2):
    return sps.ttest_ind(x1, x2, equal_var=False, axis=0).statistic


def test_matched_is_a_paired_t_of_the_difference_of_differences(cmp_matched):
    result = analysis.compare(*cmp_matched, permutations=200, splits=10)
    assert result.design == "contrast-paired" and result.n_pairs == 12
    d1, d2 = _diffs(*cmp_matched)
    ref = sps.ttest_rel(d1, d2, axis=0)
    np.testing.assert_allclose(result.t, ref.statistic, rtol=1e-9)
    np.testing.assert_allclose(result.p, ref.pvalue, rtol=1e-7)
    dd = d1 - d2
    np.testing.assert_allclose(result.d, dd.mean(0) / dd.std(0, ddof=1), rtol=1e-9)
    record = result.to_json()
    assert record["top_blocks"][0]["block"] == "joint[1]"  # the effect only the first probe has
    assert record["null"]["method"] == "sign-flip"
    assert [s["role"] for s in record["sources"]] == ["capture_1", "capture_2"]


def test_unmatched_is_welch_on_the_two_samples_of_differences(cmp_unmatched):
    result = analysis.compare(*cmp_unmatched, permutations=300, splits=10)
    assert result.design == "contrast-welch" and result.group_sizes == (9, 7)
    d1, d2 = _diffs(*cmp_unmatched)
    ref = sps.ttest_ind(d1, d2, equal_var=False, axis=0)
    np.testing.assert_allclose(result.t, ref.statistic, rtol=1e-9)
    np.testing.assert_allclose(result.p, ref.pvalue, rtol=1e-7)
    pooled = np.sqrt((8 * d1.var(0, ddof=1) + 6 * d2.var(0, ddof=1)) / 14)
    np.testing.assert_allclose(result.d, (d1.mean(0) - d2.mean(0)) / pooled, rtol=1e-9)
    np.testing.assert_allclose(result.q, sps.false_discovery_control(ref.pvalue), rtol=1e-9)
    record = result.to_json()
    assert record["null"]["method"] == "label-shuffle" and record["null"]["mode"] == "monte-carlo"
    assert record["top_blocks"][0]["block"] == "joint[0]"


def _brute_force_shuffles(x1, x2, groups):
    """For each choice of group-1 rows: counts over the thresholds and max |t|, via scipy."""
    rows = np.concatenate([x1, x2])
    t_counts, d_counts, max_t = [], [], []
    for chosen in groups:
        mask = np.zeros(len(rows), dtype=bool)
        mask[list(chosen)] = True
        g1, g2 = rows[mask], rows[~mask]
        t = _welch_t(g1, g2)
        n1, n2 = len(g1), len(g2)
        pooled = np.sqrt(((n1 - 1) * g1.var(0, ddof=1) + (n2 - 1) * g2.var(0, ddof=1)) / (n1 + n2 - 2))
        d = (g1.mean(0) - g2.mean(0)) / pooled
        t_counts.append([(np.abs(t) > 3).sum(), (np.abs(t) > 5).sum()])
        d_counts.append([(np.abs(d) > 0.8).sum()])
        max_t.append(np.abs(t).max())
    return np.array(t_counts), np.array(d_counts), np.array(max_t)


@pytest.fixture
def cmp_tiny():
    rng = np.random.default_rng(3)
    x1 = rng.normal(size=(5, 6)) + np.r_[2.5, 2.5, 0, 0, 0, 0]
    x2 = rng.normal(size=(4, 6))
    return x1, x2


def test_exact_label_shuffle_null_matches_a_loop_over_all_labellings(cmp_tiny):
    x1, x2 = cmp_tiny
    null = welch.label_shuffle_null(x1, x2, exact=True)
    assert null.exact and null.n_permutations == comb(9, 5) == 126
    t_counts, d_counts, max_t = _brute_force_shuffles(x1, x2, itertools.combinations(range(9), 5))
    np.testing.assert_array_equal(null.t_counts, t_counts)
    np.testing.assert_array_equal(null.d_counts, d_counts)
    np.testing.assert_allclose(null.max_abs_t, max_t, rtol=1e-9)
    # Exact max-statistic p: share of all labellings (the observed one included) at least as extreme.
    abs_t = np.abs(_welch_t(x1, x2))
    expected = (max_t[None, :] >= abs_t[:, None] - 1e-9).mean(axis=1)
    np.testing.assert_allclose(welch.fwer_p(abs_t, null), expected)


def test_monte_carlo_label_shuffles_follow_the_documented_draws(cmp_tiny, monkeypatch):
    x1, x2 = cmp_tiny
    rng = np.random.default_rng(9)
    draws = np.argsort(rng.random((40, 9)), axis=1, kind="stable")[:, :5]
    t_counts, _, max_t = _brute_force_shuffles(x1, x2, draws)
    null = welch.label_shuffle_null(x1, x2, permutations=40, exact=False, seed=9)
    np.testing.assert_array_equal(null.t_counts, t_counts)
    np.testing.assert_allclose(null.max_abs_t, max_t, rtol=1e-9)
    # Chunking changes memory, not the answer.
    monkeypatch.setattr(welch, "_CHUNK_ELEMENTS", 6 * 3)
    again = welch.label_shuffle_null(x1, x2, permutations=40, exact=False, seed=9)
    np.testing.assert_array_equal(again.t_counts, null.t_counts)
    abs_t = np.abs(_welch_t(x1, x2))
    expected = (1 + (max_t[None, :] >= abs_t[:, None] - 1e-9).sum(axis=1)) / 41
    np.testing.assert_allclose(welch.fwer_p(abs_t, null), expected)


def test_compare_exact_welch_null_p99_matches_brute_force(tmp_path):
    """Through compare: 4 + 4 pairs give 70 labellings, fewer than --permutations: exact."""
    blocks = {"blocks": [{"name": "b0", "n_units": 3}, {"name": "b1", "n_units": 3}]}
    rng = np.random.default_rng(4)
    a1, a2 = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    b1 = a1 + rng.normal(size=(4, 6)) + np.r_[3, 3, 3, 0, 0, 0]
    b2 = a2 + rng.normal(size=(4, 6))
    p1 = store.write_capture(tmp_path / "x.safetensors", a1, b1, blocks)
    p2 = store.write_capture(tmp_path / "y.safetensors", a2, b2, blocks)
    record = analysis.compare(p1, p2, permutations=1000, splits=10).to_json()
    assert record["design"] == "contrast-welch"  # no pair ids: nothing says the pairs match
    assert record["null"]["mode"] == "exact" and record["null"]["n_permutations"] == 70
    d1, d2 = _diffs(p1, p2)
    t_counts, d_counts, _ = _brute_force_shuffles(d1, d2, itertools.combinations(range(8), 4))
    for row, counts in zip(record["thresholds"], [t_counts[:, 0], t_counts[:, 1], d_counts[:, 0]]):
        assert row["null_p99"] == pytest.approx(np.percentile(counts, 99))
    assert record["split_half"]["median"] is not None


def test_pairing_can_be_forced(cmp_matched, cmp_unmatched):
    forced = analysis.compare(*cmp_matched, pairing="unmatched", permutations=50, splits=5)
    assert forced.design == "contrast-welch"
    with pytest.raises(AnalysisError, match=r"one\.safetensors has 9 pairs.*two\.safetensors has 7"):
        analysis.compare(*cmp_unmatched, pairing="matched")


def test_different_layouts_are_refused_naming_both_files(tmp_path, cmp_matched):
    other = units.build_layout(units.ModelShape(**{**SMALL_SHAPE.__dict__, "n_single": 2}))
    a, b = correlated_pairs(other, 12)
    path = write(tmp_path / "shorter.safetensors", a, b, other)
    with pytest.raises(AnalysisError, match=r"do not share a unit layout.*tpose\.safetensors.*shorter\.safetensors"):
        analysis.compare(cmp_matched[0], path)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["compare", str(cmp_matched[0]), str(path), "--out", str(out)])
    assert res.exit_code != 0
    assert "shorter.safetensors" in res.output and "layout" in res.output
    assert not out.exists()


def test_compare_cli_writes_the_results_folder(tmp_path, cmp_matched):
    out = tmp_path / "contrast"
    res = CliRunner().invoke(
        main, ["compare", *map(str, cmp_matched), "--out", str(out), "--permutations", "100", "--splits", "10"]
    )
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == RESULTS_FILES
    md = (out / "results.md").read_text()
    assert "(expressive pose − T-pose) − (expressive pose − A-pose)" in md


# --- captures made with different models or settings ------------------------------------------


@pytest.fixture
def cmp_other_settings(tmp_path, cmp_layout):
    """The T-pose probe's subjects again, captured at another size and seed with another model."""
    ids = [f"subject-{i}" for i in range(12)]
    a, b = correlated_pairs(cmp_layout, 12, seed=13)
    meta = probe_meta(12, ids=ids, name="apose", label_a="A-pose")
    meta["settings"] = {**meta["settings"], "height": 1024, "seed": 7}
    meta["model"] = {"id": "some/other-model"}
    return write(tmp_path / "other.safetensors", a, b, cmp_layout, **meta)


def test_different_settings_are_refused_naming_files_keys_and_values(tmp_path, cmp_matched, cmp_other_settings):
    with pytest.raises(AnalysisError) as err:
        analysis.compare(cmp_matched[0], cmp_other_settings, permutations=50, splits=5)
    message = str(err.value)
    for part in (
        "tpose.safetensors",
        "other.safetensors",
        "settings.height: 64 vs 1024",
        "settings.seed: 0 vs 7",
        "model.id: 'black-forest-labs/FLUX.2-klein-base-4B' vs 'some/other-model'",
        "--allow-different-settings",
    ):
        assert part in message
    assert "width" not in message and "dtype" not in message  # only the keys that differ
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["compare", str(cmp_matched[0]), str(cmp_other_settings), "--out", str(out)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "other.safetensors" in res.output and "settings.height" in res.output
    assert not out.exists()


def test_different_settings_allowed_are_recorded_and_flagged(tmp_path, cmp_matched, cmp_other_settings):
    import json

    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        [
            "compare",
            str(cmp_matched[0]),
            str(cmp_other_settings),
            "--out",
            str(out),
            "--permutations",
            "50",
            "--splits",
            "5",
            "--allow-different-settings",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    record = json.loads((out / "results.json").read_text())
    assert record["settings"]["allow_different_settings"] is True
    check = record["conditions"]["settings_check"]
    assert check["status"] == "different"
    assert {d["key"]: (d["capture_1"], d["capture_2"]) for d in check["differences"]} == {
        "settings.height": (64, 1024),
        "settings.seed": (0, 7),
        "model.id": ("black-forest-labs/FLUX.2-klein-base-4B", "some/other-model"),
    }
    md = (out / "results.md").read_text()
    assert "Warning: the captures differ in model or settings" in md and "settings.height 64 vs 1024" in md
    readme = tmp_path / "README.md"
    assert CliRunner().invoke(main, ["report", str(out), "--out", str(readme)]).exit_code == 0
    card = readme.read_text()
    assert "Warning: the captures differ in model or settings" in card and "--allow-different-settings" in card


def test_same_settings_are_recorded_without_a_warning(cmp_matched):
    record = analysis.compare(*cmp_matched, permutations=50, splits=5).to_json()
    assert record["settings"]["allow_different_settings"] is False
    assert record["conditions"]["settings_check"] == {"status": "same", "differences": []}


def test_foreign_captures_without_provenance_are_compared_with_a_note(tmp_path, cmp_layout, cmp_matched):
    a, b = correlated_pairs(cmp_layout, 12, seed=14)
    foreign = write(tmp_path / "foreign.safetensors", a, b, cmp_layout)  # no model, no settings
    record = analysis.compare(cmp_matched[0], foreign, permutations=50, splits=5).to_json()
    check = record["conditions"]["settings_check"]
    assert check["status"] == "not recorded" and check["differences"] == []
    assert "foreign.safetensors" in check["note"] and "tpose" not in check["note"]


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_negative_seed_is_refused_by_click(tmp_path, cmp_matched, command):
    captures = [str(cmp_matched[0])] if command == "analyze" else list(map(str, cmp_matched))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [command, *captures, "--out", str(out), "--seed", "-1"])
    assert res.exit_code == 2  # click's usage error
    assert "--seed" in res.output and "-1" in res.output and "Traceback" not in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, [command, *captures, "--out", str(out), "--seed", str(2**63)])
    assert res.exit_code == 2 and "--seed" in res.output


# Columns of 3 vs 5 integers whose |d| is exactly 0.8 (checked with fractions below); in float64
# the two-pass d and the null's group-sum d land on different sides of 0.8 for some of them.
_D_TIES = [
    ([6, -2, 4], [-2, 5, -1, -1, -1]),
    ([0, 1, -5], [-5, -6, 0, -1, -8]),
    ([-1, 4, 4], [6, 7, 8, -1, 5]),
    ([4, 3, 7], [7, 7, 4, 5, 7]),
    ([1, 3, 2], [3, -5, -7, -7, 6]),
    ([-7, 7, 3], [-5, 0, -7, 1, -4]),
    ([-2, -1, 5], [-6, -3, 2, 0, -3]),
    ([-3, 1, 4], [-2, -2, -3, 3, -6]),
    ([3, -3, -7], [-7, -2, -4, -6, -6]),
    ([1, 0, -3], [6, 3, 4, -4, 1]),
    ([6, 4, 1], [-2, -3, 6, 1, 3]),
    ([-6, -4, -2], [3, 7, -4, -8, 2]),
]
# |t| exactly 3 in integers, and near-ties (scaled integers whose exact t is 3).
_T_TIES = [([-6, -3, -6], [5, 11, -3, 9, -2], 1.0)] + [
    ([-6, -3, -6], [5, 11, -3, 9, -2], s) for s in (0.1, 0.3, 1 / 3, 0.7, 1.1, 2.5)
]


def _exact_welch_squares(a, b):
    """(mean difference)^2, Welch SE^2 and pooled variance as fractions of the float values."""
    from fractions import Fraction as F

    a, b = [F(float(v)) for v in a], [F(float(v)) for v in b]
    n1, n2 = len(a), len(b)
    m1, m2 = sum(a) / n1, sum(b) / n2
    v1 = sum((x - m1) ** 2 for x in a) / (n1 - 1)
    v2 = sum((x - m2) ** 2 for x in b) / (n2 - 1)
    return (m1 - m2) ** 2, v1 / n1 + v2 / n2, ((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2)


def _tie_columns():
    from fractions import Fraction as F

    cols1, cols2 = [], []
    for a, b in _D_TIES:
        diff2, _, pooled = _exact_welch_squares(a, b)
        assert diff2 == F(16, 25) * pooled  # |d| = 0.8 exactly
        cols1.append(a), cols2.append(b)
    a, b, _ = _T_TIES[0]
    diff2, se2, _ = _exact_welch_squares(a, b)
    assert diff2 == 9 * se2  # |t| = 3 exactly
    for a, b, s in _T_TIES:
        cols1.append([v * s for v in a]), cols2.append([v * s for v in b])
    return np.array(cols1, dtype=np.float64).T, np.array(cols2, dtype=np.float64).T


def test_observed_counts_equal_the_exact_null_identity_row_at_ties():
    """Observed counts go through the null's route: at |t| = 3 and |d| = 0.8 they equal exact row 0
    (the observed labelling), where counting welch()'s two-pass t and d does not."""
    x1, x2 = _tie_columns()
    null = welch.label_shuffle_null(x1, x2, exact=True)
    assert null.exact and null.n_permutations == comb(8, 3)
    obs = welch.observed_counts(x1, x2)
    np.testing.assert_array_equal(obs.t_counts, null.t_counts[0])
    np.testing.assert_array_equal(obs.d_counts, null.d_counts[0])
    assert obs.max_abs_t == null.max_abs_t[0]
    # The data really are ties the two-pass route decides differently (what the fix is about).
    two_pass = welch.welch(x1, x2)
    old = ((np.abs(two_pass.t) > 3.0).sum(), (np.abs(two_pass.d) > 0.8).sum())
    assert old != (obs.t_counts[0], obs.d_counts[0])
    # fwer_p still counts the observed labelling for every unit (p >= 1 / P).
    assert (welch.fwer_p(np.abs(two_pass.t), null) >= 1.0 / null.n_permutations).all()


def test_observed_counts_without_ties_match_a_float64_reference():
    rng = np.random.default_rng(12)
    x1 = rng.normal(size=(6, 400)) + np.r_[np.full(40, 3.0), np.zeros(360)]
    x2 = rng.normal(size=(5, 400))
    obs = welch.observed_counts(x1, x2)
    t = _welch_t(x1, x2)
    pooled = (5 * x1.var(axis=0, ddof=1) + 4 * x2.var(axis=0, ddof=1)) / 9
    d = (x1.mean(axis=0) - x2.mean(axis=0)) / np.sqrt(pooled)
    for th in (3.0, 5.0, 0.8):  # no unit within 1e-9 of a threshold: the routes must agree
        assert np.abs(np.abs(t if th != 0.8 else d) - th).min() > 1e-9
    np.testing.assert_array_equal(obs.t_counts, [(np.abs(t) > 3.0).sum(), (np.abs(t) > 5.0).sum()])
    np.testing.assert_array_equal(obs.d_counts, [(np.abs(d) > 0.8).sum()])
    assert obs.max_abs_t == pytest.approx(np.abs(t).max(), rel=1e-12)
    null = welch.label_shuffle_null(x1, x2, exact=True)
    np.testing.assert_array_equal(obs.t_counts, null.t_counts[0])
    np.testing.assert_array_equal(obs.d_counts, null.d_counts[0])


def test_compare_unmatched_threshold_counts_are_the_null_identity_row_at_ties(tmp_path):
    """Through compare: 3 vs 5 pairs (56 labellings, exact) with |d| = 0.8 ties."""
    x1 = np.array([a for a, _ in _D_TIES], dtype=np.float32).T
    x2 = np.array([b for _, b in _D_TIES], dtype=np.float32).T
    blocks = {"blocks": [{"name": "only", "n_units": x1.shape[1]}]}
    p1 = store.write_capture(tmp_path / "x.safetensors", np.zeros_like(x1), x1, blocks)
    p2 = store.write_capture(tmp_path / "y.safetensors", np.zeros_like(x2), x2, blocks)
    result = analysis.compare(p1, p2, permutations=1000, splits=10)
    assert result.design == "contrast-welch" and result.null_exact
    from dense_plantain.analysis import designs, driver

    opts = driver.null_options(analysis.inputs.settings(1000, None, 0, 10, True))
    null = designs.WelchDesign(x1.astype(np.float64), x2.astype(np.float64)).null(opts, [], None)
    for i, row in enumerate(result.thresholds):
        assert row.count == null.column(i)[null.identity_row], (row.metric, row.threshold)
    d_row = next(r for r in result.thresholds if r.metric == "d")
    assert d_row.count != int((np.abs(result.d) > 0.8).sum())  # two-pass d would count otherwise
