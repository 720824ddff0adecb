"""capture --seeds on the tiny random pipeline: the mean of one-seed captures, per-seed resume,
factor labels in the metadata, and the CLI (issue 14, section 1)."""

from __future__ import annotations

import numpy as np
import pytest

from dense_plantain.capture.job import CaptureJob, CaptureSettings
from dense_plantain.capture.run import run_job
from dense_plantain.capture.seeds import parse_seeds, run_seeds, seed_path
from dense_plantain.errors import CaptureError
from dense_plantain.store import read_capture
from tiny_klein import PAIRS, SIZE, tiny_dir, tiny_loaded

BODY = ["heavy", "slim", "heavy", "slim", "heavy", "slim"]


@pytest.fixture
def labelled_probe(tmp_path):
    pairs = [*PAIRS, ("p6", "a runner on a track, arms out to the sides", "a runner on a track, sprinting")]
    lines = ["[probe]", 'name = "tiny-seeds"', 'label_a = "plain"', 'label_b = "fancy"', ""]
    for (pid, a, b), body in zip(pairs, BODY, strict=True):
        lines += ["[[pairs]]", f'id = "{pid}"', f'a = "{a}"', f'b = "{b}"', f'factors = {{ body = "{body}" }}', ""]
    path = tmp_path / "probe.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _job(probe, out, seed=0, **kw):
    settings = CaptureSettings(seed=seed, height=SIZE, width=SIZE)
    kw.setdefault("batch_size", 6)
    return CaptureJob(
        prompts=probe, out=out, model=str(tiny_dir()), settings=settings, device="cpu", show_progress=False, **kw
    )


def test_parse_seeds():
    assert parse_seeds("0,1,2,3") == (0, 1, 2, 3)
    assert parse_seeds("0-3, 9") == (0, 1, 2, 3, 9)
    assert parse_seeds("7") == (7,)
    for bad, words in (("3-1", "backwards"), ("a", "not a seed"), ("1,1", "more than once"), ("", "at least one")):
        with pytest.raises(CaptureError, match=words):
            parse_seeds(bad)


def test_seeds_capture_is_the_mean_of_one_seed_captures(tmp_path, labelled_probe):
    loaded = tiny_loaded()
    one = {s: run_job(_job(labelled_probe, tmp_path / f"s{s}.safetensors", seed=s), loaded=loaded).path for s in (7, 8)}
    caps = {s: read_capture(p) for s, p in one.items()}
    out = tmp_path / "both.safetensors"
    res = run_seeds(_job(labelled_probe, out), (7, 8), loaded=loaded)
    cap = read_capture(res.path)
    assert cap.meta["seeds"] == [7, 8] and cap.meta["settings"]["seed"] == [7, 8]
    for key in ("a", "b"):
        per = np.stack([getattr(caps[s], key) for s in (7, 8)]).astype(np.float64)
        np.testing.assert_allclose(getattr(cap, key), per.mean(axis=0), rtol=2e-7, atol=0)
        # Each seed's values are its own capture's (same batching).
        np.testing.assert_array_equal(cap.extra[f"{key}_seeds"], per.astype(np.float32))
    assert not seed_path(out, 7).exists() and not seed_path(out, 8).exists()  # folded into out
    # The pairs' factor labels travel into the capture.
    assert [p["factors"] for p in cap.meta["pairs"]] == [{"body": b} for b in BODY]
    # One seed stays today's capture: same values as --seed, no seeds tensors.
    single = read_capture(run_seeds(_job(labelled_probe, tmp_path / "one.safetensors"), (7,), loaded=loaded).path)
    np.testing.assert_array_equal(single.a, caps[7].a)
    # (every capture also keeps its prompt-embedding units, a_input/b_input)
    assert (
        set(single.extra) == {"a_input", "b_input"}
        and "seeds" not in single.meta
        and single.meta["settings"]["seed"] == 7
    )


def test_seeds_resume_keeps_finished_seeds(tmp_path, labelled_probe):
    loaded = tiny_loaded()
    out = tmp_path / "r.safetensors"
    # Seed 3 finished before an interruption: its per-seed file is on disk.
    run_job(_job(labelled_probe, seed_path(out, 3), seed=3), loaded=loaded)
    first = read_capture(seed_path(out, 3))
    with pytest.raises(CaptureError, match="Pass --resume"):
        run_seeds(_job(labelled_probe, out), (3, 4), loaded=loaded)
    res = run_seeds(_job(labelled_probe, out, resume=True), (3, 4), loaded=loaded)
    assert res.resumed_from == len(BODY)
    cap = read_capture(out)
    np.testing.assert_array_equal(cap.extra["a_seeds"][0], first.a)
    fresh = read_capture(run_job(_job(labelled_probe, tmp_path / "s4.safetensors", seed=4), loaded=loaded).path)
    np.testing.assert_array_equal(cap.extra["b_seeds"][1], fresh.b)


def test_cli_seeds_and_analyze_by(tmp_path, labelled_probe):
    from click.testing import CliRunner

    from dense_plantain.cli import main

    out = tmp_path / "cli.safetensors"
    base = ["capture", "--model", str(tiny_dir()), "--prompts", str(labelled_probe), "--height", str(SIZE)]
    base += ["--width", str(SIZE), "--device", "cpu", "--batch-size", "6", "--quiet"]
    both = CliRunner().invoke(main, [*base, "--out", str(out), "--seed", "1", "--seeds", "1,2"])
    assert both.exit_code != 0 and "not both" in both.output
    res = CliRunner().invoke(main, [*base, "--out", str(out), "--seeds", "1-2"])
    assert res.exit_code == 0, res.output
    cap = read_capture(out)
    assert cap.meta["seeds"] == [1, 2] and cap.extra["a_seeds"].shape == (2, len(BODY), cap.n_units)
    folder = tmp_path / "res"
    args = ["analyze", str(out), "--out", str(folder), "--by", "body", "--permutations", "100", "--splits", "5", "-q"]
    ran = CliRunner().invoke(main, args)
    assert ran.exit_code == 0, ran.output
    md = (folder / "results.md").read_text()
    assert "### Noise seeds" in md and "### By body" in md
