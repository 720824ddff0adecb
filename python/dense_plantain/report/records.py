"""The machine-readable outputs: ``results.json`` (the record) and ``units.csv`` (one row per unit)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dense_plantain.errors import DensePlantainError
from dense_plantain.report import direction as report_direction

if TYPE_CHECKING:
    from dense_plantain.analysis import AnalysisResult

RESULTS_JSON = "results.json"
UNITS_CSV = "units.csv"
RESULTS_MD = "results.md"
#: The figures of a results folder (report/figures.py draws them, in this order).
FIGURES = ("abs_t_by_block.png", "null_counts.png", "split_half_r.png")
#: The network-shaped |t| map (every folder) and the per-block main-vs-baseline bars (with baselines).
HEATMAP = "abs_t_heatmap.png"
CONTROLS_BLOCKS = "controls_blocks.png"
#: |t| against the direction statistic (only when the direction test ran).
DIRECTION_FIGURE = report_direction.FIGURE
UNITS_COLUMNS = (
    "unit",
    "block",
    "name",
    "kind",
    "head",
    "slice",
    "region",
    "step",
    "mean_diff",
    "t",
    "d",
    "df",
    "p",
    "p_maxT",
    "q",
    "ci_low",
    "ci_high",
    "d_ci_low",
    "d_ci_high",
)
#: The interval columns (analysis.intervals); NaN where the design has none.
INTERVAL_COLUMNS = ("ci_low", "ci_high", "d_ci_low", "d_ci_high")


class ResultsFileError(DensePlantainError):
    """A results folder or results.json is missing, unreadable or not dense-plantain's."""


def _plain(value: Any) -> Any:
    """JSON-able copy: numpy scalars to Python, non-finite floats to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def results_json_text(record: dict[str, Any]) -> str:
    return json.dumps(_plain(record), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def units_csv_text(result: AnalysisResult) -> str:
    """units.csv: one row per unit, numbers as ``format(x, ".10g")``, text cells quoted as the
    ``csv`` module quotes them.

    Built column by column (each array turned into Python numbers once, then formatted; each
    distinct label quoted once) and joined, not written cell by cell: indexing 16,320 numpy
    scalars per column, then ``csv.writer`` on every row, was most of the time of the file."""
    labels = result.layout.labels()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = list(result.extra_columns)
    direction = result.direction  # the direction test's columns only when it ran
    writer.writerow(UNITS_COLUMNS + tuple(extra) + (report_direction.CSV_COLUMNS if direction is not None else ()))
    nan = np.full(result.n_units, np.nan)
    numbers = [result.mean_diff, result.t, result.d, result.df, result.p, result.p_maxT, result.q]
    numbers += [result.intervals.get(c, nan) for c in INTERVAL_COLUMNS]
    numbers += [result.extra_columns[c] for c in extra]
    columns: list[list[str]] = [list(map(str, range(result.n_units)))]
    columns += [_text_cells(labels[k]) for k in ("block", "name", "kind")]
    columns += [_int_cells(labels[k]) for k in ("head", "slice")]
    columns += [_text_cells(labels["region"]), _int_cells(labels["step"])]
    columns += [number_cells(col) for col in numbers]
    if direction is not None:
        columns += report_direction.csv_columns(direction)
    rows = zip(*columns, strict=True)
    return buf.getvalue() + "".join(",".join(row) + "\n" for row in rows)


def _int_cells(values: Any) -> list[str]:
    return list(map(str, np.asarray(values, dtype=np.int64).tolist()))


def _text_cells(values: Any) -> list[str]:
    """Each label as ``csv.writer`` writes it inside a row: as it is, or, when it holds a comma, a
    quote or a line break (the only characters that make the default dialect quote), as the csv
    module itself writes it."""
    out = []
    for value in np.asarray(values, dtype=object).tolist():
        text = str(value)
        if _NEEDS_CSV.search(text):
            probe = io.StringIO()
            csv.writer(probe, lineterminator="\n").writerow([text, ""])
            text = probe.getvalue()[: -len(",\n")]
        out.append(text)
    return out


_NEEDS_CSV = re.compile(r'[,"\r\n]')


def number_cells(values: Any) -> list[str]:
    """Each value as units.csv writes a number: ``format(float(x), ".10g")`` (nan, inf, -inf as such)."""
    return list(map(_G10, np.asarray(values, dtype=np.float64).ravel().tolist()))


_G10 = "{:.10g}".format  # the same as format(x, ".10g"), a little faster through map


def load_results(folder: str | Path) -> dict[str, Any]:
    """Read ``results.json`` from a results folder (or the file itself), checking it is ours."""
    from dense_plantain.analysis.records import RESULTS_FORMAT  # the statistics' import, only when reading

    folder = Path(folder)
    path = folder if folder.is_file() else folder / RESULTS_JSON
    if not path.exists():
        raise ResultsFileError(
            f"{path}: no such file. Pass a folder written by `dense-plantain analyze` "
            "(or `compare`), or a capture file to analyse first"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsFileError(f"{path}: cannot be read as JSON ({err}). Run `dense-plantain analyze` again") from None
    if not isinstance(record, dict) or "dense_plantain_results" not in record:
        raise ResultsFileError(f"{path}: not a dense-plantain results record (no 'dense_plantain_results' key)")
    if record["dense_plantain_results"] != RESULTS_FORMAT:
        raise ResultsFileError(
            f"{path}: results format {record['dense_plantain_results']!r}; this dense-plantain "
            f"reads format {RESULTS_FORMAT}. Run `dense-plantain analyze` again"
        )
    missing = _missing_key(record)
    if missing is not None:
        raise ResultsFileError(
            f"{path}: incomplete results record, no {missing!r} key (the file was cut short or "
            "edited). Run `dense-plantain analyze` (or `compare`) again to rewrite it"
        )
    return record


#: What the card reads from a record: top-level keys, and the keys it reads inside some of them.
_REQUIRED_KEYS = (
    "design",
    "n_pairs",
    "n_units",
    "group_sizes",
    "layout",
    "null",
    "thresholds",
    "split_half",
    "top_blocks",
    "settings",
    "conditions",
    "sources",
)
_REQUIRED_INNER = {"layout": ("name", "blocks"), "null": ("method", "mode", "n_permutations")}


def _missing_key(record: dict[str, Any]) -> str | None:
    """The first key the card needs that the record lacks (dotted for an inner key), or None."""
    for key in _REQUIRED_KEYS:
        if key not in record:
            return key
    for key, inner in _REQUIRED_INNER.items():
        part = record[key]
        for sub in inner:
            if not isinstance(part, dict) or sub not in part:
                return f"{key}.{sub}"
    return None
