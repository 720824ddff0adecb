"""Capture on a tiny random Klein pipeline: values, batching, noise, files, resume, errors.

Every expected number comes from an independent computation: raw hooked inputs reduced in
float64 numpy with the tiny model's widths written out here, or the pipeline's own noise draw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dense_plantain.capture import capture_prompts, install_unit_hooks, plan_reductions, run_capture
from dense_plantain.capture.model import load_pipeline, resolve_model
from dense_plantain.capture.run import CaptureSettings, initial_noise, partial_path
from dense_plantain.errors import CaptureError, ModelLoadError, PromptFileError
from dense_plantain.store import read_capture
from dense_plantain.units import build_layout
from tiny_klein import PAIRS, SIZE, capture_args, tiny_dir, tiny_loaded, write_probe

# The tiny transformer's widths, written out (not read from the code under test).
HEADS, HEAD_DIM, N_JOINT, N_SINGLE = 4, 16, 5, 20
INNER, MLP = HEADS * HEAD_DIM, 3 * HEADS * HEAD_DIM
PROMPTS = ["a person standing in a T-pose", "a dancer leaping across a stage", "a cup on a table", "a red vase"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_loaded().pipe


class RawInputs:
    """Plain pre-hooks that keep every hooked input as float64 numpy, for reference reductions."""

    def __init__(self, transformer):
        self.store: dict[str, list[np.ndarray]] = {}
        self.handles = []
        for name, module in transformer.named_modules():
            if name.endswith(("attn.to_out.0", "attn.to_add_out")) or (
                name.startswith("single_transformer_blocks") and name.endswith("attn.to_out")
            ):
                self.handles.append(module.register_forward_pre_hook(self._hook(name)))
        self.text_len: list[int] = []
        self.handles.append(transformer.register_forward_pre_hook(self._on_forward, with_kwargs=True))

    def _hook(self, name):
        def hook(module, args):
            self.store.setdefault(name, []).append(args[0].detach().to(torch.float64).numpy().copy())

        return hook

    def _on_forward(self, module, args, kwargs):
        self.text_len.append(int(kwargs["encoder_hidden_states"].shape[1]))

    def get(self, name, call=0):
        return self.store[name][call]

    def remove(self):
        for h in self.handles:
            h.remove()


def rms(x: np.ndarray, width: int) -> np.ndarray:
    """[B, S, C] -> [B, C // width]: sqrt(mean of squares over tokens and each group's columns)."""
    b, s, c = x.shape
    return np.sqrt((x.reshape(b, s, c // width, width) ** 2).mean(axis=(1, 3)))


def reference_plantain(raw: RawInputs, call: int = 0) -> np.ndarray:
    cols = []
    for i in range(N_JOINT):
        x = raw.get(f"transformer_blocks.{i}.attn.to_out.0", call)
        assert x.shape[-1] == INNER
        cols.append(rms(x, 16))
    for i in range(N_SINGLE):
        x = raw.get(f"single_transformer_blocks.{i}.attn.to_out", call)
        assert x.shape[-1] == INNER + MLP
        cols.append(rms(x, 16))
    return np.concatenate(cols, axis=1)


def reference_heads(raw: RawInputs, call: int = 0) -> np.ndarray:
    n_text = raw.text_len[call]
    cols = []
    for i in range(N_JOINT):
        cols.append(rms(raw.get(f"transformer_blocks.{i}.attn.to_out.0", call), HEAD_DIM))
        cols.append(rms(raw.get(f"transformer_blocks.{i}.attn.to_add_out", call), HEAD_DIM))
    for i in range(N_SINGLE):
        x = raw.get(f"single_transformer_blocks.{i}.attn.to_out", call)
        img, txt = x[:, n_text:], x[:, :n_text]
        cols += [
            rms(img[..., :INNER], HEAD_DIM),
            rms(txt[..., :INNER], HEAD_DIM),
            rms(img[..., INNER:], HEAD_DIM),
            rms(txt[..., INNER:], HEAD_DIM),
        ]
    return np.concatenate(cols, axis=1)


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,reference", [("plantain", reference_plantain), ("heads", reference_heads)])
def test_values_equal_float64_reduction_of_hooked_inputs(pipe, layout, reference):
    raw = RawInputs(pipe.transformer)
    try:
        got = capture_prompts(pipe, PROMPTS[:3], layout=layout, height=SIZE, width=SIZE, batch_size=3)
    finally:
        raw.remove()
    want = reference(raw)
    assert got.values.dtype == np.float32
    assert got.values.shape == want.shape == (3, got.layout.n_units)
    assert got.layout.n_units == (
        340 if layout == "plantain" else N_JOINT * 2 * HEADS + N_SINGLE * (2 * HEADS + 2 * MLP // HEAD_DIM)
    )
    np.testing.assert_allclose(got.values, want, rtol=2e-5, atol=0)  # float32 accumulation over ~25k squares
    assert raw.text_len == [512]
    assert got.info["tokens"] == {"text": 512, "image": (SIZE // 2) ** 2, "reference": 0}


def test_bfloat16_activations_reduce_in_float32():
    """The fused norm reads bf16 and accumulates in float32: equal to float64 of the same bf16 inputs."""
    # A bfloat16 load of its own: casting the shared float32 pipeline to bfloat16 and back would
    # round its weights to bfloat16 in place, moving every later capture of it (tests/test_global_state.py).
    pipe = load_pipeline(tiny_dir(), device="cpu", dtype="bfloat16").pipe
    raw = RawInputs(pipe.transformer)
    try:
        got = capture_prompts(pipe, PROMPTS[:2], height=SIZE, width=SIZE, batch_size=2)
    finally:
        raw.remove()
    assert raw.get("single_transformer_blocks.0.attn.to_out").dtype == np.float64
    np.testing.assert_allclose(got.values, reference_plantain(raw), rtol=1e-5)


def test_batched_equals_one_at_a_time(pipe):
    batched = capture_prompts(pipe, PROMPTS, height=SIZE, width=SIZE, batch_size=4).values
    single = capture_prompts(pipe, PROMPTS, height=SIZE, width=SIZE, batch_size=1).values
    uneven = capture_prompts(pipe, PROMPTS, height=SIZE, width=SIZE, batch_size=3).values
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(uneven, single, rtol=1e-5, atol=1e-7)
    # and the prompts really differ, so equality is not trivial
    assert np.abs(single[0] - single[1]).max() > 1e-4


def test_two_cpu_captures_are_bit_identical(pipe):
    one = capture_prompts(pipe, PROMPTS[:3], height=SIZE, width=SIZE, batch_size=3).values
    two = capture_prompts(pipe, PROMPTS[:3], height=SIZE, width=SIZE, batch_size=3).values
    assert np.array_equal(one, two)


def test_hooks_are_removed_after_capture(pipe):
    before = sum(len(m._forward_pre_hooks) for m in pipe.transformer.modules())
    capture_prompts(pipe, PROMPTS[:1], height=SIZE, width=SIZE)
    assert sum(len(m._forward_pre_hooks) for m in pipe.transformer.modules()) == before


# --- noise ----------------------------------------------------------------------------------


def _transformer_inputs(pipe, call):
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["hidden_states"].detach().clone()), with_kwargs=True
    )
    try:
        call()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("seed", [0, 7])
def test_noise_is_the_pipelines_own_single_prompt_draw(pipe, seed):
    plain = _transformer_inputs(
        pipe,
        lambda: pipe(
            prompt=PROMPTS[0],
            height=SIZE,
            width=SIZE,
            num_inference_steps=1,
            guidance_scale=1.0,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="latent",
        ),
    )
    ours = _transformer_inputs(
        pipe, lambda: capture_prompts(pipe, PROMPTS[:3], seed=seed, height=SIZE, width=SIZE, batch_size=3)
    )
    assert len(plain) == len(ours) == 1
    assert plain[0].shape[0] == 1 and ours[0].shape[0] == 3
    for row in range(3):
        assert torch.equal(ours[0][row], plain[0][0])
    other = initial_noise(pipe, SIZE, SIZE, seed + 1)
    assert not torch.equal(other, initial_noise(pipe, SIZE, SIZE, seed))


def test_capture_reproduces_with_plain_diffusers(pipe):
    """A prompt's values equal those of a plain pipeline call with the documented generator."""
    raw = RawInputs(pipe.transformer)
    try:
        pipe(
            prompt=PROMPTS[1],
            height=SIZE,
            width=SIZE,
            num_inference_steps=1,
            guidance_scale=1.0,
            generator=torch.Generator("cpu").manual_seed(3),
            output_type="latent",
        )
    finally:
        raw.remove()
    got = capture_prompts(pipe, PROMPTS[:2], seed=3, height=SIZE, width=SIZE, batch_size=2).values
    np.testing.assert_allclose(got[1], reference_plantain(raw)[0], rtol=1e-5, atol=1e-7)


# --- steps ----------------------------------------------------------------------------------


def test_several_steps_carry_step_indices(pipe):
    raw = RawInputs(pipe.transformer)
    try:
        got = capture_prompts(pipe, PROMPTS[:2], height=SIZE, width=SIZE, batch_size=2, steps=3, capture_steps=(0, 1))
    finally:
        raw.remove()
    # the run stops after the last captured step: two transformer forwards, not three
    assert len(raw.text_len) == 2
    assert got.layout.n_units == 2 * 340
    assert got.layout.unit_names()[340].endswith("@step1")
    np.testing.assert_allclose(got.values[:, :340], reference_plantain(raw, 0), rtol=2e-5)
    np.testing.assert_allclose(got.values[:, 340:], reference_plantain(raw, 1), rtol=2e-5)
    assert not np.allclose(got.values[:, :340], got.values[:, 340:])


def test_capture_steps_beyond_the_run_are_refused(pipe):
    with pytest.raises(CaptureError, match="only 2 denoising step"):
        capture_prompts(pipe, PROMPTS[:1], height=SIZE, width=SIZE, steps=2, capture_steps=(2,))


# --- reference image ------------------------------------------------------------------------


def test_reference_image_adds_reference_tokens(pipe, tmp_path):
    small = tmp_path / "small.png"
    from PIL import Image

    Image.new("RGB", (40, 24)).save(small)
    with pytest.raises(CaptureError, match="cannot condition the pipeline: Image too small"):
        capture_prompts(pipe, PROMPTS[:1], height=SIZE, width=SIZE, image=str(small))

    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "ref.png"
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    raw = RawInputs(pipe.transformer)
    try:
        got = capture_prompts(pipe, PROMPTS[:2], layout="heads", height=SIZE, width=SIZE, batch_size=2, image=str(path))
    finally:
        raw.remove()
    # the tiny VAE does not downsample; 2x2 patches: (64/2) * (80/2) reference tokens
    assert got.info["tokens"]["reference"] == 32 * 40
    assert raw.get("transformer_blocks.0.attn.to_out.0").shape[1] == (SIZE // 2) ** 2 + 32 * 40
    np.testing.assert_allclose(got.values, reference_heads(raw), rtol=2e-5)


# --- the hook API on a bare transformer (what the GPU bench uses) -----------------------------


def test_hooks_on_a_bare_transformer(pipe):
    from dense_plantain.capture import random_transformer, synthetic_inputs

    transformer = random_transformer(dict(pipe.transformer.config), seed=1)
    layout = build_layout(dict(transformer.config), "plantain")
    b = 2
    inputs = synthetic_inputs(transformer, batch_size=b, image_grid=(4, 4), text_tokens=8)
    raw = RawInputs(transformer)
    hooks = install_unit_hooks(transformer, layout)
    try:
        with torch.no_grad():
            transformer(**inputs)
            first = hooks.end()
            transformer(**inputs)
            second = hooks.collect()
    finally:
        hooks.remove()
        raw.remove()
    assert isinstance(first, torch.Tensor) and first.shape == (b, 340) and first.dtype == torch.float32
    assert raw.text_len == [8, 8] and raw.get("transformer_blocks.0.attn.to_out.0").shape == (b, 16, INNER)
    np.testing.assert_allclose(first.numpy(), reference_plantain(raw, 0), rtol=2e-5)
    assert np.array_equal(first.numpy(), second)
    assert not hooks.installed
    assert all(not m._forward_pre_hooks for m in transformer.modules())


@pytest.mark.parametrize("tokens", [7, 64, 77, 32 * 5 + 31])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_stage_gpu_reduction_equals_float64(tokens, dtype):
    """The GPU path (token chunks, then groups) on CPU tensors, against float64 numpy."""
    from dense_plantain.capture.hooks import _group_norms, _two_stage_norms

    g = torch.Generator().manual_seed(tokens)
    x = (torch.randn(3, tokens, 96, generator=g) * 4).to(dtype)
    want = np.sqrt((x.double().numpy().reshape(3, tokens, 6, 16) ** 2).sum(axis=(1, 3)))
    for fn in (_two_stage_norms, _group_norms):
        got = fn(x, 6, 16)
        assert got.dtype == torch.float32 and got.shape == (3, 6)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    # a column window of a wider input, as merged readouts use
    wide = torch.cat([x, x[..., :32]], dim=-1)
    np.testing.assert_allclose(_two_stage_norms(wide[..., :96], 6, 16).numpy(), want, rtol=1e-5)


def test_reductions_are_merged_per_module():
    config = json.loads(
        (Path(__file__).parents[1] / "python/dense_plantain/capture/klein_4b_transformer.json").read_text()
    )
    plan = plan_reductions(build_layout(config, "plantain"))[0]
    single = plan["single_transformer_blocks.0.attn.to_out"]
    assert [(r.region, r.n_groups, r.group_width) for r in single] == [("all", 768, 16)]
    assert plan["transformer_blocks.0.attn.to_out.0"][0].n_groups == 192
    heads = plan_reductions(build_layout(config, "heads"))[0]["single_transformer_blocks.3.attn.to_out"]
    # image attention + image MLP are adjacent columns: one norm over 24 + 72 groups, two unit segments
    assert sorted((r.region, r.n_groups, len(r.segments)) for r in heads) == [("image", 96, 2), ("text", 96, 2)]


# --- capture files, partial files, resume ------------------------------------------------------


@pytest.fixture
def probe_file(tmp_path):
    return write_probe(tmp_path / "probe.toml", PAIRS)


def _capture(tmp_path, probe_file, name="cap.safetensors", **kw):
    kw.setdefault("settings", CaptureSettings(height=SIZE, width=SIZE))
    kw.setdefault("batch_size", 2)
    return run_capture(str(tiny_dir()), probe_file, tmp_path / name, show_progress=False, loaded=tiny_loaded(), **kw)


def test_capture_file_holds_pairs_values_and_provenance(tmp_path, probe_file, pipe):
    result = _capture(tmp_path, probe_file, batch_size=3)
    cap = read_capture(result.path)
    assert cap.n_pairs == len(PAIRS) and cap.n_units == 340
    assert cap.pair_ids == [p[0] for p in PAIRS]
    prompts = [text for _, a, b in PAIRS for text in (a, b)]
    direct = capture_prompts(pipe, prompts, height=SIZE, width=SIZE, batch_size=2).values
    np.testing.assert_allclose(cap.a, direct[0::2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cap.b, direct[1::2], rtol=1e-5, atol=1e-7)
    meta = cap.meta
    assert meta["layout"] == "plantain" and not cap.partial and "finished" in meta and "started" in meta
    assert [p["a"] for p in meta["pairs"]] == [p[1] for p in PAIRS]
    assert meta["probe"]["name"] == "tiny-test" and len(meta["probe"]["sha256"]) == 64
    s = meta["settings"]
    assert (s["height"], s["width"], s["seed"], s["steps"], s["guidance_scale"]) == (SIZE, SIZE, 0, 1, 1.0)
    assert s["text_tokens"] == 512 and s["text_encoder_layers"] == [9, 18, 27] and s["dtype"] == "float32"
    assert s["device"].startswith("cpu")
    assert meta["model"]["source"] == "folder" and len(meta["model"]["config_sha256"]) == 64
    assert set(meta["versions"]) >= {"dense-plantain", "torch", "diffusers", "transformers", "numpy", "python"}
    assert not partial_path(result.path).exists()


class Stop(Exception):
    pass


def _stop_after(k):
    def after_batch(done, total):
        if done >= k:
            raise Stop(f"simulated crash after {done} pairs")

    return after_batch


@pytest.mark.parametrize("batch_size", [1, 3])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, probe_file, batch_size):
    whole = read_capture(_capture(tmp_path, probe_file, "whole.safetensors", batch_size=batch_size).path)
    out = tmp_path / "cut.safetensors"
    with pytest.raises(Stop) as info:
        _capture(tmp_path, probe_file, out.name, batch_size=batch_size, after_batch=_stop_after(2))
    assert "--resume" in "".join(getattr(info.value, "__notes__", []))
    part = read_capture(partial_path(out), allow_partial=True)
    assert part.partial and part.meta["n_pairs_total"] == len(PAIRS)
    assert 2 <= part.n_pairs < len(PAIRS) and not out.exists()
    with pytest.raises(Exception, match="unfinished"):
        read_capture(partial_path(out))
    with pytest.raises(CaptureError, match="--resume"):
        _capture(tmp_path, probe_file, out.name, batch_size=batch_size)
    result = _capture(tmp_path, probe_file, out.name, batch_size=batch_size, resume=True)
    assert result.resumed_from == part.n_pairs
    resumed = read_capture(out)
    assert not partial_path(out).exists()
    np.testing.assert_array_equal(resumed.a[: part.n_pairs], part.a)
    np.testing.assert_allclose(resumed.a, whole.a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(resumed.b, whole.b, rtol=1e-5, atol=1e-7)
    if batch_size == 1:  # batches hold the same prompts on both runs: the same arithmetic
        assert np.array_equal(resumed.a, whole.a) and np.array_equal(resumed.b, whole.b)
    assert len(resumed.meta["runs"]) == 2 and resumed.meta["pairs"] == whole.meta["pairs"]


def test_ctrl_c_keeps_finished_pairs(tmp_path, probe_file):
    def interrupt(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    out = tmp_path / "cap.safetensors"
    with pytest.raises(CaptureError, match=r"interrupted\. The 2 of 5 pairs .* --resume"):
        _capture(tmp_path, probe_file, out.name, after_batch=interrupt)
    assert read_capture(partial_path(out), allow_partial=True).n_pairs == 2


def test_resume_refuses_other_settings_or_prompts(tmp_path, probe_file):
    out = tmp_path / "cap.safetensors"
    with pytest.raises(Stop):
        _capture(tmp_path, probe_file, out.name, after_batch=_stop_after(1))
    with pytest.raises(CaptureError, match=r"cannot resume .*seed: unfinished run 0, this run 5"):
        _capture(tmp_path, probe_file, out.name, resume=True, settings=CaptureSettings(height=SIZE, width=SIZE, seed=5))
    with pytest.raises(CaptureError, match=r"layout: unfinished run 'plantain', this run 'heads'"):
        _capture(
            tmp_path,
            probe_file,
            out.name,
            resume=True,
            settings=CaptureSettings(height=SIZE, width=SIZE, layout="heads"),
        )
    write_probe(probe_file, PAIRS[:4] + [("p5", "a totally different prompt", "another one")])
    with pytest.raises(CaptureError, match="prompt file .* changed"):
        _capture(tmp_path, probe_file, out.name, resume=True)
    # --force discards the unfinished run and starts over
    result = _capture(tmp_path, probe_file, out.name, force=True)
    assert result.resumed_from == 0 and not partial_path(out).exists()


def test_existing_output_needs_force(tmp_path, probe_file):
    out = tmp_path / "cap.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(CaptureError, match="already exists; pass --force"):
        _capture(tmp_path, probe_file, out.name)
    assert out.read_bytes() == b"precious"
    _capture(tmp_path, probe_file, out.name, force=True)
    assert read_capture(out).n_pairs == len(PAIRS)


# --- bad input --------------------------------------------------------------------------------


def test_bad_height_is_refused_before_loading_anything(tmp_path, probe_file):
    t0 = time.monotonic()
    out = tmp_path / "x.safetensors"
    for settings, message in (
        (CaptureSettings(height=100, width=64), r"--height 100 is not a positive multiple of 16.*e\.g\. 96 or 112"),
        (CaptureSettings(height=64, width=8), "--width 8 "),
    ):
        with pytest.raises(CaptureError, match=message):
            run_capture("/no/such/model", probe_file, out, settings=settings, show_progress=False)
    assert time.monotonic() - t0 < 5


def test_prompt_file_problems_are_prompt_file_errors(tmp_path):
    with pytest.raises(PromptFileError, match="does not exist"):
        run_capture("/no/such/model", tmp_path / "missing.toml", tmp_path / "x.safetensors", show_progress=False)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[pairs]]\nid = "x"\na = "unterminated\n')
    with pytest.raises(PromptFileError, match="not valid TOML"):
        run_capture("/no/such/model", bad, tmp_path / "x.safetensors", show_progress=False)


def test_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a Hugging Face model id"):
        resolve_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        resolve_model(str(tmp_path))
    other = tmp_path / "sdxl"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ModelLoadError, match="holds a StableDiffusionXLPipeline, not a FLUX.2 \\[klein\\] pipeline"):
        resolve_model(str(other))
    transformer_only = tiny_dir() / "transformer"
    with pytest.raises(ModelLoadError, match="holds only a Flux2 transformer"):
        resolve_model(str(transformer_only))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_dir() / "model_index.json").read_text())
    with pytest.raises(ModelLoadError, match="could not be loaded as a Flux2KleinPipeline"):
        load_pipeline(broken, device="cpu")


def test_unknown_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"):
        resolve_model("nobody-here/no-such-klein")
    assert time.monotonic() - t0 < 10


def test_hub_lookup_errors_are_model_load_errors(monkeypatch):
    """Without HF_HUB_OFFLINE: one metadata request decides; unknown ids and no network both explain."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def not_found(self, repo_id, **kw):
        calls.append(kw.get("timeout"))
        err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(err, "404 Client Error: Repository Not Found")
        raise err

    monkeypatch.setattr(HfApi, "model_info", not_found)
    with pytest.raises(ModelLoadError, match="no model 'nobody-here/no-such-klein' on the Hugging Face Hub"):
        resolve_model("nobody-here/no-such-klein")
    assert calls and calls[0] is not None and calls[0] <= 30  # a bounded request, never a hang

    def unreachable(self, repo_id, **kw):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(ModelLoadError, match="cannot reach the Hugging Face Hub .* not in the local cache"):
        resolve_model("nobody-here/no-such-klein")


def test_non_finite_values_name_block_and_pair(tmp_path, probe_file):
    """NaN injected into one block for one prompt: the error names both; earlier pairs are kept."""
    pipe = tiny_loaded().pipe
    calls = {"n": 0}

    def poison(module, args):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch (pairs p2) -> its second prompt (condition B)
            x = args[0].clone()
            x[1, 0, 5] = float("nan")
            return (x,)
        return None

    handle = pipe.transformer.single_transformer_blocks[3].attn.to_out.register_forward_pre_hook(poison)
    out = tmp_path / "cap.safetensors"
    try:
        with pytest.raises(CaptureError) as info:
            _capture(tmp_path, probe_file, out.name, batch_size=2)
    finally:
        handle.remove()
    text = str(info.value)
    assert "block single[3]" in text and "pair 'p2', condition B" in text and "--dtype" in text
    assert "The 1 of 5 pairs finished before this are kept" in text
    assert read_capture(partial_path(out), allow_partial=True).n_pairs == 1


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, probe_file, monkeypatch):
    from dense_plantain.capture import run as run_module

    def oom(self, prompts):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run_module.PromptRunner, "run", oom)
    with pytest.raises(CaptureError, match=r"out of memory at --batch-size 4\. Run with --batch-size 2"):
        _capture(tmp_path, probe_file, batch_size=4)


# --- the command line ---------------------------------------------------------------------------


def test_cli_capture_and_errors(tmp_path, probe_file):
    from click.testing import CliRunner

    from dense_plantain.cli import main

    runner = CliRunner()
    out = tmp_path / "cli.safetensors"
    args = capture_args(probe_file, out, 4)
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert f"{len(PAIRS)} pairs x 340 units" in res.output
    assert read_capture(out).meta["command"] == ["dense-plantain", *args]
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output and "Traceback" not in again.output
    bad = runner.invoke(main, args[:-7] + ["--height", "50", "--width", str(SIZE), "--force"])
    assert bad.exit_code == 2 and "not a positive multiple of 16" in bad.output
    nomodel = runner.invoke(
        main,
        ["capture", "--model", str(tmp_path), "--prompts", str(probe_file), "--out", str(tmp_path / "y.safetensors")],
    )
    assert nomodel.exit_code == 2 and "no model_index.json" in nomodel.output


def test_cli_make_tiny_model(tmp_path):
    from click.testing import CliRunner

    from dense_plantain.cli import main

    res = CliRunner().invoke(main, ["make-tiny-model", str(tmp_path / "m"), "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "model_index.json").is_file()
    from dense_plantain.store import current_umask

    mask = current_umask()  # the folder and its files follow the umask (mkdtemp made the folder 0700)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "m" / "model_index.json").stat().st_mode & 0o777 == 0o666 & ~mask
    # same seed, same files as the shared tiny model
    for name in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (tmp_path / "m" / name).read_bytes() == (tiny_dir() / name).read_bytes()
    again = CliRunner().invoke(main, ["make-tiny-model", str(tmp_path / "m")])
    assert again.exit_code == 2 and "--force" in again.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_asking_for_a_missing_gpu_is_a_model_load_error():
    from dense_plantain.capture.model import choose_device

    with pytest.raises(ModelLoadError, match="--device cuda was asked for, but PyTorch sees no CUDA GPU"):
        choose_device("cuda")
    assert choose_device("auto").type in ("cpu", "mps")


# --- trustworthy outputs (issue 10): the text limit, kept work, locks, disks, modes, weights -------


def _chat_token_count(tokenizer, prompt: str) -> int:
    """Tokens of a prompt as the pipeline builds them, counted through the padding path's attention mask."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    return int(sum(tokenizer(text, padding="max_length", max_length=100_000)["attention_mask"]))


LONG = " ".join(["stage"] * 600)


def test_pairs_equal_after_the_text_limit_are_refused_before_any_forward(tmp_path, pipe):
    from dense_plantain.capture import capture_pairs

    pairs = PAIRS[:2] + [("cut", LONG + " in red", LONG + " in blue")]
    probe = write_probe(tmp_path / "long.toml", pairs)
    n_a = _chat_token_count(pipe.tokenizer, LONG + " in red")
    n_b = _chat_token_count(pipe.tokenizer, LONG + " in blue")
    assert n_a > 512 and n_b > 512
    # the pipeline's own encoder sees A and B as one prompt: the pair would measure nothing
    ea, eb = (pipe.encode_prompt(prompt=p, device="cpu", max_sequence_length=512)[0] for p in pairs[2][1:])
    assert torch.equal(ea, eb)
    forwards = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        with pytest.raises(CaptureError) as info:
            _capture(tmp_path, probe)
        with pytest.raises(CaptureError):
            capture_pairs(pipe, probe, settings=CaptureSettings(height=SIZE, width=SIZE))
    finally:
        handle.remove()
    text = str(info.value)
    assert f"pair 'cut' (A {n_a} tokens, B {n_b} tokens)" in text and "512 tokens" in text
    assert forwards == [] and not (tmp_path / "cap.safetensors").exists()


def test_cut_prompts_warn_slow_runs_warn_and_meta_records_tokens_weights_modes(tmp_path, pipe, monkeypatch):
    import hashlib
    import os
    import warnings

    from dense_plantain.capture import run as run_module
    from dense_plantain.capture.run import CaptureWarning

    pairs = PAIRS[:2] + [("long", LONG, "a short prompt about a dancer")]
    probe = write_probe(tmp_path / "long.toml", pairs)
    monkeypatch.setattr(run_module, "SLOW_RUN_S", 0.0)
    old_mask = os.umask(0o027)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _capture(tmp_path, probe, command=("dense-plantain", "capture", "--out", "x"))
    finally:
        os.umask(old_mask)
    messages = [str(w.message) for w in caught if issubclass(w.category, CaptureWarning)]
    n_long = _chat_token_count(pipe.tokenizer, LONG)
    assert any(f"long A ({n_long} tokens)" in m and "lose their end" in m for m in messages), messages
    assert any("first batch took" in m and "--height" in m for m in messages), messages
    cap = read_capture(result.path)
    assert oct(result.path.stat().st_mode & 0o777) == oct(0o640)
    for record, (pid, a, b) in zip(cap.meta["pairs"], pairs):
        assert record["id"] == pid
        assert (record["tokens_a"], record["tokens_b"]) == (
            _chat_token_count(pipe.tokenizer, a),
            _chat_token_count(pipe.tokenizer, b),
        )
    assert cap.meta["text"]["max_sequence_length"] == 512
    assert cap.meta["text"]["truncated"] == [{"id": "long", "condition": "a", "tokens": n_long}]
    assert cap.meta["command"] == ["dense-plantain", "capture", "--out", "x"]
    weights = cap.meta["weights"]
    files = sorted(tiny_dir().rglob("*.safetensors"), key=lambda p: p.relative_to(tiny_dir()).as_posix())
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
    assert weights["sha256"] == digest and weights["random"] is True and weights["kind"] == "tiny-random"
    assert weights["seed"] == 0 and {"transformer", "text_encoder", "vae"} <= set(weights["parts"])
    assert "random" in weights["description"]


def test_failed_save_reports_only_pairs_on_disk_and_leaves_nothing_half_written(tmp_path, probe_file, monkeypatch):
    import errno

    from dense_plantain import store

    real = store.write_capture
    calls = {"n": 0}

    def full_disk(path, a, b, meta, extra=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second partial write (pairs p1, p2): the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, a, b, meta)

    monkeypatch.setattr(store, "write_capture", full_disk)
    out = tmp_path / "cap.safetensors"
    with pytest.raises(CaptureError) as info:
        _capture(tmp_path, probe_file, out.name, batch_size=2)
    err = info.value
    on_disk = read_capture(partial_path(out), allow_partial=True).pair_ids
    assert on_disk == ["p1"] and err.kept_pair_ids == on_disk and err.partial_path == partial_path(out)
    assert "the disk is full" in str(err) and "The 1 of 5 pairs" in str(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["probe.toml", partial_path(out).name])


def test_unwritable_output_folder_is_refused_before_the_model_loads(tmp_path, probe_file):
    t0 = time.monotonic()
    with pytest.raises(CaptureError, match=r"cannot write the lock file /sys/cap\.lock: permission denied"):
        run_capture("/no/such/model", probe_file, "/sys/cap.safetensors", show_progress=False)
    assert time.monotonic() - t0 < 5


def test_second_run_on_the_same_out_is_refused_naming_the_first(tmp_path, probe_file):
    import os
    import socket

    from dense_plantain.capture.partial import OutputLock

    out = tmp_path / "cap.safetensors"
    with OutputLock(out):
        with pytest.raises(CaptureError) as info:
            run_capture("/no/such/model", probe_file, out, show_progress=False)
    text = str(info.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}, started 20" in text and "another capture" in text
    with pytest.raises(ModelLoadError):  # once released, the next run gets as far as the model
        run_capture("/no/such/model", probe_file, out, show_progress=False)
    assert not (tmp_path / "cap.lock").exists()


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.float16])
def test_capture_files_take_only_float_values(tmp_path, dtype):
    from dense_plantain.store import write_capture

    blocks = {"blocks": [{"name": "only", "n_units": 2}]}
    x = np.ones((3, 2), dtype=dtype)
    with pytest.raises(ValueError, match=f"must be float32 .*got {np.dtype(dtype)}"):
        write_capture(tmp_path / "x.safetensors", x, x, blocks)
    y = np.full((3, 2), 0.1, dtype=np.float64)  # accepted explicitly, rounded to float32
    cap = read_capture(write_capture(tmp_path / "y.safetensors", y, y, blocks))
    assert cap.a.dtype == np.float32 and np.array_equal(cap.a, y.astype(np.float32))


def test_comparable_settings_are_one_list():
    from dense_plantain.capture.provenance import COMPARABLE_SETTINGS, capture_identity, compare_metas

    base = {
        "settings": {k: 1 for k in COMPARABLE_SETTINGS} | {"device": "cpu", "batch_size": 2},
        "model": {"source": "folder", "id": "/a", "config_sha256": "c"},
    }
    moved = {**base, "model": {**base["model"], "id": "/b"}, "settings": {**base["settings"], "device": "cuda:0"}}
    assert compare_metas(base, moved) == []  # a moved folder and another device change no value
    for key in COMPARABLE_SETTINGS:
        other = {**base, "settings": {**base["settings"], key: 2}}
        assert compare_metas(base, other) == [f"{key}: capture 1 1, capture 2 2"]
    assert set(capture_identity(base)) == {f"settings.{k}" for k in COMPARABLE_SETTINGS} | {"model.config_sha256"}


def test_cli_read_only_disk_is_one_message_and_exit_2(tmp_path, probe_file, monkeypatch):
    import errno

    from click.testing import CliRunner

    from dense_plantain import store
    from dense_plantain.capture import model as model_module
    from dense_plantain.cli import main

    def read_only(path, a, b, meta, extra=None):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(store, "write_capture", read_only)
    monkeypatch.setattr(model_module, "load_pipeline", lambda *a, **k: tiny_loaded())
    out = tmp_path / "ro.safetensors"
    args = ["capture", "--model", str(tiny_dir()), "--prompts", str(probe_file), "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "--height", str(SIZE), "--width", str(SIZE), "--batch-size", "2", "-q"])
    assert res.exit_code == 2, res.output
    assert "the file system is read-only" in res.output and "No finished pair is on disk" in res.output
    assert "Traceback" not in res.output and res.output.count("error:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.toml"]


def test_cli_ctrl_c_during_a_long_cpu_forward_stops_within_seconds(tmp_path, probe_file, python_sigint):
    """At 1024x1024 one forward of the tiny pipeline on the CPU is minutes of C++ (attention over 262k
    image tokens) in which Python runs no signal handler; the CLI must still stop at once."""
    import os
    import signal
    import subprocess
    import sys

    import dense_plantain

    env = dict(os.environ, PYTHONPATH=str(Path(dense_plantain.__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    out = tmp_path / "slow.safetensors"
    cmd = [sys.executable, "-m", "dense_plantain", "capture", "--model", str(tiny_dir()), "--prompts", str(probe_file)]
    cmd += ["--out", str(out), "--device", "cpu", "--height", "1024", "--width", "1024"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "slow.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(45)  # model loaded, tokens counted: the first forward (minutes long) is running
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, output
    assert "interrupted." in output and "Traceback" not in output
    assert seconds < 10, seconds
    assert not (tmp_path / "slow.lock").exists() and not out.exists()
