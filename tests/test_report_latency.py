"""The fast paths of writing a results folder against plain references written differently.

* units.csv, built column by column, against a cell-by-cell writer (one ``csv`` row per unit,
  every cell read from the arrays by index), on a result with the direction columns, an extra
  column and non-finite numbers.
* the heatmap's grid (rows, column groups, each unit's cell), worked out per run of equal labels
  with integer keys, against a per-unit walk with tuple keys sorted by Python, on the bench's full
  Klein 4B layout, the small layouts, an unlabelled layout and attention units without heads.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from dense_plantain import analysis, store, units
from dense_plantain.report import heatmap, records
from synthetic_captures import correlated_pairs, probe_meta, small_layout, write


@pytest.fixture(scope="module")
def small_result(tmp_path_factory):
    layout = small_layout()
    a, b = correlated_pairs(layout, 10, planted={"joint[1]": 1.4}, seed=5)
    path = write(tmp_path_factory.mktemp("lat") / "c.safetensors", a, b, layout, **probe_meta(10))
    return analysis.analyze(path, permutations=200, splits=8, bootstrap=20)


@pytest.fixture(scope="module")
def direction_result(tmp_path_factory):
    layout = small_layout()
    m, n, w = layout.n_units, 8, 4
    rng = np.random.default_rng(3)
    va = rng.normal(size=(n, m * w)).astype(np.float32)
    vb = (va + 0.3 + rng.normal(size=(n, m * w))).astype(np.float32)
    a = (np.sqrt((va.reshape(n, m, w) ** 2).mean(-1)) + 0.1).astype(np.float32)
    b = (np.sqrt((vb.reshape(n, m, w) ** 2).mean(-1)) + 0.1).astype(np.float32)
    path = tmp_path_factory.mktemp("latd") / "v.safetensors"
    meta = {**layout.to_metadata(), **probe_meta(n), "vector_width": w}
    store.write_capture(path, a, b, meta, extra={"a_vec": va, "b_vec": vb})
    result = analysis.analyze(path, permutations=128, splits=5, bootstrap=0)
    assert result.direction is not None
    return result


def reference_units_csv(result) -> str:
    """units.csv one cell at a time: each number ``format(float(array[j]), ".10g")``."""
    labels = result.layout.labels()
    extra = list(result.extra_columns)
    dirn = result.direction
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    header = list(records.UNITS_COLUMNS) + extra + (["D", "p_D", "p_maxD", "agree"] if dirn is not None else [])
    out.writerow(header)
    for j in range(result.n_units):
        row = [j] + [labels[k][j] for k in ("block", "name", "kind")]
        row += [int(labels["head"][j]), int(labels["slice"][j]), labels["region"][j], int(labels["step"][j])]
        arrays = [result.mean_diff, result.t, result.d, result.df, result.p, result.p_maxT, result.q]
        arrays += [result.intervals.get(c, np.full(result.n_units, np.nan)) for c in records.INTERVAL_COLUMNS]
        arrays += [result.extra_columns[c] for c in extra]
        if dirn is not None:
            arrays += [dirn.D, dirn.p, dirn.p_max, dirn.agree]
        row += [format(float(col[j]), ".10g") for col in arrays]
        out.writerow(row)
    return buf.getvalue()


def test_units_csv_equals_a_cell_by_cell_writer(small_result):
    text = records.units_csv_text(small_result)
    assert text == reference_units_csv(small_result)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == small_result.n_units
    np.testing.assert_allclose([float(r["t"]) for r in rows], small_result.t, rtol=1e-9)


def test_units_csv_non_finite_numbers_extra_and_direction_columns(direction_result):
    r = direction_result
    odd = np.linspace(-1.0, 1.0, r.n_units)
    odd[:5] = [np.nan, np.inf, -np.inf, 1e-300, 123456789012.0]
    r.extra_columns["odd"] = odd
    r.extra_columns["as_int"] = np.arange(r.n_units, dtype=np.int64) * 7
    try:
        text = records.units_csv_text(r)
        assert text == reference_units_csv(r)
    finally:
        r.extra_columns.clear()
    first = list(csv.DictReader(io.StringIO(text)))[:5]
    assert [row["odd"] for row in first] == ["nan", "inf", "-inf", "1e-300", "1.23456789e+11"]
    assert "p_maxD" in first[0] and "agree" in first[0]


def reference_grid(layout):
    """The heatmap grid unit by unit: a tuple key per unit, columns in Python's sorted tuple order."""
    lab = layout.labels()
    regions: dict[tuple[str, str], list[str]] = {}
    for j in range(layout.n_units):
        seen = regions.setdefault((str(lab["block"][j]), str(lab["kind"][j])), [])
        if str(lab["region"][j]) not in seen:
            seen.append(str(lab["region"][j]))
    words: dict[tuple[str, int], list[str]] = {}
    keys = []
    for j in range(layout.n_units):
        block, kind, region = str(lab["block"][j]), str(lab["kind"][j]), str(lab["region"][j])
        rank = regions[(block, kind)].index(region)
        family = kind if kind in ("attention", "mlp") else "unit"
        w = words.setdefault((family, rank), [])
        if units.region_word(region) not in w:
            w.append(units.region_word(region))
        second = {"attention": int(lab["head"][j]), "mlp": 0}.get(family, 0)
        third = int(lab["slice"][j]) if family != "unit" else j - layout.block(block).start
        keys.append((("attention", "mlp", "unit").index(family), rank, second, third))
    columns = {k: i for i, k in enumerate(sorted(set(keys)))}
    groups = []
    for k, col in columns.items():
        family = ("attention", "mlp", "unit")[k[0]]
        label = units.kind_word(family) if family != "unit" else "units"
        name = f"{label} ({' / '.join(words[(family, k[1])])})"
        if not groups or groups[-1][0] != name:
            groups.append((name, family, col))
    rows = [b.name for b in layout.blocks]
    unit_row = [rows.index(str(b)) for b in lab["block"]]
    return rows, groups, unit_row, [columns[k] for k in keys]


def _layouts():
    yield units.build_layout(units.KLEIN_4B)
    yield small_layout("plantain")
    yield small_layout("heads")
    yield units.Layout(name="foreign", blocks=(units.Block("first", 0, 7), units.Block("second", 7, 3)))
    headless = [
        units.Readout("joint[0]", "m.attn", "image", "attention", 0, 4, 3),
        units.Readout("joint[0]", "m.ff", "image", "mlp", 0, 4, 2),
        units.Readout("single[0]", "s.attn", "all", "attention", 0, 4, 2, head_width=8),
    ]
    yield units.Layout(name="headless", readouts=tuple(headless))


@pytest.mark.parametrize("layout", list(_layouts()), ids=lambda layout: layout.name + str(layout.n_units))
def test_heatmap_grid_equals_a_unit_by_unit_walk(layout):
    rows, groups, unit_row, unit_col = heatmap.grid(layout)
    want_rows, want_groups, want_row, want_col = reference_grid(layout)
    assert rows == want_rows and groups == want_groups
    assert unit_row.tolist() == want_row and unit_col.tolist() == want_col
    assert unit_col.dtype == np.int64 and unit_row.dtype == np.int64
