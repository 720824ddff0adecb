"""One protocol for every null distribution the analysis reads, and the one max-statistic p-value rule.

A design's null (sign flips for paired designs, label shuffles for Welch, later random-weights
baselines) is read only through `NullDistribution`: percentiles, median, maximum and tail counts
of the threshold counts, per threshold and optionally per group of a partition of the units, and
the family-wise p of observed statistics. Its shape is the engine's ``stats.NullTallies``
(``stats.sign_flip_tallies``), so a design whose engine returns tallies hands them over as they
are; `CountsNull` adapts today's per-permutation arrays (``stats.SignFlipNull``,
``welch.LabelShuffleNull``) to the same protocol.

Indices: ``threshold_index`` runs over the t thresholds and then the d thresholds
(``T_THRESHOLDS + D_THRESHOLDS``); ``partition`` is the position of a partition in the list the
null was built with, ``group`` a label of that partition (units labelled -1 belong to no group).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["FWER_RTOL", "CountsNull", "NullDistribution", "fwer_p"]

#: A null maximum within this relative distance below an observed |t| counts as "at least as
#: extreme": the null's |t| and the observed |t| come from two float64 routes that can differ in
#: the last bits, and the identity pattern (or the observed labelling) must count.
FWER_RTOL = 1e-10


@runtime_checkable
class NullDistribution(Protocol):
    """What the driver reads from a null; ``stats.NullTallies`` has this shape."""

    @property
    def exact(self) -> bool: ...

    @property
    def n_permutations(self) -> int: ...

    @property
    def includes_identity(self) -> bool:  # the observed pattern / labelling is one of the null's rows
        ...

    @property
    def seed(self) -> int: ...

    @property
    def tail(self) -> str:  # "two" today
        ...

    def percentile(
        self, q: float, threshold_index: int, partition: int | None = None, group: int | None = None
    ) -> float: ...

    def median(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> float: ...

    def max_count(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> int: ...

    def n_at_least(
        self, count: int, threshold_index: int, partition: int | None = None, group: int | None = None
    ) -> int: ...

    def histogram(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> np.ndarray:
        """int64 ``[n_units_in_group + 1]``: how many patterns put exactly k units over the threshold."""
        ...

    def fwer_p(self, stat_obs: np.ndarray) -> np.ndarray: ...


def fwer_p(
    null_max: np.ndarray,
    stat_obs: np.ndarray,
    *,
    exact: bool,
    n_permutations: int,
    identity_row: int | None,
    signed: bool = False,
) -> np.ndarray:
    """Max-statistic family-wise p per unit, the one rule every design uses.

    Monte Carlo: ``(1 + #{i: null_max[i] >= |obs|}) / (P + 1)``. Exact (every pattern once,
    ``identity_row`` the observed one): ``(1 + #{other rows >= |obs|}) / P``, the identity counted
    for every unit without comparing (its maximum is the observed maximum), as MNE's exact
    ``permutation_t_test`` does. ">=" allows `FWER_RTOL` below ``|obs|``. NaN statistics give NaN.
    ``signed``: one-sided statistics (t, or -t), compared as they are, not as |obs| (the tolerance
    is then `FWER_RTOL` of ``|obs|`` below ``obs``).
    """
    obs = np.asarray(stat_obs, dtype=np.float64)
    if not signed:
        obs = np.abs(obs)
    undefined = np.isnan(obs)
    obs = np.nan_to_num(obs, nan=0.0, posinf=np.inf, neginf=-np.inf)
    bar = (
        obs * (1.0 - FWER_RTOL) if not signed else np.where(obs >= 0, obs * (1.0 - FWER_RTOL), obs * (1.0 + FWER_RTOL))
    )
    maxima = np.asarray(null_max, dtype=np.float64)
    if exact:
        rest = np.sort(np.delete(maxima, identity_row) if identity_row is not None else maxima)
        extra = 1.0 if identity_row is not None else 0.0
        at_least = extra + rest.size - np.searchsorted(rest, bar, side="left")
        denominator = float(n_permutations)
    else:
        ordered = np.sort(maxima)
        at_least = 1.0 + ordered.size - np.searchsorted(ordered, bar, side="left")
        denominator = n_permutations + 1.0
    out = np.asarray(at_least / denominator, dtype=np.float64)
    out[undefined] = np.nan
    return out


@dataclass(frozen=True, eq=False)
class CountsNull:
    """`NullDistribution` over per-permutation arrays: ``counts[(partition, group)]`` is
    ``int64 [P x k]`` (k = t thresholds then d thresholds), key ``(None, None)`` for all units."""

    counts: Mapping[tuple[int | None, int | None], np.ndarray] = field(repr=False)
    max_abs_t: np.ndarray = field(repr=False)  # float64 [P], over all units
    exact: bool
    n_permutations: int
    seed: int
    includes_identity: bool
    identity_row: int | None = None  # exact nulls: the row of the observed pattern
    tail: str = "two"
    #: One-sided nulls: per permutation, the max of the tail's statistic (t, or -t for "less").
    max_stat: np.ndarray | None = field(default=None, repr=False)

    def column(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> np.ndarray:
        """The null counts of one threshold (for figures); ``KeyError`` for a group without a null."""
        return np.asarray(self.counts[(partition, group)])[:, threshold_index]

    def histogram(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> np.ndarray:
        return np.bincount(self.column(threshold_index, partition, group)).astype(np.int64)

    def has(self, partition: int | None, group: int | None) -> bool:
        return (partition, group) in self.counts

    def percentile(
        self, q: float, threshold_index: int, partition: int | None = None, group: int | None = None
    ) -> float:
        return float(np.percentile(self.column(threshold_index, partition, group), q))

    def median(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> float:
        return float(np.median(self.column(threshold_index, partition, group)))

    def max_count(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> int:
        return int(self.column(threshold_index, partition, group).max())

    def n_at_least(
        self, count: int, threshold_index: int, partition: int | None = None, group: int | None = None
    ) -> int:
        return int((self.column(threshold_index, partition, group) >= count).sum())

    def max_stat_percentile(self, q: float) -> float:
        """A percentile of the null's max |t| over all units (results.json's ``max_abs_t_p95``/``p99``)."""
        with np.errstate(invalid="ignore"):  # inf - inf when both neighbours are infinite t
            value = float(np.percentile(self.max_abs_t, q))
        if np.isnan(value) and not np.isnan(self.max_abs_t).any():
            value = float("inf")  # interpolating between two infinite maxima
        return value

    def fwer_p(self, stat_obs: np.ndarray, *, null: str = "max") -> np.ndarray:
        """Two-sided: |t| against max |t|. One-sided: t (or -t for "less") against the max of it
        (``null="max"``) or against max |t| (``"max_abs"``, MNE's one-sided rule)."""
        signed = self.tail != "two"
        maxima = self.max_abs_t
        obs = np.asarray(stat_obs, dtype=np.float64)
        if signed:
            obs = obs if self.tail == "greater" else -obs
            if null == "max" and self.max_stat is not None:
                maxima = self.max_stat
        return fwer_p(
            maxima,
            obs,
            exact=self.exact,
            n_permutations=self.n_permutations,
            identity_row=self.identity_row if self.exact else None,
            signed=signed,
        )
