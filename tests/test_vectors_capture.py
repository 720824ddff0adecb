"""``capture --vectors`` on the tiny pipeline: signed per-column token means from the same hooks.

References: the hooked inputs kept as float64 numpy by plain pre-hooks (test_capture.RawInputs),
reduced here with the tiny model's widths written out; and the same capture without vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

from dense_plantain.capture.hooks import vector_width
from dense_plantain.capture.run import CaptureSettings, PromptRunner, partial_path, run_capture
from dense_plantain.errors import CaptureError
from dense_plantain.store import read_capture
from dense_plantain.units import Layout, Readout, build_layout
from test_capture import HEAD_DIM, INNER, N_JOINT, N_SINGLE, PROMPTS, RawInputs
from tiny_klein import PAIRS, SIZE, tiny_dir, tiny_loaded, write_probe


@pytest.fixture(scope="module")
def pipe():
    return tiny_loaded().pipe


def col_means(x: np.ndarray) -> np.ndarray:
    """[B, S, C] -> [B, C]: float64 mean over tokens of every column (unit-major by construction)."""
    return x.mean(axis=1)


def reference_vec_plantain(raw: RawInputs) -> np.ndarray:
    cols = [col_means(raw.get(f"transformer_blocks.{i}.attn.to_out.0")) for i in range(N_JOINT)]
    cols += [col_means(raw.get(f"single_transformer_blocks.{i}.attn.to_out")) for i in range(N_SINGLE)]
    return np.concatenate(cols, axis=1)


def reference_vec_heads(raw: RawInputs) -> np.ndarray:
    n_text = raw.text_len[0]
    cols = []
    for i in range(N_JOINT):
        cols.append(col_means(raw.get(f"transformer_blocks.{i}.attn.to_out.0")))
        cols.append(col_means(raw.get(f"transformer_blocks.{i}.attn.to_add_out")))
    for i in range(N_SINGLE):
        x = raw.get(f"single_transformer_blocks.{i}.attn.to_out")
        img, txt = x[:, n_text:], x[:, :n_text]
        cols += [col_means(img[..., :INNER]), col_means(txt[..., :INNER])]
        cols += [col_means(img[..., INNER:]), col_means(txt[..., INNER:])]
    return np.concatenate(cols, axis=1)


def _run(pipe, layout: str, vectors: bool, prompts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    settings = CaptureSettings(layout=layout, height=SIZE, width=SIZE, vectors=vectors)
    with PromptRunner(pipe, settings) as runner:
        values = runner.run(prompts)
        return values, runner.vectors


@pytest.mark.parametrize(
    "layout,reference,width", [("plantain", reference_vec_plantain, 16), ("heads", reference_vec_heads, HEAD_DIM)]
)
def test_vectors_equal_float64_column_means_and_rms_is_unchanged(pipe, layout, reference, width):
    plain, none = _run(pipe, layout, False, PROMPTS[:3])
    assert none is None
    raw = RawInputs(pipe.transformer)
    try:
        values, vec = _run(pipe, layout, True, PROMPTS[:3])
    finally:
        raw.remove()
    assert np.array_equal(values, plain)  # the same RMS bits with vectors on
    want = reference(raw)
    assert vec is not None and vec.dtype == np.float32
    n_units = build_layout(dict(pipe.transformer.config), layout).n_units
    assert vec.shape == (3, n_units * width) == want.shape
    np.testing.assert_allclose(vec, want, rtol=1e-5, atol=1e-6)
    # unit u owns columns u*W .. u*W+W-1: its vector's RMS over columns is bounded by the unit's RMS
    per_unit = vec.reshape(3, n_units, width)
    assert np.all(np.sqrt((per_unit.astype(np.float64) ** 2).mean(axis=2)) <= values * (1 + 1e-5) + 1e-7)


def test_mixed_widths_are_refused_with_the_reason():
    layout = Layout(
        "custom",
        readouts=(
            Readout("joint[0]", "transformer_blocks.0.attn.to_out.0", "image", "attention", 0, 16, 4, 16),
            Readout("joint[0]", "transformer_blocks.0.attn.to_out.0", "image", "attention", 64, 8, 2, 16),
        ),
    )
    with pytest.raises(ValueError, match="one width for every unit"):
        vector_width(layout)


def _capture(tmp_path, probe, name, **kw):
    kw.setdefault("batch_size", 3)
    return run_capture(str(tiny_dir()), probe, tmp_path / name, show_progress=False, loaded=tiny_loaded(), **kw)


def test_capture_file_with_and_without_vectors(tmp_path):
    probe = write_probe(tmp_path / "probe.toml", PAIRS)
    plain = read_capture(
        _capture(tmp_path, probe, "plain.safetensors", settings=CaptureSettings(height=SIZE, width=SIZE)).path
    )
    vec = read_capture(
        _capture(
            tmp_path, probe, "vec.safetensors", settings=CaptureSettings(height=SIZE, width=SIZE, vectors=True)
        ).path
    )
    assert set(plain.extra) == {"a_input", "b_input"}  # every capture keeps its prompt-embedding units
    assert "vector_width" not in plain.meta and "vectors" not in plain.meta["settings"]
    assert vec.meta["vector_width"] == 16 and vec.meta["settings"]["vectors"] is True
    assert np.array_equal(vec.a, plain.a) and np.array_equal(vec.b, plain.b)
    assert vec.extra["a_vec"].shape == vec.extra["b_vec"].shape == (len(PAIRS), 340 * 16)
    # the file's rows are the pairs' prompts: the first pair's A prompt alone gives the same vector
    with PromptRunner(tiny_loaded().pipe, CaptureSettings(height=SIZE, width=SIZE, vectors=True)) as runner:
        runner.run([PAIRS[0][1], PAIRS[0][2]])
        np.testing.assert_allclose(vec.extra["a_vec"][0], runner.vectors[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vec.extra["b_vec"][0], runner.vectors[1], rtol=1e-5, atol=1e-6)
    m_plain = {k: v for k, v in plain.meta.items() if k not in ("started", "finished", "runs", "settings")}
    m_vec = {k: v for k, v in vec.meta.items() if k not in ("started", "finished", "runs", "settings", "vector_width")}
    assert m_plain == m_vec


class Stop(Exception):
    pass


def test_resume_keeps_vectors_and_refuses_a_switch(tmp_path):
    probe = write_probe(tmp_path / "probe.toml", PAIRS)
    on = CaptureSettings(height=SIZE, width=SIZE, vectors=True)
    whole = read_capture(_capture(tmp_path, probe, "whole.safetensors", settings=on, batch_size=1).path)

    def stop(done, total):
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        _capture(tmp_path, probe, "cut.safetensors", settings=on, batch_size=1, after_batch=stop)
    part = read_capture(partial_path(tmp_path / "cut.safetensors"), allow_partial=True)
    assert part.extra["a_vec"].shape[0] == part.n_pairs
    with pytest.raises(CaptureError, match="--vectors"):
        _capture(tmp_path, probe, "cut.safetensors", settings=CaptureSettings(height=SIZE, width=SIZE), resume=True)
    resumed = read_capture(_capture(tmp_path, probe, "cut.safetensors", settings=on, batch_size=1, resume=True).path)
    assert np.array_equal(resumed.extra["a_vec"], whole.extra["a_vec"])
    assert np.array_equal(resumed.extra["b_vec"], whole.extra["b_vec"])
