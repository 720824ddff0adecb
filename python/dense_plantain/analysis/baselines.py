"""Controls: baselines analysed like the main run, and the prompt embeddings' own group.

``analyze MAIN --baseline FILE`` runs every baseline capture (a random-weights capture of the
same prompts, ``capture --weights random``) through the very analysis the main capture gets
(``analyze``/``compare``, so ``driver.run_design`` with the same null settings and seed), after
checking that it is comparable: the same unit layout, the same pair ids and prompts in the same
order, and the same capture settings; its weights may differ (that is the point). Each baseline
becomes one record of results.json ``"baselines"``; its ``AnalysisResult`` is kept for figures.

The input-embedding units (``capture.embeddings``: ``a_input``/``b_input``) are their own group,
``"input_embeddings"``: the paired design over them alone, with its own sign-flip null, never
mixed into the transformer's units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dense_plantain.analysis import inputs
from dense_plantain.analysis.designs import PairedDesign
from dense_plantain.analysis.driver import run_design
from dense_plantain.analysis.records import AnalysisResult, json_number
from dense_plantain.errors import AnalysisError
from dense_plantain.store import Capture
from dense_plantain.units import Layout

#: Top blocks and top input units kept per record.
TOP_BLOCKS = 5
TOP_INPUT_UNITS = 10
INPUT_TENSORS = ("a_input", "b_input")


def _where(cap: Capture) -> str:
    return inputs.where(cap)


def check_baseline(main: Capture, base: Capture) -> list[dict[str, Any]]:
    """Refuse a baseline not comparable with the main capture (layout, pairs, prompts, settings);
    returns the differences that are allowed (its weights), as ``{"key", "main", "baseline"}``."""
    inputs.check_same_layout(main, base)
    ids_main, ids_base = main.pair_ids, base.pair_ids
    if ids_main != ids_base:
        raise AnalysisError(
            f"baseline {_where(base)} has pairs {ids_base[:5]}... but {_where(main)} has {ids_main[:5]}...; a "
            "baseline must capture the same pairs in the same order. Capture it with the same --prompts."
        )
    for i, (pm, pb) in enumerate(zip(main.meta.get("pairs") or [], base.meta.get("pairs") or [])):
        if (pm.get("a"), pm.get("b")) != (pb.get("a"), pb.get("b")):
            raise AnalysisError(
                f"baseline {_where(base)} pair {pb.get('id')!r} (pair {i + 1}) has other prompts than {_where(main)}; "
                "a baseline must see the same prompts. Capture it with the same --prompts."
            )
    from dense_plantain.capture.provenance import capture_identity

    id_main, id_base = capture_identity(main.meta) or {}, capture_identity(base.meta) or {}
    allowed: list[str] = []
    refused: list[str] = []
    for key in sorted(set(id_main) | set(id_base)):
        if id_main.get(key) == id_base.get(key):
            continue
        (allowed if key.startswith("weights.") else refused).append(key)
    if refused:
        listed = "; ".join(f"{k}: {id_main.get(k)!r} vs {id_base.get(k)!r}" for k in refused)
        raise AnalysisError(
            f"baseline {_where(base)} was captured with other settings or another model than {_where(main)} "
            f"({listed}); only its weights may differ. Capture it with the main run's settings and --weights random."
        )
    return [{"key": k, "main": id_main.get(k), "baseline": id_base.get(k)} for k in allowed]


def input_layout(cap: Capture, n_units: int) -> Layout:
    """One block per stacked text-encoder layer (``input.L9``, ...) when the units divide evenly, else one block."""
    layers = (cap.meta.get("settings") or {}).get("text_encoder_layers") or []
    if layers and n_units % len(layers) == 0:
        blocks = [{"name": f"input.L{layer}", "n_units": n_units // len(layers)} for layer in layers]
    else:
        blocks = [{"name": "input", "n_units": n_units}]
    return Layout.from_metadata({"layout": "input", "blocks": blocks})


def input_result(cap: Capture, settings: dict[str, Any]) -> AnalysisResult | None:
    """The paired analysis of the capture's input-embedding units alone (None when it stores none)."""
    if not all(k in cap.extra for k in INPUT_TENSORS):
        return None
    a, b = (np.asarray(cap.extra[k], dtype=np.float64) for k in INPUT_TENSORS)
    layout = input_layout(cap, a.shape[1])
    design = PairedDesign(inputs.diff(a, b, cap))
    return run_design(
        design,
        layout,
        {**settings, "group_nulls": False},
        conditions=inputs.conditions(cap),
        sources=[],
        weights=inputs.weights(cap),
    )


def thresholds_record(result: AnalysisResult) -> list[dict[str, Any]]:
    return [
        {
            "metric": th.metric,
            "threshold": th.threshold,
            "count": th.count,
            "n_units": th.n_units,
            "null_p99": th.null_p99,
            "ratio": th.ratio,
        }
        for th in result.thresholds
    ]


def input_record(result: AnalysisResult | None) -> dict[str, Any] | None:
    """results.json ``"input_embeddings"``: counts over the thresholds against their own null, top units."""
    if result is None:
        return None
    names = result.layout.unit_names()
    order = [int(j) for j in np.argsort(-np.nan_to_num(result.abs_t, nan=-1.0), kind="stable")[:TOP_INPUT_UNITS]]
    return {
        "n_units": result.n_units,
        "slice": 16,
        "what": "RMS over real tokens of 16-column slices of the prompt embeddings (before the transformer)",
        "max_abs_t": json_number(result.max_abs_t),
        "thresholds": thresholds_record(result),
        "null": {
            "method": result.null_method,
            "mode": "exact" if result.null_exact else "monte-carlo",
            "n_permutations": result.null_permutations,
            "seed": result.settings.get("seed"),
        },
        "top_units": [{"unit": names[j], "t": json_number(result.t[j]), "d": json_number(result.d[j])} for j in order],
    }


def baseline_record(
    result: AnalysisResult, source: str, label: str, allowed: list[dict[str, Any]], inputs_result: AnalysisResult | None
) -> dict[str, Any]:
    from dense_plantain.analysis.records import weights_record

    by_name = {b.block: b for b in result.blocks}
    return {
        "source": source,
        "label": label,
        "weights": weights_record(result.weights),
        "design": result.design,
        "n_pairs": result.n_pairs,
        "n_units": result.n_units,
        "max_abs_t": json_number(result.max_abs_t),
        "thresholds": thresholds_record(result),
        "top_blocks": [b.to_json() for b in result.blocks[:TOP_BLOCKS]],
        "blocks_t_gt3": [{"block": b.name, "n_t_gt3": by_name[b.name].n_t_gt3} for b in result.layout.blocks],
        "differences": allowed,
        "input_embeddings": input_record(inputs_result),
        # The direction test's family-wise count when the baseline holds signed vectors.
        "direction": None
        if result.direction is None
        else {"n_significant": int(result.direction.n_significant), "alpha": float(result.direction.alpha)},
    }


def label_of(cap: Capture, index: int) -> str:
    w = inputs.weights(cap) or {}
    if w.get("kind") == "reinitialised":
        return f"random weights ({'+'.join(w.get('parts') or [])}, seed {w.get('seed')})"
    if w.get("random"):
        return f"random weights ({w.get('kind')})"
    return f"baseline {index + 1}"


def attach(
    result: AnalysisResult,
    main_caps: Sequence[Capture],
    baselines: Sequence[Sequence[Capture]],
    run: Callable[..., AnalysisResult],
) -> AnalysisResult:
    """Fill ``result.controls`` (results.json ``input_embeddings`` and ``baselines``) and ``result.baseline_results``.

    ``main_caps``: the capture(s) behind ``result`` (one for analyze, two for compare); each
    baseline is the same number of captures, and ``run(*captures)`` analyses them as ``result`` was.
    """
    settings = result.settings
    if len(main_caps) == 1:
        result.controls["input_embeddings"] = input_record(input_result(main_caps[0], settings))
    records, results = [], []
    for k, caps in enumerate(baselines):
        if len(caps) != len(main_caps):
            raise AnalysisError(
                f"a baseline of this analysis is {len(main_caps)} capture(s) (as the main run), got {len(caps)}"
            )
        allowed = [d for m, c in zip(main_caps, caps) for d in check_baseline(m, c)]
        base = run(*caps)
        inputs_result = input_result(caps[0], settings) if len(caps) == 1 else None
        source = " vs ".join(str(c.path) if c.path else "in memory" for c in caps)
        records.append(baseline_record(base, source, label_of(caps[0], k), allowed, inputs_result))
        results.append(base)
    if baselines:
        result.controls["baselines"] = records
        result.baseline_results = results
    return result
