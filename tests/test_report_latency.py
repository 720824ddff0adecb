"""The fast paths of writing a results folder against plain references written differently.

* units.csv, built column by column, against a cell-by-cell writer (one ``csv`` row per unit,
  every cell read from the arrays by index), on a result with the direction columns, an extra
  column and non-finite numbers.
* the heatmap's grid (rows, column groups, each unit's cell), worked out per run of equal labels
  with integer keys, against a per-unit walk with tuple keys sorted by Python, on the bench's full
  Klein 4B layout, the small layouts, an unlabelled layout and attention units without heads.
* the figure worker (``report.worker``), forked and spawned: its figures pixel for pixel against
  the same figures drawn in this process (main run, baselines, direction test); a figure failing
  in it, the worker dying, and this process failing while it draws: each fails the write with a
  clear error and leaves no results folder and no staging folder; a forked worker keeps no other
  process's pipe open.
* drawing ahead (the |t| figures while the nulls run, the null counts and split halves while the
  bootstrap runs): used only when every input equals the final one, the folder then byte for byte
  the one drawn in this process; the analysis reports what it knows before its null and after it
  (before the bootstrap), for analyze and compare, not for baselines.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import errno
import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dense_plantain import analysis, report, store, units
from dense_plantain.cli import main
from dense_plantain.report import cells, figures, heatmap, records
from dense_plantain.report import worker as figure_worker
from dense_plantain.report.worker import FigureWorker, FigureWorkerError
from synthetic_captures import RESULTS_FILES, correlated_pairs, probe_meta, small_layout, write


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


def test_units_csv_quotes_labels_as_the_csv_module(small_result):
    """Labels with commas, quotes and line breaks (a foreign layout's block names) are quoted as
    ``csv.writer`` quotes them; the file reads back to the same labels."""
    odd = ["a,b", 'say "hi"', "line\nbreak", "cr\rhere", " spaced ", "plain", "ünï", ""]
    result = copy.copy(small_result)
    labels = dict(small_result.layout.labels())
    n = small_result.n_units
    for key in ("block", "name", "region"):
        labels[key] = np.array([odd[(j + len(key)) % len(odd)] for j in range(n)], dtype=object)
    result.layout = dataclasses.replace(small_result.layout, _labels=labels)
    text = records.units_csv_text(result)
    assert text == reference_units_csv(result)
    # Read back (without the carriage return, which Python 3.11's csv leaves unquoted when the
    # line terminator is "\n", so no reader can tell it from a line end).
    odd.remove("cr\rhere")
    for key in ("block", "name", "region"):
        labels[key] = np.array([odd[(j + len(key)) % len(odd)] for j in range(n)], dtype=object)
    result.layout = dataclasses.replace(small_result.layout, _labels=labels)
    text = records.units_csv_text(result)
    assert text == reference_units_csv(result)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["name"] for r in rows] == labels["name"].tolist()
    assert [r["block"] for r in rows] == labels["block"].tolist()


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


# --- the figure worker -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline_result(tmp_path_factory):
    import test_controls_analysis as controls

    root = tmp_path_factory.mktemp("latb")
    main_file = controls._capture(root / "main.safetensors", 1, controls.SAVED_WEIGHTS, planted={"single[0]": 2.0})
    base_file = controls._capture(root / "base.safetensors", 2, controls.RANDOM_WEIGHTS)
    result = analysis.analyze(main_file, permutations=200, splits=8, bootstrap=0, baselines=[base_file])
    assert result.baseline_results
    return result


def _pixels(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


METHODS = ["fork", "spawn"] if hasattr(os, "fork") else ["spawn"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("which", ["small_result", "baseline_result", "direction_result"])
def test_worker_figures_equal_this_process_pixel_for_pixel(which, method, request, tmp_path):
    result = request.getfixturevalue(which)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    drawn_here = figures.write_figures(result, here)
    with FigureWorker().start(method) as w:
        drawn_there = figures.write_figures(result, there, worker=w)
    assert [p.name for p in drawn_there] == [p.name for p in drawn_here]
    expected = {"abs_t_heatmap.png", *figures.FILES}
    expected |= {"controls_blocks.png"} if which == "baseline_result" else set()
    expected |= {"direction_vs_magnitude.png"} if which == "direction_result" else set()
    assert {p.name for p in there.iterdir()} == expected
    for a in drawn_here:
        b = there / a.name
        pa, pb = _pixels(a), _pixels(b)
        assert pa.shape == pb.shape and np.array_equal(pa, pb), a.name
        assert pa.std() > 0.01  # not blank


def test_worker_writes_the_same_folder_as_this_process(small_result, tmp_path):
    report.write_results(small_result, tmp_path / "here")
    with FigureWorker().start() as w:
        report.write_results(small_result, tmp_path / "there", worker=w)
    names = sorted(p.name for p in (tmp_path / "here").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "there").iterdir())
    for name in names:
        a, b = tmp_path / "here" / name, tmp_path / "there" / name
        if name.endswith(".png"):
            assert np.array_equal(_pixels(a), _pixels(b)), name
        else:
            assert a.read_bytes() == b.read_bytes(), name


def _no_null_summary(result):
    """A copy of ``result`` whose first threshold lost its null histogram: null_counts.png cannot be drawn."""
    broken = copy.copy(result)
    broken.thresholds = [dataclasses.replace(result.thresholds[0], null_histogram=None)] + result.thresholds[1:]
    return broken


def _nothing_left(folder, out):
    return not out.exists() and not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("method", METHODS)
def test_a_figure_failing_in_the_worker_fails_the_write_and_leaves_nothing(small_result, method, tmp_path):
    out = tmp_path / "res"
    with FigureWorker().start(method) as w:
        with pytest.raises(FigureWorkerError, match=r"null_counts\.png.*no null summary.*nothing was written"):
            report.write_results(_no_null_summary(small_result), out, worker=w)
    assert _nothing_left(tmp_path, out)


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_that_dies_fails_the_write_and_leaves_nothing(small_result, method, tmp_path):
    out = tmp_path / "res"
    w = FigureWorker().start(method)
    os.kill(w.pid, signal.SIGKILL)
    with pytest.raises(FigureWorkerError, match=r"figure process ended \(exit status -9\).*nothing was written"):
        report.write_results(small_result, out, worker=w)
    assert _nothing_left(tmp_path, out)
    w.close()


@pytest.mark.parametrize("method", METHODS)
def test_a_failure_here_while_the_worker_draws_ends_it_and_leaves_nothing(small_result, method, tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records, "units_csv_text", full)
    out = tmp_path / "res"
    w = FigureWorker().start(method)
    with pytest.raises(report.OutputFolderError, match="the disk is full.*nothing was written"):
        report.write_results(small_result, out, worker=w)
    assert w._proc is not None and w._proc.poll() is not None  # killed before the staging folder went
    assert _nothing_left(tmp_path, out)


@pytest.mark.parametrize("method", METHODS)
def test_a_disk_error_in_the_worker_is_the_same_oserror(small_result, method, tmp_path):
    data = figures.FigureData.from_result(small_result)
    with FigureWorker().start(method) as w, pytest.raises(FileNotFoundError):
        w.draw(data, tmp_path / "no such folder")


def test_worker_off_by_environment(monkeypatch):
    monkeypatch.setenv(figure_worker.WORKER_ENV, "0")
    assert figure_worker.start_figure_worker() is None
    monkeypatch.setenv(figure_worker.WORKER_ENV, "1")
    monkeypatch.setattr(figure_worker, "_cpus", lambda: 1)
    assert figure_worker.start_figure_worker() is None  # one CPU: drawing here is cheaper
    monkeypatch.setattr(figure_worker, "_cpus", lambda: 2)
    started = figure_worker.start_figure_worker()
    assert isinstance(started, FigureWorker)
    started.close()


def test_shares_of_the_figures_cover_each_once():
    names = ["abs_t_heatmap.png", *figures.FILES, "controls_blocks.png", "direction_vs_magnitude.png"]
    for parts in range(1, 8):
        groups = figure_worker._share(names, parts)
        assert sorted(n for g in groups for n in g) == sorted(names) and len(groups) == min(parts, len(names))


def test_cli_analyze_with_the_worker_writes_the_folder_and_a_failing_figure_exits_2(tmp_path, monkeypatch):
    layout = small_layout()
    a, b = correlated_pairs(layout, 8, planted={"joint[0]": 1.2}, seed=9)
    capture = write(tmp_path / "c.safetensors", a, b, layout, **probe_meta(8))
    monkeypatch.setattr(figure_worker, "_cpus", lambda: 2)  # the worker, whatever this machine has
    started = []
    real_start = FigureWorker.start

    def start(self):
        started.append(self)
        return real_start(self)

    monkeypatch.setattr(FigureWorker, "start", start)
    args = ["analyze", str(capture), "-q", "--permutations", "64", "--splits", "4", "--bootstrap", "10"]
    ok = CliRunner().invoke(main, args + ["--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert len(started) == 1 and started[0]._proc.poll() is not None  # it ran and has ended
    assert {p.name for p in (tmp_path / "ok").iterdir()} == RESULTS_FILES
    assert sorted(started[0].drawn_ahead) == sorted(ALL_AHEAD)  # drawn while the statistics ran
    serial = CliRunner().invoke(main, args + ["--out", str(tmp_path / "serial")], env={figure_worker.WORKER_ENV: "0"})
    assert serial.exit_code == 0 and len(started) == 1  # no worker this time
    for name in RESULTS_FILES - {"results.json"}:
        assert (tmp_path / "ok" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes(), name

    real = figures.FigureData.from_result
    monkeypatch.setattr(figures.FigureData, "from_result", lambda result, res=None: real(_no_null_summary(result), res))
    bad = CliRunner().invoke(main, args + ["--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "null_counts.png" in bad.output and "nothing was written" in bad.output
    assert "Traceback" not in bad.output
    assert not (tmp_path / "bad").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_program_ends_cleanly_as_a_process_at_any_thread_count(tmp_path):
    """``python -m dense_plantain analyze`` (the worker forked): exit 0, the
    folder, nothing on stderr; with the engine on 1 thread and on 2 (DENSE_PLANTAIN_NUM_THREADS,
    honoured by the command's process) the same numbers and the same figures."""
    import subprocess
    import sys

    layout = small_layout()
    a, b = correlated_pairs(layout, 8, planted={"joint[0]": 1.2}, seed=9)
    capture = write(tmp_path / "c.safetensors", a, b, layout, **probe_meta(8))
    folders = []
    for threads in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": str(Path(figures.__file__).resolve().parents[2])}
        env["DENSE_PLANTAIN_NUM_THREADS"] = threads
        out = tmp_path / f"r{threads}"
        cmd = [sys.executable, "-m", "dense_plantain", "analyze", str(capture), "-q", "--out", str(out)]
        done = subprocess.run(cmd + ["--permutations", "64", "--splits", "4"], capture_output=True, text=True, env=env)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert {p.name for p in out.iterdir()} == RESULTS_FILES
        folders.append(out)
    for name in RESULTS_FILES - {"results.json"}:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name
    one, two = (json.loads((f / "results.json").read_text()) for f in folders)
    assert {k: v for k, v in one.items() if k != "created"} == {k: v for k, v in two.items() if k != "created"}


def test_a_forked_worker_holds_no_other_pipe_open(small_result, tmp_path):
    import select

    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    read_end, write_end = os.pipe()  # a pipe of this process, open when the worker forks
    try:
        with FigureWorker().start("fork") as w:
            figures.write_figures(small_result, tmp_path, worker=w)  # it draws, then waits: still alive
            os.close(write_end)
            write_end = -1
            ready, _, _ = select.select([read_end], [], [], 10)
            assert ready and os.read(read_end, 1) == b""  # EOF: the worker does not hold the write end
            assert w._proc is not None and w._proc.poll() is None
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


# --- drawing ahead ---------------------------------------------------------------------------

ALL_AHEAD = [name for names in figures.AHEAD.values() for name in names]


def _known(result, stage="null"):
    """What ``on_partial`` reports of ``result`` at ``stage``."""
    res = result.to_json()
    known = {"stage": stage, "design": result.design, "n_pairs": result.n_pairs, "conditions": res["conditions"]}
    known |= {"layout": result.layout, "t": result.t}
    if stage == "null":
        known |= {"thresholds": result.thresholds, "split_half": result.split_half}
        known |= {"null_exact": result.null_exact, "null_permutations": result.null_permutations}
    return known


@pytest.mark.parametrize("method", METHODS)
def test_drawn_ahead_figures_are_used_when_their_inputs_are_equal(small_result, method, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    figures.write_figures(small_result, here)
    with FigureWorker().start(method) as w:
        for stage, names in figures.AHEAD.items():
            w.draw_ahead(figures.ahead_data(_known(small_result, stage), analysis.BLOCK_T), names)
        figures.write_figures(small_result, there, worker=w)
        assert sorted(w.drawn_ahead) == sorted(ALL_AHEAD)
    for name in figures.figure_names(figures.FigureData.from_result(small_result)):
        assert (here / name).read_bytes() == (there / name).read_bytes(), name


def test_drawn_ahead_figures_of_other_inputs_are_drawn_again(small_result, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    figures.write_figures(small_result, here)
    other_t = dict(_known(small_result), t=small_result.t * 1.5)
    other_n = dict(_known(small_result), n_pairs=small_result.n_pairs + 1)
    th = small_result.thresholds
    other_count = dict(_known(small_result), thresholds=[dataclasses.replace(th[0], count=th[0].count + 1), *th[1:]])
    split = small_result.split_half
    other_split = dict(_known(small_result), split_half=dataclasses.replace(split, r=split.r[::-1].copy() + 0.01))
    with FigureWorker().start() as w:
        w.draw_ahead(figures.ahead_data(other_t, analysis.BLOCK_T), [figures.HEATMAP])
        w.draw_ahead(figures.ahead_data(other_n, analysis.BLOCK_T), [figures.FILES[0]])
        w.draw_ahead(figures.ahead_data(other_count, analysis.BLOCK_T), [figures.FILES[1]])
        w.draw_ahead(figures.ahead_data(other_split, analysis.BLOCK_T), [figures.FILES[2]])
        figures.write_figures(small_result, there, worker=w)
        assert w.drawn_ahead == []
    for name in ALL_AHEAD:
        assert np.array_equal(_pixels(here / name), _pixels(there / name)), name


def test_same_inputs_reads_every_input_of_the_ahead_figures(small_result, baseline_result):
    full = figures.FigureData.from_result(small_result)
    early = figures.ahead_data(_known(small_result), analysis.BLOCK_T)
    assert all(figures.same_inputs(name, early, full) for name in ALL_AHEAD)
    assert not figures.same_inputs("controls_blocks.png", early, full)  # never drawn ahead
    before_null = figures.ahead_data(_known(small_result, "statistic"), analysis.BLOCK_T)
    assert not any(figures.same_inputs(n, before_null, full) for n in figures.AHEAD["null"])  # not known yet

    def ahead(**change):
        return figures.ahead_data(dict(_known(small_result), **change), analysis.BLOCK_T)

    t = small_result.t.copy()
    t[3] = -t[3]  # the same |t|: the same |t| figures
    assert all(figures.same_inputs(n, ahead(t=t), full) for n in figures.AHEAD["statistic"])
    t[3] += 1e-12
    assert not any(figures.same_inputs(n, ahead(t=t), full) for n in figures.AHEAD["statistic"])
    retitled = ahead(conditions={**full.res["conditions"], "b": "something else"})
    assert not figures.same_inputs(figures.FILES[0], retitled, full)
    assert not figures.same_inputs(figures.FILES[1], retitled, full)
    assert not figures.same_inputs(figures.HEATMAP, early, dataclasses.replace(full, block_t=2.0))
    th = small_result.thresholds
    hist = th[1].null_histogram.copy()
    hist[0] += 1
    assert not figures.same_inputs(
        figures.FILES[1], ahead(thresholds=[th[0], dataclasses.replace(th[1], null_histogram=hist), th[2]]), full
    )
    assert not figures.same_inputs(figures.FILES[1], ahead(null_permutations=small_result.null_permutations + 1), full)
    assert not figures.same_inputs(figures.FILES[1], ahead(null_exact=not small_result.null_exact), full)
    above = 1000 if (th[0].null_n_above_p99 or 0) < cells.FEW_ABOVE_P99 else 1  # the verdict's note comes or goes
    few = dataclasses.replace(th[0], null_n_above_p99=above)
    assert not figures.same_inputs(figures.FILES[1], ahead(thresholds=[few, *th[1:]]), full)
    split = small_result.split_half
    assert not figures.same_inputs(
        figures.FILES[2], ahead(split_half=dataclasses.replace(split, n_splits=split.n_splits + 1)), full
    )
    with_baseline = figures.FigureData.from_result(baseline_result)
    early_b = figures.ahead_data(_known(baseline_result), analysis.BLOCK_T)
    assert not figures.same_inputs(figures.HEATMAP, early_b, with_baseline)  # the baseline's panel


def test_the_analysis_reports_what_it_knows_before_the_null_and_after(tmp_path, monkeypatch):
    from dense_plantain.analysis import intervals
    from dense_plantain.analysis.designs import PairedDesign

    layout = small_layout()
    a, b = correlated_pairs(layout, 8, seed=2)
    one = write(tmp_path / "one.safetensors", a, b, layout, **probe_meta(8))
    a2, b2 = correlated_pairs(layout, 8, seed=3)
    two = write(tmp_path / "two.safetensors", a2, b2, layout, **probe_meta(8))
    events = []
    real_null, real_boot = PairedDesign.null, intervals.bootstrap_record

    def noting_null(self, *args, **kwargs):
        events.append("null")
        return real_null(self, *args, **kwargs)

    def noting_bootstrap(*args, **kwargs):
        events.append("bootstrap")
        return real_boot(*args, **kwargs)

    monkeypatch.setattr(PairedDesign, "null", noting_null)
    monkeypatch.setattr(intervals, "bootstrap_record", noting_bootstrap)
    seen = []

    def note(known):
        seen.append(known)
        events.append(known["stage"])

    kw = dict(permutations=64, splits=4, bootstrap=5)
    result = analysis.analyze(one, on_partial=note, baselines=[two], **kw)
    assert [k["stage"] for k in seen] == ["statistic", "null"]  # once each: not again for the baseline
    assert events[:4] == ["statistic", "null", "null", "bootstrap"]
    for known in seen:
        assert known["t"] is result.t and known["layout"] == result.layout
        assert known["design"] == "paired" and known["n_pairs"] == 8 and known["conditions"] == result.conditions
    after = seen[1]
    assert after["thresholds"] is result.thresholds and after["split_half"] is result.split_half
    assert (after["null_exact"], after["null_permutations"]) == (result.null_exact, result.null_permutations)
    data = figures.FigureData.from_result(result)
    early = [figures.ahead_data(k, analysis.BLOCK_T) for k in seen]
    assert figures.same_inputs(figures.FILES[0], early[0], data) and figures.same_inputs(
        figures.FILES[1], early[1], data
    )
    seen.clear()
    contrast = analysis.compare(one, two, on_partial=seen.append, **kw)
    assert [k["stage"] for k in seen] == ["statistic", "null"]
    assert np.array_equal(seen[0]["t"], contrast.t) and seen[1]["design"] == contrast.design


def test_a_drawing_ahead_that_fails_is_drawn_again_and_fails_there(small_result, tmp_path):
    broken = _no_null_summary(small_result)
    out = tmp_path / "res"
    with FigureWorker().start() as w:
        w.draw_ahead(figures.ahead_data(_known(broken), analysis.BLOCK_T), figures.AHEAD["null"])
        with pytest.raises(FigureWorkerError, match=r"null_counts\.png.*no null summary"):
            report.write_results(broken, out, worker=w)
    assert _nothing_left(tmp_path, out)


def test_killing_the_worker_while_it_draws_ahead_ends_every_drawing_process(small_result):
    import time

    if not hasattr(os, "killpg"):
        pytest.skip("no process groups here")
    w = FigureWorker().start()
    for stage, names in figures.AHEAD.items():
        w.draw_ahead(figures.ahead_data(_known(small_result, stage), analysis.BLOCK_T), names)
    time.sleep(1.0)  # the worker has forked its drawings ahead (each takes longer than this test waits below)
    w.kill()
    deadline = time.monotonic() + 0.1  # the worker reaps its forks before it ends: nothing may linger
    while True:
        try:
            os.killpg(w.pid, 0)  # anyone left in the worker's process group?
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a drawing process outlived the worker"
        time.sleep(0.05)
