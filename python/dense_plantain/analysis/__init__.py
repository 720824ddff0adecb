"""From capture files to results: per-unit statistics, nulls, block summaries. No rendering.

``analyze`` tests one capture (condition B minus condition A, paired by pair). ``compare`` tests
the contrast of two captures' contrasts, ``(B1 - A1) - (B2 - A2)``: paired again when both
captures list the same pair ids (matched by id), Welch's t over the two samples of differences
otherwise. Both return an `AnalysisResult`; ``AnalysisResult.to_json()`` is the ``results.json``
record that the report renders, and that ``dense-plantain report DIR`` reads back.

Every count is "units strictly over a threshold": |t| > 3, |t| > 5, |d| > 0.8. Each count is
set against the same count under the null (sign flips for paired designs, label shuffles for
Welch): the null's 99th percentile (``numpy.percentile``, linear interpolation) and the ratio
observed / p99. When the p99 is 0 the ratio is undefined; ``ratio`` is then ``None`` and
``null_max`` (the largest null count) is what the report shows instead.

Modules: ``designs`` (what is tested and what the null exchanges: `PairedDesign`,
`WelchDesign`), ``nulls`` (the `NullDistribution` protocol and the one ``fwer_p`` rule),
``driver`` (one function from a design to an `AnalysisResult`), ``records`` (the result records
and results.json's number encoding), ``inputs`` (loading and cross-checking captures, provenance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dense_plantain.analysis import baselines as _baselines
from dense_plantain.analysis import inputs
from dense_plantain.analysis.designs import TAILS, Design, NullOptions, PairedDesign, WelchDesign
from dense_plantain.analysis.driver import BLOCK_T, D_THRESHOLDS, T_THRESHOLDS, bh_q, run_design
from dense_plantain.analysis.records import (
    RESULTS_FORMAT,
    AnalysisResult,
    BlockSummary,
    SplitHalfSummary,
    Threshold,
    UnitGroup,
)
from dense_plantain.nulls import NullDistribution
from dense_plantain.store import Capture

__all__ = [
    "BLOCK_T",
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_PERMUTATIONS",
    "D_THRESHOLDS",
    "RESULTS_FORMAT",
    "TAILS",
    "T_THRESHOLDS",
    "AnalysisResult",
    "BlockSummary",
    "Design",
    "NullDistribution",
    "NullOptions",
    "PairedDesign",
    "SplitHalfSummary",
    "Threshold",
    "UnitGroup",
    "WelchDesign",
    "analyze",
    "bh_q",
    "compare",
    "run_design",
]

#: Monte Carlo permutations by default (and the limit below which the null is exact).
DEFAULT_PERMUTATIONS = 10_000

#: Pair-bootstrap draws of the headline counts by default (``bootstrap=0`` turns it off).
DEFAULT_BOOTSTRAP = 1000

#: ``progress(done, total)``: called between chunks of null permutations, over all null runs.
Progress = Callable[[int, int], None]


def analyze(
    capture: Capture | str | Path,
    *,
    permutations: int = DEFAULT_PERMUTATIONS,
    exact: bool | None = None,
    seed: int = 0,
    splits: int = 100,
    group_nulls: bool = True,
    progress: Progress | None = None,
    tail: str = "two",
    fwer_null: str = "max",
    bootstrap: int = DEFAULT_BOOTSTRAP,
    bootstrap_splits: int = 0,
    by: str | None = None,
    baselines: Sequence[Capture | str | Path] = (),
    direction: str = "auto",
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> AnalysisResult:
    """Test every unit of one capture for a B - A difference over its pairs.

    ``baselines``: captures (e.g. ``capture --weights random``) analysed the same way and recorded
    beside the result (``analysis.baselines``); the input-embedding units get their own group.

    ``exact=None`` enumerates all 2^(n-1) sign patterns when there are at most ``permutations``
    of them; ``True`` forces the enumeration, ``False`` forces Monte Carlo. ``group_nulls`` also
    runs the null on the attention / MLP units and on each token region apart, so that their
    tables carry their own p99.

    ``tail``: "two" (B - A differs), "greater" (B > A) or "less" (B < A); p, q, p_maxT and the
    counts (t > c, t < -c) follow it. One-sided p_maxT compares each unit's t with the max t (min t
    for "less") of every sign pattern (``fwer_null="max"``, the default: the max-statistic null of
    the one-sided statistic, never less powerful than the alternative) or with the max |t|
    (``fwer_null="max_abs"``, MNE-Python's ``permutation_t_test(tail=1 / -1)``).
    ``bootstrap``: pair-bootstrap draws for the counts' intervals (0: none); ``bootstrap_splits``
    (opt-in, slow) also bootstraps the split-half median with that many splits per draw. ``by``: a
    factor the capture's pairs carry; adds the per-level analyses and between-level contrasts
    (`analysis.factors`). A multi-seed capture (``capture --seeds``) also gets each seed's analysis
    and the seeds' agreement (`analysis.seeds`).

    ``direction``: ``"auto"`` (default) also runs the direction test of the capture's signed
    vectors when it holds them (``capture --vectors``), ``"on"`` requires them, ``"off"`` skips
    it; the result's ``direction`` is then a ``direction.DirectionAnalysis`` (same permutations,
    exactness and seed as the magnitude null), else None.

    ``on_partial``: called with what the main run knows so far, before its nulls and after them
    (see `run_design`); not for baselines, seeds or factor levels.
    """
    from dense_plantain.analysis import direction as _direction
    from dense_plantain.analysis import factors, seeds

    if direction not in _direction.DIRECTION_MODES:
        raise ValueError(f"direction must be one of {', '.join(_direction.DIRECTION_MODES)}, got {direction!r}")
    cap = inputs.load(capture)
    inputs.require_pairs(cap)
    inputs.check_settings(permutations, splits)
    _check_robustness(tail, fwer_null, bootstrap, bootstrap_splits)
    if by is not None:
        factors.pair_levels(cap, by)  # refuse an unknown factor before any work
    run_direction = direction == "on" or (direction == "auto" and _direction.has_vectors(cap))
    vectors = _direction.vector_diff(cap) if run_direction else None  # refuses a file without vectors first
    design = PairedDesign(inputs.diff(cap.a, cap.b, cap))
    settings = {
        **inputs.settings(permutations, exact, seed, splits, group_nulls),
        **_robustness_settings(tail, fwer_null, bootstrap, bootstrap_splits),
    }
    if by is not None:
        settings["by"] = by
    if vectors is not None:
        settings["direction"] = direction
    result = run_design(
        design,
        cap.layout,
        settings,
        conditions=inputs.conditions(cap),
        sources=[inputs.provenance(cap, "capture")],
        weights=inputs.weights(cap),
        progress=progress,
        vectors=vectors,
        on_partial=on_partial,
    )
    seed_record = seeds.seeds_record(cap, cap.layout, settings, progress)
    if seed_record is not None:
        result.robustness["seeds"] = seed_record
    if by is not None:
        record, columns = factors.by_factor(cap, design.diff, by, cap.layout, settings, progress)
        result.robustness["by"] = record
        result.extra_columns.update(columns)
    options = _baseline_options(permutations, exact, seed, splits, group_nulls, tail, fwer_null)
    bases = [[inputs.load(b)] for b in baselines]
    return _baselines.attach(result, [cap], bases, lambda c: analyze(c, **options))


def _check_robustness(tail: str, fwer_null: str, bootstrap: int, bootstrap_splits: int) -> None:
    from dense_plantain.errors import AnalysisError

    if tail not in TAILS:
        raise AnalysisError(f"--tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if fwer_null not in ("max", "max_abs"):
        raise AnalysisError(f"--fwer-null must be max or max_abs, got {fwer_null!r}")
    if bootstrap < 0:
        raise AnalysisError(f"--bootstrap must be 0 (off) or a number of draws, got {bootstrap}")
    if bootstrap_splits < 0:
        raise AnalysisError(f"--bootstrap-splits must be 0 (off) or a number of splits, got {bootstrap_splits}")


def _baseline_options(
    permutations: int, exact: bool | None, seed: int, splits: int, group_nulls: bool, tail: str, fwer_null: str
) -> dict[str, Any]:
    """The keywords a baseline is analysed with: the main analysis's null settings, seed and tail.

    No bootstrap: a baseline's counts are set beside the main one's, not given intervals of their own.
    """
    return {
        "permutations": permutations,
        "exact": exact,
        "seed": seed,
        "splits": splits,
        "group_nulls": group_nulls,
        "tail": tail,
        "fwer_null": fwer_null,
        "bootstrap": 0,
    }


def _robustness_settings(tail: str, fwer_null: str, bootstrap: int, bootstrap_splits: int) -> dict[str, Any]:
    return {
        "tail": tail,
        "fwer_null": fwer_null,
        "bootstrap": int(bootstrap),
        "bootstrap_splits": int(bootstrap_splits),
    }


def compare(
    capture1: Capture | str | Path,
    capture2: Capture | str | Path,
    *,
    pairing: str = "auto",
    permutations: int = DEFAULT_PERMUTATIONS,
    exact: bool | None = None,
    seed: int = 0,
    splits: int = 100,
    group_nulls: bool = True,
    allow_different_settings: bool = False,
    progress: Progress | None = None,
    tail: str = "two",
    fwer_null: str = "max",
    bootstrap: int = DEFAULT_BOOTSTRAP,
    bootstrap_splits: int = 0,
    baselines: Sequence[tuple[Capture | str | Path, Capture | str | Path]] = (),
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> AnalysisResult:
    """Per unit, the contrast of contrasts ``(B1 - A1) - (B2 - A2)``.

    ``pairing="auto"`` uses the paired design (paired t of diff1 - diff2 over pairs matched by
    id, sign-flip null) when both captures list the same pair ids, and Welch's t on the two
    samples of differences (label-shuffle null) otherwise. ``"matched"`` / ``"unmatched"`` force
    a design; ``"matched"`` refuses captures whose pair ids differ. Both captures must share a
    unit layout, and (where both record them) the model and capture settings: a difference is
    refused unless ``allow_different_settings``, and is recorded either way. ``tail``,
    ``fwer_null``, ``bootstrap`` and ``bootstrap_splits`` as for `analyze`; Welch's design (the
    unmatched path) takes ``tail`` too, and its bootstrap resamples within each capture (no
    split-half interval: results.json says so).

    ``baselines``: pairs of captures (baseline of capture 1, baseline of capture 2), e.g. both
    sets captured with ``--weights random``, compared the same way (``analysis.baselines``).
    ``on_partial`` as for `analyze`.
    """
    if pairing not in ("auto", "matched", "unmatched"):
        raise ValueError(f"pairing must be auto, matched or unmatched, got {pairing!r}")
    cap1, cap2 = inputs.load(capture1), inputs.load(capture2)
    inputs.check_same_layout(cap1, cap2)
    settings_check = inputs.check_same_capture_settings(cap1, cap2, allow_different_settings)
    for cap in (cap1, cap2):
        inputs.require_pairs(cap)
    inputs.check_settings(permutations, splits)
    _check_robustness(tail, fwer_null, bootstrap, bootstrap_splits)
    diff1 = inputs.diff(cap1.a, cap1.b, cap1)
    diff2 = inputs.diff(cap2.a, cap2.b, cap2)
    matched = inputs.is_matched(cap1, cap2) if pairing == "auto" else pairing == "matched"
    settings: dict[str, Any] = {
        **inputs.settings(permutations, exact, seed, splits, group_nulls),
        "pairing": pairing,
        "allow_different_settings": bool(allow_different_settings),
        **_robustness_settings(tail, fwer_null, bootstrap, bootstrap_splits),
    }
    conditions: dict[str, Any] = {
        "capture_1": inputs.conditions(cap1),
        "capture_2": inputs.conditions(cap2),
        "contrast": "(B1 - A1) - (B2 - A2)",
        "settings_check": settings_check,
    }
    if inputs.shared_b_prompts(cap1, cap2):
        conditions["shared_b"] = True
        conditions["contrast_note"] = "both captures share their B prompts, so (B1 - A1) - (B2 - A2) is A2 - A1"
    sources = [inputs.provenance(cap1, "capture_1"), inputs.provenance(cap2, "capture_2")]
    w1, w2 = inputs.weights(cap1), inputs.weights(cap2)
    weights = _combined_weights(w1, w2)
    design: Design
    if matched:
        order = inputs.matched_order(cap1, cap2)
        contrast = inputs.diff(diff2[order], diff1, cap1)  # diff1 - diff2, per pair
        design = PairedDesign(contrast, name="contrast-paired")
    else:
        design = WelchDesign(diff1, diff2)
    result = run_design(
        design,
        cap1.layout,
        settings,
        conditions=conditions,
        sources=sources,
        weights=weights,
        progress=progress,
        on_partial=on_partial,
    )
    options = {
        **_baseline_options(permutations, exact, seed, splits, group_nulls, tail, fwer_null),
        "pairing": pairing,
        "allow_different_settings": allow_different_settings,
    }
    bases = [[inputs.load(c) for c in pair] for pair in baselines]
    return _baselines.attach(result, [cap1, cap2], bases, lambda c1, c2: compare(c1, c2, **options))


def _combined_weights(w1: dict[str, Any] | None, w2: dict[str, Any] | None) -> dict[str, Any] | None:
    """One weights record for a comparison: capture 1's when both agree; random if either is."""
    if w1 is None or w2 is None:
        known = w1 or w2
        return (
            {**known, "description": f"{known.get('description', '')} (the other capture records no weights)"}
            if known
            else None
        )
    if w1 == w2:
        return w1
    return {
        "random": bool(w1.get("random")) or bool(w2.get("random")),
        "kind": w1.get("kind") if w1.get("kind") == w2.get("kind") else "mixed",
        "description": f"capture 1: {w1.get('description')}; capture 2: {w2.get('description')}",
        "seed": None,
        "parts": sorted(set(w1.get("parts") or []) | set(w2.get("parts") or [])),
        "sha256": None,
    }
