"""Welch's t between two independent samples of rows, with a label-shuffle null.

``compare`` needs this when two captures do not share their pairs (different subjects, or
different numbers of pairs): each capture then gives one sample of per-pair differences, and the
per-unit question is whether the two samples' means differ. The sign-flip null of the paired
test does not apply; the exchangeable thing is the capture label of each row, so the null
shuffles the labels and recomputes every unit's statistic.

Rows are centred on the pooled column means first (a shuffle does not change them), and each
shuffle needs only the group-1 column sums and sums of squares, accumulated row by row over a
chunk of shuffles in a fixed order, so the observed labelling's row has the same bits whatever
the chunk (:func:`observed_counts` computes it alone). Memory stays at a few ``chunk x units``
float64 arrays, whatever the number of shuffles.

How shuffles are drawn, so that anyone can reproduce them: with ``rng =
numpy.random.default_rng(seed)`` and ``N = n1 + n2`` rows, shuffle ``k`` is the stable argsort of
row ``k`` of ``rng.random((P, N))`` (drawn chunk by chunk, which yields the same numbers); its
first ``n1`` entries are the rows labelled group 1. The exact null enumerates every choice of
``n1`` rows out of ``N`` in ``itertools.combinations`` order; it includes the observed labelling.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from dense_plantain import nulls
from dense_plantain.stats import StatsInputError

__all__ = [
    "MAX_EXACT",
    "LabelShuffleNull",
    "ObservedCounts",
    "Welch",
    "fwer_p",
    "label_shuffle_null",
    "n_labellings",
    "observed_counts",
    "split_half",
    "welch",
]

#: Budget for one chunk of shuffles: about this many float64 elements per ``chunk x units`` array.
_CHUNK_ELEMENTS = 2_000_000
#: Refuse an exact enumeration beyond this many labellings; Monte Carlo is the tool then.
MAX_EXACT = 50_000_000


@dataclass(frozen=True)
class Welch:
    """Per-unit Welch statistics of group 1 minus group 2."""

    mean_diff: np.ndarray  # mean1 - mean2, float64 [m]
    t: np.ndarray  # Welch t, float64 [m]
    df: np.ndarray  # Welch-Satterthwaite degrees of freedom, float64 [m]
    d: np.ndarray  # Cohen's d_s: mean difference over the pooled SD, float64 [m]
    n1: int
    n2: int


@dataclass(frozen=True)
class ObservedCounts:
    """The observed labelling's threshold counts and max |t|, computed exactly as a null row.

    Same arithmetic route as :func:`label_shuffle_null` (pooled centring, group-1 sums through a
    0/1 membership matrix product, :func:`_moments`), so a |t| or |d| that equals a threshold
    exactly lands on the same side as in the null's row for the observed labelling (exact row 0).
    """

    t_counts: np.ndarray  # int64 [k_t]
    d_counts: np.ndarray  # int64 [k_d]
    max_abs_t: float
    t_thresholds: tuple[float, ...]
    d_thresholds: tuple[float, ...]


@dataclass(frozen=True)
class LabelShuffleNull:
    """Counts under shuffled labels; same fields as the sign-flip null of ``stats``."""

    t_counts: np.ndarray  # int64 [P x k_t]: units with |t| > threshold, per shuffle
    d_counts: np.ndarray  # int64 [P x k_d]
    max_abs_t: np.ndarray  # float64 [P]
    exact: bool
    n_permutations: int
    seed: int
    t_thresholds: tuple[float, ...]
    d_thresholds: tuple[float, ...]


def _moments(
    s1: np.ndarray, q1: np.ndarray, s: np.ndarray, q: np.ndarray, n1: int, n2: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Means and variances (n-1) of both groups from group-1 sums and the totals."""
    s2, q2 = s - s1, q - q1
    m1, m2 = s1 / n1, s2 / n2
    v1 = np.maximum(q1 - s1 * m1, 0.0) / (n1 - 1)
    v2 = np.maximum(q2 - s2 * m2, 0.0) / (n2 - 1)
    return m1, m2, v1, v2


def _t_and_d(m1, m2, v1, v2, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    diff = m1 - m2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(v1 / n1 + v2 / n2)
        d = diff / np.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    return t, d


def _pooled(x1: np.ndarray, x2: np.ndarray):
    """Rows centred on the pooled column means, their squares, and both column totals."""
    rows = np.concatenate([x1, x2], axis=0)
    rows = rows - rows.mean(axis=0)  # shuffle-invariant; keeps the sums of squares well scaled
    squares = rows * rows
    return rows, squares, rows.sum(axis=0), squares.sum(axis=0)


def _labelling_stats(
    member: np.ndarray, rows, squares, s, q, n1: int, n2: int, t_th: tuple[float, ...], d_th: tuple[float, ...]
):
    """Counts over each threshold and max |t| for each labelling (row of ``member``, 0/1)."""
    # Group-1 sums accumulated row by row in a fixed order, not by a BLAS product: a BLAS sum's
    # order depends on the batch shape (gemv for one labelling, gemm kernels by chunk size), and the
    # observed labelling must get bit-identical sums alone (observed_counts) and inside any chunk.
    s1 = np.zeros((member.shape[0], rows.shape[1]), dtype=np.float64)
    q1 = np.zeros_like(s1)
    buf = np.empty_like(s1)
    for r in range(rows.shape[0]):
        pick = member[:, r : r + 1]
        np.add(s1, np.multiply(pick, rows[r], out=buf), out=s1)
        np.add(q1, np.multiply(pick, squares[r], out=buf), out=q1)
    t, d = _t_and_d(*_moments(s1, q1, s, q, n1, n2), n1, n2)
    abs_t, abs_d = np.abs(t), np.abs(d)
    t_counts = (
        np.stack([(abs_t > th).sum(axis=1) for th in t_th], axis=1)
        if t_th
        else np.zeros((member.shape[0], 0), dtype=np.int64)
    )
    d_counts = (
        np.stack([(abs_d > th).sum(axis=1) for th in d_th], axis=1)
        if d_th
        else np.zeros((member.shape[0], 0), dtype=np.int64)
    )
    max_abs_t = np.max(np.nan_to_num(abs_t, nan=0.0), axis=1)
    return t_counts, d_counts, max_abs_t


def welch(x1: np.ndarray, x2: np.ndarray) -> Welch:
    """Welch's t, its degrees of freedom and Cohen's d_s for every column of ``x1`` vs ``x2``."""
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    n1, n2 = x1.shape[0], x2.shape[0]
    if n1 < 2 or n2 < 2:
        raise StatsInputError(f"Welch's t needs at least 2 rows per group, got {n1} and {n2}")
    m1, m2 = x1.mean(axis=0), x2.mean(axis=0)
    v1, v2 = x1.var(axis=0, ddof=1), x2.var(axis=0, ddof=1)
    t, d = _t_and_d(m1, m2, v1, v2, n1, n2)
    a, b = v1 / n1, v2 / n2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))
    return Welch(mean_diff=m1 - m2, t=t, df=df, d=d, n1=n1, n2=n2)


def n_labellings(n1: int, n2: int) -> int:
    """How many ways to pick the group-1 rows: C(n1 + n2, n1)."""
    return math.comb(n1 + n2, n1)


def _random_groups(rng: np.random.Generator, n_rows: int, n1: int, count: int) -> np.ndarray:
    order = np.argsort(rng.random((count, n_rows)), axis=1, kind="stable")
    member = np.zeros((count, n_rows), dtype=np.float64)
    np.put_along_axis(member, order[:, :n1], 1.0, axis=1)
    return member


def _all_groups(n_rows: int, n1: int, chunk: int) -> Iterator[np.ndarray]:
    combos = itertools.combinations(range(n_rows), n1)
    while True:
        block = list(itertools.islice(combos, chunk))
        if not block:
            return
        member = np.zeros((len(block), n_rows), dtype=np.float64)
        np.put_along_axis(member, np.asarray(block, dtype=np.int64), 1.0, axis=1)
        yield member


def label_shuffle_null(
    x1: np.ndarray,
    x2: np.ndarray,
    *,
    t_thresholds: tuple[float, ...] = (3.0, 5.0),
    d_thresholds: tuple[float, ...] = (0.8,),
    permutations: int = 1000,
    exact: bool | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LabelShuffleNull:
    """Per shuffle of the group labels: units over each threshold, and the max |t|.

    ``exact=None`` enumerates every labelling when there are at most ``permutations`` of them,
    and draws ``permutations`` random shuffles otherwise (see the module docstring for how).
    Units whose statistic is undefined under a shuffle (zero variance) count as not exceeding.
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    n1, n2 = x1.shape[0], x2.shape[0]
    if n1 < 2 or n2 < 2:
        raise StatsInputError(f"a label-shuffle null needs at least 2 rows per group, got {n1} and {n2}")
    if permutations < 1:
        raise StatsInputError(f"permutations must be at least 1, got {permutations}")
    total = n_labellings(n1, n2)
    if exact is None:
        exact = total <= permutations
    if exact and total > MAX_EXACT:
        raise StatsInputError(
            f"an exact label-shuffle null would enumerate {total:,} labellings "
            f"(more than {MAX_EXACT:,}); use Monte Carlo permutations instead"
        )
    n_perm = total if exact else permutations

    rows, squares, s, q = _pooled(x1, x2)
    n_rows, m = rows.shape
    chunk = max(1, min(n_perm, _CHUNK_ELEMENTS // max(m, 1)))

    t_th = tuple(float(v) for v in t_thresholds)
    d_th = tuple(float(v) for v in d_thresholds)
    t_counts = np.zeros((n_perm, len(t_th)), dtype=np.int64)
    d_counts = np.zeros((n_perm, len(d_th)), dtype=np.int64)
    max_abs_t = np.zeros(n_perm, dtype=np.float64)

    if exact:
        groups = _all_groups(n_rows, n1, chunk)
    else:
        rng = np.random.default_rng(seed)
        groups = (_random_groups(rng, n_rows, n1, min(chunk, n_perm - start)) for start in range(0, n_perm, chunk))

    done = 0
    for member in groups:
        stop = done + member.shape[0]
        t_counts[done:stop], d_counts[done:stop], max_abs_t[done:stop] = _labelling_stats(
            member, rows, squares, s, q, n1, n2, t_th, d_th
        )
        done = stop
        if progress is not None:
            progress(done, n_perm)
    return LabelShuffleNull(
        t_counts=t_counts,
        d_counts=d_counts,
        max_abs_t=max_abs_t,
        exact=bool(exact),
        n_permutations=n_perm,
        seed=int(seed),
        t_thresholds=t_th,
        d_thresholds=d_th,
    )


def observed_counts(
    x1: np.ndarray,
    x2: np.ndarray,
    *,
    t_thresholds: tuple[float, ...] = (3.0, 5.0),
    d_thresholds: tuple[float, ...] = (0.8,),
) -> ObservedCounts:
    """Threshold counts and max |t| of the observed labelling, as :func:`label_shuffle_null` computes them.

    Compare these, not counts of :func:`welch`'s two-pass t and d, with a label-shuffle null: the
    null decides |t| > c from group sums (:func:`_moments`), and a t computed another way can fall
    on the other side of a threshold it equals exactly. Equals the exact null's row 0 (the first
    ``itertools.combinations`` labelling is the observed one). Any sizes (nothing is enumerated).
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    n1, n2 = x1.shape[0], x2.shape[0]
    if n1 < 2 or n2 < 2:
        raise StatsInputError(f"Welch's t needs at least 2 rows per group, got {n1} and {n2}")
    rows, squares, s, q = _pooled(x1, x2)
    member = np.zeros((1, n1 + n2), dtype=np.float64)
    member[0, :n1] = 1.0
    t_th = tuple(float(v) for v in t_thresholds)
    d_th = tuple(float(v) for v in d_thresholds)
    t_counts, d_counts, max_abs_t = _labelling_stats(member, rows, squares, s, q, n1, n2, t_th, d_th)
    return ObservedCounts(
        t_counts=t_counts[0].astype(np.int64),
        d_counts=d_counts[0].astype(np.int64),
        max_abs_t=float(max_abs_t[0]),
        t_thresholds=t_th,
        d_thresholds=d_th,
    )


def fwer_p(abs_t_obs: np.ndarray, null: LabelShuffleNull) -> np.ndarray:
    """Max-statistic p per unit by the one rule of :func:`dense_plantain.nulls.fwer_p`.

    Monte Carlo ``(1 + #{max|t| >= |t|}) / (P + 1)``; exact ``(1 + #{other labellings}) / P``, the
    observed labelling (row 0) counted for every unit. NaN |t| gives NaN."""
    return nulls.fwer_p(
        null.max_abs_t,
        abs_t_obs,
        exact=null.exact,
        n_permutations=null.n_permutations,
        identity_row=0 if null.exact else None,
    )


def split_half(x1: np.ndarray, x2: np.ndarray, *, n_splits: int = 100, seed: int = 0) -> np.ndarray:
    """Split-half consistency of Welch's t: Pearson r across units, one per random split.

    Each split halves both groups at random (for odd sizes the first half is the smaller), computes
    Welch's t in each half, and correlates the two t vectors. Needs 4 rows per group.
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    n1, n2 = x1.shape[0], x2.shape[0]
    if n1 < 4 or n2 < 4:
        raise StatsInputError(f"split halves of Welch's t need at least 4 rows per group, got {n1} and {n2}")
    rng = np.random.default_rng(seed)
    r = np.empty(n_splits, dtype=np.float64)
    for k in range(n_splits):
        o1, o2 = rng.permutation(n1), rng.permutation(n2)
        h1, h2 = n1 // 2, n2 // 2
        t_a = welch(x1[o1[:h1]], x2[o2[:h2]]).t
        t_b = welch(x1[o1[h1:]], x2[o2[h2:]]).t
        r[k] = _pearson(t_a, t_b)
    return r


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    ok = np.isfinite(u) & np.isfinite(v)
    u, v = u[ok] - u[ok].mean(), v[ok] - v[ok].mean()
    den = math.sqrt(float(u @ u) * float(v @ v))
    return float(u @ v) / den if den > 0 else float("nan")
