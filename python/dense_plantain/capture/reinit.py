"""Random-weights baselines: re-initialise a loaded pipeline's transformer (and text encoder) in place.

``capture --weights random`` asks how much of an A-vs-B effect an *untrained* transformer of the
same architecture shows on the same prompt embeddings: the transformer is rebuilt from its own
config with the library's default initialisation (the module constructors' own initialisers, as
``from_config`` gives them) under ``torch.manual_seed(weights_seed)``, built on the pipeline's
device, cast to its dtype, and copied into the loaded module's tensors (the pipeline object,
its hooks and its offloading stay as they are). The trained text encoder and tokenizer are
kept, so the baseline sees the prompt embeddings the saved-weights run sees. ``random-all``
re-initialises the text encoder too (``type(model)(config)``, transformers' own ``_init_weights``).

The global random state is restored afterwards (``torch.random.fork_rng``). A pipeline the
caller passed in (``run_capture(..., loaded=...)``) is put back as it was when the job ends
(``keep_weights``): only pipelines the job loaded itself are left re-initialised. The same seed on the
same device type gives bit-identical weights; a CUDA initialisation differs from a CPU one (the
generators differ), so the record names the device type.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dense_plantain.errors import CaptureError

#: ``capture --weights`` choices: what each re-initialises.
WEIGHT_CHOICES: dict[str, tuple[str, ...]] = {
    "saved": (),
    "random": ("transformer",),
    "random-all": ("transformer", "text_encoder"),
}


def parts_of(weights: str) -> tuple[str, ...]:
    """The pipeline components ``weights`` re-initialises; raises ``CaptureError`` on an unknown choice."""
    if weights not in WEIGHT_CHOICES:
        raise CaptureError(f"--weights {weights!r} is not one of {', '.join(WEIGHT_CHOICES)}.")
    return WEIGHT_CHOICES[weights]


def _fresh_like(module: Any, seed: int) -> Any:
    """A freshly initialised module of ``module``'s class and config on its device (float32 build)."""
    import torch

    device = next(module.parameters()).device
    cls = type(module)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(int(seed))
        if hasattr(cls, "from_config"):  # diffusers ModelMixin
            return cls.from_config(module.config)
        return cls(module.config)  # transformers PreTrainedModel: post_init applies _init_weights


def reinitialise_module(module: Any, seed: int) -> None:
    """Replace every parameter and buffer of ``module`` by a fresh default initialisation (in place)."""
    import torch

    fresh = _fresh_like(module, seed)
    target = module.state_dict()
    source = fresh.state_dict()
    missing = sorted(set(target) - set(source))
    if missing:
        raise CaptureError(
            f"re-initialising {type(module).__name__} from its config gave no tensor for {missing[:5]}; "
            "its class cannot be rebuilt from its config alone, so --weights random cannot run on this model."
        )
    with torch.no_grad():
        for name, tensor in target.items():
            tensor.copy_(source[name].to(dtype=tensor.dtype, device=tensor.device))
    del fresh, source


def reinitialise(pipe: Any, weights: str, seed: int) -> dict[str, Any]:
    """Re-initialise the parts ``weights`` names (``"saved"``: nothing); returns what was done and its seconds."""
    parts = parts_of(weights)
    if not isinstance(seed, int) or seed < 0:
        raise CaptureError(f"--weights-seed must be a non-negative integer, got {seed!r}.")
    t0 = time.perf_counter()
    devices = []
    for part in parts:
        module = getattr(pipe, part)
        devices.append(next(module.parameters()).device.type)
        reinitialise_module(module, seed)
    _synchronise(devices)
    return {"parts": list(parts), "seconds": time.perf_counter() - t0, "device": devices[0] if devices else None}


def keep_weights(pipe: Any, weights: str) -> Callable[[], None]:
    """Copy the parts ``weights`` would re-initialise to host memory; the returned function puts them back.

    For a pipeline the caller loaded and still holds (``run_capture(..., loaded=...)``): a
    baseline must not leave the caller's model random. The copies are bit-exact clones of every
    tensor of each part's ``state_dict`` (host memory: the size of those parts in their dtype),
    restored in place with ``Tensor.copy_``, so the caller's pipeline object, its devices, dtypes
    and hooks stay as they were.
    """
    import torch

    kept = {
        part: {name: t.detach().to("cpu", copy=True) for name, t in getattr(pipe, part).state_dict().items()}
        for part in parts_of(weights)
    }

    def restore() -> None:
        with torch.no_grad():
            for part, tensors in kept.items():
                target = getattr(pipe, part).state_dict()
                for name, tensor in tensors.items():
                    target[name].copy_(tensor)
        _synchronise([next(getattr(pipe, part).parameters()).device.type for part in kept])

    return restore


def _synchronise(device_types: list[str]) -> None:
    if "cuda" in device_types:
        import torch

        torch.cuda.synchronize()


def random_weights_record(source_record: dict[str, Any], weights: str, seed: int, device: str | None) -> dict[str, Any]:
    """The capture's ``weights`` record for a re-initialised run, keeping the source's record beside it."""
    parts = list(parts_of(weights))
    kept = "the trained text encoder and tokenizer are kept" if parts == ["transformer"] else "the tokenizer is kept"
    return {
        "random": True,
        "kind": "reinitialised",
        "choice": weights,
        "description": (
            f"{' and '.join(parts)} re-initialised from its config with the library's default initialisation "
            f"(torch.manual_seed({seed}) on {device or 'the pipeline device'}); {kept}. A random-weights baseline: "
            "its values say nothing learned"
        ),
        "seed": int(seed),
        "parts": parts,
        "init_device": device,
        "sha256": None,
        "source_sha256": source_record.get("sha256"),
        "source_kind": source_record.get("kind"),
        "source_description": source_record.get("description"),
    }


def job_weights_record(source_record: dict[str, Any], weights: str, seed: int, device: str | None) -> dict[str, Any]:
    """The ``weights`` record of a job: the source's own for ``saved``, the re-initialised one otherwise."""
    if not parts_of(weights):
        return source_record
    return random_weights_record(source_record, weights, seed, device)


def weights_regime(meta_weights: Any) -> tuple[Any, ...] | None:
    """What must agree for two captures' weights to be the same re-initialisation (None: not re-initialised)."""
    if not isinstance(meta_weights, dict) or meta_weights.get("kind") != "reinitialised":
        return None
    return (meta_weights.get("seed"), tuple(meta_weights.get("parts") or ()), meta_weights.get("source_sha256"))
