"""`dense-plantain patch` on the tiny pipeline: identities by construction and an independent reference.

* Patching every attention-output-projection input (plantain layout) makes A's image-token
  prediction equal B's bit for bit on the CPU (fraction, reverse fraction and ablation shrink all
  exactly 1); patching nothing reproduces A (all exactly 0).
* A plain reference with its own pre-hooks, swapping a whole module input of one block between
  two pipeline runs, gives the same fraction as the command's ``block:NAME`` set.
* top:K is cross-fitted (checked against scipy's paired t on the other fold), random sets are
  composition-matched, the sign-flip p equals a numpy enumeration.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from dense_plantain.patch import PatchError, PatchSettings, run_patch
from dense_plantain.patch.result import patch_record, sign_flip_p
from dense_plantain.patch.spec import (
    composition,
    draw_random_sets,
    expand_specs,
    fold_assignment,
    parse_specs,
)
from dense_plantain.units import build_layout
from tiny_klein import PAIRS, SIZE, tiny_dir, tiny_loaded, write_probe

N_PAIRS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads made tiny forwards 10x slower."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory) -> Path:
    return write_probe(tmp_path_factory.mktemp("patch") / "probe.toml", PAIRS[:N_PAIRS])


@pytest.fixture(scope="module")
def layout():
    return build_layout(dict(tiny_loaded().pipe.transformer.config), "plantain")


def _run(probe_file: Path, out: Path, units, **kw):
    settings = PatchSettings(
        height=SIZE, width=SIZE, batch_size=kw.pop("batch_size", 1), random_sets=kw.pop("random_sets", 0), units=units
    )
    return run_patch(
        str(tiny_dir()), probe_file, out, settings=settings, loaded=tiny_loaded(), show_progress=False, **kw
    )


@pytest.fixture(scope="module")
def basic_run(probe_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    return _run(probe_file, out, ("all", "none", "block:single[3]", "block:joint[1]"))


# --- identities by construction ------------------------------------------------------------------


def test_all_units_give_b_bit_for_bit(layout):
    import torch

    from dense_plantain.patch.run import BatchPatcher

    pipe = tiny_loaded().pipe
    patcher = BatchPatcher(pipe, PatchSettings(height=SIZE, width=SIZE), layout)
    plan = patcher.plan(np.arange(layout.n_units))
    assert plan.n_columns == sum(
        (r.n_groups * r.group_width) for r in layout.readouts
    )  # every column of every hooked input
    pipe.set_progress_bar_config(disable=True)
    kw_a, la, kept_a = patcher.base_pass([PAIRS[0][1], PAIRS[1][1]], plan)
    kw_b, lb, kept_b = patcher.base_pass([PAIRS[0][2], PAIRS[1][2]], plan)
    assert not torch.equal(la, lb)
    assert torch.equal(patcher.forward(kw_a, plan, plan, kept_b), lb)
    assert torch.equal(patcher.forward(kw_b, plan, plan, kept_a), la)
    assert torch.equal(patcher.forward(kw_a, None, plan, kept_b), la)  # nothing patched: A again, exactly


def test_heads_layout_all_gives_b_bit_for_bit():
    """The heads layout patches image and text tokens apart (to_add_out too); all of it gives B again."""
    import torch

    from dense_plantain.patch.run import BatchPatcher

    pipe = tiny_loaded().pipe
    heads = build_layout(dict(pipe.transformer.config), "heads")
    patcher = BatchPatcher(pipe, PatchSettings(height=SIZE, width=SIZE, layout="heads"), heads)
    plan = patcher.plan(np.arange(heads.n_units))
    assert {g.region for g in plan.groups} == {"image", "text"}
    pipe.set_progress_bar_config(disable=True)
    kw_a, la, _ = patcher.base_pass([PAIRS[2][1]], plan)
    _, lb, kept_b = patcher.base_pass([PAIRS[2][2]], plan)
    assert torch.equal(patcher.forward(kw_a, plan, plan, kept_b), lb)
    # Image tokens reach the output only through the image-token inputs of the projections, so those
    # alone already give B exactly; the text-token units alone move the output, but not to B.
    region = heads.labels()["region"]
    image_only = patcher.plan(np.flatnonzero(region == "image"))
    assert torch.equal(patcher.forward(kw_a, image_only, plan, kept_b), lb)
    text_only = patcher.forward(kw_a, patcher.plan(np.flatnonzero(region == "text")), plan, kept_b)
    assert not torch.equal(text_only, lb) and not torch.equal(text_only, la)


def test_all_is_one_none_is_zero(basic_run):
    for p in basic_run.pairs:
        assert p.values["0"] == [1.0, 1.0, 1.0], p.id
        assert p.values["1"] == [0.0, 0.0, 0.0], p.id
    assert basic_run.forwards["per_pair"] == 2 + 4 * 4


@pytest.fixture(scope="module")
def reference_fractions() -> dict[str, list[float]]:
    """Plain pipeline runs with the test's own hooks: B (keep whole module inputs), A, then A with B's
    whole input at one module, B with A's, both with their mean; pair p1's measures in numpy float64."""
    import torch

    from dense_plantain.capture.run import initial_noise

    _, a, b = PAIRS[0]
    pipe = tiny_loaded().pipe
    pipe.set_progress_bar_config(disable=True)
    t = pipe.transformer
    modules = {m: dict(t.named_modules())[m] for m in REFERENCE_MODULES}
    preds: list[np.ndarray] = []
    noise = initial_noise(pipe, SIZE, SIZE, 0)

    def run(prompt: str, hooks: dict) -> np.ndarray:
        handles = [modules[m].register_forward_pre_hook(h) for m, h in hooks.items()]
        try:
            with torch.inference_mode():
                pipe(
                    prompt=[prompt],
                    height=SIZE,
                    width=SIZE,
                    num_inference_steps=1,
                    guidance_scale=1.0,
                    latents=noise,
                    output_type="latent",
                )
        finally:
            for h in handles:
                h.remove()
        return preds.pop().reshape(-1)

    def keeper(store: dict, name: str):
        def hook(mod, args):
            store[name] = args[0].clone()

        return hook

    def writer(value):
        def hook(mod, args):
            return (value,) + tuple(args[1:])

        return hook

    kept_a: dict[str, torch.Tensor] = {}
    kept_b: dict[str, torch.Tensor] = {}
    h_out = t.register_forward_hook(lambda m, args, out: preds.append(out[0].double().numpy().copy()))
    try:
        lb = run(b, {m: keeper(kept_b, m) for m in modules})
        la = run(a, {m: keeper(kept_a, m) for m in modules})
        e = lb - la
        out = {}
        for m in modules:
            mean = (kept_a[m] + kept_b[m]) * 0.5
            l_ab = run(a, {m: writer(kept_b[m])})
            l_ba = run(b, {m: writer(kept_a[m])})
            l_am, l_bm = run(a, {m: writer(mean)}), run(b, {m: writer(mean)})
            out[m] = [
                float(np.dot(l_ab - la, e) / np.dot(e, e)),
                float(np.dot(lb - l_ba, e) / np.dot(e, e)),
                float(1 - np.linalg.norm(l_bm - l_am) / np.linalg.norm(e)),
            ]
        return out
    finally:
        h_out.remove()


REFERENCE_MODULES = ("single_transformer_blocks.3.attn.to_out", "transformer_blocks.1.attn.to_out.0")


@pytest.mark.parametrize(("index", "block_module"), [(2, REFERENCE_MODULES[0]), (3, REFERENCE_MODULES[1])])
def test_block_agrees_with_plain_reference(basic_run, reference_fractions, index, block_module):
    pair = basic_run.pairs[0]
    assert pair.id == PAIRS[0][0]
    ref = reference_fractions[block_module]
    assert 0.0 < abs(ref[0]) and ref[0] != 1.0
    np.testing.assert_allclose(pair.values[str(index)], ref, rtol=1e-9, atol=1e-12)


# --- specs, folds, random sets -------------------------------------------------------------------


def test_expand_and_reject_specs(layout):
    assert expand_specs(["top:16,64", "all"]) == ("top:16", "top:64", "all")
    folds = fold_assignment(6, 0)
    with pytest.raises(PatchError, match="no block"):
        parse_specs(["block:single[99]"], layout, diff=None, folds=folds)
    with pytest.raises(PatchError, match="--results"):
        parse_specs(["top:3"], layout, diff=None, folds=folds)


def test_fold_assignment_is_seeded_halves():
    f = fold_assignment(25, 3)
    assert (f == 0).sum() == 12 and (f == 1).sum() == 13
    assert np.array_equal(f, fold_assignment(25, 3)) and not np.array_equal(f, fold_assignment(25, 4))


def test_top_k_cross_fitted_against_scipy(layout):
    from scipy import stats as sps

    rng = np.random.default_rng(1)
    diff = rng.normal(size=(10, layout.n_units)) + rng.normal(size=layout.n_units) * 0.5
    folds = fold_assignment(10, 0)
    (s,) = parse_specs(["top:7"], layout, diff=diff, folds=folds)
    assert s.cross_fitted and len(s.folds) == 2
    for f in (0, 1):
        t = sps.ttest_rel(diff[folds == 1 - f], np.zeros_like(diff[folds == 1 - f])).statistic
        expect = np.sort(np.argsort(-np.abs(t), kind="stable")[:7])
        assert np.array_equal(s.folds[f], expect)
    assert not np.array_equal(s.folds[0], s.folds[1])


def test_random_sets_match_composition(layout):
    lab = layout.labels()
    units = np.array([0, 1, 30, 31, 32, 200, 339])
    (s,) = parse_specs(["all"], layout, diff=None, folds=fold_assignment(4, 0))
    s.folds = [units]
    s.name = s.spec = "custom"
    draw_random_sets([s], layout, 5, seed=0)
    assert len(s.random) == 5
    for rand in s.random:
        (r,) = rand
        assert len(np.unique(r)) == len(units)
        assert composition(layout, r) == composition(layout, units)
        assert sorted(lab["kind"][r]) == sorted(lab["kind"][units])
    assert any(not np.array_equal(rand[0], units) for rand in s.random)
    (whole,) = parse_specs(["kind:mlp"], layout, diff=None, folds=fold_assignment(4, 0))
    draw_random_sets([whole], layout, 5, seed=0)
    assert whole.random == [] and "whole strata" in whole.random_note


def test_sign_flip_p_against_enumeration():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.05, 0.4, -0.2, 0.35])
    n = len(d)

    def t_of(x):
        return x.mean() / (x.std(ddof=1) / np.sqrt(n))

    t_obs = abs(t_of(d))
    ts = [abs(t_of(d * np.array((1,) + s))) for s in itertools.product((1, -1), repeat=n - 1)]
    expect = np.mean(np.array(ts) >= t_obs - 1e-12)
    got = sign_flip_p(d)
    assert got["mode"] == "exact" and got["n_patterns"] == 2 ** (n - 1)
    assert got["p"] == pytest.approx(expect, abs=1e-12)


# --- top:K against a capture, random sets, the folder, the CLI ---------------------------------


def _synthetic_capture(path: Path, probe_file: Path, layout, shift_probe: bool = False) -> Path:
    from dense_plantain.prompts import load_probe
    from dense_plantain.store import write_capture

    probe = load_probe(probe_file)
    rng = np.random.default_rng(5)
    a = rng.normal(size=(N_PAIRS, layout.n_units)).astype(np.float32)
    b = (a + rng.normal(size=layout.n_units) + 0.3 * rng.normal(size=a.shape)).astype(np.float32)
    probe_meta = probe.to_dict()
    if shift_probe:
        probe_meta["sha256"] = "0" * 64
    meta = {
        **layout.to_metadata(),
        "pairs": [{"id": p.id, "a": p.a, "b": p.b} for p in probe.pairs],
        "probe": probe_meta,
        "model": tiny_loaded().provenance(),
    }
    return write_capture(path, a, b, meta)


def test_cli_top_k_random_sets_and_folder(probe_file, layout, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dense_plantain.cli import main

    cap = _synthetic_capture(tmp_path / "cap.safetensors", probe_file, layout)
    names = tmp_path / "units.txt"
    picked = [layout.unit_names()[i] for i in (250, 5, 100)]
    names.write_text("# three units\n" + "\n".join(picked) + "  # trailing comment\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["patch", "--model", str(tiny_dir()), "--prompts", str(probe_file), "--out", str(out)]
    args += ["--units", "top:2,5", "--units", str(names), "--capture", str(cap), "--random-sets", "3"]
    args += ["--height", str(SIZE), "--width", str(SIZE), "--device", "cpu", "--dtype", "float32", "-q"]
    args += ["--batch-size", "2"]
    import dense_plantain.capture.model as model_mod

    monkeypatch.setattr(model_mod, "load_pipeline", lambda *a, **k: tiny_loaded())
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["fraction_by_k.png", "patch.json", "patch.md"]
    assert not (tmp_path / "out.partial.json").exists()
    rec = json.loads((out / "patch.json").read_text())
    assert [s["spec"] for s in rec["sets"]] == ["top:2", "top:5", str(names)]
    folds = {p["id"]: p["fold"] for p in rec["pairs"]}
    diff = None
    from dense_plantain.store import read_capture

    c = read_capture(cap)
    diff = c.b.astype(np.float64) - c.a.astype(np.float64)
    fold_of = np.array([folds[p] for p in c.pair_ids])
    for st in rec["sets"][:2]:
        assert st["cross_fitted"] and st["n_units"] == st["top_k"]
        for f in st["folds"]:
            other = diff[fold_of == 1 - f["fold"]]
            t = other.mean(0) / (other.std(0, ddof=1) / np.sqrt(len(other)))
            assert set(f["units"]) == set(layout.labels()["name"][np.argsort(-np.abs(t), kind="stable")[: st["top_k"]]])
        r = st["random"]
        assert r["n_sets"] == 3 and len(r["set_means"]) == 3
        assert r["p_set"] == pytest.approx(np.mean(np.array(r["set_means"]) >= st["mean_fraction"]))
        fr = np.array([p["fraction"] for p in st["pairs"]])
        assert st["mean_fraction"] == pytest.approx(fr.mean())
        assert r["diff_mean"] == pytest.approx((fr - np.array(r["per_pair_mean"])).mean())
    assert rec["sets"][2]["n_units"] == 3
    assert rec["sets"][2]["folds"][0]["units"] == [layout.unit_names()[i] for i in (5, 100, 250)]
    assert rec["sets"][2]["random"]["n_sets"] == 3
    md = (out / "patch.md").read_text()
    assert "| `top:5` |" in md and "noise_pred" in md
    # which weights ran is recorded as a capture of the same folder records it, and said first
    from dense_plantain.capture.provenance import weights_record

    weights = rec["provenance"]["weights"]
    assert weights == {"recorded": True, **weights_record(tiny_loaded().source)}
    assert weights["random"] and weights["kind"] == "tiny-random"
    assert md.splitlines()[2].startswith("**Random weights (tiny-random)")
    # the console summary and patch.json count the forwards and the kept memory
    f, m = rec["forwards"], rec["memory"]
    assert f["transformer_forwards"] == f["pipeline_passes"] + f["keep_forwards"] + f["patched_forwards"]
    assert f["patched_forwards"] == 4 * (3 * (1 + 3)) * f["batches"]  # 3 sets, 3 random sets each
    assert f"{f['transformer_forwards']:,} transformer forwards" in res.output and "ms per forward" in res.output
    assert m["max_kept_mib"] == 2048 and m["kept_peak_bytes"] > 0 and "kept columns: peak" in res.output


def test_selection_capture_must_match(probe_file, layout, tmp_path):
    cap = _synthetic_capture(tmp_path / "cap.safetensors", probe_file, layout, shift_probe=True)
    with pytest.raises(PatchError, match="prompts"):
        _run(probe_file, tmp_path / "out", ("top:3",), capture=cap)


def test_resume_keeps_finished_pairs(probe_file, tmp_path, basic_run, monkeypatch):
    import dense_plantain.patch.run as run_mod

    units = ("all", "none", "block:single[3]", "block:joint[1]")
    out = tmp_path / "out"
    real = run_mod.run_batch
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(run_mod, "run_batch", failing)
    with pytest.raises(PatchError, match="--resume"):
        _run(probe_file, out, units)
    monkeypatch.setattr(run_mod, "run_batch", real)
    with pytest.raises(PatchError, match="unfinished"):
        _run(probe_file, out, units)
    resumed = _run(probe_file, out, units, resume=True)
    assert resumed.resumed_from == 1
    assert [p.values for p in resumed.pairs] == [p.values for p in basic_run.pairs]
    record = patch_record(resumed, build_layout(dict(tiny_loaded().pipe.transformer.config), "plantain"))
    assert record["resumed_from"] == 1
    # the two calls together ran exactly the uninterrupted run's forwards (the interrupted batch ran none)
    every = resumed.forwards["all_calls"]
    assert every["calls"] == 2 and [c["pairs"] for c in resumed.forwards["calls"]] == [1, len(basic_run.pairs) - 1]
    assert every["pairs"] == len(basic_run.pairs)
    assert every["transformer_forwards"] == basic_run.forwards["transformer_forwards"]
    assert resumed.forwards["transformer_forwards"] < every["transformer_forwards"]
    assert basic_run.forwards["all_calls"]["calls"] == 1
    from dense_plantain.patch.report import markdown

    assert "interrupted and resumed, 2 calls in all" in markdown(record)


def test_results_folder_leads_to_its_capture(probe_file, layout, tmp_path):
    from dense_plantain import analysis, report
    from dense_plantain.patch.run import check_selection_capture, selection_capture
    from dense_plantain.prompts import load_probe

    cap_path = _synthetic_capture(tmp_path / "cap.safetensors", probe_file, layout)
    results = tmp_path / "results"
    report.write_results(analysis.analyze(cap_path, permutations=8, splits=4, group_nulls=False), results)
    cap, selection = selection_capture(results, None)
    assert selection["capture"] == str(cap_path) and selection["results"] == str(results)
    probe = load_probe(probe_file)
    model_meta = tiny_loaded().provenance()
    assert check_selection_capture(cap, probe, layout, model_meta) == []
    heads = build_layout(dict(tiny_loaded().pipe.transformer.config), "heads")
    assert any(p.startswith("layout") for p in check_selection_capture(cap, probe, heads, model_meta))
    other = {**model_meta, "config_sha256": "f" * 64}
    assert any(p.startswith("model") for p in check_selection_capture(cap, probe, layout, other))
    cap_path.write_bytes(cap_path.read_bytes() + b" ")  # the capture changed since the analysis
    with pytest.raises(PatchError, match="changed since"):
        selection_capture(results, None)
