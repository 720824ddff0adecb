"""From capture files to results: per-unit statistics, nulls, block summaries. No rendering.

``analyze`` tests one capture (condition B minus condition A, paired by pair). ``compare`` tests
the contrast of two captures' contrasts, ``(B1 - A1) - (B2 - A2)``: paired again when both
captures hold the same pairs in the same order, Welch's t over the two samples of differences
otherwise. Both return an `AnalysisResult`; ``AnalysisResult.to_json()`` is the ``results.json``
record that the report renders, and that ``dense-plantain report DIR`` reads back.

Every count is "units strictly over a threshold": |t| > 3, |t| > 5, |d| > 0.8. Each count is
set against the same count under the null (sign flips for paired designs, label shuffles for
Welch): the null's 99th percentile (``numpy.percentile``, linear interpolation) and the ratio
observed / p99. When the p99 is 0 the ratio is undefined; ``ratio`` is then ``None`` and
``null_max`` (the largest null count) is what the report shows instead.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

from dense_plantain import __version__, welch
from dense_plantain.errors import AnalysisError
from dense_plantain.prompts import MIN_PAIRS
from dense_plantain.store import Capture, read_capture
from dense_plantain.units import Layout

#: Marker and version of the results.json record; ``report DIR`` checks it.
RESULTS_FORMAT = 1
T_THRESHOLDS = (3.0, 5.0)
D_THRESHOLDS = (0.8,)
#: The block summary counts units over this |t| (the cards' "heads at |t|>3").
BLOCK_T = 3.0

#: ``progress(done, total)``: called between chunks of null permutations, over all null runs.
Progress = Callable[[int, int], None]


# --- result records ---------------------------------------------------------------------------


@dataclass
class Threshold:
    """Units over one threshold, set against the null distribution of that count."""

    metric: str  # "t" | "d"
    threshold: float
    count: int
    n_units: int
    null_counts: np.ndarray | None = field(default=None, repr=False)  # int64 [P]; None: no null run
    # Summaries of the null, computed once (an exact null has 2^(n-1) rows); None without a null.
    null_p99: float | None = field(init=False, default=None)
    null_max: int | None = field(init=False, default=None)
    null_median: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.null_counts is not None:
            self.null_p99 = float(np.percentile(self.null_counts, 99))
            self.null_max = int(self.null_counts.max())
            self.null_median = float(np.median(self.null_counts))

    @property
    def fraction(self) -> float:
        return self.count / self.n_units if self.n_units else float("nan")

    @property
    def ratio(self) -> float | None:
        """Observed count over the null p99; ``None`` when the p99 is 0 (see the module docs)."""
        p99 = self.null_p99
        return self.count / p99 if p99 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "threshold": self.threshold,
            "count": self.count,
            "n_units": self.n_units,
            "fraction": self.fraction,
            "null_p99": self.null_p99,
            "null_max": self.null_max,
            "null_median": self.null_median,
            "ratio": self.ratio,
        }


@dataclass
class UnitGroup:
    """The threshold table restricted to the units of one kind or one token region."""

    axis: str  # "kind" | "region"
    name: str  # "attention", "mlp" / "image", "text", "all"
    n_units: int
    max_abs_t: float
    thresholds: list[Threshold]

    def to_json(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "group": self.name,
            "n_units": self.n_units,
            "max_abs_t": _finite(self.max_abs_t),
            "thresholds": [th.to_json() for th in self.thresholds],
        }


@dataclass
class BlockSummary:
    block: str
    n_units: int
    max_abs_t: float
    max_unit: str  # the unit with the largest |t| in the block
    n_t_gt3: int
    median_abs_d: float

    def to_json(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "max_abs_t": _finite(self.max_abs_t),
            "max_unit": self.max_unit,
            "n_t_gt3": self.n_t_gt3,
            "n_units": self.n_units,
            "median_abs_d": _finite(self.median_abs_d),
        }


@dataclass
class SplitHalfSummary:
    r: np.ndarray  # float64 [K]; empty when not computed
    n_splits: int
    note: str | None = None  # why it was not computed
    assignments: np.ndarray | None = field(default=None, repr=False)  # bool [K x n]: pairs in the first half

    def _q(self, q: float) -> float | None:
        finite = self.r[np.isfinite(self.r)]
        return float(np.percentile(finite, q)) if finite.size else None

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self._q(50),
            "q25": self._q(25),
            "q75": self._q(75),
            "n_splits": self.n_splits,
            "n_finite": int(np.isfinite(self.r).sum()),
            "note": self.note,
        }


@dataclass
class AnalysisResult:
    """Everything ``analyze``/``compare`` found, per unit and in summary."""

    design: str  # "paired" | "contrast-paired" | "contrast-welch"
    layout: Layout
    n_pairs: int  # pairs behind each statistic (Welch: n1 + n2)
    group_sizes: tuple[int, ...]  # (n,) or (n1, n2)
    mean_diff: np.ndarray
    t: np.ndarray
    d: np.ndarray
    df: np.ndarray  # degrees of freedom behind p (constant n - 1 for paired designs)
    p: np.ndarray
    p_maxT: np.ndarray
    q: np.ndarray
    thresholds: list[Threshold]
    groups: list[UnitGroup]
    blocks: list[BlockSummary]  # every block, largest max |t| first
    split_half: SplitHalfSummary
    null_method: str  # "sign-flip" | "label-shuffle"
    null_exact: bool
    null_permutations: int
    null_max_abs_t: np.ndarray = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def n_units(self) -> int:
        return self.layout.n_units

    @property
    def abs_t(self) -> np.ndarray:
        return np.abs(self.t)

    @property
    def max_abs_t(self) -> float:
        finite = self.abs_t[~np.isnan(self.t)]
        return float(finite.max()) if finite.size else float("nan")

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` record (JSON-able; non-finite numbers become null)."""
        names = self.layout.unit_names()
        top = int(np.nanargmax(self.abs_t)) if np.isfinite(self.max_abs_t) else None
        return {
            "dense_plantain_results": RESULTS_FORMAT,
            "design": self.design,
            "conditions": self.conditions,
            "n_pairs": self.n_pairs,
            "group_sizes": list(self.group_sizes),
            "n_units": self.n_units,
            "max_abs_t": _finite(self.max_abs_t),
            "max_abs_t_unit": names[top] if top is not None else None,
            "max_abs_t_p_maxT": _finite(self.p_maxT[top]) if top is not None else None,
            "thresholds": [th.to_json() for th in self.thresholds],
            "groups": [g.to_json() for g in self.groups],
            "split_half": self.split_half.to_json(),
            "top_blocks": [b.to_json() for b in self.blocks],
            "null": {
                "method": self.null_method,
                "mode": "exact" if self.null_exact else "monte-carlo",
                "n_permutations": self.null_permutations,
                "seed": self.settings.get("seed"),
                "max_abs_t_p95": _finite(np.percentile(self.null_max_abs_t, 95)),
                "max_abs_t_p99": _finite(np.percentile(self.null_max_abs_t, 99)),
            },
            "settings": self.settings,
            "seed": self.settings.get("seed"),
            "layout": layout_summary(self.layout),
            "versions": self.versions,
            "sources": self.sources,
            "created": self.created,
        }


# --- entry points -----------------------------------------------------------------------------


def analyze(
    capture: Capture | str | Path,
    *,
    permutations: int = 1000,
    exact: bool | None = None,
    seed: int = 0,
    splits: int = 100,
    group_nulls: bool = True,
    progress: Progress | None = None,
) -> AnalysisResult:
    """Test every unit of one capture for a B - A difference over its pairs.

    ``exact=None`` enumerates all 2^(n-1) sign patterns when there are at most ``permutations``
    of them; ``True`` forces the enumeration, ``False`` forces Monte Carlo. ``group_nulls`` also
    runs the null on the attention / MLP units and on each token region apart, so that their
    tables carry their own p99 (one more null run per partition of the units).
    """
    from dense_plantain import stats

    cap = _load(capture)
    _require_pairs(cap)
    _check_settings(permutations, splits)
    diff = _diff(stats, cap.a, cap.b, cap)
    settings = _settings(permutations, exact, seed, splits, group_nulls)
    return _paired_result(
        stats,
        diff,
        cap.layout,
        design="paired",
        settings=settings,
        progress=progress,
        conditions=_conditions(cap),
        sources=[_provenance(cap, "capture")],
    )


def compare(
    capture1: Capture | str | Path,
    capture2: Capture | str | Path,
    *,
    pairing: str = "auto",
    permutations: int = 1000,
    exact: bool | None = None,
    seed: int = 0,
    splits: int = 100,
    group_nulls: bool = True,
    allow_different_settings: bool = False,
    progress: Progress | None = None,
) -> AnalysisResult:
    """Per unit, the contrast of contrasts ``(B1 - A1) - (B2 - A2)``.

    ``pairing="auto"`` uses the paired design (paired t of diff1 - diff2, sign-flip null) when
    both captures list the same pair ids in the same order, and Welch's t on the two samples of
    differences (label-shuffle null) otherwise. ``"matched"`` / ``"unmatched"`` force a design.
    Both captures must share a unit layout, and (where both record them) the model and capture
    settings: a difference is refused unless ``allow_different_settings``, and is recorded either way.
    """
    from dense_plantain import stats

    if pairing not in ("auto", "matched", "unmatched"):
        raise ValueError(f"pairing must be auto, matched or unmatched, got {pairing!r}")
    cap1, cap2 = _load(capture1), _load(capture2)
    _check_same_layout(cap1, cap2)
    settings_check = _check_same_capture_settings(cap1, cap2, allow_different_settings)
    for cap in (cap1, cap2):
        _require_pairs(cap)
    _check_settings(permutations, splits)
    diff1 = _diff(stats, cap1.a, cap1.b, cap1)
    diff2 = _diff(stats, cap2.a, cap2.b, cap2)
    matched = _is_matched(cap1, cap2) if pairing == "auto" else pairing == "matched"
    settings = {
        **_settings(permutations, exact, seed, splits, group_nulls),
        "pairing": pairing,
        "allow_different_settings": bool(allow_different_settings),
    }
    conditions = {
        "capture_1": _conditions(cap1),
        "capture_2": _conditions(cap2),
        "contrast": "(B1 - A1) - (B2 - A2)",
        "settings_check": settings_check,
    }
    sources = [_provenance(cap1, "capture_1"), _provenance(cap2, "capture_2")]
    if matched:
        if cap1.n_pairs != cap2.n_pairs:
            raise AnalysisError(
                f"{_where(cap1)} has {cap1.n_pairs} pairs and {_where(cap2)} has {cap2.n_pairs}; a matched "
                "comparison needs the same pairs in the same order. Use --pairing unmatched (Welch's t)"
            )
        contrast = _diff(stats, diff2, diff1, cap1)  # diff1 - diff2, per pair
        return _paired_result(
            stats,
            contrast,
            cap1.layout,
            design="contrast-paired",
            settings=settings,
            progress=progress,
            conditions=conditions,
            sources=sources,
        )
    return _welch_result(
        diff1, diff2, cap1.layout, settings=settings, progress=progress, conditions=conditions, sources=sources
    )


# --- the two designs --------------------------------------------------------------------------


def _paired_result(
    stats,
    diff: np.ndarray,
    layout: Layout,
    *,
    design: str,
    settings: dict[str, Any],
    progress: Progress | None,
    conditions: dict[str, Any],
    sources: list[dict[str, Any]],
) -> AnalysisResult:
    n = diff.shape[0]
    res = stats.paired(diff)
    t = np.asarray(res.t, dtype=np.float64)
    d = np.asarray(res.d, dtype=np.float64)
    df = np.full(t.shape, float(n - 1))
    p = _two_sided_p(t, df)

    budget = _ProgressBudget(progress, _n_null_runs(layout, settings["group_nulls"]))

    def null_of(columns: np.ndarray | None):
        part = diff if columns is None else np.ascontiguousarray(diff[:, columns])
        try:
            return stats.sign_flip_null(
                part,
                t_thresholds=T_THRESHOLDS,
                d_thresholds=D_THRESHOLDS,
                permutations=settings["permutations"],
                exact=settings["exact"],
                seed=settings["seed"],
                progress=budget.next_run(),
            )
        except ValueError as err:  # e.g. an exact null over too many pairs to enumerate
            raise AnalysisError(f"sign-flip null: {err}") from None

    null = null_of(None)
    p_max = np.asarray(stats.fwer_p(np.abs(np.nan_to_num(t, nan=0.0)), null), dtype=np.float64)
    p_max[np.isnan(t)] = np.nan

    def observed_of(columns: np.ndarray | None):
        # Observed counts through the null's route (a |t| exactly at a threshold, e.g. t = 3 from
        # power-of-two differences, lands on the same side as in the null's identity row).
        part = diff if columns is None else np.ascontiguousarray(diff[:, columns])
        return stats.observed_counts(part, t_thresholds=T_THRESHOLDS, d_thresholds=D_THRESHOLDS)

    groups = _groups(layout, t, d, settings["group_nulls"], null_of, observed_of)

    if n >= stats.MIN_SPLIT_PAIRS:
        sh = stats.split_half(diff, n_splits=settings["splits"], seed=settings["seed"])
        split = SplitHalfSummary(
            np.asarray(sh.r, dtype=np.float64), settings["splits"], assignments=np.asarray(sh.assignments, dtype=bool)
        )
    else:
        split = SplitHalfSummary(
            np.empty(0),
            settings["splits"],
            note=f"not computed: {n} pairs cannot be split "
            f"into two halves of at least 2 (needs {stats.MIN_SPLIT_PAIRS} pairs)",
        )
    return _result(
        design,
        layout,
        n,
        (n,),
        np.asarray(res.mean, dtype=np.float64),
        t,
        d,
        df,
        p,
        p_max,
        _threshold_rows(t, d, null, observed_of(None)),
        groups,
        split,
        "sign-flip",
        null,
        settings,
        conditions,
        sources,
    )


def _welch_result(
    diff1: np.ndarray,
    diff2: np.ndarray,
    layout: Layout,
    *,
    settings: dict[str, Any],
    progress: Progress | None,
    conditions: dict[str, Any],
    sources: list[dict[str, Any]],
) -> AnalysisResult:
    res = welch.welch(diff1, diff2)
    p = _two_sided_p(res.t, res.df)
    budget = _ProgressBudget(progress, _n_null_runs(layout, settings["group_nulls"]))

    def null_of(columns: np.ndarray | None):
        x1 = diff1 if columns is None else diff1[:, columns]
        x2 = diff2 if columns is None else diff2[:, columns]
        try:
            return welch.label_shuffle_null(
                x1,
                x2,
                t_thresholds=T_THRESHOLDS,
                d_thresholds=D_THRESHOLDS,
                permutations=settings["permutations"],
                exact=settings["exact"],
                seed=settings["seed"],
                progress=budget.next_run(),
            )
        except ValueError as err:
            raise AnalysisError(f"label-shuffle null: {err}") from None

    def observed_of(columns: np.ndarray | None):
        # Observed counts through the null's route (_moments on group sums), so a |t| or |d|
        # exactly at a threshold lands on the same side as the null's row for the observed labelling.
        x1 = diff1 if columns is None else diff1[:, columns]
        x2 = diff2 if columns is None else diff2[:, columns]
        return welch.observed_counts(x1, x2, t_thresholds=T_THRESHOLDS, d_thresholds=D_THRESHOLDS)

    null = null_of(None)
    p_max = welch.fwer_p(np.abs(res.t), null)
    p_max[np.isnan(res.t)] = np.nan
    groups = _groups(layout, res.t, res.d, settings["group_nulls"], null_of, observed_of)
    n1, n2 = res.n1, res.n2
    if min(n1, n2) >= 4:
        split = SplitHalfSummary(
            welch.split_half(diff1, diff2, n_splits=settings["splits"], seed=settings["seed"]), settings["splits"]
        )
    else:
        split = SplitHalfSummary(
            np.empty(0),
            settings["splits"],
            note=f"not computed: split halves need 4 pairs per capture, got {n1} and {n2}",
        )
    return _result(
        "contrast-welch",
        layout,
        n1 + n2,
        (n1, n2),
        res.mean_diff,
        res.t,
        res.d,
        res.df,
        p,
        p_max,
        _threshold_rows(res.t, res.d, null, observed_of(None)),
        groups,
        split,
        "label-shuffle",
        null,
        settings,
        conditions,
        sources,
    )


def _result(
    design,
    layout,
    n_pairs,
    group_sizes,
    mean_diff,
    t,
    d,
    df,
    p,
    p_max,
    thresholds,
    groups,
    split,
    method,
    null,
    settings,
    conditions,
    sources,
) -> AnalysisResult:
    return AnalysisResult(
        design=design,
        layout=layout,
        n_pairs=int(n_pairs),
        group_sizes=tuple(int(v) for v in group_sizes),
        mean_diff=mean_diff,
        t=t,
        d=d,
        df=df,
        p=p,
        p_maxT=p_max,
        q=bh_q(p),
        thresholds=thresholds,
        groups=groups,
        blocks=block_summaries(layout, t, d),
        split_half=split,
        null_method=method,
        null_exact=bool(null.exact),
        null_permutations=int(null.n_permutations),
        null_max_abs_t=np.asarray(null.max_abs_t, dtype=np.float64),
        settings=settings,
        conditions=conditions,
        sources=sources,
        versions=versions(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


# --- statistics that need no engine -----------------------------------------------------------


def _two_sided_p(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Parametric two-sided p from the t distribution (NaN where t is undefined)."""
    with np.errstate(invalid="ignore"):
        return 2.0 * _scipy_stats.t.sf(np.abs(t), df)


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over the finite p-values (NaN p stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
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


def _threshold_rows(t: np.ndarray, d: np.ndarray, null, observed=None) -> list[Threshold]:
    """Observed counts for every threshold, with the null's counts (``null=None``: counts only).

    ``observed`` (``t_counts`` / ``d_counts`` over ``T_THRESHOLDS`` / ``D_THRESHOLDS``, e.g.
    :func:`dense_plantain.stats.observed_counts`) gives the counts as the null's engine computes
    them, so that a |t| or |d| exactly at a threshold is on the same side as in the null; without
    it the counts come from ``t`` and ``d``.
    """
    rows = []
    for metric, values, thresholds in (("t", np.abs(t), T_THRESHOLDS), ("d", np.abs(d), D_THRESHOLDS)):
        for k, th in enumerate(thresholds):
            null_counts = None
            if null is not None:
                given = null.t_thresholds if metric == "t" else null.d_thresholds
                counts = null.t_counts if metric == "t" else null.d_counts
                if tuple(float(v) for v in given)[k] != th:
                    raise RuntimeError(f"null thresholds {given} do not match {thresholds}")
                null_counts = np.asarray(counts)[:, k]
            if observed is not None:
                count = int(np.asarray(observed.t_counts if metric == "t" else observed.d_counts)[k])
            else:
                count = int((values > th).sum())
            rows.append(Threshold(metric, float(th), count, int(values.size), null_counts))
    return rows


def block_summaries(layout: Layout, t: np.ndarray, d: np.ndarray) -> list[BlockSummary]:
    """Every block: max |t| (and its unit), units with |t| > 3, median |d|; largest max |t| first."""
    names = layout.unit_names()
    abs_t, abs_d = np.abs(t), np.abs(d)
    out = []
    for b in layout.blocks:
        bt, bd = abs_t[b.units], abs_d[b.units]
        finite = ~np.isnan(bt)
        if finite.any():
            j = int(np.nanargmax(bt))
            top, unit = float(bt[j]), names[b.start + j]
        else:
            top, unit = float("nan"), ""
        med = float(np.nanmedian(bd)) if (~np.isnan(bd)).any() else float("nan")
        out.append(BlockSummary(b.name, b.n_units, top, unit, int((bt > BLOCK_T).sum()), med))
    # Stable sort: blocks without a defined t last, ties in layout order.
    return sorted(out, key=lambda s: (np.isnan(s.max_abs_t), -np.nan_to_num(s.max_abs_t, nan=0.0)))


# --- unit groups (by kind, by token region) ---------------------------------------------------


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


def _n_null_runs(layout: Layout, group_nulls: bool) -> int:
    """The full null run, plus one per part of each partition with ``group_nulls`` (a partition's
    runs together cost about one full run)."""
    return 1 + (sum(len(parts) for _, parts in unit_partitions(layout)) if group_nulls else 0)


def _groups(
    layout: Layout, t: np.ndarray, d: np.ndarray, group_nulls: bool, null_of, observed_of=None
) -> list[UnitGroup]:
    """Threshold tables per kind and per region. With ``group_nulls`` each part gets its own null
    run (same seed, so the same permutations); without, a part's table has counts only.
    ``observed_of(cols)``, when given, supplies the observed counts (see ``_threshold_rows``)."""
    out = []
    for axis, parts in unit_partitions(layout):
        for name, cols in parts:
            observed = observed_of(cols) if observed_of is not None else None
            rows = _threshold_rows(t[cols], d[cols], null_of(cols) if group_nulls else None, observed)
            out.append(UnitGroup(axis, name, int(cols.size), _nanmax(np.abs(t[cols])), rows))
    return out


def _nanmax(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.max()) if finite.size else float("nan")


# --- inputs and provenance --------------------------------------------------------------------


def _load(capture: Capture | str | Path) -> Capture:
    return capture if isinstance(capture, Capture) else read_capture(capture)


def _where(cap: Capture) -> str:
    return str(cap.path) if cap.path is not None else "the capture"


def _require_pairs(cap: Capture) -> None:
    if cap.n_pairs < MIN_PAIRS:
        raise AnalysisError(
            f"{_where(cap)}: only {cap.n_pairs} pair(s); a paired test needs at least {MIN_PAIRS} "
            "(the published probes use 25). Capture more pairs"
        )


def _check_settings(permutations: int, splits: int) -> None:
    if permutations < 1:
        raise AnalysisError(f"--permutations must be at least 1, got {permutations}")
    if splits < 1:
        raise AnalysisError(f"--splits must be at least 1, got {splits}")


def _diff(stats, a: np.ndarray, b: np.ndarray, cap: Capture) -> np.ndarray:
    try:
        return np.asarray(stats.paired_diff(a, b), dtype=np.float64)
    except ValueError as err:
        raise AnalysisError(f"{_where(cap)}: {err}") from None


def _check_same_layout(cap1: Capture, cap2: Capture) -> None:
    l1, l2 = cap1.layout, cap2.layout
    if l1.same_units(l2) and (not (l1.has_labels() and l2.has_labels()) or l1.name == l2.name):
        return
    b1 = [(b.name, b.n_units) for b in l1.blocks]
    b2 = [(b.name, b.n_units) for b in l2.blocks]
    first = next((i for i, (x, y) in enumerate(zip(b1, b2)) if x != y), min(len(b1), len(b2)))

    def show(blocks, i):
        return f"{blocks[i][0]} ({blocks[i][1]} units)" if i < len(blocks) else "no block"

    raise AnalysisError(
        f"the captures do not share a unit layout: {_where(cap1)} has layout {l1.name!r} with {l1.n_units:,} units "
        f"in {len(b1)} blocks, {_where(cap2)} has {l2.name!r} with {l2.n_units:,} units in {len(b2)} blocks; "
        f"block {first} is {show(b1, first)} vs {show(b2, first)}. Capture both with the same model and --layout"
    )


#: Capture settings that change what a unit's value means; two captures to compare must agree on them.
_CAPTURE_SETTING_KEYS = (
    "layout",
    "height",
    "width",
    "seed",
    "steps",
    "capture_steps",
    "guidance_scale",
    "dtype",
    "text_tokens",
    "text_encoder_layers",
    "image_sha256",
)
_MODEL_KEYS = ("id", "revision", "config_sha256")


def _capture_identity(cap: Capture) -> dict[str, Any] | None:
    """The recorded model and settings of a capture as flat keys, or None when it records neither."""
    settings, model = cap.meta.get("settings"), cap.meta.get("model")
    settings = settings if isinstance(settings, dict) else {}
    model = model if isinstance(model, dict) else {}
    if not settings and not model:
        return None
    out = {f"settings.{k}": settings[k] for k in _CAPTURE_SETTING_KEYS if k in settings}
    # A model folder may move between captures; its configuration is what must agree.
    keys = ("config_sha256",) if model.get("source") == "folder" else _MODEL_KEYS
    out.update({f"model.{k}": model[k] for k in keys if k in model})
    return out


def _check_same_capture_settings(cap1: Capture, cap2: Capture, allow: bool) -> dict[str, Any]:
    """Compare the two captures' recorded model and settings; refuse a difference unless ``allow``.

    Returns the record kept in results.json: ``status`` "same", "different" (allowed) or
    "not recorded" (a capture without model and settings metadata: nothing to compare).
    """
    id1, id2 = _capture_identity(cap1), _capture_identity(cap2)
    if id1 is None or id2 is None:
        missing = [_where(c) for c, i in ((cap1, id1), (cap2, id2)) if i is None]
        return {
            "status": "not recorded",
            "differences": [],
            "note": f"{' and '.join(missing)} record no model or capture settings; they were not compared",
        }
    shared = [k for k in id1 if k in id2]
    differences = [{"key": k, "capture_1": id1[k], "capture_2": id2[k]} for k in shared if id1[k] != id2[k]]
    unchecked = sorted(set(id1) ^ set(id2))
    record: dict[str, Any] = {"status": "different" if differences else "same", "differences": differences}
    if unchecked:
        record["unchecked"] = unchecked  # recorded by one capture only
    if differences and not allow:
        listed = "; ".join(f"{d['key']}: {d['capture_1']!r} vs {d['capture_2']!r}" for d in differences)
        raise AnalysisError(
            f"{_where(cap1)} and {_where(cap2)} were captured with different models or settings ({listed}); "
            "their contrasts are not comparable unit for unit. Capture both with the same model and settings, "
            "or pass --allow-different-settings to compare them anyway (the card will carry a warning)"
        )
    return record


def _explicit_pair_ids(cap: Capture) -> list[str] | None:
    pairs = cap.meta.get("pairs")
    if not isinstance(pairs, list) or len(pairs) != cap.n_pairs:
        return None
    if not all(isinstance(p, dict) and "id" in p for p in pairs):
        return None
    return [str(p["id"]) for p in pairs]


def _is_matched(cap1: Capture, cap2: Capture) -> bool:
    ids1, ids2 = _explicit_pair_ids(cap1), _explicit_pair_ids(cap2)
    return ids1 is not None and ids1 == ids2


def _conditions(cap: Capture) -> dict[str, Any]:
    probe = cap.meta.get("probe") if isinstance(cap.meta.get("probe"), dict) else {}
    return {
        "probe": probe.get("name") or (cap.path.stem if cap.path else None),
        "a": probe.get("label_a") or "A",
        "b": probe.get("label_b") or "B",
    }


def _settings(permutations: int, exact: bool | None, seed: int, splits: int, group_nulls: bool) -> dict[str, Any]:
    return {
        "permutations": int(permutations),
        "exact": exact,
        "seed": int(seed),
        "splits": int(splits),
        "group_nulls": bool(group_nulls),
        "t_thresholds": list(T_THRESHOLDS),
        "d_thresholds": list(D_THRESHOLDS),
        "p99_percentile": "numpy.percentile(counts, 99), linear",
    }


#: Capture metadata keys left out of the provenance: per-unit detail the layout summary replaces.
_BULKY_META = ("readouts",)


def _provenance(cap: Capture, role: str) -> dict[str, Any]:
    meta = {k: v for k, v in cap.meta.items() if k not in _BULKY_META}
    return {
        "role": role,
        "path": str(cap.path) if cap.path else None,
        "sha256": file_sha256(cap.path) if cap.path else None,
        "n_pairs": cap.n_pairs,
        "n_units": cap.n_units,
        "metadata": meta,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def layout_summary(layout: Layout) -> dict[str, Any]:
    """Per block: units, how many are attention / MLP, which token regions; plus the totals."""
    labels = layout.labels()
    blocks = []
    for b in layout.blocks:
        kinds = labels["kind"][b.units]
        blocks.append(
            {
                "name": b.name,
                "n_units": b.n_units,
                "n_attention": int((kinds == "attention").sum()),
                "n_mlp": int((kinds == "mlp").sum()),
                "regions": sorted(set(labels["region"][b.units].tolist())) if layout.has_labels() else [],
            }
        )
    per_head = {r.head_width // r.group_width for r in layout.readouts if r.kind == "attention" and r.head_width}
    return {
        "name": layout.name,
        "labelled": layout.has_labels(),
        "counts": layout.counts(),
        "units_per_head": per_head.pop() if len(per_head) == 1 else None,
        "blocks": blocks,
    }


def versions() -> dict[str, str]:
    out = {"dense_plantain": __version__, "python": platform.python_version(), "platform": sys.platform}
    for dist in ("numpy", "scipy", "matplotlib", "safetensors"):
        try:
            out[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            pass
    return out


class _ProgressBudget:
    """Turns per-run ``progress(done, total)`` calls into one count over all null runs."""

    def __init__(self, progress: Progress | None, n_runs: int):
        self.progress, self.n_runs, self.run = progress, n_runs, -1

    def next_run(self) -> Progress | None:
        if self.progress is None:
            return None
        self.run += 1
        run, n_runs, outer = self.run, self.n_runs, self.progress

        def report(done: int, total: int) -> None:
            outer(run * total + done, n_runs * total)

        return report


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
