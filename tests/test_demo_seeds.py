"""``dense-plantain demo --seeds 0-1 --bootstrap N``: every prompt under each seed through the
capture's multi-seed path, per-seed counts and consistency, bootstrap intervals; checked against
numpy on the capture's per-seed tensors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dense_plantain.prompts import bundled_path
from tiny_klein import tiny_dir

N_PAIRS = 6


def _short_prompts(path):
    """The first N_PAIRS pairs of the bundled set, without factor labels (few pairs per level)."""
    text = bundled_path("dense-plantain").read_text()
    head, *pairs = text.split("[[pairs]]")
    keep = ["[[pairs]]" + re.sub(r"(?m)^factors = .*\n", "", p) for p in pairs[:N_PAIRS]]
    path.write_text(head + "".join(keep))
    return path


def test_demo_seeds_and_bootstrap(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dense_plantain import demo, prompts
    from dense_plantain.cli import main
    from dense_plantain.store import read_capture

    monkeypatch.setenv("DENSE_PLANTAIN_CACHE", str(tiny_dir().parent / "cache"))
    monkeypatch.setattr(demo, "DEMO_SIZE", 32)
    short = _short_prompts(tmp_path / "short.toml")
    monkeypatch.setattr(prompts, "bundled_path", lambda name: short)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--batch-size", "6", "--seeds", "0-1", "--bootstrap", "200"]
    res = CliRunner().invoke(main, args, terminal_width=200)
    assert res.exit_code == 0, res.output
    cap = read_capture(out / "capture.safetensors")
    assert cap.n_pairs == N_PAIRS and cap.meta["seeds"] == [0, 1]
    base = read_capture(out / "baseline-random.safetensors")
    assert base.meta["seeds"] == [0, 1] and base.meta["weights"]["kind"] == "reinitialised"

    # a/b: the per-prompt means of the seeds' values (capture --seeds; its equality with single-seed
    # captures is tests/test_seeds_capture.py's)
    want_b = cap.extra["b_seeds"].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(cap.b, want_b, rtol=1e-6, atol=1e-7)

    rec = json.loads((out / "results" / "results.json").read_text())
    per = rec["seeds"]["per_seed"]
    assert [s["seed"] for s in per] == [0, 1]
    ts = []
    for k, s in enumerate(per):  # each seed's own |t| > 3 count, numpy on that seed's values
        diff = cap.extra["b_seeds"][k].astype(np.float64) - cap.extra["a_seeds"][k].astype(np.float64)
        t = diff.mean(0) / (diff.std(0, ddof=1) / np.sqrt(N_PAIRS))
        assert s["thresholds"][0]["count"] == int((np.abs(t) > 3).sum())
        ts.append(t)
    ok = np.isfinite(ts[0]) & np.isfinite(ts[1])
    r = np.corrcoef(ts[0][ok], ts[1][ok])[0, 1]
    assert rec["seeds"]["consistency"]["median"] == pytest.approx(r, abs=1e-6)
    assert rec["bootstrap"]["draws"] == 200
    low, high = rec["bootstrap"]["thresholds"][0]["low"], rec["bootstrap"]["thresholds"][0]["high"]
    assert "Noise seeds" in res.output and "Seed-to-seed consistency" in res.output
    assert "bootstrap" in res.output  # the console table (its cells wrap)
    md = (out / "results" / "results.md").read_text()
    assert f"[95% bootstrap {low:,.0f}–{high:,.0f}]" in md
    assert "### Noise seeds" in md and "### Pair bootstrap" in md
