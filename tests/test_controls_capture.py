"""Random-weights baseline captures and input-embedding units on the tiny pipeline (small sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dense_plantain.capture.embeddings import INPUT_SLICE
from dense_plantain.capture.job import CaptureSettings
from dense_plantain.capture.model import load_pipeline
from dense_plantain.capture.provenance import compare_metas
from dense_plantain.capture.reinit import reinitialise
from dense_plantain.capture.run import run_capture
from dense_plantain.store import read_capture
from tiny_klein import PAIRS, SIZE, tiny_dir, tiny_loaded, write_probe

PAIRS3 = PAIRS[:3]


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return write_probe(tmp_path_factory.mktemp("probe") / "probe.toml", PAIRS3)


@pytest.fixture(scope="module")
def captures(tmp_path_factory, probe):
    """saved, random seed 0 (twice, from fresh loads), random seed 1, random-all seed 0."""
    root = tmp_path_factory.mktemp("caps")
    out = {}
    runs = [
        ("saved", "saved", 0),
        ("r0", "random", 0),
        ("r0b", "random", 0),
        ("r1", "random", 1),
        ("all", "random-all", 0),
    ]
    for name, weights, seed in runs:
        loaded = tiny_loaded() if weights == "saved" else load_pipeline(tiny_dir(), device="cpu", dtype="float32")
        result = run_capture(
            str(tiny_dir()),
            probe,
            root / f"{name}.safetensors",
            settings=CaptureSettings(height=SIZE, width=SIZE),
            batch_size=2,
            show_progress=False,
            loaded=loaded,
            weights=weights,
            weights_seed=seed,
        )
        out[name] = read_capture(result.path)
    return out


def test_random_capture_differs_from_saved_and_reproduces_by_seed(captures):
    saved, r0, r0b, r1 = captures["saved"], captures["r0"], captures["r0b"], captures["r1"]
    assert saved.a.shape == r0.a.shape
    assert not np.allclose(saved.a, r0.a) and not np.allclose(saved.b, r0.b)
    np.testing.assert_array_equal(r0.a, r0b.a)
    np.testing.assert_array_equal(r0.b, r0b.b)
    assert not np.allclose(r0.a, r1.a)
    # the trained text encoder is kept by "random": the prompt embeddings' units are the saved run's, bit for bit
    np.testing.assert_array_equal(r0.extra["a_input"], saved.extra["a_input"])
    np.testing.assert_array_equal(r0.extra["b_input"], saved.extra["b_input"])
    # "random-all" re-initialises the text encoder too
    assert not np.allclose(captures["all"].extra["a_input"], saved.extra["a_input"], rtol=1e-1)


def test_random_capture_metadata_says_random(captures):
    w = captures["r1"].meta["weights"]
    assert w["random"] is True and w["kind"] == "reinitialised" and w["seed"] == 1
    assert w["parts"] == ["transformer"] and "re-initialised" in w["description"]
    assert w["source_sha256"] == captures["saved"].meta["weights"]["sha256"]
    assert captures["all"].meta["weights"]["parts"] == ["transformer", "text_encoder"]
    assert captures["saved"].meta["weights"]["kind"] != "reinitialised"


def test_weights_seed_makes_captures_incomparable(captures):
    assert compare_metas(captures["r0"].meta, captures["r0b"].meta) == []
    problems = compare_metas(captures["r0"].meta, captures["r1"].meta)
    assert any("--weights-seed 0" in p and "--weights-seed 1" in p for p in problems)
    assert any("saved weights" in p for p in compare_metas(captures["saved"].meta, captures["r0"].meta))


def test_resume_refuses_another_weights_seed_and_keeps_input_units(tmp_path, probe, captures):
    from dense_plantain.capture.run import CaptureError

    class Stop(Exception):
        pass

    def stop(done, total):
        if done >= 1:
            raise Stop

    kw = dict(settings=CaptureSettings(height=SIZE, width=SIZE), batch_size=2, show_progress=False)
    out = tmp_path / "cap.safetensors"
    with pytest.raises(Stop):
        run_capture(str(tiny_dir()), probe, out, weights="random", weights_seed=3, after_batch=stop, **kw)
    with pytest.raises(CaptureError, match="weights-seed"):
        run_capture(str(tiny_dir()), probe, out, weights="random", weights_seed=4, resume=True, **kw)
    run_capture(str(tiny_dir()), probe, out, weights="random", weights_seed=3, resume=True, **kw)
    resumed = read_capture(out)
    assert resumed.meta["weights"]["seed"] == 3 and resumed.meta["input_units"]["n_units"] == 6
    # the pairs of the first run and of the resumed one both carry their input units (text encoder kept)
    np.testing.assert_array_equal(resumed.extra["a_input"], captures["saved"].extra["a_input"])
    np.testing.assert_array_equal(resumed.extra["b_input"], captures["saved"].extra["b_input"])


def test_reinitialise_restores_the_global_random_state():
    pipe = load_pipeline(tiny_dir(), device="cpu", dtype="float32").pipe
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reinitialise(pipe, "random", 7)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def _independent_input_units(pipe, prompts: list[str]) -> np.ndarray:
    """float64 RMS of each 16-column slice of ``pipe.encode_prompt`` over the real tokens."""
    embeds, _ = pipe.encode_prompt(prompts, device=torch.device("cpu"), max_sequence_length=512)
    e = embeds.detach().double().numpy()
    out = np.zeros((len(prompts), e.shape[2] // INPUT_SLICE))
    for i, prompt in enumerate(prompts):
        text = pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        ids = pipe.tokenizer(text, padding="max_length", truncation=True, max_length=512)
        real = np.flatnonzero(np.asarray(ids["attention_mask"]) == 1)
        n_real = min(len(pipe.tokenizer(text)["input_ids"]), 512)
        assert len(real) == n_real  # the mask's real tokens are the counted tokens
        for g in range(out.shape[1]):
            block = e[i, real, g * INPUT_SLICE : (g + 1) * INPUT_SLICE]
            out[i, g] = np.sqrt(np.mean(block**2))
    return out


def test_input_units_equal_float64_rms_of_encode_prompt(captures):
    pipe = tiny_loaded().pipe
    cap = captures["saved"]
    assert cap.meta["input_units"]["n_units"] == cap.extra["a_input"].shape[1] == 6
    expect_a = _independent_input_units(pipe, [a for _, a, _ in PAIRS3])
    expect_b = _independent_input_units(pipe, [b for _, _, b in PAIRS3])
    np.testing.assert_allclose(cap.extra["a_input"], expect_a, rtol=2e-6)
    np.testing.assert_allclose(cap.extra["b_input"], expect_b, rtol=2e-6)
    # padding would change them: the RMS over all 512 positions is another number
    assert not np.allclose(expect_a, np.sqrt(np.mean(_all_positions(pipe, [a for _, a, _ in PAIRS3]), axis=2)))


def _all_positions(pipe, prompts):
    embeds, _ = pipe.encode_prompt(prompts, device=torch.device("cpu"), max_sequence_length=512)
    e = embeds.detach().double().numpy()
    return (e**2).reshape(e.shape[0], e.shape[1], -1, INPUT_SLICE).mean(axis=3).transpose(0, 2, 1)
