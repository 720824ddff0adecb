"""Several noise seeds: each seed's own analysis, and how much the seeds agree.

A capture made with ``capture --seeds 0,1,2,3`` holds in ``a``/``b`` the per-prompt mean over
seeds (the main analysis runs on those) and in ``a_seeds``/``b_seeds`` ``[seeds x pairs x units]``
each seed's values, with ``meta["seeds"]`` the seeds in order. For such a capture results.json
gains ``"seeds"``:

* ``per_seed``: per seed, the paired design on that seed's B - A alone, with the main analysis's
  null settings and tail (no per-group nulls, no bootstrap): the threshold rows (count, null p99,
  ratio) and max |t|;
* ``consistency``: the Pearson r between the per-unit t-vectors of every two seeds (units whose t
  is finite under both), with their median, min and max.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from dense_plantain import stats
from dense_plantain.analysis.designs import PairedDesign, Progress
from dense_plantain.analysis.driver import run_design
from dense_plantain.errors import AnalysisError
from dense_plantain.store import Capture
from dense_plantain.units import Layout

__all__ = ["capture_seeds", "pearson_r", "seeds_record"]


def capture_seeds(cap: Capture) -> list[int] | None:
    """The seeds of a multi-seed capture (None for a one-seed capture); checks the tensors agree."""
    if "a_seeds" not in cap.extra:
        return None
    seeds = cap.meta.get("seeds")
    where = str(cap.path) if cap.path is not None else "the capture"
    n = int(cap.extra["a_seeds"].shape[0])
    if not isinstance(seeds, list) or len(seeds) != n:
        raise AnalysisError(
            f"{where} holds {n} seeds' values (a_seeds) but its metadata lists seeds {seeds!r}; the file was "
            "edited or written by another tool. Capture it again with --seeds"
        )
    return [int(s) for s in seeds]


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the entries finite in both (NaN when fewer than 3 or a constant vector)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    xs, ys = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    den = np.sqrt((xs * xs).sum() * (ys * ys).sum())
    return float((xs * ys).sum() / den) if den > 0 else float("nan")


def seeds_record(
    cap: Capture, layout: Layout, settings: dict[str, Any], progress: Progress | None = None
) -> dict[str, Any] | None:
    """results.json ``"seeds"`` for a multi-seed capture, None for a one-seed capture."""
    seeds = capture_seeds(cap)
    if seeds is None:
        return None
    a_s, b_s = cap.extra["a_seeds"], cap.extra["b_seeds"]
    sub = {**settings, "group_nulls": False, "bootstrap": 0, "bootstrap_splits": 0}
    per_seed, t_vectors = [], []
    for k, seed in enumerate(seeds):
        diff = np.asarray(stats.paired_diff(a_s[k], b_s[k]), dtype=np.float64)
        res = run_design(PairedDesign(diff), layout, sub, conditions={}, sources=[], progress=progress)
        js = res.to_json()
        per_seed.append(
            {
                "seed": seed,
                "max_abs_t": js["max_abs_t"],
                "max_abs_t_unit": js["max_abs_t_unit"],
                "thresholds": js["thresholds"],
                "split_half": js["split_half"],
            }
        )
        t_vectors.append(np.asarray(res.t, dtype=np.float64))
    pairs = [
        {"seeds": [seeds[i], seeds[j]], "r": pearson_r(t_vectors[i], t_vectors[j])}
        for i, j in itertools.combinations(range(len(seeds)), 2)
    ]
    rs = np.array([p["r"] for p in pairs], dtype=np.float64)
    finite = rs[np.isfinite(rs)]
    return {
        "seeds": seeds,
        "main_analysis": "on the per-prompt mean over seeds (a, b)",
        "per_seed": per_seed,
        "consistency": {
            "statistic": "Pearson r of the per-unit t-vectors of two seeds (units finite in both)",
            "pairs": pairs,
            "median": float(np.median(finite)) if finite.size else None,
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
        },
    }
