"""The ``dense-plantain units`` summary: a layout as a table a reader can check at a glance."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from dense_plantain.units import Layout


@dataclass
class KindRow:
    """One row of the table: every block of one kind (joint / single) at one step."""

    kind: str
    step: int
    blocks: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    attention: int = 0
    mlp: int = 0
    regions: list[str] = field(default_factory=list)

    @property
    def units(self) -> int:
        return self.attention + self.mlp


def summarize(layout: Layout) -> list[KindRow]:
    """Rows per block kind and step, with per-block unit counts (blocks of a kind are alike)."""
    rows: OrderedDict[tuple[str, int], KindRow] = OrderedDict()
    for r in layout.readouts:
        kind = r.block.split("[", 1)[0]
        row = rows.setdefault((kind, r.step), KindRow(kind, r.step))
        if not row.blocks or row.blocks[-1] != r.block:
            if r.block in row.blocks:
                continue
            row.blocks.append(r.block)
        if len(row.blocks) > 1:
            continue  # count the first block of each kind; the others repeat it
        module = r.module.split(".attn.", 1)[-1]  # the block column already says which blocks
        if module not in row.modules:
            row.modules.append(module)
        if r.kind == "mlp":
            row.mlp += r.n_groups
        else:
            row.attention += r.n_groups
        region = {"all": "text+image pooled", "image": "image", "text": "text"}[r.region]
        if region not in row.regions:
            row.regions.append(region)
    return list(rows.values())


def caveats(layout: Layout) -> list[str]:
    """Plain statements of what the units are, computed from the layout."""
    lines = []
    if layout.name != "plantain":
        return lines
    for r in layout.readouts:
        if r.kind == "attention" and r.head_width and r.group_width < r.head_width:
            lines.append(
                f'A plantain "head" is a {r.group_width}-column slice, not an attention head: each real '
                f"{r.head_width}-dim head is {r.head_width // r.group_width} slices."
            )
            break
    single = [row for row in summarize(layout) if row.kind == "single"]
    if single and single[0].mlp:
        row = single[0]
        lines.append(
            f"In single blocks {row.mlp} of the {row.units} slices per block are SwiGLU MLP activations, not attention "
            f"({row.mlp * len(row.blocks):,} of the {layout.n_units:,} units in all), and every single-block value "
            "pools text and image tokens, so wording differences between A and B prompts leak into them."
        )
    joint = [row for row in summarize(layout) if row.kind == "joint"]
    if joint and joint[0].regions == ["image"]:
        lines.append("Joint blocks are read on image tokens only (their text tokens leave through to_add_out).")
    lines.append("`--layout heads` gives true attention heads with image and text tokens apart, and MLP apart.")
    return lines


def print_layout(layout: Layout, source: str, *, names: bool = False, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    multi_step = len(layout.steps) > 1
    table = Table(title=f"{layout.name} layout of {escape(source)}", header_style="bold", title_justify="left")
    for column in (
        ["blocks"] + (["step"] if multi_step else []) + ["input of", "per block", "attention", "MLP", "tokens", "units"]
    ):
        justify = "right" if column in ("per block", "attention", "MLP", "units", "step") else "left"
        table.add_column(column, justify=justify, overflow="fold", no_wrap=column in ("blocks", "tokens"))
    total = attention = mlp = 0
    for row in summarize(layout):
        n = len(row.blocks)
        label = f"{row.kind}[0..{n - 1}]" if n > 1 else row.blocks[0]
        label = label.split("@", 1)[0]
        cells = (
            [label]
            + ([str(row.step)] if multi_step else [])
            + [
                ", ".join(escape(m) for m in row.modules),
                f"{row.units:,}",
                f"{row.attention:,}",
                f"{row.mlp:,}",
                row.regions[0] if len(row.regions) == 1 else " | ".join(row.regions) + " apart",
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
    for line in caveats(layout):
        console.print(f"- {escape(line)}")
    if names:
        import sys

        # plain tab-separated lines (index, name), for `cut` and friends
        sys.stdout.write("".join(f"{i}\t{name}\n" for i, name in enumerate(layout.unit_names())))
