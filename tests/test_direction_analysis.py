"""The direction analysis through ``analyze``: planted signed vectors, the cross-table, units.csv,
results.json and results.md; and ``capture --vectors`` + ``analyze`` on the tiny pipeline (CLI).

Expected values come from independent computations: D from its definition in float64 numpy,
the class of each unit by a numpy classification of the two FWER p columns, the engine's
``stats.direction_test`` on the file's b_vec - a_vec for the units.csv columns.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dense_plantain import analysis, report, stats, store
from dense_plantain.analysis.direction import CLASSES
from dense_plantain.errors import CaptureFileError
from synthetic_captures import probe_meta, small_layout

W = 16
N_PAIRS = 12
#: Units given a consistent rotation at constant norm, and units given a norm change in random directions.
ROTATE = np.array([3, 20, 41, 60])
GROW = np.array([5, 30, 50, 70])


def _unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.normal(size=(*shape, W))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def planted(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, a_vec, b_vec): RMS from each prompt's vector norm plus token energy the vector does not
    carry; rotation units turn from near e1 to near e2 at the same norm, growth units double their
    norm in a fresh random direction every prompt, the rest draw random directions at one norm."""
    layout = small_layout()
    m = layout.n_units
    rng = np.random.default_rng(seed)
    r = 1.0
    va = r * _unit_vectors(rng, (N_PAIRS, m))
    vb = r * _unit_vectors(rng, (N_PAIRS, m))
    e1, e2 = np.zeros(W), np.zeros(W)
    e1[0], e2[1] = 1.0, 1.0
    for u in ROTATE:
        for i in range(N_PAIRS):
            a = e1 + 0.3 * rng.normal(size=W)
            b = e2 + 0.3 * rng.normal(size=W)
            va[i, u] = r * a / np.linalg.norm(a)
            vb[i, u] = r * b / np.linalg.norm(b)
    vb[:, GROW] *= 2.0
    energy_a = rng.gamma(4.0, 0.01, size=(N_PAIRS, m))
    energy_b = rng.gamma(4.0, 0.01, size=(N_PAIRS, m))
    a = np.sqrt((va**2).sum(axis=-1) / W + energy_a)
    b = np.sqrt((vb**2).sum(axis=-1) / W + energy_b)
    f32 = np.float32
    return a.astype(f32), b.astype(f32), va.reshape(N_PAIRS, m * W).astype(f32), vb.reshape(N_PAIRS, m * W).astype(f32)


@pytest.fixture(scope="module")
def capture_file(tmp_path_factory):
    layout = small_layout()
    a, b, va, vb = planted()
    path = tmp_path_factory.mktemp("dir") / "vec.safetensors"
    meta = {**layout.to_metadata(), **probe_meta(N_PAIRS), "vector_width": W}
    store.write_capture(path, a, b, meta, extra={"a_vec": va, "b_vec": vb})
    return path


@pytest.fixture(scope="module")
def result(capture_file):
    return analysis.analyze(capture_file, permutations=4096, splits=10)


def test_rotation_found_by_direction_and_growth_by_magnitude(result):
    dirn = result.direction
    assert dirn is not None and dirn.exact and dirn.n_permutations == 2 ** (N_PAIRS - 1)
    assert set(dirn.classes[ROTATE]) == {"direction"}
    assert set(dirn.classes[GROW]) == {"magnitude"}
    assert np.all(result.p_maxT[ROTATE] >= 0.05) and np.all(dirn.p_max[ROTATE] < 0.05)
    assert np.all(result.p_maxT[GROW] < 0.05) and np.all(dirn.p_max[GROW] >= 0.05)
    assert np.all(dirn.agree[ROTATE] == 1.0)


def test_d_equals_its_definition_and_columns_equal_the_engine(result, capture_file, tmp_path):
    cap = store.read_capture(capture_file)
    delta = cap.extra["b_vec"].astype(np.float64) - cap.extra["a_vec"].astype(np.float64)
    per_unit = delta.reshape(N_PAIRS, -1, W)
    want_d = (per_unit.sum(axis=0) ** 2).sum(axis=-1) - (per_unit**2).sum(axis=(0, 2))
    np.testing.assert_allclose(result.direction.D, want_d, rtol=1e-9, atol=1e-9)
    engine = stats.direction_test(delta, W, permutations=4096, seed=0)
    report.write_results(result, tmp_path / "res")
    with open(tmp_path / "res" / "units.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == result.n_units
    for col, want in (("D", engine.D), ("p_D", engine.p), ("p_maxD", engine.p_max), ("agree", engine.agree)):
        got = np.array([float(r[col]) for r in rows])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0, err_msg=col)


def _numpy_class(p_t: np.ndarray, p_d: np.ndarray) -> np.ndarray:
    return np.select(
        [(p_t < 0.05) & (p_d < 0.05), p_t < 0.05, p_d < 0.05], ["both", "magnitude", "direction"], "neither"
    )


def test_cross_table_equals_a_numpy_classification(result, tmp_path):
    report.write_results(result, tmp_path / "res")
    with open(tmp_path / "res" / "units.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    p_t = np.array([float(r["p_maxT"]) for r in rows])
    p_d = np.array([float(r["p_maxD"]) for r in rows])
    cls = _numpy_class(p_t, p_d)
    sec = json.loads((tmp_path / "res" / "results.json").read_text())["direction"]
    expected = {("all", "all"): np.ones(len(rows), dtype=bool)}
    for axis in ("kind", "region"):
        values = np.array([r[axis] for r in rows])
        if len(set(values)) > 1:
            for v in dict.fromkeys(values):
                expected[(axis, v)] = values == v
    assert [(r["axis"], r["group"]) for r in sec["cross"]] == list(expected)
    for row in sec["cross"]:
        mask = expected[(row["axis"], row["group"])]
        assert row["n_units"] == int(mask.sum())
        assert {c: row[c] for c in CLASSES} == {c: int((cls[mask] == c).sum()) for c in CLASSES}
    assert sec["n_significant"] == int((p_d < 0.05).sum())
    assert {u["unit"] for u in sec["top_units"]} == {rows[j]["name"] for j in np.flatnonzero(p_d < 0.05)}
    assert sec["mode"] == "exact" and sec["n_permutations"] == 2 ** (N_PAIRS - 1) and sec["vector_width"] == W
    md = (tmp_path / "res" / "results.md").read_text()
    assert "## Direction" in md and "magnitude only" in md and "direction only" in md
    assert (tmp_path / "res" / "direction_vs_magnitude.png").stat().st_size > 1000
    again = report.load_results(tmp_path / "res")  # report DIR renders the section from results.json alone
    assert report.tables.results_markdown(again) == md


def test_off_and_missing_vectors(capture_file, tmp_path):
    off = analysis.analyze(capture_file, permutations=4096, splits=10, direction="off")
    assert off.direction is None and "direction" not in off.to_json() and "direction" not in off.settings
    cap = store.read_capture(capture_file)
    plain_path = tmp_path / "plain.safetensors"
    meta = {k: v for k, v in cap.meta.items() if k != "vector_width"}
    store.write_capture(plain_path, cap.a, cap.b, meta)
    plain = analysis.analyze(plain_path, permutations=4096, splits=10)
    assert plain.direction is None
    assert plain.to_json().keys() == off.to_json().keys()
    np.testing.assert_array_equal(plain.t, off.t)
    report.write_results(plain, tmp_path / "plain")
    header = (tmp_path / "plain" / "units.csv").read_text().splitlines()[0]
    assert header.split(",") == list(report.records.UNITS_COLUMNS)
    assert not (tmp_path / "plain" / "direction_vs_magnitude.png").exists()
    assert "Direction" not in (tmp_path / "plain" / "results.md").read_text()
    with pytest.raises(CaptureFileError, match="--vectors"):
        analysis.analyze(plain_path, permutations=4096, splits=10, direction="on")


def test_cli_capture_vectors_then_analyze(tmp_path):
    from click.testing import CliRunner

    from dense_plantain.cli import main
    from tiny_klein import PAIRS, capture_args, write_probe

    probe = write_probe(tmp_path / "probe.toml", PAIRS)
    out = tmp_path / "cap.safetensors"
    runner = CliRunner()
    res = runner.invoke(main, capture_args(probe, out, 5, "--vectors"))
    assert res.exit_code == 0, res.output
    cap = store.read_capture(out)
    assert cap.meta["vector_width"] == 16 and cap.extra["a_vec"].shape == (len(PAIRS), 340 * 16)
    res = runner.invoke(main, ["analyze", str(out), "--out", str(tmp_path / "res"), "--splits", "5"])
    assert res.exit_code == 0, res.output
    assert "Direction: " in res.output and "All units (340): magnitude only" in res.output
    md = (tmp_path / "res" / "results.md").read_text()
    assert "## Direction" in md and "| All units | 340 |" in md
    assert (tmp_path / "res" / "direction_vs_magnitude.png").exists()
    header = (tmp_path / "res" / "units.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["D", "p_D", "p_maxD", "agree"]
    res = runner.invoke(main, ["analyze", str(out), "--out", str(tmp_path / "off"), "--quiet", "--direction", "off"])
    assert res.exit_code == 0, res.output
    assert "Direction" not in (tmp_path / "off" / "results.md").read_text()
