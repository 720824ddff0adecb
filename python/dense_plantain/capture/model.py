"""Finding and loading a FLUX.2 [klein] pipeline: hub ids, local folders, device and dtype.

Every failure here is a `ModelLoadError` that says what was wrong and what to do. Hub lookups
fail fast: with ``HF_HUB_OFFLINE=1`` only the local cache is read, and otherwise one short
metadata request (10 s timeout) decides between the Hub, the cache and a clear error before
anything large is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dense_plantain.errors import ModelLoadError

DEFAULT_MODEL = "black-forest-labs/FLUX.2-klein-base-4B"
PIPELINE_CLASS = "Flux2KleinPipeline"
TRANSFORMER_CLASS = "Flux2Transformer2DModel"

#: Bundled transformer configs, usable wherever only the config is needed (``units``, benches).
KLEIN_4B_CONFIG = Path(__file__).with_name("klein_4b_transformer.json")
CONFIG_ALIASES = {"klein-4b": KLEIN_4B_CONFIG, "klein-base-4b": KLEIN_4B_CONFIG}

DEVICES = ("auto", "cuda", "cpu", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HUB_TIMEOUT_S = 10.0


@dataclass
class ModelSource:
    """Where a model comes from, resolved before anything is loaded."""

    spec: str  # as the user gave it
    kind: str  # "folder" | "hub"
    path: Path | None = None  # local folder, or the cached snapshot of a hub model
    repo_id: str | None = None
    revision: str | None = None  # hub commit
    local_only: bool = False  # load from the local cache only (offline)

    @property
    def load_target(self) -> str:
        return str(self.path) if self.kind == "folder" else str(self.repo_id)


# --- hub -------------------------------------------------------------------------------------


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _cached_snapshot(repo_id: str, filename: str = "model_index.json") -> Path | None:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception:
        return None


def _snapshot_revision(path: Path) -> str | None:
    # The cache stores files under .../snapshots/<commit>/<filename>
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _resolve_hub(spec: str, filename: str) -> ModelSource:
    """Decide between Hub and cache for a repo id, quickly; return where ``filename`` lies."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if hub_offline():
        cached = _cached_snapshot(spec, filename)
        if cached is None:
            raise ModelLoadError(
                f"model {spec!r} is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set, so it cannot be "
                f"downloaded. Unset HF_HUB_OFFLINE to download it, or pass the path of a local pipeline folder "
                f"(`dense-plantain make-tiny-model DIR` makes a small one for trying the tool)."
            )
        return ModelSource(spec, "hub", cached.parent, spec, _snapshot_revision(cached), local_only=True)
    try:
        info = HfApi().model_info(spec, timeout=_HUB_TIMEOUT_S)
    except GatedRepoError:
        raise ModelLoadError(
            f"model {spec!r} is gated on the Hugging Face Hub: accept its license at https://huggingface.co/{spec} "
            "and log in (`hf auth login`, or set HF_TOKEN), then run again."
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"no model {spec!r} on the Hugging Face Hub (or it is private and you are not logged in), and no local "
            f"folder of that name. Check the spelling; the default is {DEFAULT_MODEL}."
        ) from None
    except Exception as err:  # no network, DNS failure, timeout, proxy trouble
        cached = _cached_snapshot(spec, filename)
        if cached is None:
            raise ModelLoadError(
                f"cannot reach the Hugging Face Hub to look up {spec!r} ({type(err).__name__}: {err}), and it is not "
                "in the local cache. Connect to the internet, or download the model elsewhere and pass its local "
                "folder; set HF_HUB_OFFLINE=1 to use only the cache."
            ) from None
        return ModelSource(spec, "hub", cached.parent, spec, _snapshot_revision(cached), local_only=True)
    try:
        path = Path(hf_hub_download(spec, filename, revision=info.sha))
    except Exception as err:
        raise ModelLoadError(
            f"model {spec!r} exists on the Hub but its {filename} could not be fetched ({type(err).__name__}: {err}). "
            "Is it a diffusers pipeline repository?"
        ) from None
    return ModelSource(spec, "hub", path.parent, spec, info.sha)


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or "\\" in spec
        or spec.count("/") > 1
        or spec.endswith(".json")
        or bool(re.match(r"^[A-Za-z]:", spec))
    )


# --- pipelines -------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(
            f"{path}: cannot read the {what} ({err}). The folder may be damaged; download it again."
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: the {what} is not a JSON object. The folder may be damaged; download it again.")
    return data


def _check_pipeline_folder(folder: Path, spec: str) -> None:
    index = folder / "model_index.json"
    if not index.is_file():
        config = folder / "config.json"
        if config.is_file() and _read_json(config, "config").get("_class_name") == TRANSFORMER_CLASS:
            raise ModelLoadError(
                f"{spec} holds only a Flux2 transformer, not a whole pipeline. A capture needs the pipeline folder "
                "(model_index.json with transformer/, text_encoder/, tokenizer/, vae/, scheduler/); pass that folder "
                "(`dense-plantain units` accepts a transformer config alone)."
            )
        raise ModelLoadError(
            f"{spec} is not a diffusers pipeline folder: it has no model_index.json. Pass the folder of a "
            f"{PIPELINE_CLASS} (as saved by save_pretrained or downloaded from {DEFAULT_MODEL}), or make a small one "
            "with `dense-plantain make-tiny-model DIR`."
        )
    meta = _read_json(index, "pipeline index (model_index.json)")
    cls = meta.get("_class_name")
    if cls != PIPELINE_CLASS:
        raise ModelLoadError(
            f"{spec} holds a {cls or 'pipeline of unknown class'}, not a FLUX.2 [klein] pipeline ({PIPELINE_CLASS}). "
            f"dense-plantain probes FLUX.2 [klein] models such as {DEFAULT_MODEL}."
        )
    transformer = meta.get("transformer")
    if not (isinstance(transformer, list) and len(transformer) == 2 and transformer[1] == TRANSFORMER_CLASS):
        raise ModelLoadError(
            f"{spec}: model_index.json lists transformer {transformer!r}, not a diffusers {TRANSFORMER_CLASS}; "
            "this is not a FLUX.2 [klein] pipeline dense-plantain can hook."
        )


def resolve_model(spec: str | os.PathLike) -> ModelSource:
    """Check that ``spec`` names a FLUX.2 [klein] pipeline (folder or hub id) without loading it."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            hint = (
                " (`dense-plantain units` reads a bare config; a capture needs the whole pipeline)"
                if spec.endswith(".json")
                else ""
            )
            raise ModelLoadError(f"{spec} is a file, not a pipeline folder{hint}.")
        _check_pipeline_folder(path, spec)
        return ModelSource(spec, "folder", path.resolve())
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise ModelLoadError(
            f"{spec!r} is neither an existing folder nor a Hugging Face model id (owner/name). Check the path; the "
            f"default model is {DEFAULT_MODEL}."
        )
    source = _resolve_hub(spec, "model_index.json")
    assert source.path is not None, "_resolve_hub always returns the folder it found"
    _check_pipeline_folder(source.path, spec)
    return source


def choose_device(device: str = "auto"):
    import torch

    indexed = re.fullmatch(r"cuda:(\d+)", device)
    if indexed:  # one GPU of several: a torchrun rank's cuda:LOCAL_RANK
        index = int(indexed.group(1))
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ModelLoadError(
                f"GPU {device} was asked for, but PyTorch sees {count} CUDA GPU(s) here. With "
                f"torchrun, start at most {count} process(es) per node (--nproc-per-node)."
            )
        return torch.device(device)
    if device not in DEVICES:
        raise ModelLoadError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "--device cuda was asked for, but PyTorch sees no CUDA GPU here. Use --device cpu "
            "(slow for the real model) or install a CUDA build of PyTorch."
        )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("--device mps was asked for, but PyTorch sees no Apple GPU here. Use --device cpu.")
    return torch.device(device)


def choose_dtype(dtype: str, device) -> Any:
    """``auto``: bfloat16 on a CUDA GPU that supports it (float16 otherwise), float32 elsewhere."""
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    if device.type == "cpu":
        return f"cpu {platform.processor() or platform.machine()}".strip()
    return str(device)


def config_sha256(folder: Path) -> str:
    """A hash of a pipeline folder's configuration files (not its weights)."""
    digest = hashlib.sha256()
    names = ["model_index.json"] + [
        f"{sub}/{name}"
        for sub in ("transformer", "text_encoder", "vae", "scheduler", "tokenizer")
        for name in ("config.json", "scheduler_config.json", "tokenizer_config.json")
    ]
    for name in names:
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass
class LoadedModel:
    pipe: Any
    source: ModelSource
    device: Any
    dtype: Any

    def provenance(self) -> dict[str, Any]:
        """The ``model`` record of a capture file: its identity (``provenance.model_record``) and classes."""
        from dense_plantain.capture.provenance import model_record

        return {
            **model_record(self.source),
            "pipeline_class": type(self.pipe).__name__,
            "transformer_config": _plain(dict(self.pipe.transformer.config)),
        }


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


class _Quiet:
    """Silence diffusers'/transformers' loading progress bars and advice while loading."""

    def __enter__(self):
        import diffusers
        import transformers

        self._saved = (diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity())
        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity(self._saved[0])
        transformers.utils.logging.set_verbosity(self._saved[1])
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()


def load_pipeline(
    spec: str | os.PathLike = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto", quiet: bool = True
) -> LoadedModel:
    """Load a ``Flux2KleinPipeline`` from a hub id or local folder onto the chosen device."""
    import torch

    dev = choose_device(device)
    torch_dtype = choose_dtype(dtype, dev)
    source = resolve_model(spec)
    from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel

    kwargs: dict[str, Any] = {"torch_dtype": torch_dtype}
    if source.kind == "hub":
        kwargs["local_files_only"] = source.local_only
        if source.revision:
            kwargs["revision"] = source.revision
    try:
        with _Quiet() if quiet else _nullcontext(), warnings.catch_warnings():
            # diffusers 0.42 renamed torch_dtype to dtype; the old name works on every supported version.
            warnings.filterwarnings("ignore", category=FutureWarning)
            pipe = Flux2KleinPipeline.from_pretrained(source.load_target, **kwargs)
    except ModelLoadError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise ModelLoadError(f"out of GPU memory while loading {spec}.") from None
    except Exception as err:
        raise ModelLoadError(
            f"{spec} could not be loaded as a {PIPELINE_CLASS} ({type(err).__name__}: {err}). The folder may be "
            "incomplete or damaged (download it again), or made by an incompatible diffusers version."
        ) from None
    if not isinstance(getattr(pipe, "transformer", None), Flux2Transformer2DModel):
        raise ModelLoadError(f"{spec}: the loaded pipeline has no {TRANSFORMER_CLASS}; dense-plantain cannot hook it.")
    if source.kind == "hub" and source.path is None:
        source.path = _cached_snapshot(source.repo_id or str(spec))
    try:
        pipe.to(dev)
    except torch.cuda.OutOfMemoryError:
        raise ModelLoadError(
            f"out of GPU memory while moving {spec} to {dev} in {str(torch_dtype).removeprefix('torch.')}. "
            "Klein 4B needs "
            "about 16 GB in bfloat16 (transformer + text encoder); free the GPU or use a larger one."
        ) from None
    return LoadedModel(pipe=pipe, source=source, device=dev, dtype=torch_dtype)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


# --- transformer configs (layouts without weights) ---------------------------------------------


def load_transformer_config(spec: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """A Flux2 transformer config from an alias (``klein-4b``), a .json file, a folder or a hub id.

    Returns the config and a description of where it came from. Reads no weights.
    """
    spec = str(spec)
    if spec.lower() in CONFIG_ALIASES:
        path = CONFIG_ALIASES[spec.lower()]
        return _transformer_config_file(path, spec), f"bundled config {spec} ({path.name})"
    path = Path(spec).expanduser()
    if path.is_file():
        return _transformer_config_file(path, spec), str(path)
    if path.is_dir():
        for candidate in (path / "transformer" / "config.json", path / "config.json"):
            if candidate.is_file():
                return _transformer_config_file(candidate, spec), str(candidate)
        raise ModelLoadError(
            f"{spec} has neither transformer/config.json nor config.json; pass a pipeline folder, a transformer "
            f"folder, a transformer config .json, or one of: {', '.join(CONFIG_ALIASES)}."
        )
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise ModelLoadError(
            f"{spec!r} is neither an existing file or folder, a Hugging Face model id (owner/name), nor a bundled "
            f"config ({', '.join(CONFIG_ALIASES)})."
        )
    try:
        source = _resolve_hub(spec, "transformer/config.json")
    except ModelLoadError as err:
        raise ModelLoadError(f"{err} (The Klein 4B layout needs no download: --model klein-4b.)") from None
    assert source.path is not None, "_resolve_hub always returns the folder it found"
    return _transformer_config_file(source.path / "config.json", spec), f"{spec} (transformer/config.json)"


def _transformer_config_file(path: Path, spec: str) -> dict[str, Any]:
    config = _read_json(path, "transformer config")
    cls = config.get("_class_name")
    if cls is not None and cls != TRANSFORMER_CLASS:
        raise ModelLoadError(f"{spec}: {path.name} describes a {cls}, not a {TRANSFORMER_CLASS}.")
    needed = ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim")
    missing = [k for k in needed if not isinstance(config.get(k), int)]
    if missing:
        raise ModelLoadError(
            f"{spec}: {path} is not a {TRANSFORMER_CLASS} config (missing or non-integer {', '.join(missing)})."
        )
    return config


# --- bare transformers (benchmarks) ------------------------------------------------------------


def random_transformer(
    config: dict[str, Any] | str | os.PathLike = "klein-4b", *, device: str = "cpu", dtype: Any = None, seed: int = 0
):
    """A ``Flux2Transformer2DModel`` with random weights from a config (alias, file or dict).

    Klein 4B in bfloat16 is about 8 GB; the weights are drawn on ``device`` directly.
    """
    import torch
    from diffusers import Flux2Transformer2DModel

    if not isinstance(config, dict):
        config, _ = load_transformer_config(config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = Flux2Transformer2DModel.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def synthetic_inputs(
    transformer, *, batch_size: int = 1, image_grid: tuple[int, int] = (64, 64), text_tokens: int = 512, seed: int = 0
) -> dict[str, Any]:
    """Keyword arguments for one transformer forward as the Klein pipeline makes them.

    ``image_grid`` is the packed latent grid: (64, 64) is a 1024x1024 image for Klein (8x VAE,
    2x2 patches); ``text_tokens`` 512 is the pipeline's padded prompt length. Values are random
    on the transformer's device and dtype; the step is sigma = 1 (pure noise), as the protocol's.
    """
    import torch

    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    cfg = transformer.config
    g = torch.Generator("cpu").manual_seed(seed)
    h, w = image_grid
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(text_tokens))
    return {
        "hidden_states": torch.randn(batch_size, h * w, cfg.in_channels, generator=g).to(device, dtype),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, cfg.joint_attention_dim, generator=g).to(
            device, dtype
        ),
        "timestep": torch.ones(batch_size, device=device, dtype=dtype),
        "img_ids": img_ids.unsqueeze(0).expand(batch_size, -1, -1).to(device),
        "txt_ids": txt_ids.unsqueeze(0).expand(batch_size, -1, -1).to(device),
        "guidance": None,
        "return_dict": False,
    }
