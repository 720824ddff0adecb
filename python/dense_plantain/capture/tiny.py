"""Tiny FLUX.2 [klein] pipelines with random weights, built locally and offline.

Tests and ``dense-plantain demo`` need a real ``Flux2KleinPipeline`` (same classes, same code
paths, same block structure as Klein 4B) without downloading 16 GB. ``build_tiny_pipeline``
makes one in memory in a second or two; ``make_tiny_model`` saves it as a complete pipeline
folder that ``Flux2KleinPipeline.from_pretrained`` loads back.

What is tiny and what is not:

* transformer: Klein 4B's block structure (5 joint + 20 single blocks, mlp_ratio 3, no guidance
  embedding) at 4 heads x 16 dims (inner width 64, so 4 + 16 plantain units per joint/single
  block, 340 in all), ``in_channels`` 16, ``joint_attention_dim`` 96;
* text encoder: a ``Qwen3ForCausalLM`` of hidden width 32 with 28 layers, so the pipeline's
  default text layers (9, 18, 27) exist and stack to 3 x 32 = 96 = ``joint_attention_dim``;
* tokenizer: a byte-level BPE trained here with ``tokenizers`` on a fixed built-in text and
  wrapped as ``Qwen2TokenizerFast`` with a ChatML-style chat template (the pipeline calls
  ``apply_chat_template(..., enable_thinking=False)`` and pads to 512 tokens, as with Qwen3);
* VAE: a one-level ``AutoencoderKLFlux2`` (no downsampling: ``vae_scale_factor`` 1), 4 latent
  channels (x 2 x 2 patches = the transformer's 16 input channels);
* scheduler: ``FlowMatchEulerDiscreteScheduler`` with dynamic shifting, as FLUX.2 uses.

Everything is deterministic: the same seed gives bit-identical weights and files. The weights
are random, so numbers from a tiny pipeline demonstrate the machinery, never a finding.
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
TINY_RECIPE = 1

#: Marker written last into a saved tiny pipeline; its presence means the folder is complete.
MARKER = "dense_plantain_tiny.json"

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

TOKENIZER_VOCAB = 600
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

#: ChatML, as Qwen3 writes it; with ``enable_thinking=False`` the assistant turn opens with an
#: empty think block, which is what the Klein pipeline feeds its text encoder.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)

#: Training text for the tiny tokenizer: fixed, so the tokenizer never depends on which prompt
#: files happen to be installed.
CORPUS = """\
A full-body photograph of a person standing in a neutral T-pose, arms straight out to the sides,
palms down, feet together, facing the camera on a plain grey studio background.
The same person caught mid-dance, one knee raised, arms thrown overhead, torso twisted, hair
flying, laughing, in a sunlit park with trees and a gravel path behind them.
A woman in a red coat, a man in a blue jacket, a child in a yellow raincoat, an old man with a
walking stick, a runner in a white shirt, a climber on a rock wall, a dancer on a wooden stage.
Seen from the front, from the side, from behind, from above; soft light, hard light, evening
light, overcast sky, studio lighting, rim light, shadow, reflection, occlusion, silhouette.
A cup on a table partly hidden behind a book; the whole cup, including the hidden handle.
A rendered photo of a ceramic vase with shading and highlights; the flat albedo colour of the
same vase with no lighting at all. Texture, material, colour, shape, depth, surface, outline.
Character reference sheet, canonical pose, expressive pose, relaxed pose, action pose, sitting,
kneeling, jumping, reaching, pointing, waving, crouching, stretching, turning, leaning, walking.
Numbers and marks: 0 1 2 3 4 5 6 7 8 9, commas, full stops; question marks? exclamation marks!
"""


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
    """A byte-level BPE trained on ``CORPUS`` with Qwen2's pre-tokenizer, as ``Qwen2TokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2TokenizerFast(
        vocab=model["vocab"],
        merges=merges,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        model_max_length=131072,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_pipeline(seed: int = 0):
    """A ``Flux2KleinPipeline`` with random float32 weights on the CPU (see the module docstring)."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    with _seeded(seed, "transformer"):
        transformer = Flux2Transformer2DModel(**TINY_TRANSFORMER)
    with _seeded(seed, "text_encoder"):
        config = Qwen3Config(
            vocab_size=vocab,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **TINY_TEXT_ENCODER,
        )
        text_encoder = Qwen3ForCausalLM(config)
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
        module.eval()
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
        marker = {"recipe": TINY_RECIPE, "seed": int(seed), "files": _file_hashes(tmp)}
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
