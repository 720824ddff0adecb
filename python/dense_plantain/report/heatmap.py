"""Figures of where the effect lives, laid out as the network, and main vs baseline per block.

* ``abs_t_heatmap.png``: |t| as an image: one row per block (layout order), one column per unit
  position: real attention heads with their slices side by side (head-major), each token region
  apart, then the MLP groups apart; positions a block does not have are blank. The main run and
  every baseline are panels on one colour scale.
* ``controls_blocks.png`` (only with baselines): per block, the units with |t| > 3 of the main
  run and of each baseline.

Unit positions come from the layout's labels (``units.Layout.labels``: kind, region, head, slice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from dense_plantain import units

if TYPE_CHECKING:
    from dense_plantain.report.figures import FigureData


def grid(layout: units.Layout) -> tuple[list[str], list[tuple[str, str, int]], np.ndarray, np.ndarray]:
    """Rows (block names), column groups ``(name, kind, first column)`` in column order, and each unit's
    (row, column).

    Columns: attention units keyed by (the region's rank within its block, head, slice), so that
    every block's first token region shares the same head columns (plantain: joint blocks' image
    tokens and single blocks' pooled tokens) and a second region (the heads layout's text tokens)
    gets columns of its own; MLP units by their group index. Unlabelled layouts get one group of
    unit indices within the block.

    The labels are constant along runs of units (one run per readout), so the words and ranks are
    worked out once per run and the keys per unit as arrays.
    """
    lab = layout.labels()
    rows = [b.name for b in layout.blocks]
    row_of = {name: i for i, name in enumerate(rows)}
    n = layout.n_units
    block, kind, region = (np.asarray(lab[k], dtype=object) for k in ("block", "kind", "region"))
    change = np.ones(n, dtype=bool)
    change[1:] = (block[1:] != block[:-1]) | (kind[1:] != kind[:-1]) | (region[1:] != region[:-1])
    starts = np.flatnonzero(change)
    stops = np.append(starts[1:], n)
    family_order = ("attention", "mlp", "unit")
    fam = np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    unit_row = np.empty(n, dtype=np.int64)
    regions_in_block: dict[tuple[str, str], list[str]] = {}
    region_words: dict[tuple[str, int], list[str]] = {}
    for lo, hi in zip(starts.tolist(), stops.tolist()):
        b, k, r = str(block[lo]), str(kind[lo]), str(region[lo])
        seen = regions_in_block.setdefault((b, k), [])
        if r not in seen:
            seen.append(r)
        # Units of an unlabelled layout (kind "unknown") are columns of kind "unit".
        family = k if k in ("attention", "mlp") else "unit"
        words = region_words.setdefault((family, seen.index(r)), [])
        if units.region_word(r) not in words:
            words.append(units.region_word(r))
        fam[lo:hi] = family_order.index(family)
        rank[lo:hi] = seen.index(r)
        unit_row[lo:hi] = row_of[b]
    head = np.asarray(lab["head"], dtype=np.int64)
    slc = np.asarray(lab["slice"], dtype=np.int64)
    within = np.arange(n, dtype=np.int64) - np.asarray([b.start for b in layout.blocks], dtype=np.int64)[unit_row]
    key_a = np.where(fam == 0, head, 0)
    key_b = np.where(fam == 2, within, slc)
    # One int64 per (family, rank, a, b), ordered as those tuples: each part shifted to start at 0
    # and given a radix larger than its range.
    code = np.zeros(n, dtype=np.int64)
    for part in (fam, rank, key_a, key_b):
        part = part - part.min()
        code = code * (int(part.max()) + 1) + part
    _, first, unit_col = np.unique(code, return_index=True, return_inverse=True)
    groups: list[tuple[str, str, int]] = []
    col_fam, col_rank = fam[first], rank[first]
    segment = np.ones(len(first), dtype=bool)
    segment[1:] = (col_fam[1:] != col_fam[:-1]) | (col_rank[1:] != col_rank[:-1])
    for col in np.flatnonzero(segment).tolist():
        family = family_order[int(col_fam[col])]
        words = region_words[(family, int(col_rank[col]))]
        name = f"{units.kind_word(family) if family != 'unit' else 'units'} ({' / '.join(words)})"
        if not groups or groups[-1][0] != name:
            groups.append((name, family, col))
    return rows, groups, unit_row, np.asarray(unit_col, dtype=np.int64).reshape(n)


def _matrix(abs_t: np.ndarray, n_rows: int, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """|t| placed at each unit's (row, column) of the grid; NaN where a block has no unit."""
    m = np.full((n_rows, int(c.max()) + 1), np.nan)
    m[r, c] = np.nan_to_num(abs_t, nan=np.nan, posinf=np.nan)
    return m


def abs_t_heatmap(data: FigureData) -> Figure:
    """The main run's |t| (and each baseline's) laid out as the network, on one colour scale."""
    panels = data.panels
    rows, groups, unit_row, unit_col = grid(data.layout)  # baselines share the main run's layout
    mats = [_matrix(p.abs_t, len(rows), unit_row, unit_col) for p in panels]
    finite = [m[np.isfinite(m)] for m in mats]
    vmax = max([float(f.max()) for f in finite if f.size] + [data.block_t])
    fig = Figure(figsize=(14, 1.2 + 0.16 * len(rows) * len(panels) + 0.8 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"hspace": 0.6})[:, 0]
    image = None
    for ax, panel, m in zip(axes, panels, mats):
        image = ax.imshow(m, aspect="auto", interpolation="nearest", cmap="magma", vmin=0.0, vmax=vmax)
        ax.set_title(f"|t| per unit: {panel.label}", loc="left", fontsize=9)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=5 if len(rows) > 12 else 7)
        starts = [g[2] for g in groups]
        for x in starts[1:]:
            ax.axvline(x - 0.5, color="white", lw=1.2)
        ax.set_xticks([s for s in starts])
        ax.set_xticklabels([g[0] for g in groups], fontsize=7, ha="left")
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01, label="|t|")
    return fig


def controls_blocks(data: FigureData) -> Figure:
    """Per block (layout order), units with |t| > 3: main run and each baseline side by side."""
    blocks = [b.name for b in data.layout.blocks]
    x = np.arange(len(blocks))
    panels = data.panels
    width = 0.8 / len(panels)
    fig = Figure(figsize=(max(8, 0.35 * len(blocks) + 2), 4))
    fig.subplots_adjust(left=0.07, right=0.99, top=0.9, bottom=0.3)
    ax = fig.add_subplot()
    for k, panel in enumerate(panels):
        counts = panel.block_counts
        ax.bar(x + (k - (len(panels) - 1) / 2) * width, [counts[b] for b in blocks], width, label=panel.label)
    ax.set_xticks(x)
    ax.set_xticklabels(blocks, rotation=90, fontsize=7)
    ax.set_ylabel(f"units with |t| > {data.block_t:g}")
    ax.set_title(f"Units with |t| > {data.block_t:g} per block: main run vs baselines", loc="left", fontsize=10)
    ax.legend(fontsize=8)
    return fig
