"""The records of an analysis: thresholds, unit groups, blocks, split halves, the whole result.

``AnalysisResult.to_json()`` is the ``results.json`` record. Numbers: NaN (undefined) becomes
``null``; an infinite statistic (a unit whose differences are all equal and non-zero has
t = d = +-inf) becomes the string ``"inf"`` or ``"-inf"`` (`json_number`; `read_number` reads
both forms back), so it is neither lost nor written as JSON's non-standard ``Infinity``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dense_plantain.units import Layout

__all__ = [
    "RESULTS_FORMAT",
    "AnalysisResult",
    "BlockSummary",
    "SplitHalfSummary",
    "Threshold",
    "UnitGroup",
    "json_number",
    "read_number",
]

#: Marker and version of the results.json record; ``report DIR`` checks it.
RESULTS_FORMAT = 1


def json_number(x: Any) -> float | str | None:
    """A float for results.json: finite as is, NaN as ``None``, infinities as ``"inf"`` / ``"-inf"``."""
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def read_number(value: Any) -> float | None:
    """Back from `json_number`: ``None`` stays ``None``, ``"inf"``/``"-inf"`` become infinities."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in ("inf", "-inf"):
            return float(value)
        raise ValueError(f"{value!r} is not a number (only 'inf' and '-inf' are written as strings)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


@dataclass
class Threshold:
    """Units over one threshold, set against the null distribution of that count.

    The null summaries are read from the design's `NullDistribution` by the driver; all are
    ``None`` when no null was run for these units. ``null_n_above_p99`` is how many permutations
    put more units over the threshold than the p99 (when it is under 10 the p99 rests on a
    handful of permutations, and the tables say so). ``null_histogram`` (int64, index k: how
    many patterns put k units over the threshold) is kept for the figure; its size does not grow
    with the number of permutations.
    """

    metric: str  # "t" | "d"
    threshold: float
    count: int
    n_units: int
    null_p99: float | None = None
    null_max: int | None = None
    null_median: float | None = None
    null_n_above_p99: int | None = None
    null_histogram: np.ndarray | None = field(default=None, repr=False)
    tail: str = "two"  # "two": |stat| > c; "greater": stat > c; "less": stat < -c

    @property
    def fraction(self) -> float:
        return self.count / self.n_units if self.n_units else float("nan")

    @property
    def ratio(self) -> float | None:
        """Observed count over the null p99; ``None`` when the p99 is 0 (see the package docs)."""
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
            "null_n_above_p99": self.null_n_above_p99,
            "ratio": self.ratio,
            "tail": self.tail,
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
            "max_abs_t": json_number(self.max_abs_t),
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
    #: One-sided analyses: the three values are of the oriented statistic (t for "greater", -t and
    #: -d for "less"): max t / units with t > 3 / median d, or -min t / t < -3 / -median d.
    tail: str = "two"

    def to_json(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "max_abs_t": json_number(self.max_abs_t),
            "max_unit": self.max_unit,
            "n_t_gt3": self.n_t_gt3,
            "n_units": self.n_units,
            "median_abs_d": json_number(self.median_abs_d),
            "tail": self.tail,
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
    null_includes_identity: bool  # the observed pattern is one of the null's rows (exact nulls)
    null_max_abs_t_p95: float  # percentiles of the null's max |t| over all units
    null_max_abs_t_p99: float
    weights: dict[str, Any] | None = None  # the capture's meta["weights"]; None: not recorded
    settings: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    tail: str = "two"  # the alternative of p, q, p_maxT and the counts (see analysis.designs.TAILS)
    fwer_null: str = "max_abs"  # the null statistic of p_maxT: max |t| (two-sided), max t / min t ("max")
    #: Per-unit intervals (float64 [n_units]): "ci_low", "ci_high" (mean difference), "d_ci_low",
    #: "d_ci_high" (d); empty for designs without them (see analysis.intervals).
    intervals: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: JSON-ready sections added to results.json as they are: "bootstrap", "seeds", "by".
    robustness: dict[str, Any] = field(default_factory=dict)
    #: Further per-unit columns of units.csv (e.g. ``by_body_heavy_t``), float64 [n_units] each.
    extra_columns: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: results.json ``input_embeddings`` and ``baselines`` (``analysis.baselines``); empty without them.
    controls: dict[str, Any] = field(default_factory=dict)
    #: The baselines' own results (for figures), in ``controls["baselines"]`` order.
    baseline_results: list[AnalysisResult] = field(default_factory=list, repr=False)
    #: The direction test on the capture's signed vectors (``analysis.direction.DirectionAnalysis``);
    #: None when it was not run (no vectors, ``--direction off``, or a comparison).
    direction: Any = None

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
        """The ``results.json`` record (JSON-able; numbers through `json_number`)."""
        names = self.layout.unit_names()
        top = int(np.nanargmax(self.abs_t)) if not np.isnan(self.max_abs_t) else None
        record = {
            "dense_plantain_results": RESULTS_FORMAT,
            "weights": weights_record(self.weights),
            "design": self.design,
            "conditions": self.conditions,
            "n_pairs": self.n_pairs,
            "group_sizes": list(self.group_sizes),
            "n_units": self.n_units,
            "max_abs_t": json_number(self.max_abs_t),
            "max_abs_t_unit": names[top] if top is not None else None,
            "max_abs_t_p_maxT": json_number(self.p_maxT[top]) if top is not None else None,
            "thresholds": [th.to_json() for th in self.thresholds],
            "groups": [g.to_json() for g in self.groups],
            "split_half": self.split_half.to_json(),
            "top_blocks": [b.to_json() for b in self.blocks],
            "null": {
                "method": self.null_method,
                "mode": "exact" if self.null_exact else "monte-carlo",
                "n_permutations": self.null_permutations,
                "seed": self.settings.get("seed"),
                "includes_identity": self.null_includes_identity,
                "max_abs_t_p95": json_number(self.null_max_abs_t_p95),
                "max_abs_t_p99": json_number(self.null_max_abs_t_p99),
                "tail": self.tail,
                "fwer_statistic": _FWER_STATISTIC[(self.tail, self.fwer_null)],
            },
            "tail": self.tail,
            "settings": self.settings,
            "seed": self.settings.get("seed"),
            "layout": self.layout.summary(),
            "versions": self.versions,
            "sources": self.sources,
            "created": self.created,
            **self.robustness,
            **{k: v for k, v in self.controls.items() if v is not None},
        }
        if self.direction is not None:
            record["direction"] = self.direction.to_json(self.layout, self.t, self.p_maxT)
        return record


#: results.json null.fwer_statistic: what each pattern's maximum is taken over.
_FWER_STATISTIC = {
    ("two", "max_abs"): "max |t|",
    ("two", "max"): "max |t|",
    ("greater", "max"): "max t",
    ("less", "max"): "min t",
    ("greater", "max_abs"): "max |t| (MNE's one-sided comparison)",
    ("less", "max_abs"): "max |t| (MNE's one-sided comparison)",
}


def weights_record(weights: dict[str, Any] | None) -> dict[str, Any]:
    """results.json "weights": the capture's record, or ``{"recorded": false}`` for older captures.

    ``random`` is True for a tiny random pipeline or re-initialised weights; outputs made from
    them say so first and claim no base model."""
    if not isinstance(weights, dict):
        return {"recorded": False, "random": None}
    return {"recorded": True, **weights}
