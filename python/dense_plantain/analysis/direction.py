"""Direction analysis: does a unit's signed activity move along a consistent direction?

Beside the magnitude test (the paired t of each unit's RMS), a capture made with ``--vectors``
holds per prompt each unit's signed per-column token means (``a_vec``/``b_vec``, ``W`` numbers per
unit). For unit ``u`` and pair ``i`` let ``delta_i = vec_B,i - vec_A,i``; the engine's
``stats.direction_test`` gives per unit the directional consistency ``D = sum_{i != j} <delta_i,
delta_j>``, its scale-free form ``D_norm``, the sign-flip p of D (whole vectors flipped), the
max-statistic FWER p over units (``p_maxD``) and the held-out agreement (share of pairs whose
difference projects positively on the direction learned from the others).

Each unit is then one of four classes, both tests at family-wise 0.05 over all units:
``both`` (p_maxT < 0.05 and p_maxD < 0.05), ``magnitude`` only, ``direction`` only, ``neither``.
The cross-table counts them over all units and per block kind and token region (the layout's
partitions, ``driver.unit_partitions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dense_plantain import stats
from dense_plantain.analysis.records import json_number
from dense_plantain.errors import CaptureFileError
from dense_plantain.store import Capture
from dense_plantain.units import Layout

__all__ = [
    "ALPHA",
    "CLASSES",
    "DIRECTION_MODES",
    "CrossRow",
    "DirectionAnalysis",
    "classify",
    "direction_analysis",
    "has_vectors",
    "vector_diff",
]

#: Family-wise level of both tests in the cross-table.
ALPHA = 0.05
#: Cross-table classes, in table order.
CLASSES = ("both", "magnitude", "direction", "neither")
#: ``analyze --direction``: auto = on when the capture holds a_vec/b_vec.
DIRECTION_MODES = ("auto", "on", "off")
#: Units listed in results.json's and results.md's direction table (most significant first).
TOP_UNITS = 20


def has_vectors(cap: Capture) -> bool:
    return "a_vec" in cap.extra and "b_vec" in cap.extra


def vector_diff(cap: Capture) -> tuple[np.ndarray, int]:
    """``b_vec - a_vec`` in float64 ``[pairs x units * W]`` and W, checked against the layout."""
    where = cap.path or "the capture"
    if not has_vectors(cap):
        raise CaptureFileError(
            f"{where} holds no signed vectors (a_vec/b_vec); capture again with `capture --vectors`, "
            "or analyze with --direction off"
        )
    width = cap.meta.get("vector_width")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise CaptureFileError(f"{where}: a_vec/b_vec come without a valid 'vector_width' in the metadata ({width!r})")
    a, b = cap.extra["a_vec"], cap.extra["b_vec"]
    want = (cap.n_pairs, cap.layout.n_units * width)
    if a.shape != want:
        raise CaptureFileError(
            f"{where}: a_vec has shape {a.shape}, but {cap.layout.n_units} units x vector_width {width} over "
            f"{cap.n_pairs} pairs needs {want}; the file was not written by `capture --vectors`"
        )
    return b.astype(np.float64) - a.astype(np.float64), width


def classify(p_max_t: np.ndarray, p_max_d: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Per unit the cross-table class (``CLASSES``); a NaN p is not significant."""
    mag = np.nan_to_num(np.asarray(p_max_t, dtype=np.float64), nan=1.0) < alpha
    dirn = np.nan_to_num(np.asarray(p_max_d, dtype=np.float64), nan=1.0) < alpha
    out = np.full(mag.shape, "neither", dtype=object)
    out[mag & dirn] = "both"
    out[mag & ~dirn] = "magnitude"
    out[~mag & dirn] = "direction"
    return out


@dataclass
class CrossRow:
    """Cross-table counts of one set of units (all units, or one group of a partition)."""

    axis: str  # "all" | "kind" | "region"
    group: str
    n_units: int
    counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"axis": self.axis, "group": self.group, "n_units": self.n_units, **self.counts}


@dataclass(eq=False)
class DirectionAnalysis:
    """The direction test of one capture, per unit and in summary (``AnalysisResult.direction``).

    ``test`` is the engine's result (``stats.DirectionResult``); its fields (``D``, ``D_norm``,
    ``p``, ``p_max``, ``agree``, ``agree_p``, ``exact``, ``n_permutations``, ``seed``, ``width``,
    ``n_pairs``) read through this record as well (``analysis.direction.D`` and so on)."""

    test: stats.DirectionResult
    classes: np.ndarray  # object [units], one of CLASSES
    cross: list[CrossRow] = field(default_factory=list)  # first row: all units
    alpha: float = ALPHA

    def __getattr__(self, name: str) -> Any:
        if name == "test":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.test, name)

    @property
    def n_significant(self) -> int:
        """Units with a consistent direction at family-wise ``alpha`` (p_maxD < alpha)."""
        return int((np.nan_to_num(self.p_max, nan=1.0) < self.alpha).sum())

    def top_units(self, layout: Layout, t: np.ndarray, p_max_t: np.ndarray, n: int = TOP_UNITS) -> list[dict]:
        """The significant units (p_maxD < alpha), smallest p_maxD then largest D_norm first, at most ``n``."""
        lab = layout.labels()
        sig = np.flatnonzero(np.nan_to_num(self.p_max, nan=1.0) < self.alpha)
        order = sig[np.lexsort((-self.D_norm[sig], self.p_max[sig]))][:n]
        return [
            {
                "unit": str(lab["name"][j]),
                "block": str(lab["block"][j]),
                "kind": str(lab["kind"][j]),
                "region": str(lab["region"][j]),
                "D_norm": json_number(self.D_norm[j]),
                "agree": json_number(self.agree[j]),
                "agree_k": int(round(float(self.agree[j]) * self.n_pairs)),
                "p_D": json_number(self.p[j]),
                "p_maxD": json_number(self.p_max[j]),
                "t": json_number(t[j]),
                "p_maxT": json_number(p_max_t[j]),
                "class": str(self.classes[j]),
            }
            for j in order
        ]

    def to_json(self, layout: Layout, t: np.ndarray, p_max_t: np.ndarray) -> dict[str, Any]:
        """results.json's ``direction`` section."""
        return {
            "method": "sign-flip of whole difference vectors (stats.direction_test)",
            "statistic": "D = sum_{i != j} <delta_i, delta_j>; FWER over units by the max of D_norm",
            "vector_width": self.width,
            "n_pairs": self.n_pairs,
            "mode": "exact" if self.exact else "monte-carlo",
            "n_permutations": self.n_permutations,
            "seed": self.seed,
            "alpha": self.alpha,
            "n_units": int(self.D.size),
            "n_significant": self.n_significant,
            "n_magnitude_significant": int((np.nan_to_num(p_max_t, nan=1.0) < self.alpha).sum()),
            "cross": [row.to_json() for row in self.cross],
            "top_units": self.top_units(layout, t, p_max_t),
        }


def _counts(classes: np.ndarray) -> dict[str, int]:
    return {c: int((classes == c).sum()) for c in CLASSES}


def direction_analysis(
    delta_vec: np.ndarray,
    width: int,
    layout: Layout,
    p_max_t: np.ndarray,
    partitions: list[tuple[str, list[tuple[str, np.ndarray]]]],
    *,
    permutations: int,
    exact: bool | None,
    seed: int,
    progress: Any = None,
) -> DirectionAnalysis:
    """Run ``stats.direction_test`` on ``delta_vec`` and classify every unit against the magnitude FWER p."""
    if delta_vec.shape[1] != layout.n_units * width:
        raise ValueError(f"delta_vec has {delta_vec.shape[1]} columns; {layout.n_units} units x {width} expected")
    res = stats.direction_test(delta_vec, width, permutations=permutations, exact=exact, seed=seed, progress=progress)
    p_max = np.asarray(res.p_max, dtype=np.float64)
    classes = classify(p_max_t, p_max)
    cross = [CrossRow("all", "all", int(classes.size), _counts(classes))]
    for axis, parts in partitions:
        for name, cols in parts:
            cross.append(CrossRow(axis, str(name), int(cols.size), _counts(classes[cols])))
    return DirectionAnalysis(test=res, classes=classes, cross=cross)
