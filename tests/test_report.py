"""The results folder, the markdown, the figures and the model card; the CLI's error paths."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from scipy import stats as sps

from dense_plantain import analysis, report, store, units
from dense_plantain.cli import main
from dense_plantain.report import card, cells, figures
from synthetic_captures import RESULTS_FILES, correlated_pairs, probe_meta, small_layout, write

REFERENCE_CARD = Path("/work/shared/reference/dense-plantain-card.txt")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rep_run(tmp_path_factory):
    """One capture (12 pairs, planted effects), analysed through the CLI."""
    root = tmp_path_factory.mktemp("rep")
    layout = small_layout()
    a, b = correlated_pairs(layout, 12, planted={"joint[1]": 1.6, "single[2]": 1.1}, seed=7)
    capture = write(root / "probe.safetensors", a, b, layout, **probe_meta(12))
    out = root / "results"
    res = CliRunner().invoke(
        main, ["analyze", str(capture), "--out", str(out), "--permutations", "300", "--splits", "20"]
    )
    assert res.exit_code == 0, res.output
    return {"capture": capture, "out": out, "layout": layout, "a": a, "b": b, "output": res.output}


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table as rows of cells (split on unescaped pipes)."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            tables.append(current)
            current = []
    return tables


def _assert_well_formed(table: list[list[str]]) -> None:
    width = len(table[0])
    assert all(len(row) == width for row in table), table
    assert all(set(c) <= set("-:") and c for c in table[1]), table[1]


def _units_csv(out: Path) -> list[dict[str, str]]:
    with open(out / "units.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_folder_holds_exactly_the_outputs(rep_run):
    assert {p.name for p in rep_run["out"].iterdir()} == RESULTS_FILES
    assert not [p for p in rep_run["out"].parent.iterdir() if p.name.startswith(".")]  # no staging left
    assert "Units with |t| > 3" in rep_run["output"]  # the console table


def test_units_csv_rows_labels_and_statistics(rep_run):
    rows = _units_csv(rep_run["out"])
    layout = rep_run["layout"]
    labels = layout.labels()
    assert len(rows) == layout.n_units
    assert [r["name"] for r in rows] == layout.unit_names()
    assert [r["kind"] for r in rows] == list(labels["kind"])
    assert [r["block"] for r in rows] == list(labels["block"])
    assert [int(r["unit"]) for r in rows] == list(range(layout.n_units))
    ref = sps.ttest_rel(rep_run["b"].astype(np.float64), rep_run["a"].astype(np.float64), axis=0)
    t = np.array([float(r["t"]) for r in rows])
    np.testing.assert_allclose(t, ref.statistic, rtol=1e-8)
    np.testing.assert_allclose([float(r["p"]) for r in rows], ref.pvalue, rtol=1e-8)
    np.testing.assert_allclose([float(r["q"]) for r in rows], sps.false_discovery_control(ref.pvalue), rtol=1e-8)
    p_max = np.array([float(r["p_maxT"]) for r in rows])
    assert p_max.min() >= 1 / 301 - 1e-12 and p_max.max() <= 1
    # Larger |t| never gets a larger family-wise p.
    order = np.argsort(-np.abs(t))
    assert np.all(np.diff(p_max[order]) >= -1e-12)


def test_results_md_tables_hold_the_numbers(rep_run):
    out = rep_run["out"]
    md = (out / "results.md").read_text()
    record = json.loads((out / "results.json").read_text())
    tables = _tables(md)
    for table in tables:
        _assert_well_formed(table)
    main_table = tables[0]
    assert main_table[0] == ["Metric", "Value", "Significance"]
    rows = {r[0]: r[1:] for r in main_table[2:]}
    t = np.array([float(r["t"]) for r in _units_csv(out)])
    d = np.array([float(r["d"]) for r in _units_csv(out)])
    expected = {
        r"Units with \|t\| > 3": (np.abs(t) > 3).sum(),
        r"Units with \|t\| > 5": (np.abs(t) > 5).sum(),
        r"Units with \|d\| > 0.8 (large)": (np.abs(d) > 0.8).sum(),
    }
    for label, count in expected.items():
        value, significance = rows[label]
        m = re.fullmatch(r"([\d,]+) \(([\d.]+)%\)( \[95% bootstrap ([\d,]+)–([\d,]+)\])?", value)
        assert m, value
        assert _number(m.group(1)) == count
        assert float(m.group(2)) == pytest.approx(100 * count / t.size, abs=0.051)
        th = next(
            x for x in record["thresholds"] if label.startswith(f"Units with \\|{x['metric']}\\| > {x['threshold']:g}")
        )
        # The pair-bootstrap interval (on by default) sits next to the count, as results.json has it.
        boot = next(
            x
            for x in record["bootstrap"]["thresholds"]
            if (x["metric"], x["threshold"]) == (th["metric"], th["threshold"])
        )
        assert m.group(3) is not None, value
        assert (_number(m.group(4)), _number(m.group(5))) == (round(boot["low"]), round(boot["high"]))
        if th["ratio"] is not None:
            ratio = re.fullmatch(
                r"([\d.,]+)× empirical null p99( \[p99 rests on (\d+) permutations? above it\])?", significance
            )
            assert ratio, significance
            # The note appears exactly when fewer than 10 null permutations lie above the p99.
            assert (ratio.group(2) is not None) == (th["null_n_above_p99"] < 10)
            if ratio.group(3) is not None:
                assert int(ratio.group(3)) == th["null_n_above_p99"]
            assert _number(ratio.group(1)) == pytest.approx(count / th["null_p99"], rel=0.06)
    value, iqr = rows["Split-half r (median)"]
    assert float(value) == pytest.approx(record["split_half"]["median"], abs=5e-4)
    low, high = map(float, re.fullmatch(r"\[(-?[\d.]+), (-?[\d.]+)\] IQR", iqr).groups())
    assert (low, high) == pytest.approx((record["split_half"]["q25"], record["split_half"]["q75"]), abs=5e-3)
    assert float(rows[r"Max \|t\|"][0]) == pytest.approx(np.abs(t).max(), abs=5e-3)
    # The top five blocks, as the cards list them.
    bullets = re.findall(r"^- (\S+): max\\\|t\\\|=([\d.]+), (\d+)/(\d+) units", md, flags=re.M)
    assert len(bullets) == 5
    for (block, max_t, n3, n), top in zip(bullets, record["top_blocks"]):
        assert block == top["block"] and float(max_t) == pytest.approx(top["max_abs_t"], abs=5e-3)
        assert (int(n3), int(n)) == (top["n_t_gt3"], top["n_units"])
    # Attention / MLP and region tables: counts recomputed from units.csv.
    kinds = np.array([r["kind"] for r in _units_csv(out)])
    kind_table = next(tb for tb in tables if tb[0][0] == "Units" and tb[2][0] in ("attention", "MLP"))
    for row in kind_table[2:]:
        sel = kinds == {"attention": "attention", "MLP": "mlp"}[row[0]]
        assert _number(row[1]) == sel.sum()
        assert _number(row[2].split(" ")[0]) == (np.abs(t[sel]) > 3).sum()
    assert "## Method" in md and "300 random sign patterns" in md and "seed 0" in md


def test_results_json_has_the_required_fields(rep_run):
    record = json.loads((rep_run["out"] / "results.json").read_text())
    for key in (
        "n_pairs",
        "n_units",
        "max_abs_t",
        "thresholds",
        "split_half",
        "top_blocks",
        "settings",
        "seed",
        "null",
        "versions",
        "sources",
    ):
        assert key in record
    assert [(r["metric"], r["threshold"]) for r in record["thresholds"]] == [("t", 3.0), ("t", 5.0), ("d", 0.8)]
    for row in record["thresholds"]:
        assert {"count", "fraction", "null_p99", "ratio"} <= set(row)
    assert set(record["split_half"]) >= {"median", "q25", "q75", "n_splits"}
    assert len(record["top_blocks"]) == len(rep_run["layout"].blocks)
    for row in record["top_blocks"]:
        assert {"block", "max_abs_t", "n_t_gt3", "n_units", "median_abs_d"} <= set(row)
    assert record["null"]["mode"] == "monte-carlo" and record["null"]["n_permutations"] == 300


def test_figures_are_valid_pngs(rep_run):
    import matplotlib.image as mpimg

    for name in figures.FILES:
        path = rep_run["out"] / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = mpimg.imread(path)
        assert image.shape[0] >= 300 and image.shape[1] >= 500
        assert image.std() > 0.01  # not a blank canvas


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end])


def _reference_sentences() -> list[str]:
    text = " ".join(REFERENCE_CARD.read_text().split())
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) >= 30]


def _word_runs(text: str, k: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + k]) for i in range(len(words) - k + 1)}


def test_model_card_from_results_folder(rep_run, tmp_path):
    readme = tmp_path / "README.md"
    res = CliRunner().invoke(main, ["report", str(rep_run["out"]), "--out", str(readme)])
    assert res.exit_code == 0, res.output
    text = readme.read_text()
    front = _front_matter(text)
    assert front["license"] == "apache-2.0"
    assert front["base_model"] == "black-forest-labs/FLUX.2-klein-base-4B"
    assert front["library_name"] == "diffusers"
    assert isinstance(front["tags"], list) and "interpretability" in front["tags"] and "synthetic-pose" in front["tags"]
    for table in _tables(text):
        _assert_well_formed(table)
    results_md = (rep_run["out"] / "results.md").read_text()
    card_results = next(tb for tb in _tables(text) if tb[0] == ["Metric", "Value", "Significance"])
    assert _tables(results_md)[0] == card_results  # the same results table
    for needed in (
        "Body pose is held as an axis of its own.",
        "**T-pose**",
        "**expressive pose**",
        "subject, setting",
        "## Limitations",
        "## Method",
        "## Results",
        "seed 0",
    ):
        assert needed in text, needed
    # The unit-labelling caveat with this layout's numbers.
    labels = rep_run["layout"].labels()
    single = labels["block"] == "single[0]"
    n_mlp = int((labels["kind"][single] == "mlp").sum())
    assert f"{n_mlp} of {int(single.sum())} units" in text
    assert "pooled" in text
    for sentence in _reference_sentences():
        assert sentence not in " ".join(text.split()), sentence
    # No run of 8 words in common with the reference card's prose (its front matter and the
    # block-list format are shared on purpose).
    prose = [line for line in text.split("\n---\n", 1)[1].splitlines() if not re.match(r"- \S+: max", line)]
    prose_text = re.sub(r"`[^`]*`", " ", "\n".join(prose))  # code spans: model ids, file names
    assert not _word_runs(prose_text) & _word_runs(REFERENCE_CARD.read_text())


def test_klein_4b_card_names_576_of_768(tmp_path):
    layout = units.build_layout(units.KLEIN_4B)
    a, b = correlated_pairs(layout, 4, seed=1)
    path = write(tmp_path / "klein.safetensors", a, b, layout, **probe_meta(4))
    record = analysis.analyze(path, permutations=8, splits=4).to_json()
    text = card.model_card(record)
    assert "576 of 768 units" in text and "11,520 MLP units of 16,320" in text
    assert "A real attention head covers 8 units" in text


def test_report_from_capture_matches_report_from_folder(rep_run, tmp_path):
    out = tmp_path / "defaults"
    assert CliRunner().invoke(main, ["analyze", str(rep_run["capture"]), "--out", str(out), "-q"]).exit_code == 0
    r1, r2 = tmp_path / "from_dir.md", tmp_path / "from_capture.md"
    assert CliRunner().invoke(main, ["report", str(out), "--out", str(r1)]).exit_code == 0
    res = CliRunner().invoke(main, ["report", str(rep_run["capture"]), "--out", str(r2)])
    assert res.exit_code == 0, res.output
    assert _tables(r1.read_text()) == _tables(r2.read_text())


def test_zero_p99_is_said_plainly(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.normal(10, 1, size=(10, 3)).astype(np.float32)
    b = (a + rng.normal(0, 1, size=a.shape)).astype(np.float32)
    b[:, 0] = a[:, 0] + 5.0 + rng.normal(0, 0.05, size=10)
    path = store.write_capture(tmp_path / "steady.safetensors", a, b, {"blocks": [{"name": "only", "n_units": 3}]})
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["analyze", str(path), "--out", str(out)]).exit_code == 0
    record = json.loads((out / "results.json").read_text())
    row = record["thresholds"][1]
    assert row["null_p99"] == 0 and row["ratio"] is None
    md = (out / "results.md").read_text()
    table = _tables(md)[0]
    cell = next(r[2] for r in table if r[0] == r"Units with \|t\| > 5")
    assert cell == f"null p99 = 0 (null max {row['null_max']}): no ratio"
    assert "Where the percentile is 0" in md and "∞" not in md


@pytest.mark.parametrize(
    "count, p99, text",
    [
        (8263, 1333, "6.2×"),
        (4614, 7, "659×"),
        (10846, 1427, "7.6×"),
        (7445, 5, "1,489×"),
        (6399, 735.5, "8.7×"),
        (3, 10, "0.3×"),
    ],
)
def test_ratio_is_written_like_the_published_cards(count, p99, text):
    assert cells.ratio_text(count / p99) == text


def test_a_p99_under_one_is_shown_next_to_its_ratio():
    th = {"metric": "t", "threshold": 5.0, "count": 67, "null_p99": 0.01, "null_max": 1, "ratio": 6700.0}
    assert cells.significance_cell(th) == "6,700× empirical null p99 (p99 = 0.01)"
    assert cells.significance_cell({**th, "null_p99": 7.0, "ratio": 67 / 7}) == "9.6× empirical null p99"


# --- the output folder policy ------------------------------------------------------------------


@pytest.fixture
def rep_small_capture(tmp_path):
    layout = small_layout()
    a, b = correlated_pairs(layout, 6, seed=3)
    return write(tmp_path / "small.safetensors", a, b, layout, **probe_meta(6))


def _analyze(capture, out, *extra):
    return CliRunner().invoke(
        main, ["analyze", str(capture), "--out", str(out), "--permutations", "50", "--splits", "5", "-q", *extra]
    )


def test_foreign_folder_is_refused_then_forced(tmp_path, rep_small_capture):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = _analyze(rep_small_capture, out)
    assert res.exit_code != 0 and "--force" in res.output and str(out) in res.output
    assert {p.name for p in out.iterdir()} == {"notes.txt"}
    res = _analyze(rep_small_capture, out, "--force")
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == RESULTS_FILES | {"notes.txt"}
    assert (out / "notes.txt").read_text() == "keep me"


def test_previous_results_folder_is_replaced(tmp_path, rep_small_capture):
    out = tmp_path / "again"
    assert _analyze(rep_small_capture, out, "--seed", "1").exit_code == 0
    assert _analyze(rep_small_capture, out, "--seed", "2").exit_code == 0
    assert json.loads((out / "results.json").read_text())["seed"] == 2
    assert {p.name for p in out.iterdir()} == RESULTS_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "small.safetensors"]


def test_empty_folder_is_used(tmp_path, rep_small_capture):
    out = tmp_path / "empty"
    out.mkdir()
    assert _analyze(rep_small_capture, out).exit_code == 0
    assert {p.name for p in out.iterdir()} == RESULTS_FILES


def test_a_failure_while_writing_leaves_nothing(tmp_path, rep_small_capture, monkeypatch):
    result = analysis.analyze(rep_small_capture, permutations=20, splits=5)

    def broken(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(figures, "write_figures", broken)
    out = tmp_path / "never"
    with pytest.raises(report.OutputFolderError, match="the disk is full.*nothing was written"):
        report.write_results(result, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.safetensors"]
    # And a previous results folder survives a failed rewrite untouched.
    monkeypatch.undo()
    report.write_results(result, out)
    before = (out / "results.json").read_bytes()
    monkeypatch.setattr(figures, "write_figures", broken)
    with pytest.raises(report.OutputFolderError):
        report.write_results(result, out)
    assert (out / "results.json").read_bytes() == before and {p.name for p in out.iterdir()} == RESULTS_FILES


def test_readme_policy(tmp_path, rep_run):
    readme = tmp_path / "README.md"
    readme.write_text("# my own card\n")
    res = CliRunner().invoke(main, ["report", str(rep_run["out"]), "--out", str(readme)])
    assert res.exit_code != 0 and "--force" in res.output
    assert readme.read_text() == "# my own card\n"
    assert CliRunner().invoke(main, ["report", str(rep_run["out"]), "--out", str(readme), "--force"]).exit_code == 0
    assert CliRunner().invoke(main, ["report", str(rep_run["out"]), "--out", str(readme)]).exit_code == 0


def test_report_of_a_folder_without_results(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "README.md")])
    assert res.exit_code != 0 and "results.json" in res.output
    assert not (tmp_path / "README.md").exists()


@pytest.mark.parametrize(
    "record, missing",
    [
        ({"dense_plantain_results": 1}, "'design'"),
        (
            {
                "dense_plantain_results": 1,
                "design": "paired",
                "n_pairs": 5,
                "n_units": 3,
                "group_sizes": [5],
                "layout": {"name": "x"},
                "null": {},
                "thresholds": [],
                "split_half": {},
                "top_blocks": [],
                "settings": {},
                "conditions": {},
                "sources": [],
            },
            "'layout.blocks'",
        ),
    ],
)
def test_report_of_an_incomplete_results_json(tmp_path, record, missing):
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(record), encoding="utf-8")
    readme = tmp_path / "README.md"
    res = CliRunner().invoke(main, ["report", str(folder), "--out", str(readme)])
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit)  # a message, not a crash
    assert "Traceback" not in res.output
    assert str(folder / "results.json") in res.output and missing in res.output
    assert "analyze" in res.output
    assert not readme.exists()


# --- bad input --------------------------------------------------------------------------------


def _bad_captures(root: Path) -> dict[str, Path]:
    from safetensors.numpy import save

    layout = small_layout()
    a, b = correlated_pairs(layout, 5, seed=0)
    meta = {"dense_plantain": json.dumps({"format": 1, **layout.to_metadata()})}
    good = write(root / "good.safetensors", a, b, layout)
    out = {"missing": root / "missing.safetensors"}
    out["truncated"] = root / "truncated.safetensors"
    out["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["corrupt"] = root / "corrupt.safetensors"
    out["corrupt"].write_bytes(b"this is not a safetensors file at all" * 10)
    out["no_b"] = root / "no_b.safetensors"
    out["no_b"].write_bytes(save({"a": a}, metadata=meta))
    out["shapes"] = root / "shapes.safetensors"
    out["shapes"].write_bytes(save({"a": a, "b": b[:4]}, metadata=meta))
    out["blocks"] = root / "blocks.safetensors"
    out["blocks"].write_bytes(save({"a": a[:, :-1].copy(), "b": b[:, :-1].copy()}, metadata=meta))
    out["two_pairs"] = write(root / "two_pairs.safetensors", a[:2], b[:2], layout)
    nan_b = b.copy()
    nan_b[2, 9] = np.nan
    out["nan"] = write(root / "nan.safetensors", a, nan_b, layout, **probe_meta(5))
    return out


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("truncated", "truncated or corrupt"),
        ("corrupt", "not a readable safetensors"),
        ("no_b", "has no tensor 'b'"),
        ("shapes", "'b' has"),
        ("blocks", "sum to"),
        ("two_pairs", "only 2 pair"),
        ("nan", "pair-02"),
    ],
)
def test_bad_captures_fail_cleanly(tmp_path, case, message):
    path = _bad_captures(tmp_path)[case]
    out = tmp_path / "results"
    res = CliRunner().invoke(main, ["analyze", str(path), "--out", str(out)])
    assert res.exit_code != 0
    assert path.name in res.output and message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    readme = tmp_path / "README.md"
    res = CliRunner().invoke(main, ["report", str(path), "--out", str(readme)])
    assert res.exit_code != 0 and path.name in res.output and not readme.exists()


# --- honest weights, the card's figures and command, clean failures (issue 10) --------------------

RANDOM_WEIGHTS = {
    "random": True,
    "kind": "tiny-random",
    "description": "tiny random FLUX.2-shaped pipeline (seed 0)",
    "seed": 0,
    "parts": ["transformer", "text_encoder", "vae"],
    "sha256": None,
}


def test_random_weights_are_said_first_and_no_base_model_is_claimed(tmp_path):
    layout = small_layout()
    a, b = correlated_pairs(layout, 6, seed=3)
    meta = probe_meta(6)
    meta["command"] = ["dense-plantain", "capture", "prompts/x.toml", "--model", "tiny", "--out", "r.safetensors"]
    capture = write(tmp_path / "random.safetensors", a, b, layout, weights=RANDOM_WEIGHTS, **meta)
    out, readme = tmp_path / "results", tmp_path / "card" / "README.md"
    assert _analyze(capture, out).exit_code == 0
    record = json.loads((out / "results.json").read_text())
    assert record["weights"]["random"] is True and record["weights"]["recorded"] is True
    md_head = (out / "results.md").read_text().splitlines()[:3]
    assert any("Random weights" in line for line in md_head), md_head
    res = CliRunner().invoke(main, ["report", str(out), "--out", str(readme)])
    assert res.exit_code == 0, res.output
    text = readme.read_text()
    front = _front_matter(text)
    assert "base_model" not in front
    assert front["pipeline_tag"] == "text-to-image" and front["language"] == ["en"]
    body = text.split("\n---\n", 1)[1]
    first = [line for line in body.splitlines() if line.strip() and not line.startswith("<!--")][:2]
    assert "random weights" in first[0] and "Random weights" in first[1], first
    assert "FLUX.2-klein-base-4B" not in body  # the probe's meta names it as the model; the card must not claim it
    # Figures embedded by relative links that resolve to the results folder's PNGs.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert len(links) == 4 and all((readme.parent / link).resolve().is_file() for link in links)
    # Reproduce holds the recorded capture command line.
    assert "dense-plantain capture prompts/x.toml --model tiny --out r.safetensors" in text
    assert "## Limitations" in text and "Controls not run" in text


def test_old_captures_say_weights_not_recorded(rep_run, tmp_path):
    record = json.loads((rep_run["out"] / "results.json").read_text())
    assert record["weights"] == {"recorded": False, "random": None}
    assert "Weights: not recorded" in (rep_run["out"] / "results.md").read_text().splitlines()[2]
    text = card.model_card(record)
    assert "Weights not recorded" in text
    # Without a recorded command line, the capture command is rebuilt from the settings.
    assert "dense-plantain capture prompts/synthetic.toml --model black-forest-labs/FLUX.2-klein-base-4B" in text


def test_a_hand_edited_results_json_is_one_clear_error(rep_run, tmp_path):
    folder = tmp_path / "edited"
    folder.mkdir()
    record = json.loads((rep_run["out"] / "results.json").read_text())
    record["thresholds"][0]["count"] = "many"
    (folder / "results.json").write_text(json.dumps(record))
    readme = tmp_path / "README.md"
    res = CliRunner().invoke(main, ["report", str(folder), "--out", str(readme)])
    assert res.exit_code == 2 and "edited by hand" in res.output and "Traceback" not in res.output
    assert not readme.exists()


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only"), (errno.ENOSPC, "the disk is full")])
def test_disk_errors_in_analyze_exit_2_and_leave_nothing(tmp_path, rep_small_capture, monkeypatch, code, words):
    def broken(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(figures, "write_figures", broken)
    out = tmp_path / "res"
    res = _analyze(rep_small_capture, out)
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.safetensors"]


def test_stale_staging_folders_are_cleaned_and_live_ones_kept(tmp_path, rep_small_capture):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = tmp_path / ".res.dead1.partial", tmp_path / ".res.live1.partial"
    for folder, pid in ((stale, int(dead.stdout)), (live, os.getpid())):
        folder.mkdir()
        (folder / "owner").write_text(f"{pid} {socket.gethostname()}\n")
        (folder / "results.json").write_text("{}")
    assert _analyze(rep_small_capture, tmp_path / "res").exit_code == 0
    assert not stale.exists() and live.exists()
