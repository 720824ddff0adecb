"""Inputs of an analysis: loading captures, checking them against each other, provenance.

Nothing here computes a statistic: it turns capture files (or in-memory `Capture`s) into checked
float64 difference matrices and the records results.json keeps about where they came from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from dense_plantain import stats
from dense_plantain.analysis.driver import D_THRESHOLDS, T_THRESHOLDS
from dense_plantain.capture.provenance import COMPARABLE_SETTINGS, MODEL_IDENTITY_KEYS
from dense_plantain.capture.provenance import capture_identity as provenance_identity
from dense_plantain.errors import AnalysisError
from dense_plantain.stats import MIN_PAIRS, StatsInputError  # the engine's MIN_PAIRS, as prompts has it
from dense_plantain.store import Capture, read_capture

__all__ = [
    "COMPARABLE_MODEL_KEYS",
    "COMPARABLE_SETTINGS",
    "check_same_capture_settings",
    "check_same_layout",
    "file_sha256",
    "load",
    "matched_order",
    "provenance",
    "shared_b_prompts",
    "weights",
]


def load(capture: Capture | str | Path) -> Capture:
    return capture if isinstance(capture, Capture) else read_capture(capture)


def where(cap: Capture) -> str:
    return str(cap.path) if cap.path is not None else "the capture"


def require_pairs(cap: Capture) -> None:
    if cap.n_pairs < MIN_PAIRS:
        raise AnalysisError(
            f"{where(cap)}: only {cap.n_pairs} pair(s); a paired test needs at least {MIN_PAIRS} "
            "(the published probes use 25). Capture more pairs"
        )


def check_settings(permutations: int, splits: int) -> None:
    if permutations < 1:
        raise AnalysisError(f"--permutations must be at least 1, got {permutations}")
    if splits < 1:
        raise AnalysisError(f"--splits must be at least 1, got {splits}")


def diff(a: np.ndarray, b: np.ndarray, cap: Capture) -> np.ndarray:
    try:
        return np.asarray(stats.paired_diff(a, b), dtype=np.float64)
    except ValueError as err:
        raise StatsInputError(f"{where(cap)}: {err}") from None


def check_same_layout(cap1: Capture, cap2: Capture) -> None:
    l1, l2 = cap1.layout, cap2.layout
    if l1.same_units(l2) and (not (l1.has_labels() and l2.has_labels()) or l1.name == l2.name):
        return
    b1 = [(b.name, b.n_units) for b in l1.blocks]
    b2 = [(b.name, b.n_units) for b in l2.blocks]
    first = next((i for i, (x, y) in enumerate(zip(b1, b2)) if x != y), min(len(b1), len(b2)))

    def show(blocks, i):
        return f"{blocks[i][0]} ({blocks[i][1]} units)" if i < len(blocks) else "no block"

    raise AnalysisError(
        f"the captures do not share a unit layout: {where(cap1)} has layout {l1.name!r} with {l1.n_units:,} units "
        f"in {len(b1)} blocks, {where(cap2)} has {l2.name!r} with {l2.n_units:,} units in {len(b2)} blocks; "
        f"block {first} is {show(b1, first)} vs {show(b2, first)}. Capture both with the same model and --layout"
    )


#: The capture's list of settings that make two captures comparable, and its model identity keys.
COMPARABLE_MODEL_KEYS = MODEL_IDENTITY_KEYS


def capture_identity(cap: Capture) -> dict[str, Any] | None:
    """The recorded model and settings of a capture as flat keys, or None when it records neither.

    The capture's own rule (`capture.provenance.capture_identity`), less the weights hash: compare
    checks what was measured and on which model, as it always has."""
    identity = provenance_identity(cap.meta)
    if identity is not None:
        identity.pop("weights.sha256", None)
    return identity


def check_same_capture_settings(cap1: Capture, cap2: Capture, allow: bool) -> dict[str, Any]:
    """Compare the two captures' recorded model and settings; refuse a difference unless ``allow``.

    Returns the record kept in results.json: ``status`` "same", "different" (allowed) or
    "not recorded" (a capture without model and settings metadata: nothing to compare).
    """
    id1, id2 = capture_identity(cap1), capture_identity(cap2)
    if id1 is None or id2 is None:
        missing = [where(c) for c, i in ((cap1, id1), (cap2, id2)) if i is None]
        return {
            "status": "not recorded",
            "differences": [],
            "note": f"{' and '.join(missing)} record no model or capture settings; they were not compared",
        }
    shared = [k for k in id1 if k in id2]
    differences = [{"key": k, "capture_1": id1[k], "capture_2": id2[k]} for k in shared if id1[k] != id2[k]]
    unchecked = sorted(set(id1) ^ set(id2))
    record: dict[str, Any] = {"status": "different" if differences else "same", "differences": differences}
    if unchecked:
        record["unchecked"] = unchecked  # recorded by one capture only
    if differences and not allow:
        listed = "; ".join(f"{d['key']}: {d['capture_1']!r} vs {d['capture_2']!r}" for d in differences)
        raise AnalysisError(
            f"{where(cap1)} and {where(cap2)} were captured with different models or settings ({listed}); "
            "their contrasts are not comparable unit for unit. Capture both with the same model and settings, "
            "or pass --allow-different-settings to compare them anyway (the card will carry a warning)"
        )
    return record


def explicit_pair_ids(cap: Capture) -> list[str] | None:
    pairs = cap.meta.get("pairs")
    if not isinstance(pairs, list) or len(pairs) != cap.n_pairs:
        return None
    if not all(isinstance(p, dict) and "id" in p for p in pairs):
        return None
    return [str(p["id"]) for p in pairs]


def is_matched(cap1: Capture, cap2: Capture) -> bool:
    """Both captures list the same pair ids (in any order): the matched design applies."""
    ids1, ids2 = explicit_pair_ids(cap1), explicit_pair_ids(cap2)
    return ids1 is not None and ids2 is not None and len(set(ids1)) == len(ids1) and sorted(ids1) == sorted(ids2)


def matched_order(cap1: Capture, cap2: Capture) -> np.ndarray:
    """Row indices of capture 2 that line its pairs up with capture 1's, by pair id.

    Captures that both list pair ids are matched by id: the ids must be the same (order may
    differ) and unique, else `AnalysisError` names the ids found in one capture only. When either
    capture lists no ids, the pairs are matched by position (same count required)."""
    if cap1.n_pairs != cap2.n_pairs:
        raise AnalysisError(
            f"{where(cap1)} has {cap1.n_pairs} pairs and {where(cap2)} has {cap2.n_pairs}; a matched "
            "comparison needs the same pairs. Use --pairing unmatched (Welch's t)"
        )
    ids1, ids2 = explicit_pair_ids(cap1), explicit_pair_ids(cap2)
    if ids1 is None or ids2 is None:
        return np.arange(cap2.n_pairs)
    for cap, ids in ((cap1, ids1), (cap2, ids2)):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise AnalysisError(f"{where(cap)} lists pair id(s) {', '.join(map(repr, repeated[:5]))} more than once")
    only1, only2 = [i for i in ids1 if i not in set(ids2)], [i for i in ids2 if i not in set(ids1)]
    if only1 or only2:

        def show(ids: list[str]) -> str:
            return ", ".join(repr(i) for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")

        parts = [f"only in {where(c)}: {show(o)}" for c, o in ((cap1, only1), (cap2, only2)) if o]
        raise AnalysisError(
            f"--pairing matched pairs the captures by pair id, and their ids differ ({'; '.join(parts)}). "
            "Capture both from the same pairs, or use --pairing unmatched (Welch's t)"
        )
    row = {pid: i for i, pid in enumerate(ids2)}
    return np.array([row[pid] for pid in ids1], dtype=np.int64)


def shared_b_prompts(cap1: Capture, cap2: Capture) -> bool:
    """True when the two captures hold the same B prompt texts (the same multiset of them).

    Then ``(B1 - A1) - (B2 - A2)`` is exactly ``A2 - A1`` per pair: the contrast says nothing
    about B, and the report says so."""
    texts = []
    for cap in (cap1, cap2):
        pairs = cap.meta.get("pairs")
        if (
            not isinstance(pairs, list)
            or not pairs
            or not all(isinstance(p, dict) and isinstance(p.get("b"), str) for p in pairs)
        ):
            return False
        texts.append([p["b"] for p in pairs])
    return sorted(texts[0]) == sorted(texts[1])


def weights(cap: Capture) -> dict[str, Any] | None:
    """The capture's ``meta["weights"]`` record (see results.json "weights"), or None if absent/invalid."""
    w = cap.meta.get("weights")
    return w if isinstance(w, dict) and isinstance(w.get("random"), bool) else None


def conditions(cap: Capture) -> dict[str, Any]:
    recorded = cap.meta.get("probe")
    probe: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    return {
        "probe": probe.get("name") or (cap.path.stem if cap.path else None),
        "a": probe.get("label_a") or "A",
        "b": probe.get("label_b") or "B",
    }


def settings(permutations: int, exact: bool | None, seed: int, splits: int, group_nulls: bool) -> dict[str, Any]:
    return {
        "permutations": int(permutations),
        "exact": exact,
        "seed": int(seed),
        "splits": int(splits),
        "group_nulls": bool(group_nulls),
        "t_thresholds": list(T_THRESHOLDS),
        "d_thresholds": list(D_THRESHOLDS),
        "p99_percentile": "numpy.percentile(counts, 99), linear",
    }


#: Capture metadata keys left out of the provenance: per-unit detail the layout summary replaces.
_BULKY_META = ("readouts",)


def provenance(cap: Capture, role: str) -> dict[str, Any]:
    meta = {k: v for k, v in cap.meta.items() if k not in _BULKY_META}
    return {
        "role": role,
        "path": str(cap.path) if cap.path else None,
        "sha256": file_sha256(cap.path) if cap.path else None,
        "n_pairs": cap.n_pairs,
        "n_units": cap.n_units,
        "metadata": meta,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
