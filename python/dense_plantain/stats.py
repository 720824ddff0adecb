"""Per-unit paired statistics, sign-flip nulls and split-half reliability.

The Python face of the Rust engine ``dense_plantain._stats``. Input is a matrix of paired
differences ``diff = B - A`` of shape ``[pairs x units]`` (float64, C order: build it with
:func:`paired_diff`). Everything here is deterministic: the same data, thresholds and seed give
the same numbers on any machine, for any thread count (``DENSE_PLANTAIN_NUM_THREADS``, else
``RAYON_NUM_THREADS``) and any chunking of the work.

Conventions
-----------
* ``t = mean / (sd / sqrt(n))`` with ``sd`` over ``n - 1``; Cohen's ``d = d_z = mean / sd``.
* A unit whose ``n`` differences are all exactly equal has ``sd = 0``: ``t = d = 0`` if they
  are all 0, else ``t = d = +inf`` or ``-inf`` (sign of the difference). The null treats it the
  same way under every sign pattern (|t| = inf only where all its flipped values agree, i.e. the
  identity). No statistic here is ever NaN, except a split-half r with nothing to correlate.
* Sign-flip patterns: pair 0 is never flipped (flipping every pair only negates t); pattern
  ``j`` flips pair ``i >= 1`` where bit ``i - 1`` of ``j`` is set; pattern 0 is the identity.
  Exact mode enumerates all ``2 ** (n - 1)`` patterns in that order. Monte Carlo permutation
  ``i`` draws its pattern from a counter-based hash of ``(seed, i)``
  (:func:`monte_carlo_signs` shows the signs).
* Threshold counts are strict: ``|t| > c`` and ``|d| > c``.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dense_plantain import _stats
from dense_plantain.errors import AnalysisError

__all__ = [
    "MAX_EXACT_PAIRS",
    "MIN_PAIRS",
    "MIN_SPLIT_PAIRS",
    "NullTallies",
    "Paired",
    "SignFlipNull",
    "SplitHalf",
    "StatsInputError",
    "fwer_p",
    "monte_carlo_signs",
    "ObservedCounts",
    "null_p99",
    "observed_counts",
    "paired",
    "paired_diff",
    "sign_flip_null",
    "sign_flip_tallies",
    "simd_variant",
    "split_assignments",
    "split_half",
    "threads",
]

MIN_PAIRS: int = _stats.MIN_PAIRS
"""Fewest pairs any statistic accepts (3)."""
MIN_SPLIT_PAIRS: int = _stats.MIN_SPLIT_PAIRS
"""Fewest pairs for split-half reliability (4: two per half)."""
MAX_EXACT_PAIRS: int = _stats.MAX_EXACT_PAIRS
"""Most pairs for exact enumeration (33: 2^32 patterns)."""

# Work per call into the engine (pairs x units evaluated), so that progress is reported every
# half second or so on two cores; exact patterns are much cheaper (most units are skipped).
_MONTE_CARLO_CHUNK_WORK = 1 << 31
_EXACT_CHUNK_WORK = 1 << 35
_CHUNK_LIMITS = (1 << 12, 1 << 24)
# fwer_p: a null max within this relative distance below the observed statistic counts as >=,
# compared on the normalised squared sum r = S^2 / SS (see fwer_p).
_FWER_RTOL = 1e-10
# Tallies: patterns per call into the engine (bounds the engine's per-call rows), and the
# default refusal of an exact null whose estimated run time is longer than this.
_TALLY_CHUNK = 1 << 16
_TALLY_CHUNK_EXACT_TWO = 1 << 21
# The first call, timed to estimate an exact null's run time: two of the exact kernel's tasks.
_TALLY_FIRST_CHUNK = 1 << 17
_EXACT_TIME_LIMIT_S = 600.0

Tail = Literal["two", "greater", "less"]
_TAILS = ("two", "greater", "less")

Progress = Callable[[int, int], object]


class StatsInputError(AnalysisError, ValueError):
    """Input the statistics cannot use: says what was wrong, where (pair, unit) and what to do.

    A ``ValueError`` for callers of this module, an ``AnalysisError`` for the CLI.
    """


@dataclass(frozen=True, eq=False)
class Paired:
    """Per-unit paired statistics; each array has one float64 value per unit."""

    mean: np.ndarray
    sd: np.ndarray
    t: np.ndarray
    d: np.ndarray
    n_pairs: int


@dataclass(frozen=True, eq=False)
class SignFlipNull:
    """The sign-flip null: one row per permutation (or per pattern, in exact mode).

    ``t_counts[i, k]`` is the number of units with |t| > ``t_thresholds[k]`` under permutation
    ``i``; ``d_counts`` likewise for |d|; ``max_abs_t[i]`` is the largest |t| over units. In
    exact mode row ``j`` is pattern ``j`` and row 0 the identity (the observed data).
    """

    t_counts: np.ndarray
    d_counts: np.ndarray
    max_abs_t: np.ndarray
    exact: bool
    n_permutations: int
    seed: int
    t_thresholds: tuple[float, ...]
    d_thresholds: tuple[float, ...]
    n_pairs: int | None = None


@dataclass(frozen=True, eq=False)
class ObservedCounts:
    """The observed data's threshold counts and max |t|, computed exactly as the null's rows.

    ``t_counts[k]`` is the number of units with |t| > ``t_thresholds[k]``, ``d_counts`` likewise
    for |d|, ``max_abs_t`` the largest |t|: the values of the null's identity pattern (exact row
    0), through the same float64 route, so observed and null agree even where a |t| or |d|
    equals a threshold exactly.
    """

    t_counts: np.ndarray
    d_counts: np.ndarray
    max_abs_t: float
    t_thresholds: tuple[float, ...]
    d_thresholds: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class SplitHalf:
    """Split-half reliability: Pearson r between the two halves' t-maps, one per split.

    ``assignments[k, i]`` is True when pair ``i`` is in the first half (floor(n/2) pairs) of
    split ``k``.
    """

    r: np.ndarray
    assignments: np.ndarray


# --- input -----------------------------------------------------------------------------------


def paired_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``B - A`` as a C-contiguous float64 ``[pairs x units]`` matrix, after checking the input.

    Refuses (``StatsInputError``, a ``ValueError``): A and B of different shapes, anything but
    2-D real numbers, fewer than 3 pairs, no units, and any NaN or infinity (named by matrix,
    pair and unit; a difference that overflows float64 counts too). float32 input is widened
    to float64 before subtracting.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise StatsInputError(
            f"condition A has shape {a.shape} but B has {b.shape}; both must be [pairs x units] "
            "with the same pairs and units in the same order"
        )
    for name, arr in (("A", a), ("B", b)):
        _check_real(arr, name)
    _check_shape(a.shape, "A and B")
    for name, arr in (("A", a), ("B", b)):
        _check_finite(arr, name)
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, by pair and unit
        diff = np.subtract(b, a, dtype=np.float64)
    _check_finite(diff, "B - A")
    return np.ascontiguousarray(diff)


def _as_diff(diff: np.ndarray) -> np.ndarray:
    arr = np.asarray(diff)
    _check_real(arr, "diff")
    _check_shape(arr.shape, "diff")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    _check_finite(out, "diff")
    return out


def _check_real(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind not in "fiub":
        raise StatsInputError(f"{name} must hold real numbers, got dtype {arr.dtype}")


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 2:
        raise StatsInputError(f"{name} must be a 2-D [pairs x units] matrix, got shape {shape}")
    n, m = shape
    if n < MIN_PAIRS:
        raise StatsInputError(f"{name} has {n} pair(s); paired statistics need at least {MIN_PAIRS}. Add pairs")
    if m == 0:
        raise StatsInputError(f"{name} has no units (shape {shape}); check the unit layout")


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind != "f":
        return
    where = _first_non_finite(arr)
    if where is not None:
        i, j, also = where
        raise StatsInputError(
            f"{name} has a non-finite value {float(arr[i, j])} at pair {i}, unit {j}{also}; "
            "re-capture that pair or drop it"
        )


def _first_non_finite(arr: np.ndarray) -> tuple[int, int, str] | None:
    """(row, column, " (k more non-finite value(s))" or "") of the first non-finite entry, or None."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    i, j = (int(v) for v in np.argwhere(bad)[0])
    more = int(bad.sum()) - 1
    return i, j, f" ({more} more non-finite value(s))" if more else ""


def _thresholds(values: Sequence[float], kind: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    for v in out:
        if not (np.isfinite(v) and v >= 0):
            raise StatsInputError(f"{kind} threshold {v} must be a finite number >= 0")
    return out


def _count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise StatsInputError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise StatsInputError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise StatsInputError(f"{name} must be at least {minimum}, got {v}")
    return v


def _seed(seed: int) -> int:
    s = _count(seed, "seed", 0)
    if s >= 1 << 64:
        raise StatsInputError(f"seed must be below 2**64, got {s}")
    return s


def _exact_mode(exact: bool | None, n: int, permutations: int) -> bool:
    """Whether to enumerate all 2^(n-1) sign patterns: ``exact``, or by default when they are no
    more than ``permutations``; refuses an enumeration out of reach."""
    if exact is None:
        exact = n <= MAX_EXACT_PAIRS and 2 ** (n - 1) <= permutations
    if exact and n > MAX_EXACT_PAIRS:
        raise StatsInputError(
            f"exact enumeration of 2^{n - 1} sign patterns is out of reach ({n} pairs, at most "
            f"{MAX_EXACT_PAIRS}); use Monte Carlo permutations (exact=False)"
        )
    return bool(exact)


# --- statistics ------------------------------------------------------------------------------


def paired(diff: np.ndarray) -> Paired:
    """Per-unit mean difference, sd (n - 1), paired t and Cohen's d_z."""
    diff = _as_diff(diff)
    mean, sd, t, d = _stats.paired(diff)
    return Paired(mean=mean, sd=sd, t=t, d=d, n_pairs=diff.shape[0])


def sign_flip_null(
    diff: np.ndarray,
    t_thresholds: Sequence[float] = (3.0, 5.0),
    d_thresholds: Sequence[float] = (0.8,),
    permutations: int = 1000,
    exact: bool | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> SignFlipNull:
    """The sign-flip null of the per-unit counts above thresholds and of the max |t|.

    ``exact=None`` enumerates all ``2 ** (n - 1)`` distinct patterns when that is at most
    ``permutations``, and draws ``permutations`` Monte Carlo patterns otherwise; ``True`` /
    ``False`` force the choice. ``progress(done, total)`` is called after each chunk of work.
    Memory is proportional to the number of permutations (the outputs), never to
    permutations x units.
    """
    diff = _as_diff(diff)
    n, m = diff.shape
    t_thr = _thresholds(t_thresholds, "t")
    d_thr = _thresholds(d_thresholds, "d")
    permutations = _count(permutations, "permutations", 1)
    seed = _seed(seed)
    exact = _exact_mode(exact, n, permutations)
    total = 2 ** (n - 1) if exact else permutations
    work = _EXACT_CHUNK_WORK if exact else _MONTE_CARLO_CHUNK_WORK
    chunk = int(min(max(_CHUNK_LIMITS[0], work // m), _CHUNK_LIMITS[1]))
    kt = len(t_thr)
    need_bytes = total * (kt + len(d_thr) + 1) * 8
    _check_memory(
        need_bytes,
        f"the null's {total:,} per-pattern rows",
        "use stats.sign_flip_tallies (memory independent of the number of patterns)"
        + (" or Monte Carlo (exact=False, e.g. permutations=10_000)" if exact else " or fewer permutations"),
    )
    try:
        t_counts = np.empty((total, kt), dtype=np.int64)
        d_counts = np.empty((total, len(d_thr)), dtype=np.int64)
        max_abs_t = np.empty(total, dtype=np.float64)
    except MemoryError:
        need = total * (kt + len(d_thr) + 1) * 8 / 2**30
        raise StatsInputError(
            f"the null's {total:,} rows need {need:.1f} GiB of memory; ask for fewer permutations"
            + (" or use Monte Carlo (exact=False)" if exact else "")
        ) from None
    for start in range(0, total, chunk):
        end = min(total, start + chunk)
        if exact:
            c, mx = _stats.sign_flip_exact(diff, list(t_thr), list(d_thr), start, end)
        else:
            c, mx = _stats.sign_flip_monte_carlo(diff, list(t_thr), list(d_thr), seed, start, end)
        t_counts[start:end] = c[:, :kt]
        d_counts[start:end] = c[:, kt:]
        max_abs_t[start:end] = mx
        if progress is not None:
            progress(end, total)
    return SignFlipNull(
        t_counts=t_counts,
        d_counts=d_counts,
        max_abs_t=max_abs_t,
        exact=exact,
        n_permutations=total,
        seed=seed,
        t_thresholds=t_thr,
        d_thresholds=d_thr,
        n_pairs=n,
    )


def observed_counts(
    diff: np.ndarray,
    t_thresholds: Sequence[float] = (3.0, 5.0),
    d_thresholds: Sequence[float] = (0.8,),
) -> ObservedCounts:
    """Counts above thresholds and max |t| of the observed data, as the null computes them.

    Compare these, not counts of :func:`paired`'s t, with a :class:`SignFlipNull`: the null
    decides |t| > c on normalised sums, and a t computed another way can fall on the other side
    of a threshold it equals exactly. Any number of pairs (no exact-enumeration limit).
    """
    diff = _as_diff(diff)
    t_thr = _thresholds(t_thresholds, "t")
    d_thr = _thresholds(d_thresholds, "d")
    c, mx = _stats.sign_flip_identity(diff, list(t_thr), list(d_thr))
    kt = len(t_thr)
    return ObservedCounts(
        t_counts=c[0, :kt].copy(),
        d_counts=c[0, kt:].copy(),
        max_abs_t=float(mx[0]),
        t_thresholds=t_thr,
        d_thresholds=d_thr,
    )


def null_p99(counts: np.ndarray) -> float:
    """The 99th percentile of one null count distribution (numpy's default linear rule).

    It can be 0 (fewer than 1% of permutations put any unit above the threshold); a ratio
    observed / p99 is then undefined, and callers should report the observed count and the
    null's p99 = 0 rather than divide.
    """
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size == 0:
        raise StatsInputError(f"null counts must be a non-empty 1-D array, got shape {arr.shape}")
    return float(np.percentile(arr, 99))


def fwer_p(abs_t_obs: np.ndarray, null: SignFlipNull) -> np.ndarray:
    """Max-statistic family-wise p-value per unit.

    Monte Carlo: ``(1 + #{i: max_abs_t[i] >= |t_obs|}) / (P + 1)``.
    Exact: ``#{patterns j, identity included: max_abs_t[j] >= |t_obs|} / 2**(n-1)``, what
    MNE-Python's exact ``permutation_t_test`` returns. The identity (row 0) is counted for
    every unit without comparing: its max |t| is the observed max, which is >= every |t_obs| of
    the same data, and counting it directly keeps rounding from ever giving p = 0.
    ``abs_t_obs`` must come from the diff the null was built on (signs are dropped).

    Ties: both sides are compared on the normalised squared sum ``r = S^2 / SS = n t^2 /
    (n - 1 + t^2)`` (in ``[0, n]``; infinite |t| is ``r = n``), and a null max counts when
    ``r_null >= r_obs * (1 - 1e-10)``. The null computes ``r`` with relative error about 1e-16
    and its |t| from ``r``, which costs relative error about ``1e-16 * t^2`` (above |t| ~ 3e3
    that exceeds any fixed tolerance on t); mapping |t| back to ``r`` removes that loss again,
    so the tolerance stays fixed at every |t|. It absorbs the few-ulp difference between the
    null's route and a two-pass t, so a pattern equivalent to the identity (flipping only pairs
    whose difference is 0, or a Monte Carlo draw of the identity) is never missed.
    """
    x = np.abs(np.asarray(abs_t_obs, dtype=np.float64))
    if np.isnan(x).any():
        raise StatsInputError("abs_t_obs has NaN values; |t| from stats.paired is never NaN")
    null_max = np.asarray(null.max_abs_t, dtype=np.float64)
    if null_max.shape != (null.n_permutations,):
        raise StatsInputError(f"the null has {null_max.shape} max |t| values for {null.n_permutations} permutations")
    if null.n_pairs is not None:
        n = int(null.n_pairs)
        bar = _ratio_of_abs_t(x, n) * (1.0 - _FWER_RTOL)
        null_max = _ratio_of_abs_t(null_max, n)
    else:  # a null built by hand, without its number of pairs: compare on |t|
        bar = x * (1.0 - _FWER_RTOL)
    if null.exact:
        rest = np.sort(null_max[1:])
        at_least = rest.size - np.searchsorted(rest, bar, side="left")
        return (1.0 + at_least) / null.n_permutations
    ordered = np.sort(null_max)
    at_least = ordered.size - np.searchsorted(ordered, bar, side="left")
    return (1.0 + at_least) / (null.n_permutations + 1)


def _ratio_of_abs_t(abs_t: np.ndarray, n: int) -> np.ndarray:
    """``r = S^2 / SS = n t^2 / (n - 1 + t^2)`` (``n`` for an infinite |t|), well conditioned."""
    t = np.asarray(abs_t, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        t2 = t * t
        r = n * t2 / ((n - 1) + t2)
    return np.where(np.isinf(t2), float(n), r)


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(need_bytes: int, what: str, instead: str) -> None:
    """Refuses, before any work, outputs that need more than half the memory available now."""
    avail = _available_memory()
    if avail is not None and need_bytes > avail // 2:
        raise StatsInputError(
            f"{what} need {need_bytes / 2**30:.1f} GiB of memory, more than half of the "
            f"{avail / 2**30:.1f} GiB available; {instead}"
        )


# --- streaming tallies ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NullTallies:
    """The sign-flip null as fixed-size tallies: memory independent of the number of patterns.

    ``n_permutations`` patterns were tallied: exact two-sided, all ``2 ** (n - 1)`` (pair 0
    fixed); exact one-sided, all ``2 ** n``; Monte Carlo, the ``permutations`` drawn.
    ``includes_identity`` says whether the observed data are one of them (always, in exact mode).
    ``thresholds[k]`` is ``("t", c)`` or ``("d", c)``: counts of units with |t| > c (two),
    t > c (greater) or t < -c (less), and |d| likewise.

    Groups: ``partition=None`` (with ``group=None``) is every unit; ``partition=i, group=g`` is
    the units labelled ``g`` in ``partitions[i]``. Every summary is computed exactly from the
    histogram of the count, equal to numpy's on the materialised per-pattern counts.
    """

    exact: bool
    n_permutations: int
    includes_identity: bool
    seed: int
    tail: str
    thresholds: tuple[tuple[str, float], ...]
    n_pairs: int
    n_units: int
    group_sizes: tuple[tuple[int, ...], ...]
    """Per partition, the number of units in each group."""
    _hist: dict[tuple[int | None, int | None], np.ndarray] = field(repr=False)
    _observed: dict[tuple[int | None, int | None], np.ndarray] = field(repr=False)
    _scores: np.ndarray = field(repr=False)
    _hits: np.ndarray = field(repr=False)
    _abs_hits: np.ndarray = field(repr=False)

    def _key(self, partition: int | None, group: int | None) -> tuple[int | None, int | None]:
        if (partition is None) != (group is None):
            raise StatsInputError("give both partition and group, or neither (every unit)")
        key = (partition, group)
        if key not in self._hist:
            raise StatsInputError(
                f"no group {group} in partition {partition}; partitions have groups {self.group_sizes}"
            )
        return key

    def histogram(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> np.ndarray:
        """int64 ``[group size + 1]``: patterns whose count over the threshold is 0, 1, ..."""
        h = self._hist[self._key(partition, group)]
        if not 0 <= threshold_index < h.shape[0]:
            raise StatsInputError(f"threshold_index {threshold_index} is not in 0..{h.shape[0] - 1}")
        return h[threshold_index].copy()

    def observed(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> int:
        """The observed data's count over the threshold, through the null's route."""
        self.histogram(threshold_index, partition, group)
        return int(self._observed[self._key(partition, group)][threshold_index])

    def percentile(
        self, q: float, threshold_index: int, partition: int | None = None, group: int | None = None
    ) -> float:
        """``numpy.percentile(counts, q)`` (linear rule) of the per-pattern counts, exactly."""
        h = self.histogram(threshold_index, partition, group)
        if not 0 <= q <= 100:
            raise StatsInputError(f"percentile q must be in [0, 100], got {q}")
        return _percentile_of_histogram(h, q)

    def median(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> float:
        """``numpy.median`` of the per-pattern counts."""
        return self.percentile(50, threshold_index, partition, group)

    def max_count(self, threshold_index: int, partition: int | None = None, group: int | None = None) -> int:
        """The largest per-pattern count."""
        h = self.histogram(threshold_index, partition, group)
        return int(np.flatnonzero(h)[-1])

    def n_at_least(
        self, count: int, threshold_index: int, partition: int | None = None, group: int | None = None
    ) -> int:
        """Patterns whose count is >= ``count`` (e.g. how many permutations a p99 rests on)."""
        h = self.histogram(threshold_index, partition, group)
        c = max(int(np.ceil(count)), 0)
        return int(h[c:].sum())

    @property
    def stat_obs(self) -> np.ndarray:
        """Per unit, the observed statistic as the null computes it: |t| (two), t (greater,
        less)."""
        n = self.n_pairs
        s = self._scores
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.tail == "two":
                return np.array([_stats.abs_t_from_ratio(float(r), n) for r in s])
            sign = np.sign(s) * (1.0 if self.tail == "greater" else -1.0)
            return sign * np.array([_stats.abs_t_from_ratio(float(v * v), n) for v in s])

    def fwer_p(self, stat_obs: np.ndarray | None = None, *, null: Literal["max", "max_abs"] = "max") -> np.ndarray:
        """Max-statistic family-wise p per unit, for the units the tallies were built on.

        Monte Carlo: ``(1 + k) / (P + 1)``; exact: ``k / 2 ** (n - 1)`` (two-sided) or
        ``k / 2 ** n`` (one-sided), the identity among the ``k`` patterns whose max statistic
        (max |t|, max t, or min t for ``less``) reaches the unit's observed one, as MNE's exact
        ``permutation_t_test`` counts. Ties are decided on the null's own normalised sums with
        relative tolerance 1e-10 (see :func:`fwer_p`). ``stat_obs`` (optional) is checked to be
        the statistic of the same data (|t| or t per unit, e.g. ``stats.paired(diff).t``).

        ``null="max_abs"`` (one-sided tails) compares each unit's signed t with the max |t| of
        every pattern instead, as MNE-Python's ``permutation_t_test(tail=1 / -1)`` does: valid
        but less powerful than the max-t null (a unit with t on the other side gets p = 1).
        For ``tail="two"`` both are the same.
        """
        if stat_obs is not None:
            self._check_stat(np.asarray(stat_obs, dtype=np.float64))
        if null not in ("max", "max_abs"):
            raise StatsInputError(f'null must be "max" or "max_abs", got {null!r}')
        hits = (self._hits if null == "max" else self._abs_hits).astype(np.float64)
        if self.exact:
            return hits / self.n_permutations
        return (1.0 + hits) / (self.n_permutations + 1)

    def _check_stat(self, stat: np.ndarray) -> None:
        if stat.shape != (self.n_units,):
            raise StatsInputError(f"stat_obs has shape {stat.shape}; the tallies have {self.n_units} units")
        if np.isnan(stat).any():
            raise StatsInputError("stat_obs has NaN values")
        n = self.n_pairs
        r = _ratio_of_abs_t(np.abs(stat), n)
        mine = self._scores * self._scores if self.tail != "two" else self._scores
        bad = np.abs(r - mine) > 1e-6 * np.maximum(1.0, mine)
        if self.tail != "two":
            want = 1.0 if self.tail == "greater" else -1.0
            bad |= (np.sign(stat) * want != np.sign(self._scores)) & (mine > 1e-12)
        if bad.any():
            u = int(np.flatnonzero(bad)[0])
            raise StatsInputError(
                f"stat_obs does not match the data the tallies were built on (unit {u}: {stat[u]} vs "
                f"{self.stat_obs[u]}); pass the t of the same diff, or None"
            )


def _percentile_of_histogram(h: np.ndarray, q: float) -> float:
    cum = np.cumsum(h)
    n = int(cum[-1])

    def value_at(i: int) -> np.int64:
        return np.int64(np.searchsorted(cum, i, side="right"))

    quant = np.true_divide(q, 100)
    virtual = (n - 1) * quant
    if virtual >= n - 1:
        return float(value_at(n - 1))
    prev = int(np.floor(virtual))
    gamma = virtual - np.floor(virtual)
    a, b = value_at(prev), value_at(prev + 1)
    diff = np.float64(b - a)
    if gamma >= 0.5:
        return float(np.float64(b) - diff * (1 - gamma))
    return float(np.float64(a) + diff * gamma)


def sign_flip_tallies(
    diff: np.ndarray,
    *,
    t_thresholds: Sequence[float] = (3.0, 5.0),
    d_thresholds: Sequence[float] = (0.8,),
    partitions: Sequence[np.ndarray] = (),
    tail: Tail = "two",
    permutations: int = 10_000,
    exact: bool | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    time_limit_s: float | None = _EXACT_TIME_LIMIT_S,
) -> NullTallies:
    """The sign-flip null as streaming tallies (see :class:`NullTallies`).

    ``partitions``: int label arrays ``[n_units]``, group ids ``0 .. k - 1``; every group's
    counts are tallied in the same run. ``tail``: "two" (|t|, 2^(n-1) patterns), "greater" (t,
    2^n patterns: every pair's sign free) or "less". ``exact=None`` enumerates every pattern
    when there are at most ``permutations`` of them. Memory is independent of the number of
    patterns (no per-pattern array is kept). An exact null is refused before the work when its
    time, estimated from the first chunk, exceeds ``time_limit_s`` (None: no limit).
    """
    diff = _as_diff(diff)
    n, m = diff.shape
    t_thr = _thresholds(t_thresholds, "t")
    d_thr = _thresholds(d_thresholds, "d")
    if tail not in _TAILS:
        raise StatsInputError(f"tail must be one of {_TAILS}, got {tail!r}")
    permutations = _count(permutations, "permutations", 1)
    seed = _seed(seed)
    labels = _partitions(partitions, m)
    per_j = 1 if tail == "two" else 2
    if exact is None:
        exact = n <= MAX_EXACT_PAIRS and per_j * 2 ** (n - 1) <= permutations
    exact = bool(exact)
    if exact and n > MAX_EXACT_PAIRS:
        raise StatsInputError(
            f"exact enumeration of the sign patterns of {n} pairs is out of reach (at most "
            f"{MAX_EXACT_PAIRS} pairs); use Monte Carlo permutations (exact=False, e.g. permutations=10_000)"
        )
    sizes = [np.bincount(row, minlength=int(row.max()) + 1 if row.size else 0) for row in labels]
    n_cols = len(t_thr) + len(d_thr)
    out_bytes = 8 * (n_cols * (m + 1 + sum(int(s.sum()) + s.size for s in sizes)) + 4 * m)
    _check_memory(out_bytes, "the tallies", "use fewer partitions or thresholds")
    scores = _stats.sign_flip_unit_scores(diff, tail)
    bars = scores - _FWER_RTOL * np.abs(scores)
    order = np.argsort(bars, kind="stable")
    sorted_bars = np.ascontiguousarray(bars[order])
    total_j = 2 ** (n - 1) if exact else permutations
    total = total_j * (per_j if exact else 1)
    hist: np.ndarray | None = None
    bins = np.zeros(m + 1, dtype=np.int64)
    abs_bins = np.zeros(m + 1, dtype=np.int64)
    done = 0
    chunk = _TALLY_CHUNK_EXACT_TWO if exact and tail == "two" else _TALLY_CHUNK
    first = True
    t0 = time.perf_counter()
    for start in range(0, total_j, chunk):
        end = min(total_j, start + (min(chunk, _TALLY_FIRST_CHUNK) if first else chunk))
        h, b, ab, npat = _stats.sign_flip_tallies(
            diff, list(t_thr), list(d_thr), labels, tail, exact, seed, start, end, list(sorted_bars)
        )
        hist = h if hist is None else hist + h
        bins += b
        abs_bins += ab
        done += int(npat)
        if first and exact and time_limit_s is not None and end < total_j:
            rate = (end - start) / max(time.perf_counter() - t0, 1e-9)
            eta = total_j / rate
            if eta > time_limit_s:
                raise StatsInputError(
                    f"an exact null over {total:,} sign patterns of {n} pairs would take about {eta:,.0f} s here "
                    f"({rate * per_j:,.0f} patterns/s measured), over the limit of {time_limit_s:,.0f} s; use Monte "
                    "Carlo (exact=False, e.g. permutations=10_000) or raise time_limit_s"
                )
        first = False
        if progress is not None:
            progress(done, total)
        if end == total_j:
            break
    if hist is None:  # pragma: no cover - total_j >= 1
        raise AssertionError("no patterns tallied")
    observed = _stats.sign_flip_tally_observed(diff, list(t_thr), list(d_thr), labels, tail)
    hits = _unit_hits(bins, order)
    abs_hits = _unit_hits(abs_bins, order)
    keys: list[tuple[int | None, int | None]] = [(None, None)]
    group_sizes = [m]
    for pi, s in enumerate(sizes):
        for g in range(s.size):
            keys.append((pi, g))
            group_sizes.append(int(s[g]))
    hists: dict[tuple[int | None, int | None], np.ndarray] = {}
    obs: dict[tuple[int | None, int | None], np.ndarray] = {}
    at = 0
    for gi, (key, size) in enumerate(zip(keys, group_sizes, strict=True)):
        width = n_cols * (size + 1)
        hists[key] = hist[at : at + width].reshape(n_cols, size + 1)
        obs[key] = observed[gi * n_cols : (gi + 1) * n_cols]
        at += width
    return NullTallies(
        exact=exact,
        n_permutations=total,
        includes_identity=exact,
        seed=seed,
        tail=tail,
        thresholds=tuple(("t", c) for c in t_thr) + tuple(("d", c) for c in d_thr),
        n_pairs=n,
        n_units=m,
        group_sizes=tuple(tuple(int(v) for v in s) for s in sizes),
        _hist=hists,
        _observed=obs,
        _scores=scores,
        _hits=hits,
        _abs_hits=abs_hits,
    )


def _unit_hits(bins: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per unit, the patterns placed above its bar: bin b holds patterns with b bars at or below
    their max, so the unit at sorted position i is reached by every pattern in bins i + 1 ..."""
    suffix = np.cumsum(bins[::-1])[::-1]
    hits = np.empty(order.size, dtype=np.int64)
    hits[order] = suffix[1:]
    return hits


def _partitions(partitions: Sequence[np.ndarray], m: int) -> np.ndarray:
    rows = []
    for i, p in enumerate(partitions):
        arr = np.asarray(p)
        if arr.ndim != 1 or arr.shape[0] != m:
            raise StatsInputError(f"partition {i} has shape {arr.shape}; it must label each of the {m} units")
        if arr.dtype.kind not in "iu":
            raise StatsInputError(f"partition {i} must hold integer group ids, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= 1 << 31):
            raise StatsInputError(f"partition {i} has group ids outside 0 .. 2**31 - 1")
        rows.append(arr.astype(np.uint32))
    if not rows:
        return np.zeros((0, m), dtype=np.uint32)
    return np.ascontiguousarray(np.stack(rows))


def split_assignments(n_pairs: int, n_splits: int, seed: int) -> np.ndarray:
    """``[n_splits x n_pairs]`` booleans, True for the floor(n/2) pairs of each first half.

    Split ``k`` depends only on ``(n_pairs, seed, k)``: asking for more splits keeps the first.
    """
    n_pairs = _count(n_pairs, "n_pairs", MIN_SPLIT_PAIRS)
    n_splits = _count(n_splits, "n_splits", 1)
    return _stats.split_assignments(n_pairs, n_splits, _seed(seed))


def split_half(diff: np.ndarray, n_splits: int = 100, seed: int = 0) -> SplitHalf:
    """Split-half reliability of the per-unit t-map over ``n_splits`` random halvings.

    Per split: t per unit in each half, then Pearson r across units. Units with an infinite t
    in either half (all of that half's differences equal, non-zero) are left out of that split;
    r is NaN if fewer than two units remain or a half's t-map is constant. Needs 4 pairs.
    """
    diff = _as_diff(diff)
    n = diff.shape[0]
    if n < MIN_SPLIT_PAIRS:
        raise StatsInputError(f"split-half reliability needs at least {MIN_SPLIT_PAIRS} pairs (2 per half), got {n}")
    assignments = split_assignments(n, n_splits, seed)
    r = _stats.split_half(diff, assignments)
    return SplitHalf(r=r, assignments=assignments)


def monte_carlo_signs(n_pairs: int, seed: int, start: int, end: int) -> np.ndarray:
    """The signs (+1 / -1, int8 ``[end - start x n_pairs]``) of Monte Carlo permutations
    ``start .. end`` of ``seed``: each pair's difference is multiplied by its sign."""
    n_pairs = _count(n_pairs, "n_pairs", MIN_PAIRS)
    start = _count(start, "start", 0)
    end = _count(end, "end", start)
    return _stats.monte_carlo_signs(n_pairs, _seed(seed), start, end)


def threads() -> int:
    """Worker threads of the statistics pool in this process (for provenance)."""
    return int(_stats.threads())


def simd_variant() -> str:
    """The instruction set the hot loops run with here: "avx512", "avx2" or "baseline"."""
    return str(_stats.simd_variant())


# --- direction test on signed vectors (issue 16) ---------------------------------------------

# Patterns per call into the direction engine: whole multiples of its table chunk (16,384),
# about a second of work per call on two cores at probe scale, so progress is reported often.
_DIRECTION_ENGINE_CHUNK = 16_384
_DIRECTION_CALL_WORK = 1 << 30
DIRECTION_TIE_REL: float = _stats.DIRECTION_TIE_REL
"""A null D within this share of sum_{i != j} |<delta_i, delta_j>| below the observed D counts as >=."""


@dataclass(frozen=True, eq=False)
class DirectionResult:
    """Per-unit direction test of signed vector differences (one value per unit in each array).

    * ``D``: ``sum_{i != j} <delta_i, delta_j> = ||sum_i delta_i||^2 - sum_i ||delta_i||^2``
      (0 in expectation when the differences share no direction).
    * ``D_norm``: ``D / sum_i ||delta_i||^2``, in ``[-1, n - 1]`` and unchanged by scaling a
      unit, so units of different scales compare; the FWER statistic is its max over units.
    * ``p``: sign-flip p of ``D`` (one-sided: large D is evidence). Exact: ``k / 2**(n-1)``
      with the identity among the k patterns; Monte Carlo: ``(1 + k) / (P + 1)``.
    * ``p_max``: max-statistic family-wise p over units (same patterns, max of ``D_norm``).
    * ``agree``: share of pairs ``i`` with ``<delta_i, sum_{j != i} delta_j> > 0``;
      ``agree_p``: its sign-flip p (patterns with at least as many agreeing pairs).

    A unit whose differences are all zero vectors has ``D = D_norm = agree = 0`` and every p 1.
    """

    D: np.ndarray
    D_norm: np.ndarray
    p: np.ndarray
    p_max: np.ndarray
    agree: np.ndarray
    agree_p: np.ndarray
    exact: bool
    n_permutations: int
    seed: int
    width: int
    n_pairs: int


def _as_vectors(delta_vec: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    arr = np.asarray(delta_vec)
    _check_real(arr, "delta_vec")
    if arr.ndim != 2:
        raise StatsInputError(f"delta_vec must be a 2-D [pairs x units * width] matrix, got shape {arr.shape}")
    n, cols = arr.shape
    width = _count(width, "width", 1)
    if n < MIN_PAIRS:
        raise StatsInputError(f"delta_vec has {n} pair(s); the direction test needs at least {MIN_PAIRS}. Add pairs")
    if cols == 0 or cols % width:
        raise StatsInputError(
            f"delta_vec has {cols} columns, not a positive multiple of the vector width {width}; "
            "pass the capture's vector_width (columns are unit-major: unit u owns u*W .. u*W+W-1)"
        )
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    out = np.ascontiguousarray(arr, dtype=dtype)
    where = _first_non_finite(out)
    if where is not None:
        i, c, also = where
        raise StatsInputError(
            f"delta_vec has a non-finite value {float(out[i, c])} at pair {i}, unit {c // width}, "
            f"column {c % width} of the unit{also}; re-capture that pair or drop it"
        )
    return out, width


def direction_test(
    delta_vec: np.ndarray,
    width: int,
    *,
    permutations: int = 10_000,
    exact: bool | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> DirectionResult:
    """Per-unit test of a consistent direction of the signed vector differences.

    ``delta_vec`` is ``[pairs x units * width]`` (float32 or float64, read without a copy when
    C-contiguous), unit-major: unit ``u`` owns columns ``u * width .. u * width + width - 1``.
    The sign-flip null flips whole vectors. ``exact=None`` enumerates all ``2 ** (n - 1)``
    patterns when that is at most ``permutations`` and draws ``permutations`` Monte Carlo
    patterns otherwise (the same patterns as :func:`sign_flip_null` for the same seed).
    ``progress(done, total)`` is called after each chunk. Memory is a few arrays per unit,
    never permutations x units. See :class:`DirectionResult` for the statistics.
    """
    arr, width = _as_vectors(delta_vec, width)
    n, cols = arr.shape
    m = cols // width
    permutations = _count(permutations, "permutations", 1)
    seed = _seed(seed)
    exact = _exact_mode(exact, n, permutations)
    total = 2 ** (n - 1) if exact else permutations
    per_call = _DIRECTION_ENGINE_CHUNK * max(1, _DIRECTION_CALL_WORK // (_DIRECTION_ENGINE_CHUNK * m * n))
    count_d = np.zeros(m, dtype=np.int64)
    count_a = np.zeros(m, dtype=np.int64)
    count_max = np.zeros(m, dtype=np.int64)
    d = d_norm = agree = np.zeros(m)
    for start in range(0, total, per_call):
        end = min(total, start + per_call)
        try:
            d, d_norm, agree, cd, ca, cm = _stats.direction_null(arr, width, exact, seed, start, end)
        except ValueError as e:
            raise StatsInputError(str(e)) from None
        count_d += cd
        count_a += ca
        count_max += cm
        if progress is not None:
            progress(end, total)

    def p_of(k: np.ndarray) -> np.ndarray:
        return k / total if exact else (1.0 + k) / (total + 1.0)

    return DirectionResult(
        D=d,
        D_norm=d_norm,
        p=p_of(count_d),
        p_max=p_of(count_max),
        agree=agree / n,
        agree_p=p_of(count_a),
        exact=exact,
        n_permutations=total,
        seed=seed,
        width=width,
        n_pairs=n,
    )


# --- pair bootstrap of the headline counts (issue 14, section 3) -----------------------------


@dataclass(frozen=True, eq=False)
class BootstrapCounts:
    """Counts of units above thresholds under a pair bootstrap, one row per draw.

    ``counts[b, k]``: units with |t| > ``t_thresholds[k]`` in draw ``b`` for the first
    ``len(t_thresholds)`` columns, then |d| > ``d_thresholds[k]`` (strict, conventions of
    :func:`paired`). ``indices[b]`` are the pairs draw ``b`` took (with replacement).
    ``split_median_r[b]`` (when asked for) is the median over splits of the finite split-half r
    of draw ``b``'s resampled pairs, NaN when none is finite.
    """

    counts: np.ndarray
    indices: np.ndarray
    t_thresholds: tuple[float, ...]
    d_thresholds: tuple[float, ...]
    draws: int
    seed: int
    split_median_r: np.ndarray | None = None

    @property
    def t_counts(self) -> np.ndarray:
        return self.counts[:, : len(self.t_thresholds)]

    @property
    def d_counts(self) -> np.ndarray:
        return self.counts[:, len(self.t_thresholds) :]

    def interval(self, threshold_index: int, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval (numpy's linear rule) of the counts of column ``threshold_index``
        (t thresholds first, then d thresholds) at coverage ``level``."""
        k = self.counts.shape[1]
        if not (-k <= threshold_index < k):
            raise StatsInputError(f"threshold_index {threshold_index} is out of range: there are {k} thresholds")
        return _percentile_interval(self.counts[:, threshold_index], level)

    def split_interval(self, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval of the split-half median r over the draws where it is finite."""
        if self.split_median_r is None:
            raise StatsInputError("this bootstrap was run without splits; pass splits > 0 to bootstrap_counts")
        r = self.split_median_r[np.isfinite(self.split_median_r)]
        if r.size == 0:
            raise StatsInputError("no bootstrap draw has a finite split-half median r")
        return _percentile_interval(r, level)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if not (0.0 < float(level) < 1.0):
        raise StatsInputError(f"level must be strictly between 0 and 1, got {level}")
    tail = (1.0 - float(level)) / 2.0
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [100.0 * tail, 100.0 * (1.0 - tail)])
    return float(lo), float(hi)


def bootstrap_indices(n_pairs: int, draws: int, seed: int) -> np.ndarray:
    """``[draws x n_pairs]`` pair indices (uint32) of the pair bootstrap: draw ``b`` depends only
    on ``(n_pairs, seed, b)``, so asking for more draws keeps the first."""
    n_pairs = _count(n_pairs, "n_pairs", MIN_PAIRS)
    draws = _count(draws, "draws", 1)
    return _stats.bootstrap_indices(n_pairs, draws, _seed(seed))


def bootstrap_counts(
    diff: np.ndarray,
    *,
    t_thresholds: Sequence[float] = (3.0, 5.0),
    d_thresholds: Sequence[float] = (0.8,),
    draws: int = 1000,
    seed: int = 0,
    splits: int = 0,
    tail: Tail = "two",
) -> BootstrapCounts:
    """Pair bootstrap of the counts of units over thresholds (resample pairs, recount).

    Draws come from :func:`bootstrap_indices`; per draw the engine recomputes each unit's t and
    d_z over the resampled pairs (a unit whose resampled differences are all equal is +/-inf,
    or 0 when they are all 0, as :func:`paired` says) and counts units with |t| > c (``tail``
    "two"), t > c ("greater") or t < -c ("less"), the same for d. The engine gets each draw's sums
    from integer pair weights in two blocked products (t within about 1e-11 relative of a
    two-pass recount: see ``rust/bootstrap.rs``; same seed, same counts, any thread count).
    ``splits > 0`` also gives each draw's split-half median r (``splits`` splits of the
    resampled pairs, seeded by ``seed``): ``draws x splits`` split-halves, one engine call per
    draw (about 0.3 s per draw with 100 splits at 25 x 16,320 on two busy cores), so far slower
    than the counts.
    """
    diff = _as_diff(diff)
    n = diff.shape[0]
    t_thr = _thresholds(t_thresholds, "t")
    d_thr = _thresholds(d_thresholds, "d")
    draws = _count(draws, "draws", 1)
    seed = _seed(seed)
    splits = _count(splits, "splits", 0)
    if tail not in _TAILS:
        raise StatsInputError(f"tail must be one of {_TAILS}, got {tail!r}")
    if splits and n < MIN_SPLIT_PAIRS:
        raise StatsInputError(f"split-half reliability needs at least {MIN_SPLIT_PAIRS} pairs, got {n}")
    idx = bootstrap_indices(n, draws, seed)
    counts = _stats.bootstrap_counts(diff, list(t_thr), list(d_thr), idx, tail)
    median_r = None
    if splits:
        assignments = split_assignments(n, splits, seed)
        median_r = np.empty(draws)
        for b in range(draws):
            r = _stats.split_half(np.ascontiguousarray(diff[idx[b]]), assignments)
            finite = r[np.isfinite(r)]
            median_r[b] = float(np.median(finite)) if finite.size else np.nan
    return BootstrapCounts(
        counts=counts,
        indices=idx,
        t_thresholds=t_thr,
        d_thresholds=d_thr,
        draws=draws,
        seed=seed,
        split_median_r=median_r,
    )


__all__ += [
    "DIRECTION_TIE_REL",
    "BootstrapCounts",
    "DirectionResult",
    "bootstrap_counts",
    "bootstrap_indices",
    "direction_test",
]
