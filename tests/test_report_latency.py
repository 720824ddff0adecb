"""The fast paths of writing a results folder against plain references written differently.

* units.csv, built column by column, against a cell-by-cell writer (one ``csv`` row per unit,
  every cell read from the arrays by index), on a result with the direction columns, an extra
  column and non-finite numbers.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from dense_plantain import analysis, store
from dense_plantain.report import records
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
