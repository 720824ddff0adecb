"""The analysis by one factor of the pairs (``analyze --by body``): per level, and between levels.

A prompt file may label its pairs with factors (``factors = { body = "heavy", clothing = "loose" }``);
the capture keeps each pair's labels in ``meta["pairs"][i]["factors"]``. For ``--by FACTOR``:

* per level: the paired design on that level's pairs only (the same driver, thresholds, null
  settings and tail as the main analysis; no per-group nulls, no bootstrap), its counts against
  its own null and its top blocks;
* between levels, per unit: Welch's t of the pair differences of one level against another,
  through `WelchDesign` with its label-shuffle null (as ``compare``'s unmatched path). With two
  levels that is the one contrast ``level 1 - level 2``; with more, each level against the pairs
  of all other levels (``k`` contrasts, each pair used once per contrast), which asks "does this
  level differ from the rest" without the ``k (k - 1) / 2`` pairwise tests. The contrasts follow
  ``--tail`` (one-sided: "greater" asks whether the level's differences are larger than the
  others'), as the per-level analyses do.

results.json ``"by"``: ``{"factor", "levels": [{"level", "n_pairs", "pair_ids", "max_abs_t",
"thresholds", "top_blocks", "split_half"}], "contrasts": [{"level", "against", "n_pairs",
"group_sizes", "max_abs_t", "max_abs_t_unit", "max_abs_t_p_maxT", "n_p_maxT_below_05",
"thresholds", "top_blocks", "null"}], "contrast_rule", "contrast_tail"}``; units.csv gains per
contrast the columns ``by_<factor>_<level>_t`` and ``by_<factor>_<level>_p_maxT``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dense_plantain.analysis.designs import PairedDesign, Progress, WelchDesign
from dense_plantain.analysis.driver import run_design
from dense_plantain.errors import AnalysisError
from dense_plantain.store import Capture
from dense_plantain.units import Layout

__all__ = ["MIN_LEVEL_PAIRS", "by_factor", "carried_factors", "pair_levels"]

#: Pairs a level needs for its own paired analysis and for a Welch contrast (2 per group at least,
#: 3 as the prompt checker asks of every level).
MIN_LEVEL_PAIRS = 3
TOP_BLOCKS = 5


def _where(cap: Capture) -> str:
    return str(cap.path) if cap.path is not None else "the capture"


def carried_factors(cap: Capture) -> dict[str, list[str]]:
    """The factors every pair of the capture carries, with their levels in order of first appearance."""
    pairs = cap.meta.get("pairs")
    if not isinstance(pairs, list) or len(pairs) != cap.n_pairs or not pairs:
        return {}
    raw = [p.get("factors") if isinstance(p, dict) else None for p in pairs]
    labels: list[dict[str, Any]] = [f for f in raw if isinstance(f, dict)]
    if len(labels) != len(raw):
        return {}
    names = [k for k in labels[0] if all(k in f for f in labels)]
    return {k: list(dict.fromkeys(str(f[k]) for f in labels)) for k in names}


def pair_levels(cap: Capture, factor: str) -> list[str]:
    """Each pair's level of ``factor``; refuses a factor the capture does not carry, naming the ones it does."""
    carried = carried_factors(cap)
    if factor not in carried:
        known = "; ".join(f"{k} ({', '.join(v)})" for k, v in carried.items())
        raise AnalysisError(
            f"--by {factor}: {_where(cap)} does not label its pairs with a factor {factor!r}. "
            + (
                f"It carries: {known}."
                if known
                else "It carries no factors (captures record the prompt file's `factors = {...}` labels of "
                "each pair; recapture from a labelled prompt file)."
            )
        )
    levels = [str(p["factors"][factor]) for p in cap.meta["pairs"]]
    counts = {lv: levels.count(lv) for lv in dict.fromkeys(levels)}
    if len(counts) < 2:
        raise AnalysisError(
            f"--by {factor}: every pair of {_where(cap)} has the level {levels[0]!r}; nothing to compare"
        )
    small = [f"{lv} ({n})" for lv, n in counts.items() if n < MIN_LEVEL_PAIRS]
    if small:
        raise AnalysisError(
            f"--by {factor}: level(s) {', '.join(small)} have fewer than {MIN_LEVEL_PAIRS} pairs in {_where(cap)}; "
            "a level needs at least 3 pairs for its own test. Label more pairs with that level"
        )
    return levels


def _sub_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {**settings, "group_nulls": False, "bootstrap": 0, "bootstrap_splits": 0}


def by_factor(
    cap: Capture,
    diff: np.ndarray,
    factor: str,
    layout: Layout,
    settings: dict[str, Any],
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """results.json ``"by"`` and the units.csv columns of the contrasts (see the module docs)."""
    levels = pair_levels(cap, factor)
    names = list(dict.fromkeys(levels))
    ids = [str(p.get("id", i)) for i, p in enumerate(cap.meta["pairs"])]
    rows = {lv: np.flatnonzero(np.array(levels) == lv) for lv in names}
    record: dict[str, Any] = {
        "factor": factor,
        "levels": [],
        "contrasts": [],
        "contrast_rule": "level 1 - level 2" if len(names) == 2 else "each level - all other levels",
        "contrast_tail": str(settings.get("tail", "two")),
        "note": "per level: the paired design on that level's pairs (own null, no per-group nulls); "
        "contrasts: Welch's t of the pair differences with a label-shuffle null (the same tail)",
    }

    def run(design: PairedDesign | WelchDesign) -> Any:
        """One sub-analysis: the main settings, no per-group nulls, no bootstrap."""
        return run_design(design, layout, _sub_settings(settings), conditions={}, sources=[], progress=progress)

    for lv in names:
        res = run(PairedDesign(np.ascontiguousarray(diff[rows[lv]])))
        js = res.to_json()
        level = {"level": lv, "n_pairs": int(rows[lv].size), "pair_ids": [ids[i] for i in rows[lv]]}
        record["levels"].append({**level, **_summary(js), "split_half": js["split_half"]})
    columns: dict[str, np.ndarray] = {}
    pairs_of = [(names[0], [names[1]])] if len(names) == 2 else [(lv, [o for o in names if o != lv]) for lv in names]
    for lv, others in pairs_of:
        rest = np.sort(np.concatenate([rows[o] for o in others]))
        res = run(WelchDesign(np.ascontiguousarray(diff[rows[lv]]), np.ascontiguousarray(diff[rest])))
        js = res.to_json()
        contrast = {"level": lv, "against": others, "n_pairs": js["n_pairs"], "group_sizes": js["group_sizes"]}
        extra = {"max_abs_t_p_maxT": js["max_abs_t_p_maxT"], "n_p_maxT_below_05": int(np.sum(res.p_maxT < 0.05))}
        record["contrasts"].append({**contrast, **_summary(js), **extra})
        columns[f"by_{factor}_{lv}_t"] = res.t
        columns[f"by_{factor}_{lv}_p_maxT"] = res.p_maxT
    return record, columns


def _summary(js: dict[str, Any]) -> dict[str, Any]:
    """The part of an analysis's results.json that a level or a contrast record keeps."""
    return {
        "max_abs_t": js["max_abs_t"],
        "max_abs_t_unit": js["max_abs_t_unit"],
        "thresholds": js["thresholds"],
        "top_blocks": js["top_blocks"][:TOP_BLOCKS],
        "null": js["null"],
    }
