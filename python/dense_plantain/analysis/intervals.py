"""Intervals: per unit (mean difference, d_z) and for the headline counts (pair bootstrap).

Per unit (``units.csv`` columns ``ci_low``, ``ci_high``, ``d_ci_low``, ``d_ci_high``), always
two-sided at ``LEVEL`` (95 %), whatever ``--tail``:

* mean difference, paired designs: ``mean +- t_{1 - a/2, n - 1} * sd / sqrt(n)``, the interval of
  ``scipy.stats.ttest_rel(b, a).confidence_interval()``; Welch: ``mean_diff +- t_{1 - a/2, df} * se``
  with the Welch-Satterthwaite df and ``se = sqrt(v1 / n1 + v2 / n2)``.
* d_z, paired designs: ``t = d_z * sqrt(n)`` follows a noncentral t with ``n - 1`` df and
  noncentrality ``delta * sqrt(n)``. The interval inverts that CDF in the noncentrality:
  ``nc_low`` solves ``F(t_obs; n - 1, nc) = 1 - a/2`` and ``nc_high`` solves ``F(t_obs; n - 1, nc) = a/2``
  (all units at once: accurate roots at 257 quantiles of the units' t, a cubic Hermite start
  between them and one ``nctdtr`` check per unit, Newton steps where the check fails; each bound
  within ``NC_TOL * max(1, |nc|)`` = 1e-10 relative of the root, so d_ci within that over sqrt(n);
  the reference solver, ``nctdtrinc`` polished by Newton steps, does the nodes and any unit left),
  and ``d_ci = nc / sqrt(n)``. A unit with an infinite or undefined
  t (all differences equal) has no such interval: NaN. Welch designs: NaN (d_s over a pooled SD
  with unequal variances has no exact noncentral-t pivot; not computed).

Headline counts (results.json ``"bootstrap"``): the pairs are resampled with replacement
(``stats.bootstrap_indices``, seeded; ``draws`` draws) and every count is recounted on each draw; the
interval is the 2.5 / 97.5 percentiles (numpy linear rule) of the draws' counts, all tails through
the engine's ``stats.bootstrap_counts`` (integer pair weights, two blocked products per block of
draws; t within about 1e-11 relative of a two-pass recount, so a count can differ from one only
where a unit's t lies on a threshold to that precision, e.g. |t| = 1 exactly for one non-zero
difference among zeros). It describes how much the count moves with the
choice of pairs, not a test: a resample repeats pairs, which shrinks the SD, so bootstrap counts lean
above the observed count. The split-half median's interval (``splits > 0``, opt-in: about 0.3 s per
draw at 100 splits and 25 x 16,320) re-runs the split-half on each draw's pairs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
from scipy.special import nctdtr, nctdtrinc, stdtrit

from dense_plantain import stats, welch
from dense_plantain.analysis.designs import Design, NullOptions, PairedDesign, WelchDesign

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
    """Per unit, the noncentral-t interval of d_z from the paired t over ``n`` pairs (see module docs).

    All units at once by `_noncentrality` (a few vectorised ``nctdtr`` calls; within ``NC_TOL``
    of the root); the two bounds run in two threads (``nctdtr`` releases the GIL)."""
    t = np.asarray(t, dtype=np.float64)
    lo = np.full(t.shape, np.nan)
    hi = np.full(t.shape, np.nan)
    ok = np.isfinite(t)
    if ok.any():
        df = float(n - 1)
        tv = t[ok]
        with ThreadPoolExecutor(max_workers=2) as pool:
            low = pool.submit(_noncentrality, df, 0.5 + level / 2.0, tv)
            high = _noncentrality(df, 0.5 - level / 2.0, tv)
            lo[ok] = low.result() / np.sqrt(n)
        hi[ok] = high / np.sqrt(n)
    return lo, hi


#: Convergence of `_noncentrality`: a root is accepted when the Newton step from it is at most
#: ``NC_TOL * max(1, |nc|)``, so the d_z bounds are within about that (over sqrt(n)) of the root.
NC_TOL = 1e-10
#: Units fewer than this go straight to the reference solver.
_FEW = 64
#: Nodes of the interpolated start (quantiles of the units' t).
_NODES = 257
#: Newton rounds of `_noncentrality` before the reference solver takes the units left.
_NEWTON = 4


def _noncentrality(df: float, p: float, t: np.ndarray) -> np.ndarray:
    """The noncentrality ``nc`` with ``F(t; df, nc) = p`` for every entry of ``t`` (finite), vectorised.

    ``nc(t)`` is smooth and increasing in t. The root is found accurately (`_noncentrality_reference`)
    at ``_NODES`` quantiles of the units' t, with its slope ``dnc/dt = -(dF/dt) / (dF/dnc)`` (central
    differences); every unit starts from the cubic Hermite interpolation between its two nodes and
    is accepted when one ``nctdtr`` call shows ``|F - p| <= NC_TOL * max(1, |nc|) * |dF/dnc|``
    (``dF/dnc`` interpolated between nodes). A unit not accepted takes Newton steps with that slope
    (checked again; at most ``_NEWTON`` rounds), then the reference solver. About one ``nctdtr``
    call over all units instead of about twelve plus ``nctdtrinc``'s search.
    """
    t = np.asarray(t, dtype=np.float64)
    if t.size <= _FEW:
        return _noncentrality_reference(df, p, t)
    nodes = np.unique(np.quantile(t, np.linspace(0.0, 1.0, _NODES)))
    nodes[0], nodes[-1] = t.min(), t.max()  # the interpolation covers every t
    y = _noncentrality_reference(df, p, nodes)
    h = 1e-5 * np.maximum(1.0, np.abs(y))
    ht = 1e-5 * np.maximum(1.0, np.abs(nodes))
    f_nc = (nctdtr(df, y + h, nodes) - nctdtr(df, y - h, nodes)) / (2.0 * h)
    f_t = (nctdtr(df, y, nodes + ht) - nctdtr(df, y, nodes - ht)) / (2.0 * ht)
    with np.errstate(divide="ignore", invalid="ignore"):
        dy = -f_t / f_nc
    nc, slope = _hermite(t, nodes, y, dy), np.interp(t, nodes, f_nc)
    out = np.full(t.shape, np.nan)
    todo = np.arange(t.size)
    for _ in range(_NEWTON):
        with np.errstate(divide="ignore", invalid="ignore"):
            f = nctdtr(df, nc, t[todo]) - p
            ok = (np.abs(f) <= NC_TOL * np.maximum(1.0, np.abs(nc)) * np.abs(slope)) & np.isfinite(nc) & (slope < 0)
            out[todo[ok]] = nc[ok]
            keep = ~ok & np.isfinite(f) & (slope < 0)
            todo, nc, slope = todo[keep], (nc - f / slope)[keep], slope[keep]
        if not todo.size:
            break
    rest = np.isnan(out)
    if rest.any():
        out[rest] = _noncentrality_reference(df, p, t[rest])
    return out


def _hermite(x: np.ndarray, nodes: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Cubic Hermite interpolation of ``(nodes, y, dy)`` at ``x`` (``nodes`` increasing, covering x)."""
    if nodes.size == 1:
        return np.full(x.shape, y[0])
    k = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
    x0, x1 = nodes[k], nodes[k + 1]
    w = x1 - x0
    s = (x - x0) / w
    h00 = (1 + 2 * s) * (1 - s) ** 2
    h10 = s * (1 - s) ** 2
    h01 = s * s * (3 - 2 * s)
    h11 = s * s * (s - 1)
    return h00 * y[k] + h10 * w * dy[k] + h01 * y[k + 1] + h11 * w * dy[k + 1]


def _noncentrality_reference(df: float, p: float, t: np.ndarray, steps: int = 2) -> np.ndarray:
    """The noncentrality ``nc`` with ``F(t; df, nc) = p``: ``nctdtrinc``'s root (its search stops
    about 1e-8 short in p), then Newton steps on ``nctdtr`` with a central-difference slope
    (accurate, about 20x slower than `_noncentrality` at 16,320 units)."""
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
    if isinstance(design, WelchDesign):
        record["method"] = (
            "pair bootstrap within each sample (rows resampled with replacement apart), percentile interval"
        )
        thresholds = (options.t_thresholds, options.d_thresholds)
        welch_counts, _, _ = welch.bootstrap_counts(
            design.x1, design.x2, thresholds, draws=draws, seed=seed, tail=options.tail
        )
        _threshold_intervals(record, options, observed, welch_counts, level)
        record["split_half_note"] = "not computed for Welch's design"
        return record
    if not isinstance(design, PairedDesign):
        record["note"] = "not computed: no bootstrap is defined for this design"
        return record
    boot = stats.bootstrap_counts(
        design.diff,
        t_thresholds=options.t_thresholds,
        d_thresholds=options.d_thresholds,
        draws=draws,
        seed=seed,
        splits=splits,
        tail=cast(stats.Tail, options.tail),
    )
    counts = np.asarray(boot.counts, dtype=np.int64)
    median_r = boot.split_median_r
    _threshold_intervals(record, options, observed, counts, level)
    tail = (1.0 - level) / 2.0
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


def _threshold_intervals(
    record: dict[str, Any], options: NullOptions, observed: np.ndarray, counts: np.ndarray, level: float
) -> None:
    """Fills ``record["thresholds"]``: per threshold the observed count and the percentile
    interval and median of the draws' counts (``counts`` [draws x thresholds])."""
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
