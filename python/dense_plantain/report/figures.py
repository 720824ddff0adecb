"""The figures of a results folder, drawn with matplotlib's Agg canvas (no display).

* ``abs_t_heatmap.png`` (``heatmap``): |t| laid out as the network, the main run and each baseline.
* ``abs_t_by_block.png``: |t| of every unit in layout order, blocks marked along the axis,
  attention and MLP units in different colours, the |t| = 3 and 5 lines drawn.
* ``null_counts.png``: per threshold, the null distribution of the count of units over it, with
  the observed count and the null p99 marked.
* ``split_half_r.png``: the split-half r over random splits, median and IQR marked.
* ``controls_blocks.png`` (``heatmap``, with baselines) and ``direction_vs_magnitude.png``
  (``direction``, when the direction test ran).

What the figures draw is gathered first into a `FigureData` (per-unit and per-permutation arrays
that results.json does not keep, and the results.json record for the words): plain numpy arrays,
dicts and the unit layout, so the figures can be drawn in another process (``report.worker``)
that never imports the statistics. Importing this module does not import matplotlib; drawing does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from dense_plantain import units
from dense_plantain.report import cells
from dense_plantain.report.records import CONTROLS_BLOCKS, DIRECTION_FIGURE, FIGURES, HEATMAP

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dense_plantain.analysis import AnalysisResult
    from dense_plantain.report.worker import FigureWorker

FILES = FIGURES
KIND_COLOURS = {"attention": "#1f77b4", "mlp": "#ff7f0e", "unknown": "#555555"}
OBSERVED = "#d62728"
DPI = 120


@dataclass(frozen=True)
class NullCounts:
    """One threshold's row of the null-counts figure: the observed count and the null's histogram."""

    metric: str
    threshold: float
    count: int
    null_p99: float | None
    histogram: np.ndarray | None  # int64, index k: permutations that put k units over


@dataclass(frozen=True)
class Panel:
    """One run's |t| for the heatmap and its per-block counts (the main run, then each baseline)."""

    label: str
    abs_t: np.ndarray
    block_counts: dict[str, int]  # units over FigureData.block_t per block name


@dataclass(frozen=True)
class DirectionData:
    """What the direction figure draws: D_norm and the cross-table class of every unit."""

    D_norm: np.ndarray
    classes: np.ndarray
    alpha: float


@dataclass(frozen=True)
class FigureData:
    """Everything the figures draw, from an `AnalysisResult` and its results.json record ``res``."""

    res: dict[str, Any]
    layout: units.Layout
    t: np.ndarray
    null_exact: bool
    null_permutations: int
    thresholds: tuple[NullCounts, ...]
    split_half_r: np.ndarray
    panels: tuple[Panel, ...]  # panels[0]: the main run
    block_t: float  # the |t| of the per-block counts (analysis.BLOCK_T)
    direction: DirectionData | None = None

    @property
    def abs_t(self) -> np.ndarray:
        return self.panels[0].abs_t

    @property
    def baselines(self) -> tuple[Panel, ...]:
        return self.panels[1:]

    @classmethod
    def from_result(cls, result: AnalysisResult, res: Mapping[str, Any] | None = None) -> FigureData:
        from dense_plantain.analysis import BLOCK_T

        res = dict(res if res is not None else result.to_json())
        labels = [rec["label"] for rec in result.controls.get("baselines") or []]
        runs = [("main run", result)] + list(zip(labels, result.baseline_results))
        dirn = getattr(result, "direction", None)
        return cls(
            res=res,
            layout=result.layout,
            t=np.asarray(result.t, dtype=np.float64),
            null_exact=bool(result.null_exact),
            null_permutations=int(result.null_permutations),
            thresholds=_null_counts(result.thresholds),
            split_half_r=np.asarray(result.split_half.r, dtype=np.float64),
            panels=tuple(Panel(name, np.abs(np.asarray(r.t, dtype=np.float64)), block_counts(r)) for name, r in runs),
            block_t=float(BLOCK_T),
            direction=None
            if dirn is None
            else DirectionData(np.asarray(dirn.D_norm, dtype=np.float64), np.asarray(dirn.classes), float(dirn.alpha)),
        )


def _null_counts(rows: Sequence[Any]) -> tuple[NullCounts, ...]:
    """What the null-counts figure reads of each `analysis.records.Threshold`."""
    return tuple(
        NullCounts(
            th.metric,
            float(th.threshold),
            int(th.count),
            None if th.null_p99 is None else float(th.null_p99),
            None if th.null_histogram is None else np.asarray(th.null_histogram, dtype=np.int64),
        )
        for th in rows
    )


def block_counts(result: AnalysisResult) -> dict[str, int]:
    """Units over |t| > 3 per block name (the block summaries' ``n_t_gt3``)."""
    return {b.block: int(b.n_t_gt3) for b in result.blocks}


def figure_names(data: FigureData) -> list[str]:
    """The files `draw` writes for ``data``, in drawing order."""
    names = [HEATMAP, *FILES]
    if data.baselines:
        names.append(CONTROLS_BLOCKS)
    if data.direction is not None:
        names.append(DIRECTION_FIGURE)
    return names


def figure_maker(name: str) -> Callable[[FigureData], Figure]:
    """The function that builds the figure of file ``name`` (imports matplotlib)."""
    from dense_plantain.report import direction, heatmap

    makers: dict[str, Callable[[FigureData], Figure]] = {
        HEATMAP: heatmap.abs_t_heatmap,
        FILES[0]: abs_t_by_block,
        FILES[1]: null_counts,
        FILES[2]: split_half,
        CONTROLS_BLOCKS: heatmap.controls_blocks,
        DIRECTION_FIGURE: direction.direction_vs_magnitude,
    }
    return makers[name]


#: The figures that can be drawn from what the analysis reports before it is done
#: (``on_partial``), by its stage: the |t| figures before the nulls, the null counts and the
#: split halves after them (while the bootstrap runs). Only for a run without baselines (the
#: heatmap would lack their panels); the direction figure waits for the end.
AHEAD = {"statistic": (HEATMAP, FILES[0]), "null": (FILES[1], FILES[2])}


def ahead_data(known: Mapping[str, Any], block_t: float) -> FigureData:
    """A `FigureData` of what the analysis reported at one stage (``on_partial``): the t-map, the
    layout and the title's fields, and after the nulls their threshold rows and the split halves;
    what is not known yet is empty."""
    t = np.asarray(known["t"], dtype=np.float64)
    res: dict[str, Any] = {"design": known["design"], "n_pairs": int(known["n_pairs"])}
    res["conditions"] = known["conditions"]
    rows = list(known.get("thresholds") or [])
    res["thresholds"] = [th.to_json() for th in rows]
    split = known.get("split_half")
    if split is not None:
        res["split_half"] = split.to_json()
    return FigureData(
        res=res,
        layout=known["layout"],
        t=t,
        null_exact=bool(known.get("null_exact", False)),
        null_permutations=int(known.get("null_permutations", 0)),
        thresholds=_null_counts(rows),
        split_half_r=np.asarray(split.r, dtype=np.float64) if split is not None else np.empty(0),
        panels=(Panel("main run", np.abs(t), {}),),
        block_t=float(block_t),
    )


def draw_ahead_with(worker: FigureWorker) -> Callable[[Mapping[str, Any]], None]:
    """The ``on_partial`` callback of `analysis.analyze` / `compare` that has ``worker`` draw the
    `AHEAD` figures of each stage as soon as the analysis reports it (for a run without
    baselines). Nothing is written here; `write_figures` later uses those drawings only where
    every input of the figure is equal (`same_inputs`), and draws the others again."""
    from dense_plantain.analysis import BLOCK_T

    def ahead(known: Mapping[str, Any]) -> None:
        names = AHEAD.get(str(known.get("stage")))
        if names:
            worker.draw_ahead(ahead_data(known, BLOCK_T), names)

    return ahead


def same_inputs(name: str, a: FigureData, b: FigureData) -> bool:
    """True when figure ``name`` drawn from ``a`` is the figure ``b`` gives: every input it reads
    (or every string it writes from them) is equal. Only for the `AHEAD` figures; False for any
    other."""

    def same(x: np.ndarray | None, y: np.ndarray | None) -> bool:
        if x is None or y is None:
            return x is y
        return x.dtype == y.dtype and x.shape == y.shape and bool(np.array_equal(x, y, equal_nan=True))

    la, lb = a.layout, b.layout
    if (la.name, la.readouts, la.blocks, la.steps) != (lb.name, lb.readouts, lb.blocks, lb.steps):
        return False
    title = cells.title(a.res) == cells.title(b.res)
    if name == FILES[0]:  # abs_t_by_block: the layout, |t|, the title and n
        return title and same(a.abs_t, b.abs_t) and a.res["n_pairs"] == b.res["n_pairs"]
    if name == HEATMAP:  # the layout, every panel's label and |t|, the colour scale's floor
        return (
            len(a.panels) == len(b.panels)
            and all(p.label == q.label and same(p.abs_t, q.abs_t) for p, q in zip(a.panels, b.panels))
            and a.block_t == b.block_t
        )
    if name == FILES[1]:  # null_counts: each threshold's null and count, its label and verdict, the title

        def words(d: FigureData) -> list[tuple[str, str]]:
            return [(cells.threshold_label(r), cells.significance_cell(r)) for r in d.res.get("thresholds", [])]

        return (
            title
            and (a.null_exact, a.null_permutations) == (b.null_exact, b.null_permutations)
            and len(a.thresholds) == len(b.thresholds)
            and all(
                (x.metric, x.threshold, x.count, x.null_p99) == (y.metric, y.threshold, y.count, y.null_p99)
                and same(x.histogram, y.histogram)
                for x, y in zip(a.thresholds, b.thresholds)
            )
            and words(a) == words(b)
        )
    if name == FILES[2]:  # split_half_r: r and its summary

        def summary(d: FigureData) -> tuple | None:
            sh = d.res.get("split_half")
            return None if sh is None else tuple(sh.get(k) for k in ("note", "median", "q25", "q75", "n_splits"))

        return summary(a) is not None and summary(a) == summary(b) and same(a.split_half_r, b.split_half_r)
    return False


def render(data: FigureData, name: str) -> bytes:
    """The PNG bytes of figure ``name`` (what `draw` writes to its file)."""
    import io

    buf = io.BytesIO()
    _save(figure_maker(name)(data), buf)
    return buf.getvalue()


def draw(data: FigureData, folder: Path, names: Sequence[str] | None = None) -> list[Path]:
    """Draw the figures ``names`` (default: all of `figure_names`) of ``data`` into ``folder``, here."""
    folder = Path(folder)
    paths = []
    for name in figure_names(data) if names is None else names:
        _save(figure_maker(name)(data), folder / name)
        paths.append(folder / name)
    return paths


def write_figures(
    result: AnalysisResult,
    folder: Path,
    res: dict | None = None,
    *,
    worker: FigureWorker | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> list[Path]:
    """Draw every figure of ``result`` into ``folder`` (`figure_names`); ``res`` is
    ``result.to_json()`` when the caller has it.

    With ``worker`` (a started `report.worker.FigureWorker`) they are drawn in its process while
    ``meanwhile()`` runs here, and this returns when both are done; if ``meanwhile`` raises, the
    worker is killed first. Without a worker, ``meanwhile()`` runs first and the figures are drawn
    here."""
    data = FigureData.from_result(result, res)
    folder = Path(folder)
    if worker is None:
        if meanwhile is not None:
            meanwhile()
        return draw(data, folder)
    job = worker.submit(data, folder)
    try:
        if meanwhile is not None:
            meanwhile()
    except BaseException:
        worker.kill()  # before the caller removes the folder it is drawing into
        raise
    return job.wait()


def _new_figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Figure, path: Path | IO[bytes]) -> None:
    # Light zlib compression: the PNGs are a few hundred KB either way, and level 6 costs ~3x the time.
    fig.savefig(path, dpi=DPI, format="png", pil_kwargs={"compress_level": 1})


def abs_t_by_block(data: FigureData) -> Figure:
    res = data.res
    layout = data.layout
    labels = layout.labels()
    abs_t = np.nan_to_num(data.abs_t, nan=0.0, posinf=0.0)
    x = np.arange(layout.n_units)
    fig = _new_figure(figsize=(14, 5))
    fig.subplots_adjust(left=0.05, right=0.99, top=0.92, bottom=0.2)  # fixed margins: no layout solver
    ax = fig.add_subplot()
    for kind in ("attention", "mlp", "unknown"):
        mask = labels["kind"] == kind
        if mask.any():
            name = "units" if kind == "unknown" else units.kind_word(kind) + " units"
            # One marker line per kind (much faster to draw than a scatter collection), rasterised.
            ax.plot(
                x[mask],
                abs_t[mask],
                ls="none",
                marker="o",
                ms=1.7,
                mew=0,
                color=KIND_COLOURS[kind],
                rasterized=True,
                label=f"{name} ({int(mask.sum()):,})",
            )
    for b in layout.blocks[1:]:
        ax.axvline(b.start - 0.5, color="#bbbbbb", lw=0.6, zorder=0)
    for level, style in ((3.0, "--"), (5.0, ":")):
        ax.axhline(level, color="#333333", lw=0.9, ls=style, label=f"|t| = {level:g}")
    centres = [b.start + b.n_units / 2 for b in layout.blocks]
    names = [b.name for b in layout.blocks]
    step = max(1, len(names) // 40)
    ax.set_xticks(centres[::step], names[::step], rotation=90, fontsize=7)
    ax.set_xlim(-0.5, layout.n_units - 0.5)
    ax.set_ylim(0, max(6.0, float(abs_t.max()) * 1.05))
    ax.set_ylabel("|t|")
    ax.set_xlabel(f"unit, in layout order ({layout.name} layout); grey lines separate blocks")
    ax.set_title(f"|t| per unit — {cells.title(res)} (n = {res['n_pairs']})", loc="left")
    ax.legend(loc="upper right", fontsize=8, markerscale=3, framealpha=0.9)
    return fig


def _hist_quantile(hist: np.ndarray, q: float) -> float:
    """The smallest count k with at least a share q of the patterns at or below it."""
    cum = np.cumsum(hist)
    return float(np.searchsorted(cum, q * cum[-1], side="left"))


def null_counts(data: FigureData) -> Figure:
    res = data.res
    rows = data.thresholds
    fig = _new_figure(figsize=(5 * len(rows), 4))
    fig.subplots_adjust(left=0.06, right=0.98, top=0.8, bottom=0.13, wspace=0.3)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    mode = "exact" if data.null_exact else "Monte Carlo"
    for ax, th, row in zip(axes, rows, res["thresholds"]):
        if th.histogram is None or th.null_p99 is None:
            raise ValueError(f"threshold {th.metric} > {th.threshold:g} has no null summary; the figure needs one")
        hist = np.asarray(th.histogram, dtype=np.int64)  # hist[k]: patterns with k units over
        null_max = int(np.flatnonzero(hist)[-1])
        # The null's range: up to well past its p99, but not out to a lone extreme permutation,
        # which would squash the bulk into one bar. Clipped permutations land in the last bar.
        top = int(min(null_max, max(np.ceil(2.5 * th.null_p99), _hist_quantile(hist, 0.995)) + 1))
        clipped = int(hist[top + 1 :].sum())
        width = max(1, int(np.ceil((top + 1) / 50)))  # whole counts per bar, so no bar is half empty
        edges = np.arange(-0.5, top + width + 0.5, width)
        label = f"null ({data.null_permutations:,} permutations, {mode})"
        if clipped:
            label += f"\n{clipped:,} above {top:,} drawn in the last bar (max {null_max:,})"
        shown = hist[: top + 1].copy()
        shown[top] += clipped
        heights = np.add.reduceat(shown, np.arange(0, top + 1, width))
        heights = np.pad(heights, (0, len(edges) - 1 - heights.size))
        ax.stairs(heights, edges, fill=True, color="#7f7f7f", label=label)  # one artist, not one per bar
        ax.axvline(th.null_p99, color="black", ls="--", lw=1, label=f"null p99 = {th.null_p99:,.4g}")
        null_right = top + 0.5 + max(1.0, 0.05 * top)
        if th.count <= 2 * null_right:
            ax.axvline(th.count, color=OBSERVED, lw=2, label=f"observed = {th.count:,}")
            ax.set_xlim(-0.5, max(null_right, th.count * 1.05 + 1))
        else:
            # Far beyond the null: drawing both to scale would squash the null into one bar.
            right = null_right * 1.35
            ax.set_xlim(-0.5, right)
            ax.annotate(
                f"observed = {th.count:,}\n(off scale, to the right)",
                xy=(1.0, 0.6),
                xycoords="axes fraction",
                xytext=(0.62, 0.6),
                textcoords="axes fraction",
                color=OBSERVED,
                ha="center",
                va="center",
                fontsize=9,
                arrowprops={"arrowstyle": "-|>", "color": OBSERVED, "lw": 2},
            )
        ax.set_xlabel(f"units with {cells.threshold_label(row)}")
        ax.set_ylabel("permutations")
        ax.set_title(f"{cells.threshold_label(row)}: {cells.significance_cell(row)}", fontsize=10, loc="left")
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"Observed count vs null counts — {cells.title(res)}", fontsize=11)
    return fig


def split_half(data: FigureData) -> Figure:
    res = data.res
    fig = _new_figure(figsize=(6, 4))
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.13)
    ax = fig.add_subplot()
    sh = res["split_half"]
    r = data.split_half_r[np.isfinite(data.split_half_r)]
    if not r.size:
        ax.text(
            0.5,
            0.5,
            f"Split-half r {sh.get('note') or 'not computed'}",
            ha="center",
            va="center",
            wrap=True,
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return fig
    heights, edges = np.histogram(r, bins=min(30, max(5, r.size // 3)))
    ax.stairs(heights, edges, fill=True, color="#2ca02c", alpha=0.8)
    ax.axvspan(sh["q25"], sh["q75"], color="#2ca02c", alpha=0.15, label=f"IQR [{sh['q25']:.2f}, {sh['q75']:.2f}]")
    ax.axvline(sh["median"], color="black", lw=1.5, label=f"median r = {sh['median']:.3f}")
    ax.set_xlabel("Pearson r across units between the two halves' t")
    ax.set_ylabel("splits")
    ax.set_title(f"Split-half consistency over {sh['n_splits']} random splits", loc="left", fontsize=10)
    ax.legend(fontsize=8)
    return fig
