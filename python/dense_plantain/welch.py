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

One-sided tests (``tail="greater"`` / ``"less"``): the same labellings, counting units with t > c
(or t < -c; the same for d) and keeping each shuffle's max t (or min t, as the max of -t) beside
its max |t|; the family-wise p compares each unit's t (or -t) with the max statistic
(:func:`fwer_p`). The exact null's C(N, n1) labellings are all distinct for either tail.

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
    "TAILS",
    "LabelShuffleNull",
    "ObservedCounts",
    "bootstrap_counts",
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
    tail: str = "two"
    max_stat: float = float("nan")  # max of the tail's statistic (|t|, t or -t)


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
    tail: str = "two"
    #: float64 [P]: per shuffle, the max of the tail's statistic (|t| two, t greater, -t less;
    #: NaN units left out, -inf when all are NaN). None: the same as ``max_abs_t``.
    max_stat: np.ndarray | None = None


#: The alternatives: B - A (group 1 - group 2) differs, is larger, is smaller.
TAILS = ("two", "greater", "less")


def _oriented(x: np.ndarray, tail: str) -> np.ndarray:
    """The tail's statistic: |x| (two), x (greater), -x (less)."""
    return np.abs(x) if tail == "two" else (x if tail == "greater" else -x)


def _check_tail(tail: str) -> None:
    if tail not in TAILS:
        raise StatsInputError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")


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
    member: np.ndarray,
    rows,
    squares,
    s,
    q,
    n1: int,
    n2: int,
    t_th: tuple[float, ...],
    d_th: tuple[float, ...],
    tail: str = "two",
):
    """Counts over each threshold for ``tail``, max |t| and the max of the tail's statistic for
    each labelling (row of ``member``, 0/1)."""
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
    t_counts, d_counts = _threshold_counts(t, d, t_th, d_th, tail)
    max_abs_t = np.max(np.nan_to_num(np.abs(t), nan=0.0), axis=1)
    stat = _oriented(t, tail)
    max_stat = max_abs_t if tail == "two" else np.max(np.where(np.isnan(stat), -np.inf, stat), axis=1)
    return t_counts, d_counts, max_abs_t, max_stat


def _threshold_counts(
    t: np.ndarray, d: np.ndarray, t_th: tuple[float, ...], d_th: tuple[float, ...], tail: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``t``, ``d`` [rows x units]: units over each threshold for ``tail`` (strict; NaN never)."""
    rows = t.shape[0]
    tv, dv = _oriented(t, tail), _oriented(d, tail)
    with np.errstate(invalid="ignore"):
        t_counts = np.stack([(tv > c).sum(axis=1) for c in t_th], axis=1) if t_th else np.zeros((rows, 0), np.int64)
        d_counts = np.stack([(dv > c).sum(axis=1) for c in d_th], axis=1) if d_th else np.zeros((rows, 0), np.int64)
    return t_counts.astype(np.int64), d_counts.astype(np.int64)


def welch(x1: np.ndarray, x2: np.ndarray) -> Welch:
    """Welch's t, its degrees of freedom and Cohen's d_s for every column of ``x1`` vs ``x2``."""
    x1, x2, n1, n2 = _two_samples(x1, x2, "Welch's t")
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
    tail: str = "two",
) -> LabelShuffleNull:
    """Per shuffle of the group labels: units over each threshold for ``tail``, the max |t| and
    the max of the tail's statistic (t for "greater", -t for "less").

    ``exact=None`` enumerates every labelling when there are at most ``permutations`` of them,
    and draws ``permutations`` random shuffles otherwise (see the module docstring for how).
    Units whose statistic is undefined under a shuffle (zero variance) count as not exceeding.
    """
    _check_tail(tail)
    x1, x2, n1, n2 = _two_samples(x1, x2, "a label-shuffle null")
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
    max_stat = max_abs_t if tail == "two" else np.zeros(n_perm, dtype=np.float64)

    if exact:
        groups = _all_groups(n_rows, n1, chunk)
    else:
        rng = np.random.default_rng(seed)
        groups = (_random_groups(rng, n_rows, n1, min(chunk, n_perm - start)) for start in range(0, n_perm, chunk))

    done = 0
    for member in groups:
        stop = done + member.shape[0]
        t_counts[done:stop], d_counts[done:stop], max_abs_t[done:stop], top = _labelling_stats(
            member, rows, squares, s, q, n1, n2, t_th, d_th, tail
        )
        if tail != "two":
            max_stat[done:stop] = top
        done = stop
        if progress is not None:
            progress(done, n_perm)
    top_stat = None if tail == "two" else max_stat
    # Fields in order: counts, maxima, exactness, size, seed, thresholds, tail, max statistic.
    return LabelShuffleNull(t_counts, d_counts, max_abs_t, bool(exact), n_perm, int(seed), t_th, d_th, tail, top_stat)


def observed_counts(
    x1: np.ndarray,
    x2: np.ndarray,
    *,
    t_thresholds: tuple[float, ...] = (3.0, 5.0),
    d_thresholds: tuple[float, ...] = (0.8,),
    tail: str = "two",
) -> ObservedCounts:
    """Threshold counts and max |t| of the observed labelling, as :func:`label_shuffle_null` computes them.

    Compare these, not counts of :func:`welch`'s two-pass t and d, with a label-shuffle null: the
    null decides |t| > c from group sums (:func:`_moments`), and a t computed another way can fall
    on the other side of a threshold it equals exactly. Equals the exact null's row 0 (the first
    ``itertools.combinations`` labelling is the observed one). Any sizes (nothing is enumerated).
    """
    _check_tail(tail)
    x1, x2, n1, n2 = _two_samples(x1, x2, "Welch's t")
    rows, squares, s, q = _pooled(x1, x2)
    member = np.zeros((1, n1 + n2), dtype=np.float64)
    member[0, :n1] = 1.0
    t_th = tuple(float(v) for v in t_thresholds)
    d_th = tuple(float(v) for v in d_thresholds)
    t_counts, d_counts, max_abs_t, max_stat = _labelling_stats(member, rows, squares, s, q, n1, n2, t_th, d_th, tail)
    return ObservedCounts(
        t_counts=t_counts[0].astype(np.int64),
        d_counts=d_counts[0].astype(np.int64),
        max_abs_t=float(max_abs_t[0]),
        t_thresholds=t_th,
        d_thresholds=d_th,
        tail=tail,
        max_stat=float(max_stat[0]),
    )


def fwer_p(t_obs: np.ndarray, null: LabelShuffleNull, statistic: str = "max") -> np.ndarray:
    """Max-statistic p per unit by the one rule of :func:`dense_plantain.nulls.fwer_p`.

    Monte Carlo ``(1 + #{max >= obs}) / (P + 1)``; exact ``(1 + #{other labellings}) / P``, the
    observed labelling (row 0) counted for every unit. Two-sided: |t| against max |t| (``t_obs``
    may be t or |t|). One-sided: the tail's statistic (t, or -t for "less") against the null's max
    of it (``statistic="max"``), or against max |t| (``"max_abs"``, as MNE-Python's one-sided
    ``permutation_t_test``). NaN t gives NaN."""
    t_obs = np.asarray(t_obs, dtype=np.float64)
    if null.tail == "two":
        return _fwer(null.max_abs_t, np.abs(t_obs), null, signed=False)
    if statistic not in ("max", "max_abs"):
        raise StatsInputError(f'statistic must be "max" or "max_abs", got {statistic!r}')
    maxima = null.max_abs_t if statistic == "max_abs" or null.max_stat is None else null.max_stat
    return _fwer(maxima, _oriented(t_obs, null.tail), null, signed=True)


def _fwer(maxima: np.ndarray, obs: np.ndarray, null: LabelShuffleNull, *, signed: bool) -> np.ndarray:
    return nulls.fwer_p(
        maxima,
        obs,
        exact=null.exact,
        n_permutations=null.n_permutations,
        identity_row=0 if null.exact else None,
        signed=signed,
    )


def _two_samples(x1: np.ndarray, x2: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Both samples as float64 and their sizes; refuses fewer than 2 rows in either."""
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    n1, n2 = x1.shape[0], x2.shape[0]
    if n1 < 2 or n2 < 2:
        raise StatsInputError(f"{what} needs at least 2 rows per group, got {n1} and {n2}")
    return x1, x2, n1, n2


#: ``(t thresholds, d thresholds)``.
Thresholds = tuple[tuple[float, ...], tuple[float, ...]]
#: Draws per block of the bootstrap's weight products (bounds memory at a few ``block x units`` arrays).
_BOOT_BLOCK = 64


def bootstrap_counts(
    x1: np.ndarray, x2: np.ndarray, thresholds: Thresholds, *, draws: int = 1000, seed: int = 0, tail: str = "two"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair bootstrap of the Welch threshold counts: each draw resamples the rows of each sample
    with replacement, apart (sample 1 by ``stats.bootstrap_indices(n1, draws, seed)``, sample 2
    by ``stats.bootstrap_indices(n2, draws, seed + 1)``), and recounts.

    ``thresholds``: ``(t thresholds, d thresholds)``. Returns ``(counts int64 [draws x k_t + k_d],
    indices1, indices2)``. Each draw's group sums
    and sums of squares come from integer row weights times the pooled-centred rows (the
    label-shuffle null's route: :func:`_moments`, variances clamped at 0), so t and d follow
    that null's conventions; counts as :func:`label_shuffle_null` counts them for ``tail``.
    """
    from dense_plantain import stats  # stats imports nothing from here; keeps import order simple

    _check_tail(tail)
    x1, x2, n1, n2 = _two_samples(x1, x2, "a Welch bootstrap")
    t_th = tuple(float(v) for v in thresholds[0])
    d_th = tuple(float(v) for v in thresholds[1])
    idx1 = stats.bootstrap_indices(n1, draws, seed)
    idx2 = stats.bootstrap_indices(n2, draws, int(seed) + 1)
    rows, squares, _, _ = _pooled(x1, x2)
    r1, r2 = rows[:n1], rows[n1:]
    q1r, q2r = squares[:n1], squares[n1:]
    out = np.empty((draws, len(t_th) + len(d_th)), dtype=np.int64)
    for b0 in range(0, draws, _BOOT_BLOCK):
        b1 = min(draws, b0 + _BOOT_BLOCK)
        w1 = _weights(idx1[b0:b1], n1)
        w2 = _weights(idx2[b0:b1], n2)
        s1, s2 = w1 @ r1, w2 @ r2
        sq1, sq2 = w1 @ q1r, w2 @ q2r
        m1, m2 = s1 / n1, s2 / n2
        v1 = np.maximum(sq1 - s1 * m1, 0.0) / (n1 - 1)
        v2 = np.maximum(sq2 - s2 * m2, 0.0) / (n2 - 1)
        t, d = _t_and_d(m1, m2, v1, v2, n1, n2)
        tc, dc = _threshold_counts(t, d, t_th, d_th, tail)
        out[b0:b1] = np.concatenate([tc, dc], axis=1)
    return out, idx1, idx2


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """``[draws x n]`` float64: how often each draw took each row."""
    w = np.zeros((idx.shape[0], n), dtype=np.float64)
    np.add.at(w, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), idx.ravel().astype(np.int64)), 1.0)
    return w


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
