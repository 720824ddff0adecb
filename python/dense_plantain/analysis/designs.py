"""Analysis designs: what is tested per unit, and what is exchangeable under the null.

A design holds its data and supplies four things to the driver (:mod:`.driver`), which builds
every result the same way from them:

* ``statistic()``: per-unit mean difference, t, d, degrees of freedom and two-sided p;
* ``null(options, partitions, progress)``: the null over all units and, for each partition of the
  units (an int label per unit, -1 for none), over each group apart, as a `NullDistribution`;
* ``observed_counts(columns, options)``: the observed threshold counts through the null's own
  arithmetic (so a statistic exactly at a threshold falls on the same side as the identity row);
* ``split_half(n_splits, seed)``: split-half consistency of the t-map.

`PairedDesign` (one capture's B - A, or a matched contrast of two) and `WelchDesign` (two
unmatched samples of differences) are the two today. A new design (a random-weights baseline, a
subgroup by factor level, several seeds pooled) is a further class with these four methods; an
option of the null (``tail``, a seed list) goes in `NullOptions`.

To switch the paired design to the engine's streaming tallies, ``PairedDesign.null`` returns
``stats.sign_flip_tallies(self.diff, t_thresholds=..., d_thresholds=..., partitions=partitions,
tail=options.tail, permutations=..., exact=..., seed=..., progress=progress)`` instead of
`_per_group_null`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
from scipy.special import stdtr

from dense_plantain import stats, welch
from dense_plantain.analysis.records import SplitHalfSummary
from dense_plantain.nulls import CountsNull, NullDistribution
from dense_plantain.stats import StatsInputError

__all__ = ["TAILS", "Design", "NullOptions", "PairedDesign", "UnitStatistics", "WelchDesign", "tail_p", "two_sided_p"]

#: The alternatives of ``analyze --tail``: B - A differs (two), is larger (greater), is smaller (less).
TAILS = ("two", "greater", "less")

#: ``progress(done, total)``, over all null runs of one analysis.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class NullOptions:
    """How to build a null: thresholds, size, exactness, seed and tail."""

    t_thresholds: tuple[float, ...]
    d_thresholds: tuple[float, ...]
    permutations: int
    exact: bool | None
    seed: int
    tail: stats.Tail = "two"
    #: One-sided tails: the max statistic behind p_maxT, "max" (max t, or min t for "less";
    #: the default, the more powerful valid null) or "max_abs" (signed t against max |t|, as
    #: MNE-Python's ``permutation_t_test(tail=1 / -1)``). Ignored for two-sided tests.
    fwer_null: str = "max"

    @property
    def n_thresholds(self) -> int:
        return len(self.t_thresholds) + len(self.d_thresholds)


@dataclass(frozen=True, eq=False)
class UnitStatistics:
    """Per-unit statistics, float64 [n_units] each."""

    mean_diff: np.ndarray
    t: np.ndarray
    d: np.ndarray
    df: np.ndarray
    p: np.ndarray


class Design(Protocol):
    """What the driver needs from a design (see the module docs)."""

    name: str  # results.json "design"
    null_method: str  # results.json null.method

    @property
    def n_pairs(self) -> int:  # pairs behind each statistic (Welch: n1 + n2)
        ...

    @property
    def group_sizes(self) -> tuple[int, ...]: ...

    def statistic(self) -> UnitStatistics: ...

    def null(
        self, options: NullOptions, partitions: Sequence[np.ndarray], progress: Progress | None
    ) -> NullDistribution: ...

    def observed_counts(self, columns: np.ndarray | None, options: NullOptions) -> np.ndarray: ...

    def split_half(self, n_splits: int, seed: int) -> SplitHalfSummary: ...


def two_sided_p(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Parametric two-sided p from the t distribution (NaN where t is undefined).

    ``2 * stdtr(df, -|t|)`` is what ``scipy.stats.t.sf`` computes (same numbers, bit for bit),
    without importing scipy.stats (seconds on a cold start)."""
    with np.errstate(invalid="ignore"):
        return 2.0 * stdtr(df, -np.abs(t))


def tail_p(t: np.ndarray, df: np.ndarray, tail: str) -> np.ndarray:
    """Parametric p of ``t`` for the alternative ``tail``: two-sided as `two_sided_p`; "greater"
    the upper tail ``P(T >= t)`` (``stdtr(df, -t)``), "less" the lower tail ``P(T <= t)``
    (``stdtr(df, t)``), the p of ``scipy.stats.ttest_rel(..., alternative=...)``."""
    if tail == "two":
        return two_sided_p(t, df)
    if tail not in TAILS:
        raise StatsInputError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
    with np.errstate(invalid="ignore"):
        return stdtr(df, -t if tail == "greater" else t)


# One engine run over some columns: (counts int64 [P x k_t + k_d], max |t| [P], max of the tail's
# statistic [P] or None, exact, P).
_Run = Callable[[np.ndarray | None, Progress | None], tuple[np.ndarray, np.ndarray, np.ndarray | None, bool, int]]


def _per_group_null(
    run: _Run, partitions: Sequence[np.ndarray], options: NullOptions, progress: Progress | None
) -> CountsNull:
    """A `CountsNull` from one engine run over all units and one per group (same seed, so the
    same permutations); the progress count spans all runs."""
    jobs: list[tuple[int | None, int | None, np.ndarray | None]] = [(None, None, None)]
    for index, labels in enumerate(partitions):
        for label in sorted(set(np.asarray(labels).tolist()) - {-1}):
            jobs.append((index, int(label), np.flatnonzero(labels == label)))
    counts: dict[tuple[int | None, int | None], np.ndarray] = {}
    max_abs_t = np.empty(0)
    max_stat: np.ndarray | None = None
    exact, n_perm = False, 0
    for i, (k, g, cols) in enumerate(jobs):
        report = None
        if progress is not None:

            def report(done: int, total: int, i: int = i) -> None:
                progress(i * total + done, len(jobs) * total)

        c, m, top, ex, n = run(cols, report)
        counts[(k, g)] = c
        if cols is None:
            max_abs_t, max_stat, exact, n_perm = m, top, ex, n
    return CountsNull(
        counts=counts,
        max_abs_t=max_abs_t,
        exact=exact,
        n_permutations=n_perm,
        seed=options.seed,
        includes_identity=exact,  # exact row 0 is the identity; a Monte Carlo draw may hit it by chance
        identity_row=0 if exact else None,
        tail=options.tail,
        max_stat=max_stat,
    )


def signed_counts(t: np.ndarray, d: np.ndarray, options: NullOptions) -> np.ndarray:
    """Units over each threshold for the options' tail: |t| > c (two), t > c (greater), t < -c (less),
    t thresholds then d thresholds (strict, NaN never counts)."""
    sign = {"two": 0.0, "greater": 1.0, "less": -1.0}[options.tail]
    with np.errstate(invalid="ignore"):
        tv, dv = (np.abs(t), np.abs(d)) if sign == 0.0 else (sign * t, sign * d)
        out = [int((tv > c).sum()) for c in options.t_thresholds] + [int((dv > c).sum()) for c in options.d_thresholds]
    return np.asarray(out, dtype=np.int64)


@dataclass(eq=False)
class PairedDesign:
    """Paired t over rows of ``diff`` (B - A per pair; or diff1 - diff2); sign-flip null."""

    diff: np.ndarray  # float64 [n x m], C order (stats.paired_diff)
    name: str = "paired"
    null_method: str = "sign-flip"

    @property
    def n_pairs(self) -> int:
        return int(self.diff.shape[0])

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return (self.n_pairs,)

    def statistic(self) -> UnitStatistics:
        res = stats.paired(self.diff)
        t = np.asarray(res.t, dtype=np.float64)
        df = np.full(t.shape, float(self.n_pairs - 1))
        mean, d = np.asarray(res.mean, dtype=np.float64), np.asarray(res.d, dtype=np.float64)
        return UnitStatistics(mean, t, d, df, two_sided_p(t, df))

    def _part(self, cols: np.ndarray | None) -> np.ndarray:
        return self.diff if cols is None else np.ascontiguousarray(self.diff[:, cols])

    def null(
        self, options: NullOptions, partitions: Sequence[np.ndarray], progress: Progress | None
    ) -> NullDistribution:
        """The engine's streaming tallies: every group of every partition counted in one run,
        memory independent of the number of patterns (``stats.sign_flip_tallies``)."""
        # Units in no group (label -1) get a group of their own that the driver never reads.
        labels = [np.where(p < 0, int(p.max(initial=-1)) + 1, p).astype(np.int64) for p in map(np.asarray, partitions)]
        try:
            return stats.sign_flip_tallies(
                self.diff,
                t_thresholds=options.t_thresholds,
                d_thresholds=options.d_thresholds,
                partitions=labels,
                tail=cast(stats.Tail, options.tail),  # checked by the engine
                permutations=options.permutations,
                exact=options.exact,
                seed=options.seed,
                progress=progress,
            )
        except ValueError as err:  # e.g. an exact null too slow to enumerate
            raise StatsInputError(f"sign-flip null: {err}") from None

    def observed_counts(self, columns: np.ndarray | None, options: NullOptions) -> np.ndarray:
        if options.tail != "two":
            res = stats.paired(self._part(columns))
            return signed_counts(np.asarray(res.t), np.asarray(res.d), options)
        obs = stats.observed_counts(
            self._part(columns), t_thresholds=options.t_thresholds, d_thresholds=options.d_thresholds
        )
        return np.concatenate([np.asarray(obs.t_counts), np.asarray(obs.d_counts)]).astype(np.int64)

    def split_half(self, n_splits: int, seed: int) -> SplitHalfSummary:
        n = self.n_pairs
        if n < stats.MIN_SPLIT_PAIRS:
            return SplitHalfSummary(
                np.empty(0),
                n_splits,
                note=f"not computed: {n} pairs cannot be split "
                f"into two halves of at least 2 (needs {stats.MIN_SPLIT_PAIRS} pairs)",
            )
        sh = stats.split_half(self.diff, n_splits=n_splits, seed=seed)
        return SplitHalfSummary(
            np.asarray(sh.r, dtype=np.float64), n_splits, assignments=np.asarray(sh.assignments, dtype=bool)
        )


@dataclass(eq=False)
class WelchDesign:
    """Welch's t of ``x1`` vs ``x2`` (two independent samples of per-pair differences); label-shuffle null."""

    x1: np.ndarray  # float64 [n1 x m]
    x2: np.ndarray  # float64 [n2 x m]
    name: str = "contrast-welch"
    null_method: str = "label-shuffle"

    @property
    def n_pairs(self) -> int:
        return int(self.x1.shape[0] + self.x2.shape[0])

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return (int(self.x1.shape[0]), int(self.x2.shape[0]))

    def _parts(self, cols: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return (self.x1, self.x2) if cols is None else (self.x1[:, cols], self.x2[:, cols])

    def statistic(self) -> UnitStatistics:
        res = welch.welch(self.x1, self.x2)  # raises StatsInputError, as the paired path does
        return UnitStatistics(res.mean_diff, res.t, res.d, res.df, two_sided_p(res.t, res.df))

    def null(self, options: NullOptions, partitions: Sequence[np.ndarray], progress: Progress | None) -> CountsNull:
        """The label-shuffle null for the options' tail (one-sided: t > c / t < -c, max t / min t)."""

        def run(cols: np.ndarray | None, report: Progress | None):
            try:
                null = welch.label_shuffle_null(
                    *self._parts(cols),
                    t_thresholds=options.t_thresholds,
                    d_thresholds=options.d_thresholds,
                    permutations=options.permutations,
                    exact=options.exact,
                    seed=options.seed,
                    progress=report,
                    tail=options.tail,
                )
            except ValueError as err:
                raise StatsInputError(f"label-shuffle null: {err}") from None
            counts = np.concatenate([null.t_counts, null.d_counts], axis=1)
            return counts, null.max_abs_t, null.max_stat, bool(null.exact), int(null.n_permutations)

        return _per_group_null(run, partitions, options, progress)

    def observed_counts(self, columns: np.ndarray | None, options: NullOptions) -> np.ndarray:
        obs = welch.observed_counts(
            *self._parts(columns),
            t_thresholds=options.t_thresholds,
            d_thresholds=options.d_thresholds,
            tail=options.tail,
        )
        return np.concatenate([obs.t_counts, obs.d_counts]).astype(np.int64)

    def split_half(self, n_splits: int, seed: int) -> SplitHalfSummary:
        n1, n2 = self.group_sizes
        if min(n1, n2) < 4:
            return SplitHalfSummary(
                np.empty(0), n_splits, note=f"not computed: split halves need 4 pairs per capture, got {n1} and {n2}"
            )
        return SplitHalfSummary(welch.split_half(self.x1, self.x2, n_splits=n_splits, seed=seed), n_splits)
