"""The results table in the shape of the plantain cards, as markdown and as a rich console table.

Rows: units over |t| > 3, over |t| > 5, over |d| > 0.8 (count, share, ratio to the null p99),
split-half r (median, IQR), max |t|. Then the top blocks, and the same threshold counts for
attention vs MLP units and for each token region when the layout labels them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dense_plantain.report import cells, robustness
from dense_plantain.report.direction import console_lines as direction_console_lines
from dense_plantain.report.direction import direction_markdown

if TYPE_CHECKING:
    from rich.console import JustifyMethod

TOP_BLOCKS = 5


def results_rows(res: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(Metric, Value, Significance) rows of the main table (plain text; markdown escapes later)."""
    rows = [
        (cells.metric_label(th), cells.count_cell(th) + robustness.count_interval(res, th), cells.significance_cell(th))
        for th in res["thresholds"]
    ]
    value, sig = cells.split_half_cells(res["split_half"])
    rows.append(("Split-half r (median)", value + robustness.split_interval(res), sig))
    value, sig = cells.max_t_cells(res)
    rows.append(("Max |t|", value, sig))
    return rows


def group_tables(res: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per axis (kind, region): (heading, header, rows) of threshold counts."""
    out = []
    for axis, heading in (("kind", "Attention and MLP units"), ("region", "By token region")):
        groups = [g for g in res.get("groups", []) if g["axis"] == axis]
        if not groups:
            continue
        header = ["Units", "n"] + [cells.threshold_label(th) for th in groups[0]["thresholds"]] + ["Max |t|"]
        rows = [
            [cells.group_name(g), f"{g['n_units']:,}"]
            + [cells.group_cell(th) for th in g["thresholds"]]
            + [cells.number(g.get("max_abs_t"))]
            for g in groups
        ]
        out.append((heading, header, rows))
    return out


def _md_table(header: list[str], rows: Sequence[Sequence[str]]) -> str:
    def line(values) -> str:
        return "| " + " | ".join(str(v).replace("|", cells.MD_PIPE) for v in values) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|"] + [line(r) for r in rows])


def results_table_md(res: Mapping[str, Any]) -> str:
    return _md_table(["Metric", "Value", "Significance"], results_rows(res))


def _block_order(res: Mapping[str, Any], pipe: str) -> str:
    """What the top blocks are sorted by: max |t|, or the one-sided max t / min t."""
    return {"greater": "max t", "less": "min t"}.get(str(res.get("tail", "two")), f"max {pipe}t{pipe}")


def top_blocks_md(res: Mapping[str, Any], n: int = TOP_BLOCKS) -> str:
    lines = [f"**Top blocks by {_block_order(res, cells.MD_PIPE)}:**", ""]
    lines += [f"- {cells.block_line(b)}" for b in res["top_blocks"][:n]]
    return "\n".join(lines)


def group_tables_md(res: Mapping[str, Any], level: str = "###") -> str:
    parts = []
    for heading, header, rows in group_tables(res):
        parts.append(f"{level} {heading}\n\n{_md_table(header, rows)}")
    if parts:
        parts.append("Cells: count (share of the group's units) · ratio to the group's own null p99.")
    return "\n\n".join(parts)


def results_markdown(res: Mapping[str, Any]) -> str:
    """results.md: the table, top blocks, per-group tables and a methods paragraph."""
    parts = [f"# Results: {cells.title(res)}", cells.weights_line(res), cells.contrast_sentence(res)]
    warning = cells.settings_warning(res)
    if warning:
        parts.append(warning)
    parts.append(results_table_md(res))
    if cells.any_zero_p99(res):
        parts.append(cells.zero_p99_note(res))
    parts.append(top_blocks_md(res))
    groups = group_tables_md(res)
    if groups:
        parts.append(groups)
    parts += robustness.markdown_sections(res)
    from dense_plantain.report.controls import controls_markdown

    controls = controls_markdown(res)
    if controls:
        parts.append(controls)
    direction = direction_markdown(res)
    if direction:
        parts.append(direction)
    parts.append("## Method\n\n" + cells.methods_paragraph(res))
    parts.append(
        "Per-unit statistics (t, d, p, p_maxT, q) are in `units.csv`; every number above, with the "
        "settings, versions and the capture's provenance, is in `results.json`."
    )
    return "\n\n".join(parts) + "\n"


def print_results(res: Mapping[str, Any], console=None) -> None:
    """The results table, top blocks and group tables on the console (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(cells.weights_line(res).replace("**", ""), highlight=False, markup=False)
    table = Table(title=cells.title(res), caption=cells.contrast_sentence(res), title_justify="left")
    justify: JustifyMethod
    for col, justify in (("Metric", "left"), ("Value", "right"), ("Significance", "left")):
        table.add_column(col, justify=justify)
    for row in results_rows(res):
        table.add_row(*row)
    console.print(table)
    if cells.any_zero_p99(res):
        console.print(cells.zero_p99_note(res), style="dim")
    console.print(f"Top blocks by {_block_order(res, '|')}:", style="bold")
    for b in res["top_blocks"][:TOP_BLOCKS]:
        console.print(f"  {cells.block_line(b, pipe='|')}", highlight=False, markup=False)
    for heading, header, rows in group_tables(res):
        sub = Table(title=heading, title_justify="left")
        for i, col in enumerate(header):
            sub.add_column(col, justify="left" if i == 0 else "right")
        for values in rows:
            sub.add_row(*values)
        console.print(sub)
    from dense_plantain.report.controls import print_controls

    print_controls(res, console)
    for line in direction_console_lines(res):
        console.print(line, highlight=False, markup=False)
