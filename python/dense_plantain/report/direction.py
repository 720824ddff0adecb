"""Rendering the direction test: results.md's **Direction** section, units.csv's columns, the figure.

The markdown reads only results.json's ``direction`` section (so ``report DIR`` renders it again);
the units.csv columns and the figure need the per-unit arrays of ``AnalysisResult.direction``.

* Direction table: units with a consistent direction at family-wise 0.05 (p_maxD < 0.05), most
  significant first, with their magnitude test beside them.
* Cross-table: magnitude-only / direction-only / both / neither (magnitude: p_maxT < 0.05),
  over all units and per block kind and token region.
* ``direction_vs_magnitude.png``: per unit |t| of the magnitude test against D_norm of the
  direction test, coloured by the cross-table class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from dense_plantain.report import cells

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dense_plantain.report.figures import FigureData

__all__ = [
    "CSV_COLUMNS",
    "FIGURE",
    "console_lines",
    "csv_cells",
    "csv_columns",
    "direction_vs_magnitude",
    "direction_markdown",
]

#: units.csv columns added when the direction test ran.
CSV_COLUMNS = ("D", "p_D", "p_maxD", "agree")
FIGURE = "direction_vs_magnitude.png"
CLASS_WORDS = {
    "both": "both",
    "magnitude": "magnitude only",
    "direction": "direction only",
    "neither": "neither",
}
CLASS_COLOURS = {"both": "#9467bd", "magnitude": "#1f77b4", "direction": "#d62728", "neither": "#bbbbbb"}


def csv_cells(direction: Any, j: int) -> list[str]:
    """unit ``j``'s ``CSV_COLUMNS`` cells (same number format as the other units.csv columns)."""
    return [format(float(v), ".10g") for v in (direction.D[j], direction.p[j], direction.p_max[j], direction.agree[j])]


def csv_columns(direction: Any) -> list[list[str]]:
    """The ``CSV_COLUMNS`` cells of every unit, column by column (`csv_cells` for all units at once)."""
    from dense_plantain.report.records import number_cells

    return [number_cells(v) for v in (direction.D, direction.p, direction.p_max, direction.agree)]


def _group_word(row: Mapping[str, Any]) -> str:
    if row["axis"] == "all":
        return "All units"
    return cells.group_name(row)


def cross_table_md(sec: Mapping[str, Any]) -> str:
    header = ["Units", "n"] + [CLASS_WORDS[c] for c in ("magnitude", "direction", "both", "neither")]
    rows = [
        [_group_word(r), f"{r['n_units']:,}"] + [f"{r[c]:,}" for c in ("magnitude", "direction", "both", "neither")]
        for r in sec["cross"]
    ]
    return _md_table(header, rows)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", cells.MD_PIPE) for v in values) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|"] + [line(r) for r in rows])


def units_table_md(sec: Mapping[str, Any]) -> str:
    n = sec["n_pairs"]
    header = ["Unit", "Kind", "Tokens", "D_norm", "Agree (held out)", "p_D", "p_maxD", "t (magnitude)", "p_maxT"]
    rows = [
        [
            u["unit"],
            cells.group_name({"axis": "kind", "group": u["kind"]}),
            cells.group_name({"axis": "region", "group": u["region"]}),
            cells.number(u["D_norm"], 3),
            f"{u['agree_k']}/{n}",
            cells.p_value(u["p_D"]),
            cells.p_value(u["p_maxD"]),
            cells.number(u["t"]),
            cells.p_value(u["p_maxT"]),
        ]
        for u in sec["top_units"]
    ]
    return _md_table(header, rows)


def direction_markdown(res: Mapping[str, Any], level: str = "##") -> str:
    """results.md's Direction section; empty when results.json has no ``direction`` section."""
    sec = res.get("direction")
    if not sec:
        return ""
    alpha = cells.threshold_value(float(sec["alpha"]))
    mode = "exact enumeration of" if sec["mode"] == "exact" else "Monte Carlo,"
    parts = [
        f"{level} Direction",
        f"**Direction:** {sec['n_significant']:,} of {sec['n_units']:,} units move along a consistent direction "
        f"of their {sec['vector_width']} columns at family-wise {alpha} (p_maxD < {alpha}); the magnitude test "
        f"finds {sec['n_magnitude_significant']:,} (p_maxT < {alpha}).",
    ]
    if sec["top_units"]:
        shown = len(sec["top_units"])
        more = f" (the first {shown} of {sec['n_significant']:,})" if shown < sec["n_significant"] else ""
        parts.append(f"Units with a significant consistent direction{more}:\n\n" + units_table_md(sec))
    parts.append(
        f"Magnitude (p_maxT < {alpha}) and direction (p_maxD < {alpha}), unit by unit:\n\n" + cross_table_md(sec)
    )
    parts.append(
        f"Per unit and pair i, delta_i is the B - A difference of the unit's {sec['vector_width']} signed column "
        "means over its tokens. D = sum over i != j of <delta_i, delta_j> (0 in expectation when the differences "
        "share no direction); D_norm = D / sum_i ||delta_i||^2. Its null flips whole difference vectors "
        f"({mode} {sec['n_permutations']:,} sign patterns, seed {sec['seed']}); p_maxD is the max-statistic "
        "family-wise p over units (max of D_norm). Agree: the pairs whose difference projects positively on the "
        f"direction learned from the other {sec['n_pairs'] - 1} pairs. Per-unit D, p_D, p_maxD and agree are in "
        f"`units.csv`; the figure `{FIGURE}` sets |t| against D_norm."
    )
    return "\n\n".join(parts)


def console_lines(res: Mapping[str, Any]) -> list[str]:
    """The Direction summary and cross-table counts for the console (empty without a direction section)."""
    sec = res.get("direction")
    if not sec:
        return []
    alpha = cells.threshold_value(float(sec["alpha"]))
    lines = [
        f"Direction: {sec['n_significant']:,} of {sec['n_units']:,} units with a consistent direction "
        f"(p_maxD < {alpha}); magnitude: {sec['n_magnitude_significant']:,} (p_maxT < {alpha})."
    ]
    for r in sec["cross"]:
        counts = ", ".join(f"{CLASS_WORDS[c]} {r[c]:,}" for c in ("magnitude", "direction", "both", "neither"))
        lines.append(f"  {_group_word(r)} ({r['n_units']:,}): {counts}")
    return lines


def direction_vs_magnitude(data: FigureData) -> Figure:
    """``FIGURE``: |t| of the magnitude test against D_norm, by cross-table class (``data.direction`` set)."""
    from matplotlib.figure import Figure

    dirn = data.direction
    if dirn is None:
        raise ValueError("the direction figure needs the direction test's results")
    t = data.t
    x = np.nan_to_num(np.abs(t), nan=0.0, posinf=0.0)
    finite = x[np.isfinite(np.abs(t))]
    if np.isinf(t).any() and finite.size:
        x[np.isinf(t)] = finite.max() * 1.1 if finite.max() > 0 else 1.0  # drawn at the right edge
    y = dirn.D_norm
    fig = Figure(figsize=(7, 5.5))
    fig.subplots_adjust(left=0.11, right=0.97, top=0.9, bottom=0.11)
    ax = fig.add_subplot()
    for cls in ("neither", "magnitude", "direction", "both"):
        mask = dirn.classes == cls
        if mask.any():
            ax.plot(
                x[mask],
                y[mask],
                linestyle="none",
                marker=".",
                markersize=3 if cls == "neither" else 5,
                color=CLASS_COLOURS[cls],
                label=f"{CLASS_WORDS[cls]} ({int(mask.sum()):,})",
                rasterized=True,
            )
    ax.axhline(0.0, color="#555555", linewidth=0.6)
    ax.set_xlabel("|t| of the unit's RMS (magnitude test)")
    ax.set_ylabel("D_norm of the signed vectors (direction test)")
    ax.set_title(f"Magnitude vs direction per unit (classes at family-wise {dirn.alpha:g})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return fig
