"""Provenance: what a capture records about its settings, model, weights, versions and command.

``COMPARABLE_SETTINGS`` is the one list of settings that make two captures comparable unit for
unit; resume, the torchrun merge, ``compare`` and the card read it (``compare_metas`` applies
it together with the model's identity and the weights' hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dense_plantain.capture.job import GUIDANCE_SCALE, TEXT_LAYERS, TEXT_TOKENS, CaptureSettings
from dense_plantain.capture.model import ModelSource, config_sha256

#: Keys of a capture's ``settings`` record that must agree for two captures to be comparable
#: (and for a run to resume or merge another's pairs). The device and batch size are not here:
#: they change float rounding only (relative 1e-5), not what is measured.
COMPARABLE_SETTINGS: tuple[str, ...] = (
    "layout",
    "seed",
    "height",
    "width",
    "steps",
    "capture_steps",
    "guidance_scale",
    "text_tokens",
    "text_encoder_layers",
    "dtype",
    "image_sha256",
)

#: Keys of a capture's ``model`` record that identify the model. A local folder may move between
#: runs, so for ``source == "folder"`` only its configuration's hash counts.
MODEL_IDENTITY_KEYS: tuple[str, ...] = ("id", "revision", "config_sha256")
FOLDER_IDENTITY_KEYS: tuple[str, ...] = ("config_sha256",)

#: Marker files a tiny random pipeline carries (``make-tiny-model``): the current name, then the older one.
TINY_MARKERS = ("dense-plantain.json", "dense_plantain_tiny.json")

WEIGHT_KINDS = ("pretrained", "tiny-random", "reinitialised")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from dense_plantain import __version__

    out = {"dense-plantain": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "tokenizers", "numpy", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# --- settings and model identity -------------------------------------------------------------------


def settings_record(settings: CaptureSettings, dtype: str, image_sha256: str | None) -> dict[str, Any]:
    """The ``settings`` record of a capture file, less the run's device and batch size.

    ``vectors`` is recorded only when on, so captures without vectors keep today's record."""
    record = asdict(settings)
    if not record.get("vectors"):
        record.pop("vectors", None)
    return {
        **record,
        "capture_steps": list(settings.capture_steps),
        "image_sha256": image_sha256,
        "guidance_scale": GUIDANCE_SCALE,
        "text_tokens": TEXT_TOKENS,
        "text_encoder_layers": list(TEXT_LAYERS),
        "dtype": dtype,
        "noise": (
            f"torch.Generator('cpu').manual_seed({settings.seed}); the single-prompt draw of "
            "Flux2KleinPipeline.prepare_latents, repeated for every prompt"
        ),
    }


def model_record(source: ModelSource) -> dict[str, Any]:
    """The identity part of a capture's ``model`` record, from where the model comes (no weights loaded)."""
    return {
        "id": source.spec if source.kind == "hub" else str(source.path),
        "source": source.kind,
        "revision": source.revision,
        "config_sha256": config_sha256(source.path) if source.path else None,
    }


def model_identity_keys(model_meta: dict[str, Any]) -> tuple[str, ...]:
    return FOLDER_IDENTITY_KEYS if model_meta.get("source") == "folder" else MODEL_IDENTITY_KEYS


def capture_identity(meta: dict[str, Any]) -> dict[str, Any] | None:
    """A capture's comparable settings, model identity and weights hash as flat keys
    (``settings.seed``, ``model.config_sha256``, ``weights.sha256``); None when it records neither
    settings nor model (a file from another tool)."""
    settings, model = meta.get("settings"), meta.get("model")
    settings = settings if isinstance(settings, dict) else {}
    model = model if isinstance(model, dict) else {}
    if not settings and not model:
        return None
    out = {f"settings.{k}": settings[k] for k in COMPARABLE_SETTINGS if k in settings}
    out.update({f"model.{k}": model[k] for k in model_identity_keys(model) if k in model})
    weights = meta.get("weights")
    if isinstance(weights, dict) and weights.get("sha256"):
        out["weights.sha256"] = weights["sha256"]
    if isinstance(weights, dict) and weights.get("kind") == "reinitialised":
        out.update({f"weights.{k}": weights.get(k) for k in ("kind", "seed", "parts", "source_sha256")})
    return out


def compare_metas(
    old: dict[str, Any], new: dict[str, Any], *, then: str = "capture 1", now: str = "capture 2"
) -> list[str]:
    """How two captures' comparable settings and model differ, one sentence each (empty: comparable).

    Settings keys in ``COMPARABLE_SETTINGS`` and the model's identity are compared whether or not
    one side lacks them (a missing key is a difference); the weights' hash only when both record it.
    """
    problems = []
    old_settings = old.get("settings") or {}
    new_settings = new.get("settings") or {}
    for key in COMPARABLE_SETTINGS:
        if old_settings.get(key) != new_settings.get(key):
            problems.append(f"{key}: {then} {old_settings.get(key)!r}, {now} {new_settings.get(key)!r}")
    old_model = old.get("model") or {}
    new_model = new.get("model") or {}
    for key in model_identity_keys(new_model):
        if old_model.get(key) != new_model.get(key):
            problems.append(f"model {key}: {then} {old_model.get(key)!r}, {now} {new_model.get(key)!r}")
    old_sha = (old.get("weights") or {}).get("sha256")
    new_sha = (new.get("weights") or {}).get("sha256")
    if old_sha and new_sha and old_sha != new_sha:
        problems.append(f"weights sha256: {then} {old_sha[:12]}..., {now} {new_sha[:12]}...")
    problems.extend(_reinit_problems(old.get("weights"), new.get("weights"), then, now))
    return problems


def _reinit_problems(old: Any, new: Any, then: str, now: str) -> list[str]:
    """Re-initialised weights (``capture --weights random``) agree only with the same seed, parts and source."""
    from dense_plantain.capture.reinit import weights_regime

    old_regime, new_regime = weights_regime(old), weights_regime(new)
    if old_regime == new_regime:
        return []

    def words(regime: tuple[Any, ...] | None) -> str:
        if regime is None:
            return "saved weights"
        seed, parts, source = regime
        return f"{'+'.join(parts)} re-initialised with --weights-seed {seed} (source {str(source)[:12]}...)"

    return [f"weights: {then} {words(old_regime)}, {now} {words(new_regime)}"]


def identity_problems(meta: dict, this_run: dict, probe, *, then: str = "unfinished run") -> list[str]:
    """How a capture file's settings, model, weights and prompt file differ from this run's (empty: they agree).

    ``this_run`` holds this run's ``settings``, ``model`` and (when known) ``weights`` records.
    """
    problems = compare_metas(meta, this_run, then=then, now="this run")
    old_probe = meta.get("probe") or {}
    if old_probe.get("sha256") != probe.sha256:
        problems.append(
            f"prompt file {probe.path} changed since the {then} (sha256 "
            f"{str(old_probe.get('sha256'))[:12]}... then, {probe.sha256[:12]}... now)"
        )
    return problems


# --- weights -------------------------------------------------------------------------------------


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"), key=lambda p: p.relative_to(folder).as_posix())


def _hash_cache_file() -> Path:
    from dense_plantain.capture.tiny import cache_dir

    return cache_dir() / "weights-sha256.json"


def weights_sha256(folder: str | os.PathLike) -> str | None:
    """sha256 over the contents of a folder's ``*.safetensors`` files in sorted relative-path order
    (each file's bytes streamed; symlinks of a hub cache followed); None when it has none.

    Cached on disk by (folder, each file's relative path, size and mtime), so a folder is hashed once.
    """
    folder = Path(folder).resolve()
    files = _weight_files(folder)
    if not files:
        return None
    stats = [(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([str(folder), stats]).encode()).hexdigest()
    cache_file = _hash_cache_file()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), str):
        return cache[key]
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    value = digest.hexdigest()
    cache[key] = value
    try:
        from dense_plantain.store import atomic_write_bytes

        atomic_write_bytes(cache_file, json.dumps(cache, indent=0).encode())
    except OSError:
        pass  # a cache that cannot be written costs only the next run's hashing
    return value


def _tiny_marker(folder: Path) -> dict[str, Any] | None:
    for name in TINY_MARKERS:
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return {"file": name, **data}
    return None


def weights_record(source: ModelSource) -> dict[str, Any]:
    """The capture's ``weights`` record: which weights ran, whether they are random, and their hash."""
    folder = source.path
    parts = (
        sorted({p.relative_to(folder).parts[0] for p in _weight_files(folder) if len(p.relative_to(folder).parts) > 1})
        if folder
        else []
    )
    sha = weights_sha256(folder) if folder else None
    marker = _tiny_marker(folder) if folder else None
    if marker is not None and (marker.get("random_weights", True) or marker["file"] != TINY_MARKERS[0]):
        seed = marker.get("seed")
        seed = int(seed) if isinstance(seed, int) else None
        return {
            "random": True,
            "kind": "tiny-random",
            "description": (
                f"a tiny FLUX.2 [klein]-shaped pipeline with random weights (make-tiny-model, seed {seed}); "
                "its values say nothing about FLUX.2"
            ),
            "seed": seed,
            "parts": parts,
            "sha256": sha,
        }
    where = (
        f"{source.spec} at revision {source.revision}" if source.kind == "hub" else f"the local folder {source.path}"
    )
    return {
        "random": False,
        "kind": "pretrained",
        "description": f"pretrained weights as saved in {where}",
        "seed": None,
        "parts": parts,
        "sha256": sha,
    }
