"""The ``dense-plantain units`` table: a layout as a table a reader can check at a glance.

Rendering only: the rows (`Layout.kind_rows`), the words (``units.REGION_SHORT``) and the caveats
(`Layout.caveats`) come from ``units``.
"""

from __future__ import annotations

import sys

from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table

from dense_plantain.units import REGION_SHORT, Layout

__all__ = ["print_layout"]


def print_layout(layout: Layout, source: str, *, names: bool = False, console: Console | None = None) -> None:
    """Print the layout's table and caveats; with ``names``, every unit's index and name on stdout."""
    console = console or Console()
    multi_step = len(layout.steps) > 1
    table = Table(title=f"{layout.name} layout of {escape(source)}", header_style="bold", title_justify="left")
    for column in (
        ["blocks"] + (["step"] if multi_step else []) + ["input of", "per block", "attention", "MLP", "tokens", "units"]
    ):
        justify: JustifyMethod = "right" if column in ("per block", "attention", "MLP", "units", "step") else "left"
        table.add_column(column, justify=justify, overflow="fold", no_wrap=column in ("blocks", "tokens"))
    total = attention = mlp = 0
    for row in layout.kind_rows():
        n = len(row.blocks)
        label = f"{row.block_type}[0..{n - 1}]" if n > 1 else row.blocks[0]
        label = label.split("@", 1)[0]
        regions = [REGION_SHORT[r] for r in row.regions]
        cells = (
            [label]
            + ([str(row.step)] if multi_step else [])
            + [
                ", ".join(escape(m) for m in row.modules),
                f"{row.units:,}",
                f"{row.attention:,}",
                f"{row.mlp:,}",
                regions[0] if len(regions) == 1 else " | ".join(regions) + " apart",
                f"{row.units * n:,}",
            ]
        )
        table.add_row(*cells)
        total += row.units * n
        attention += row.attention * n
        mlp += row.mlp * n
    table.add_section()
    table.add_row(
        *(["total"] + ([""] if multi_step else []) + ["", "", f"{attention:,}", f"{mlp:,}", "", f"[bold]{total:,}[/]"])
    )
    console.print(table)
    for line in layout.caveats():
        console.print(f"- {escape(line)}")
    if names:
        # plain tab-separated lines (index, name), for `cut` and friends
        sys.stdout.write("".join(f"{i}\t{name}\n" for i, name in enumerate(layout.unit_names())))
