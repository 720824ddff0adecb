"""One driver for every design: statistic, nulls, counts, groups, blocks, split half, FWER, q.

`run_design(design, layout, settings, ...)` asks the design (:mod:`.designs`) for its per-unit
statistic, its null over all units and over each group of the layout's partitions (kind, token
region), the observed counts and the split half, and builds the `AnalysisResult` the same way for
all of them: thresholds against the null's p99 / median / max, the max-statistic p through the
null's ``fwer_p``, Benjamini-Hochberg q, block summaries.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from collections.abc import Callable
from importlib import metadata as _metadata
from typing import Any, cast

import numpy as np

from dense_plantain import __version__
from dense_plantain.analysis import intervals
from dense_plantain.analysis.designs import Design, NullOptions, Progress, tail_p
from dense_plantain.analysis.records import AnalysisResult, BlockSummary, Threshold, UnitGroup
from dense_plantain.nulls import NullDistribution
from dense_plantain.stats import StatsInputError, Tail
from dense_plantain.units import Layout

__all__ = ["BLOCK_T", "D_THRESHOLDS", "T_THRESHOLDS", "bh_q", "block_summaries", "run_design", "unit_partitions"]

T_THRESHOLDS = (3.0, 5.0)
D_THRESHOLDS = (0.8,)
#: The block summary counts units over this |t| (the cards' "heads at |t|>3").
BLOCK_T = 3.0
#: A p99 with fewer permutations than this above it is flagged in the tables.
FEW_ABOVE_P99 = 10


def null_options(settings: dict[str, Any]) -> NullOptions:
    return NullOptions(
        t_thresholds=T_THRESHOLDS,
        d_thresholds=D_THRESHOLDS,
        permutations=int(settings["permutations"]),
        exact=settings["exact"],
        seed=int(settings["seed"]),
        tail=cast(Tail, str(settings.get("tail", "two"))),  # the engine refuses any other word
        fwer_null=str(settings.get("fwer_null", "max")),
    )


def run_design(
    design: Design,
    layout: Layout,
    settings: dict[str, Any],
    *,
    conditions: dict[str, Any],
    sources: list[dict[str, Any]],
    weights: dict[str, Any] | None = None,
    progress: Progress | None = None,
    vectors: tuple[np.ndarray, int] | None = None,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> AnalysisResult:
    """The whole analysis of one design over one unit layout.

    ``on_partial``: called twice with what is known so far, so that work that needs only that
    (the command's figures) can start while the rest is computed: before the nulls, with
    ``stage="statistic"``, ``design``, ``n_pairs``, ``conditions``, ``layout`` and the observed
    ``t``; after the null and the split halves (before the bootstrap, the intervals and the
    direction test), with ``stage="null"``, the same and ``thresholds`` (the `Threshold` rows of
    all units), ``null_exact``, ``null_permutations`` and ``split_half`` (as in the result).

    ``vectors``: ``(delta_vec [pairs x units * W], W)``, the signed vector differences of the same
    pairs; with them the direction test runs beside the magnitude test (``analysis.direction``,
    same permutations, exactness and seed) and fills ``AnalysisResult.direction``."""
    options = null_options(settings)
    st = design.statistic()
    known = {
        "design": design.name,
        "n_pairs": int(design.n_pairs),
        "conditions": conditions,
        "layout": layout,
        "t": st.t,
    }
    if on_partial is not None:
        on_partial({"stage": "statistic", **known})
    p_tail = tail_p(st.t, st.df, options.tail)  # the parametric p of the alternative asked for
    partitions = unit_partitions(layout)
    labels = [_labels(parts, layout.n_units) for _, parts in partitions]
    null = design.null(options, labels if settings["group_nulls"] else [], progress)

    if options.tail == "two":
        p_max = np.asarray(null.fwer_p(st.t), dtype=np.float64)
    else:  # one-sided: the tail's max statistic (or max |t|, fwer_null "max_abs"), paired and Welch designs
        p_max = np.asarray(null.fwer_p(st.t, null=options.fwer_null), dtype=np.float64)  # type: ignore[call-arg]
    observed_all = design.observed_counts(None, options)
    thresholds = _threshold_rows(st.t, st.d, null, observed_all, options)
    groups = []
    for k, (axis, parts) in enumerate(partitions):
        for g, (name, cols) in enumerate(parts):
            observed = design.observed_counts(cols, options)
            where = (k, g) if settings["group_nulls"] else None
            rows = _threshold_rows(st.t[cols], st.d[cols], null if where else None, observed, options, where)
            groups.append(UnitGroup(axis, name, int(cols.size), _nanmax(np.abs(st.t[cols])), rows))

    max_q = getattr(null, "max_stat_percentile", None)
    split_half = design.split_half(int(settings["splits"]), int(settings["seed"]))
    if on_partial is not None:
        null_known = {"thresholds": thresholds, "split_half": split_half}
        null_known |= {"null_exact": bool(null.exact), "null_permutations": int(null.n_permutations)}
        on_partial({"stage": "null", **known, **null_known})
    robustness: dict[str, Any] = {}
    draws = int(settings.get("bootstrap", 0) or 0)
    if draws > 0:
        finite = split_half.r[np.isfinite(split_half.r)]
        robustness["bootstrap"] = intervals.bootstrap_record(
            design,
            options,
            observed_all,
            draws=draws,
            seed=int(settings["seed"]),
            splits=int(settings.get("bootstrap_splits", 0) or 0),
            split_median=float(np.median(finite)) if finite.size else None,
        )
    direction = None
    if vectors is not None:
        from dense_plantain.analysis.direction import direction_analysis

        direction = direction_analysis(
            vectors[0],
            vectors[1],
            layout,
            p_max,
            partitions,
            permutations=options.permutations,
            exact=options.exact,
            seed=options.seed,
            progress=progress,
        )
    return AnalysisResult(
        design=design.name,
        layout=layout,
        n_pairs=int(design.n_pairs),
        group_sizes=tuple(int(v) for v in design.group_sizes),
        mean_diff=st.mean_diff,
        t=st.t,
        d=st.d,
        df=st.df,
        p=p_tail,
        p_maxT=p_max,
        q=bh_q(p_tail),
        thresholds=thresholds,
        groups=groups,
        blocks=block_summaries(layout, st.t, st.d, options.tail),
        split_half=split_half,
        null_method=design.null_method,
        null_exact=bool(null.exact),
        null_permutations=int(null.n_permutations),
        null_includes_identity=bool(null.includes_identity),
        null_max_abs_t_p95=float(max_q(95)) if max_q else float("nan"),
        null_max_abs_t_p99=float(max_q(99)) if max_q else float("nan"),
        weights=weights,
        settings=settings,
        conditions=conditions,
        sources=sources,
        versions=versions(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        tail=options.tail,
        fwer_null=options.fwer_null if options.tail != "two" else "max_abs",
        intervals=intervals.unit_intervals(design, st.t),
        robustness=robustness,
        direction=direction,
    )


def _labels(parts: list[tuple[str, np.ndarray]], n_units: int) -> np.ndarray:
    """A partition as one int label per unit (the part's index; -1 for units in no part)."""
    out = np.full(n_units, -1, dtype=np.int64)
    for g, (_, cols) in enumerate(parts):
        out[cols] = g
    return out


def _threshold_rows(
    t: np.ndarray,
    d: np.ndarray,
    null: NullDistribution | None,
    observed: np.ndarray,
    options: NullOptions,
    where: tuple[int, int] | None = None,
) -> list[Threshold]:
    """One row per threshold: the observed count (through the null's route) and the null's summaries."""
    partition, group = where if where else (None, None)
    rows = []
    specs = [("t", th, np.abs(t)) for th in options.t_thresholds] + [
        ("d", th, np.abs(d)) for th in options.d_thresholds
    ]
    for i, (metric, th, values) in enumerate(specs):
        row = Threshold(metric, float(th), int(observed[i]), int(values.size), tail=options.tail)
        if null is not None:
            row.null_p99 = float(null.percentile(99, i, partition, group))
            row.null_max = int(null.max_count(i, partition, group))
            row.null_median = float(null.median(i, partition, group))
            row.null_n_above_p99 = int(null.n_at_least(int(np.floor(row.null_p99)) + 1, i, partition, group))
            row.null_histogram = np.asarray(null.histogram(i, partition, group), dtype=np.int64)
        rows.append(row)
    return rows


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over the finite p-values (NaN p stays NaN); p outside [0, 1] is refused."""
    p = np.asarray(p, dtype=np.float64)
    outside = np.isfinite(p) & ((p < 0.0) | (p > 1.0)) | np.isinf(p)
    if outside.any():
        i = int(np.flatnonzero(outside.ravel())[0])
        raise StatsInputError(
            f"bh_q: p-values must lie in [0, 1]; p[{i}] = {float(p.ravel()[i])!r} ({int(outside.sum())} outside). "
            "Pass the p-values of a test, not statistics"
        )
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if not m:
        return q
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * m / np.arange(1, m + 1)
    monotone = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(monotone, 1.0)
    q[ok] = out
    return q


def block_summaries(layout: Layout, t: np.ndarray, d: np.ndarray, tail: str = "two") -> list[BlockSummary]:
    """Every block's summary for the alternative ``tail``, largest first.

    Two-sided: max |t| (and its unit), units with |t| > 3, median |d|. One-sided, the same on the
    tail's oriented statistic ``s = t`` ("greater") or ``s = -t`` ("less"), as the one-sided unit
    counts and max statistic: max s, units with s > 3 (t > 3, or t < -3), median of the oriented d.
    The values stay oriented in `BlockSummary` (``tail`` says how); the report turns "less" back
    into min t, t < -3 and median d."""
    names = layout.unit_names()
    if tail == "two":
        st, sd = np.abs(t), np.abs(d)
    else:
        sign = 1.0 if tail == "greater" else -1.0
        st, sd = sign * np.asarray(t, np.float64), sign * np.asarray(d, np.float64)
    out = []
    for b in layout.blocks:
        bt, bd = st[b.units], sd[b.units]
        finite = ~np.isnan(bt)
        if finite.any():
            j = int(np.nanargmax(bt))
            top, unit = float(bt[j]), names[b.start + j]
        else:
            top, unit = float("nan"), ""
        med = float(np.nanmedian(bd)) if (~np.isnan(bd)).any() else float("nan")
        with np.errstate(invalid="ignore"):
            over = int((bt > BLOCK_T).sum())
        out.append(BlockSummary(b.name, b.n_units, top, unit, over, med, tail=tail))
    # Stable sort: blocks without a defined t last, ties in layout order.
    return sorted(out, key=lambda s: (np.isnan(s.max_abs_t), -np.nan_to_num(s.max_abs_t, nan=0.0)))


def unit_partitions(layout: Layout) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Partitions of the units worth a table of their own: by kind and by token region.

    Only for labelled layouts, and only when a partition has more than one part. Returns
    ``[(axis, [(name, column indices), ...]), ...]``.
    """
    if not layout.has_labels():
        return []
    labels = layout.labels()
    out = []
    for axis in ("kind", "region"):
        values = labels[axis]
        names = [v for v in dict.fromkeys(values.tolist()) if v != "unknown"]
        if len(names) > 1:
            out.append((axis, [(name, np.flatnonzero(values == name)) for name in names]))
    return out


def _nanmax(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.max()) if finite.size else float("nan")


def versions() -> dict[str, str]:
    out = {"dense_plantain": __version__, "python": platform.python_version(), "platform": sys.platform}
    for dist in ("numpy", "scipy", "matplotlib", "safetensors"):
        try:
            out[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            pass
    return out
