"""Intervals: per unit (mean difference, d_z) and for the headline counts (pair bootstrap).

Per unit (``units.csv`` columns ``ci_low``, ``ci_high``, ``d_ci_low``, ``d_ci_high``), always
two-sided at ``LEVEL`` (95 %), whatever ``--tail``:

* mean difference, paired designs: ``mean +- t_{1 - a/2, n - 1} * sd / sqrt(n)``, the interval of
  ``scipy.stats.ttest_rel(b, a).confidence_interval()``; Welch: ``mean_diff +- t_{1 - a/2, df} * se``
  with the Welch-Satterthwaite df and ``se = sqrt(v1 / n1 + v2 / n2)``.
* d_z, paired designs: ``t = d_z * sqrt(n)`` follows a noncentral t with ``n - 1`` df and
  noncentrality ``delta * sqrt(n)``. The interval inverts that CDF in the noncentrality:
  ``nc_low`` solves ``F(t_obs; n - 1, nc) = 1 - a/2`` and ``nc_high`` solves ``F(t_obs; n - 1, nc) = a/2``
  (``scipy.special.nctdtrinc``, polished by two Newton steps on ``nctdtr``: its own search stops
  about 1e-8 short in p), and ``d_ci = nc / sqrt(n)``. A unit with an infinite or undefined
  t (all differences equal) has no such interval: NaN. Welch designs: NaN (d_s over a pooled SD
  with unequal variances has no exact noncentral-t pivot; not computed).

Headline counts (results.json ``"bootstrap"``): the pairs are resampled with replacement
(``stats.bootstrap_indices``, seeded; ``draws`` draws) and every count is recounted on each draw; the
interval is the 2.5 / 97.5 percentiles (numpy linear rule) of the draws' counts. Two-sided counts go
through the engine's ``stats.bootstrap_counts``; one-sided counts (t > c, t < -c) recount the
engine's per-unit t and d of each resampled draw. It describes how much the count moves with the
choice of pairs, not a test: a resample repeats pairs, which shrinks the SD, so bootstrap counts lean
above the observed count. The split-half median's interval (``splits > 0``, opt-in: about 0.3 s per
draw at 100 splits and 25 x 16,320) re-runs the split-half on each draw's pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import nctdtr, nctdtrinc, stdtrit

from dense_plantain import stats, welch
from dense_plantain.analysis.designs import Design, NullOptions, PairedDesign, WelchDesign, signed_counts

__all__ = ["DEFAULT_DRAWS", "LEVEL", "bootstrap_record", "d_z_interval", "mean_interval", "unit_intervals"]

LEVEL = 0.95
#: Pair-bootstrap draws by default (``--bootstrap N``; 0 turns the bootstrap off).
DEFAULT_DRAWS = 1000


def mean_interval(diff: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the t-based interval of the mean of ``diff`` [n x m] (float64)."""
    diff = np.asarray(diff, dtype=np.float64)
    n = diff.shape[0]
    mean = diff.mean(axis=0)
    se = diff.std(axis=0, ddof=1) / np.sqrt(n)
    half = stdtrit(n - 1, 0.5 + level / 2.0) * se
    return mean - half, mean + half


def d_z_interval(t: np.ndarray, n: int, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the noncentral-t interval of d_z from the paired t over ``n`` pairs (see module docs)."""
    t = np.asarray(t, dtype=np.float64)
    lo = np.full(t.shape, np.nan)
    hi = np.full(t.shape, np.nan)
    ok = np.isfinite(t)
    if ok.any():
        df = float(n - 1)
        lo[ok] = _noncentrality(df, 0.5 + level / 2.0, t[ok]) / np.sqrt(n)
        hi[ok] = _noncentrality(df, 0.5 - level / 2.0, t[ok]) / np.sqrt(n)
    return lo, hi


def _noncentrality(df: float, p: float, t: np.ndarray, steps: int = 2) -> np.ndarray:
    """The noncentrality ``nc`` with ``F(t; df, nc) = p``: ``nctdtrinc``'s root (its search stops
    about 1e-8 short in p), then Newton steps on ``nctdtr`` with a central-difference slope."""
    nc = nctdtrinc(df, p, t)
    h = 1e-5 * np.maximum(1.0, np.abs(nc))
    for _ in range(steps):
        f = nctdtr(df, nc, t) - p
        slope = (nctdtr(df, nc + h, t) - nctdtr(df, nc - h, t)) / (2.0 * h)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(slope < 0, f / slope, 0.0)
        nc = nc - np.where(np.isfinite(step), step, 0.0)
    return nc


def unit_intervals(design: Design, t: np.ndarray, level: float = LEVEL) -> dict[str, np.ndarray]:
    """``{"ci_low", "ci_high", "d_ci_low", "d_ci_high"}`` per unit for the designs that have them."""
    m = int(np.asarray(t).size)
    nan = np.full(m, np.nan)
    if isinstance(design, PairedDesign):
        lo, hi = mean_interval(design.diff, level)
        dlo, dhi = d_z_interval(t, design.n_pairs, level)
        return {"ci_low": lo, "ci_high": hi, "d_ci_low": dlo, "d_ci_high": dhi}
    if isinstance(design, WelchDesign):
        res = welch.welch(design.x1, design.x2)
        x1, x2 = np.asarray(design.x1, np.float64), np.asarray(design.x2, np.float64)
        se = np.sqrt(x1.var(axis=0, ddof=1) / x1.shape[0] + x2.var(axis=0, ddof=1) / x2.shape[0])
        with np.errstate(invalid="ignore"):
            half = stdtrit(np.asarray(res.df, np.float64), 0.5 + level / 2.0) * se
        md = np.asarray(res.mean_diff, np.float64)
        return {"ci_low": md - half, "ci_high": md + half, "d_ci_low": nan, "d_ci_high": nan.copy()}
    return {}


def _one_sided_counts(diff: np.ndarray, idx: np.ndarray, options: NullOptions) -> np.ndarray:
    out = np.empty((idx.shape[0], options.n_thresholds), dtype=np.int64)
    for b in range(idx.shape[0]):
        res = stats.paired(np.ascontiguousarray(diff[idx[b]]))
        out[b] = signed_counts(np.asarray(res.t), np.asarray(res.d), options)
    return out


def bootstrap_record(
    design: Design,
    options: NullOptions,
    observed: np.ndarray,
    *,
    draws: int,
    seed: int,
    splits: int = 0,
    split_median: float | None = None,
    level: float = LEVEL,
) -> dict[str, Any]:
    """results.json ``"bootstrap"``: the pair-bootstrap interval of each headline count (and of the
    split-half median when ``splits > 0``). ``observed``: the observed counts, thresholds in order."""
    record: dict[str, Any] = {
        "method": "pair bootstrap (pairs resampled with replacement), percentile interval",
        "draws": int(draws),
        "seed": int(seed),
        "level": level,
        "tail": options.tail,
        "thresholds": [],
        "split_half": None,
        "note": None,
    }
    if not isinstance(design, PairedDesign):
        record["note"] = "not computed: the pair bootstrap is defined for paired designs (Welch's design has none yet)"
        return record
    diff = design.diff
    if options.tail == "two":
        boot = stats.bootstrap_counts(
            diff,
            t_thresholds=options.t_thresholds,
            d_thresholds=options.d_thresholds,
            draws=draws,
            seed=seed,
            splits=splits,
        )
        counts = np.asarray(boot.counts, dtype=np.int64)
        median_r = boot.split_median_r
    else:
        idx = stats.bootstrap_indices(design.n_pairs, draws, seed)
        counts = _one_sided_counts(diff, idx, options)
        median_r = None
        if splits:
            median_r = stats.bootstrap_counts(diff, draws=draws, seed=seed, splits=splits).split_median_r
    tail = (1.0 - level) / 2.0
    specs = [("t", c) for c in options.t_thresholds] + [("d", c) for c in options.d_thresholds]
    for k, (metric, c) in enumerate(specs):
        lo, hi = np.percentile(counts[:, k].astype(np.float64), [100 * tail, 100 * (1 - tail)])
        record["thresholds"].append(
            {
                "metric": metric,
                "threshold": float(c),
                "count": int(observed[k]),
                "low": float(lo),
                "high": float(hi),
                "median": float(np.median(counts[:, k])),
            }
        )
    if median_r is not None:
        finite = median_r[np.isfinite(median_r)]
        if finite.size:
            lo, hi = np.percentile(finite, [100 * tail, 100 * (1 - tail)])
            record["split_half"] = {
                "median": split_median,
                "low": float(lo),
                "high": float(hi),
                "splits": int(splits),
                "n_finite": int(finite.size),
            }
        else:
            record["split_half"] = {"median": split_median, "low": None, "high": None, "splits": int(splits)}
    else:
        record["split_half_note"] = "not computed (opt-in: --bootstrap-splits K; about 0.3 s per draw at K = 100)"
    return record
