"""analyze/compare --baseline, the input-embedding group, the Controls table and the heatmap (synthetic captures)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from dense_plantain import analysis
from dense_plantain.cli import main
from dense_plantain.errors import AnalysisError
from dense_plantain.report import heatmap
from synthetic_captures import correlated_pairs, paired_t, probe_meta, small_layout

N = 8
LAYOUT = small_layout()
RANDOM_WEIGHTS = {
    "random": True,
    "kind": "reinitialised",
    "seed": 0,
    "parts": ["transformer"],
    "description": "transformer re-initialised (test)",
    "sha256": None,
    "source_sha256": "f" * 64,
}
SAVED_WEIGHTS = {
    "random": False,
    "kind": "pretrained",
    "description": "saved",
    "seed": None,
    "parts": [],
    "sha256": "f" * 64,
}


def _capture(path, seed, weights, planted=None, **meta_changes):
    a, b = correlated_pairs(LAYOUT, N, planted=planted, seed=seed)
    rng = np.random.default_rng(seed + 100)
    a_in = rng.gamma(2.0, 1.0, size=(N, 6)).astype(np.float32)
    b_in = (a_in + rng.normal(size=(N, 6)) + np.array([3, 0, 0, 0, 0, 0])).astype(np.float32)
    meta = {**probe_meta(N), "weights": weights}
    meta["settings"] = {**meta["settings"], "text_encoder_layers": [9, 18, 27]}
    meta.update(meta_changes)
    from dense_plantain import store

    return store.write_capture(path, a, b, {**LAYOUT.to_metadata(), **meta}, extra={"a_input": a_in, "b_input": b_in})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    main_file = _capture(root / "main.safetensors", 1, SAVED_WEIGHTS, planted={"single[0]": 2.0})
    base_file = _capture(root / "base.safetensors", 2, RANDOM_WEIGHTS)
    return root, main_file, base_file


@pytest.fixture(scope="module")
def folder(files):
    root, main_file, base_file = files
    out = root / "results"
    args = ["analyze", str(main_file), "--baseline", str(base_file), "--out", str(out), "-q", "--permutations", "500"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return out


def _numpy_counts(a, b):
    t = paired_t(np.asarray(b, np.float64) - np.asarray(a, np.float64))
    d = t / np.sqrt(a.shape[0])
    return {
        ("t", 3.0): int((np.abs(t) > 3).sum()),
        ("t", 5.0): int((np.abs(t) > 5).sum()),
        ("d", 0.8): int((np.abs(d) > 0.8).sum()),
    }


def test_baseline_counts_equal_numpy_count_of_the_baseline_file(files, folder):
    from dense_plantain.store import read_capture

    res = json.loads((folder / "results.json").read_text())
    base = read_capture(files[2])
    (rec,) = res["baselines"]
    assert rec["source"] == str(files[2]) and rec["weights"]["random"] is True and "random weights" in rec["label"]
    expect = _numpy_counts(base.a, base.b)
    got = {(th["metric"], th["threshold"]): th["count"] for th in rec["thresholds"]}
    assert got == expect
    # the same null settings and seed: the baseline's own analysis gives the same p99 and ratios
    alone = analysis.analyze(base, permutations=500, seed=0).to_json()
    assert [th["null_p99"] for th in rec["thresholds"]] == [th["null_p99"] for th in alone["thresholds"]]
    assert [b["n_t_gt3"] for b in rec["blocks_t_gt3"]] == [
        int((np.abs(paired_t(base.b - base.a.astype(np.float64)))[blk.units] > 3).sum()) for blk in LAYOUT.blocks
    ]


def test_input_group_is_its_own_analysis(files, folder):
    from dense_plantain.store import read_capture

    res = json.loads((folder / "results.json").read_text())
    cap = read_capture(files[1])
    group = res["input_embeddings"]
    assert group["n_units"] == 6 and res["n_units"] == LAYOUT.n_units  # never mixed into the transformer's units
    expect = _numpy_counts(cap.extra["a_input"], cap.extra["b_input"])
    assert {(th["metric"], th["threshold"]): th["count"] for th in group["thresholds"]} == expect
    t = paired_t(cap.extra["b_input"].astype(np.float64) - cap.extra["a_input"])
    assert group["top_units"][0]["unit"] == f"input.L9.u{int(np.argmax(np.abs(t)))}"
    assert res["baselines"][0]["input_embeddings"]["n_units"] == 6


def _md_controls(text: str) -> list[list[str]]:
    section = text.split("## Controls", 1)[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in section.splitlines()[2:]]


def test_controls_table_matches_results_json(folder):
    res = json.loads((folder / "results.json").read_text())
    rows = _md_controls((folder / "results.md").read_text())
    base = res["baselines"][0]
    expected = [(th, b) for th, b in zip(res["thresholds"], base["thresholds"])]
    expected += list(zip(res["input_embeddings"]["thresholds"], base["input_embeddings"]["thresholds"]))
    assert len(rows) == len(expected)
    for row, (m, b) in zip(rows, expected):
        main_count = int(re.match(r"([\d,]+)", row[1]).group(1).replace(",", ""))
        base_count = int(re.match(r"([\d,]+)", row[2]).group(1).replace(",", ""))
        assert (main_count, base_count) == (m["count"], b["count"])
        if m["ratio"] is not None:
            assert f"({m['ratio']:.1f}x)" in row[1]
        if b["count"]:
            assert row[3] == f"{m['count'] / b['count']:.2f}"
    text = (folder / "results.md").read_text()
    assert "random weights" in text
    m3, b3 = res["thresholds"][0]["count"], base["thresholds"][0]["count"]
    verdict = "exceeds" if m3 > b3 else "does not exceed"
    assert f"the main run {verdict} the baseline" in text and f"{m3:,} units against {b3:,}" in text


def test_folder_has_heatmap_and_controls_figure(folder):
    assert (folder / "abs_t_heatmap.png").stat().st_size > 0 and (folder / "controls_blocks.png").stat().st_size > 0


def test_heatmap_grid_puts_every_unit_in_its_own_cell():
    for name in ("plantain", "heads"):
        layout = small_layout(name)
        rows, groups, r, c = heatmap.grid(layout)
        assert len(set(zip(r.tolist(), c.tolist()))) == layout.n_units
        lab = layout.labels()
        att = lab["kind"] == "attention"
        # slices of one head sit side by side: column = group start + head * slices + slice
        for block, region in set(zip(lab["block"][att].tolist(), lab["region"][att].tolist())):
            m = att & (lab["region"] == region) & (lab["block"] == block)
            cols, heads, slices = c[m], lab["head"][m], lab["slice"][m]
            n_sl = int(slices.max()) + 1
            np.testing.assert_array_equal(cols - cols.min(), heads * n_sl + slices)
        assert rows == [b.name for b in layout.blocks]


def test_baseline_of_other_prompts_or_settings_is_refused(files, tmp_path):
    root, main_file, _ = files
    other = _capture(
        tmp_path / "other.safetensors", 3, RANDOM_WEIGHTS, **probe_meta(N, ids=[f"x{i}" for i in range(N)])
    )
    with pytest.raises(AnalysisError, match="same pairs"):
        analysis.analyze(main_file, permutations=100, baselines=[other])
    settings = {**probe_meta(N)["settings"], "text_encoder_layers": [9, 18, 27], "seed": 5}
    other = _capture(tmp_path / "other2.safetensors", 3, RANDOM_WEIGHTS, settings=settings)
    with pytest.raises(AnalysisError, match="settings.seed"):
        analysis.analyze(main_file, permutations=100, baselines=[other])


def test_compare_takes_a_baseline_pair(files, tmp_path):
    root, main_file, base_file = files
    control = _capture(tmp_path / "control.safetensors", 4, SAVED_WEIGHTS)
    base_control = _capture(tmp_path / "base_control.safetensors", 5, RANDOM_WEIGHTS)
    out = tmp_path / "cmp"
    args = ["compare", str(main_file), str(control), "--baseline", str(base_file), str(base_control)]
    res = CliRunner().invoke(main, [*args, "--out", str(out), "-q", "--permutations", "200"])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "results.json").read_text())["baselines"][0]
    from dense_plantain.store import read_capture

    b1, b2 = read_capture(base_file), read_capture(base_control)
    contrast = (b1.b.astype(np.float64) - b1.a) - (b2.b.astype(np.float64) - b2.a)
    t = paired_t(contrast)
    assert rec["thresholds"][0]["count"] == int((np.abs(t) > 3).sum())
    assert "## Controls" in (out / "results.md").read_text()


def test_controls_table_has_a_direction_row_when_both_runs_tested_directions():
    """The direction test's family-wise count sits in the Controls table beside each baseline's,
    shown without a null ratio (it is not a count set against a null p99)."""
    from dense_plantain.report import controls

    th = [{"metric": "t", "threshold": 3.0, "count": 40, "ratio": 2.0}]
    res = {
        "thresholds": th,
        "direction": {"n_significant": 12, "alpha": 0.05},
        "baselines": [
            {
                "label": "random weights",
                "thresholds": [{"metric": "t", "threshold": 3.0, "count": 10, "ratio": 0.5}],
                "direction": {"n_significant": 3, "alpha": 0.05},
            }
        ],
    }
    header, rows = controls.controls_table(res)
    row = next(r for r in rows if r[0].startswith("direction"))
    assert row == ["direction: p_maxD < 0.05", "12", "3", f"{12 / 3:.2f}"]
    assert next(r for r in rows if r[0] == "|t| > 3") == ["|t| > 3", "40 (2.0x)", "10 (0.5x)", "4.00"]
    res["baselines"][0]["direction"] = None  # a baseline captured without --vectors
    row = next(r for r in controls.controls_table(res)[1] if r[0].startswith("direction"))
    assert row[2] == "not measured" and row[3] == "n/a"
