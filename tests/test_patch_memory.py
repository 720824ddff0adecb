"""`dense-plantain patch`: kept memory within --max-kept-mib, grouped runs, interruption and resume.

* Kept columns are counted as the bytes of the live kept tensors (weak references to every tensor
  the keep hooks make), not process memory: with a budget that splits the sets into several
  groups, the live kept bytes never exceed the budget, and patch.json's peak is that count.
* A run split into groups (each with its own keep forwards) gives the same numbers as one group,
  bit for bit on the CPU, and counts the extra forwards.
* Interrupted by SIGINT or SIGTERM after a pair, a run keeps the finished pair; the same call with
  resume finishes it with the same patch.json numbers as an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import weakref
from pathlib import Path

import numpy as np
import pytest

import dense_plantain.patch.run as run_mod
import test_patch
from dense_plantain.patch import PatchError, PatchSettings, run_patch
from dense_plantain.patch.hooks import Keep, unit_bytes, unit_columns
from dense_plantain.patch.result import patch_record
from tiny_klein import PAIRS, SIZE, tiny_dir, tiny_loaded, write_probe

N_PAIRS = 3
#: test_patch's fixtures: the tiny plantain layout, and one intra-op thread for the module.
layout = test_patch.layout
one_thread = test_patch.one_thread


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory, layout) -> Path:
    """The prompts, and beside them ``units.txt``: 40 units drawn at random (so it has random sets)."""
    folder = tmp_path_factory.mktemp("patchmem")
    names = np.array(layout.unit_names())[np.random.default_rng(3).choice(layout.n_units, 40, replace=False)]
    (folder / "units.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return write_probe(folder / "probe.toml", PAIRS[:N_PAIRS])


def _run(probe_file: Path, out: Path, max_kept_mib: float = 2048.0, **kw):
    units = ("block:single[3]", str(probe_file.with_name("units.txt")))
    settings = PatchSettings(
        height=SIZE, width=SIZE, random_sets=2, units=units, max_kept_mib=max_kept_mib, batch_size=kw.pop("batch", 1)
    )
    return run_patch(
        str(tiny_dir()), probe_file, out, settings=settings, loaded=tiny_loaded(), show_progress=False, **kw
    )


def _numbers(record: dict) -> list:
    """patch.json's measured numbers: every set's per-pair values, means, intervals and random-set statistics."""
    return record["sets"]


class LiveKept:
    """Counts the bytes of the kept tensors alive at each moment a keep hook makes one."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref] = []
        self.peak = 0

    def live_bytes(self) -> int:
        alive = [r() for r in self.refs]
        return sum(t.numel() * t.element_size() for t in alive if t is not None)

    def install(self, monkeypatch) -> None:
        counter = self

        class CountingKeep(Keep):
            def _apply(self, path, key, view):
                super()._apply(path, key, view)
                counter.refs.append(weakref.ref(self.kept[key]))
                counter.peak = max(counter.peak, counter.live_bytes())

        monkeypatch.setattr(run_mod, "Keep", CountingKeep)


@pytest.fixture(scope="module")
def one_group(probe_file, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    live = LiveKept()
    live.install(mp)
    try:
        run = _run(probe_file, tmp_path_factory.mktemp("one") / "out")
    finally:
        mp.undo()
    return run, live


def test_unit_bytes_are_the_kept_tensors(layout):
    """The planner's per-unit cost equals the bytes one unit's kept columns really take (one prompt)."""
    from dense_plantain.patch.run import BatchPatcher

    pipe = tiny_loaded().pipe
    patcher = BatchPatcher(pipe, PatchSettings(height=SIZE, width=SIZE), layout)
    cost = unit_bytes(layout, patcher.n_image, patcher.n_text, 4)
    per_unit = unit_columns(layout)
    # one unit of each (module stream, region) kind there is: joint image, single all
    picks = sorted({(m.split(".")[0], r): u for u, (m, r, _, _) in enumerate(per_unit)}.values())
    pipe.set_progress_bar_config(disable=True)
    for u in picks:
        _, _, kept = patcher.base_pass([PAIRS[0][1]], patcher.plan(np.array([u])))
        (t,) = kept.values()
        assert t.numel() * t.element_size() == cost[u], per_unit[u]
        assert t.shape[-1] == per_unit[u][3]


def test_grouped_run_equals_one_group_and_stays_in_budget(one_group, probe_file, tmp_path, monkeypatch, layout):
    run1, live1 = one_group
    assert run1.memory["groups"] == {"0": 1, "1": 1}
    assert run1.forwards["keep_forwards"] == 0
    assert run1.memory["kept_peak_bytes"] == live1.peak > 0

    # The budget: a bit over the largest single set instance, so every instance fits but not all at once.
    per_fold = []
    for fold in (0, 1):
        biggest = 0
        for _, units in run_mod.instances_of(run1.sets, fold):
            plan = run_mod.ColumnPlan(layout, units)
            biggest = max(biggest, sum(_group_bytes(g) for g in plan.groups))
        per_fold.append(biggest)
    budget_bytes = max(per_fold) * 1.2
    assert budget_bytes < run1.memory["kept_peak_bytes"]  # so this budget must split the sets

    live = LiveKept()
    live.install(monkeypatch)
    run2 = _run(probe_file, tmp_path / "out", max_kept_mib=budget_bytes / 2**20)
    groups = run2.memory["groups"]
    assert groups["0"] > 1 and groups["1"] > 1
    assert run2.memory["over_budget"] == []
    assert 0 < live.peak <= budget_bytes
    assert run2.memory["kept_peak_bytes"] == live.peak
    # the same numbers, bit for bit
    assert [p.values for p in run2.pairs] == [p.values for p in run1.pairs]
    # forwards: 2 keep forwards per extra group per batch (batch 1: one batch per pair)
    n_fold = {f: sum(1 for p in run2.pairs if p.fold == f) for f in (0, 1)}
    extra = sum(2 * (groups[str(f)] - 1) * n_fold[f] for f in (0, 1))
    assert run2.forwards["keep_forwards"] == extra
    assert run2.forwards["patched_forwards"] == run1.forwards["patched_forwards"]
    assert run2.forwards["transformer_forwards"] == run1.forwards["transformer_forwards"] + extra
    record = patch_record(run2, layout)
    assert record["memory"]["max_kept_mib"] == pytest.approx(budget_bytes / 2**20)
    assert _numbers(record) == _numbers(patch_record(run1, layout))


def _group_bytes(group) -> int:
    """A's and B's bytes of one (module, region) group of a plan at batch 1 in float32, from the tiny shapes:
    512 text tokens, (32 / 2)^2 image tokens (one-level VAE, 2x2 patches), "all" = text then image."""
    n_text, n_image = 512, (SIZE // 2) ** 2
    tokens = {"image": n_image, "text": n_text}.get(group.region, n_text + n_image)
    return 2 * tokens * len(group.columns) * 4


def test_instances_over_the_budget_are_kept_alone_in_batches(probe_file, tmp_path):
    """Batch 2 (one batch per fold here, the second of 2 pairs and the first of 1) with a budget of 0 bytes:
    every instance is over it alone and kept alone; the numbers equal batch 2 with one group, bit for bit."""
    whole = _run(probe_file, tmp_path / "whole", batch=2)
    alone = _run(probe_file, tmp_path / "alone", max_kept_mib=0.0, batch=2)
    n_instances = len(run_mod.instances_of(alone.sets, 0))
    assert whole.memory["groups"] == {"0": 1, "1": 1}
    assert alone.memory["groups"] == {"0": n_instances, "1": n_instances}
    assert alone.memory["over_budget"] == [name for _, name in run_mod.instance_names(alone.sets)]
    assert len(alone.memory["over_budget"]) == n_instances
    assert alone.forwards["batches"] == 2
    assert alone.forwards["keep_forwards"] == 2 * 2 * (n_instances - 1)
    assert [p.values for p in alone.pairs] == [p.values for p in whole.pairs]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_keeps_finished_pairs_and_resume_matches(
    sig, probe_file, tmp_path, monkeypatch, one_group, layout, python_sigint
):
    run1, _ = one_group
    out = tmp_path / "out"
    real = run_mod.run_batch
    calls: list[int] = []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the first pair is finished and on disk
            signal.raise_signal(sig)
        return real(*args, **kw)

    monkeypatch.setattr(run_mod, "run_batch", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(PatchError, match="interrupted.*1 finished pair.*--resume"):
        _run(probe_file, out, max_kept_mib=0.05)
    assert signal.getsignal(signal.SIGTERM) is before
    kept = json.loads(run_mod.partial_path(out).read_text())
    first = [p.id for p in run1.pairs if p.fold == 0][0]  # the batches run fold 0 first
    assert list(kept["pairs"]) == [first]
    monkeypatch.setattr(run_mod, "run_batch", real)
    # resumed with another budget: the budget is not part of what must match
    resumed = _run(probe_file, out, resume=True)
    assert resumed.resumed_from == 1 and resumed.forwards["pairs_run"] == N_PAIRS - 1
    assert _numbers(patch_record(resumed, layout)) == _numbers(patch_record(run1, layout))


def test_the_issue_run_parses_at_klein_scale(monkeypatch, tmp_path):
    """The coordinator's run: the CLI takes four --units top:K and --random-sets 20 as given; at Klein 4B scale
    they are 4 x (1 + 20) instances, 2 + 4 x 84 forwards per pair, and the default budget keeps them in a few
    groups (2 more forwards per batch each), never over it."""
    import json as json_mod

    from click.testing import CliRunner

    import dense_plantain.patch as patch_pkg
    from dense_plantain.capture import KLEIN_4B_CONFIG
    from dense_plantain.cli import main
    from dense_plantain.patch.spec import composition, draw_random_sets, fold_assignment, parse_specs
    from dense_plantain.units import build_layout

    seen = {}

    def stop(model, prompts, out, *, settings, **kw):
        seen["settings"] = settings
        raise PatchError("stopped by the test")

    monkeypatch.setattr(patch_pkg, "run_patch", stop)
    args = ["patch", "--prompts", "dense-plantain", "--out", str(tmp_path / "o"), "--results", "r"]
    args += ["--units", "top:16", "--units", "top:64", "--units", "top:256", "--units", "top:1024"]
    res = CliRunner().invoke(main, args + ["--random-sets", "20"])
    assert res.exit_code == 2 and "stopped by the test" in res.output
    settings = seen["settings"]
    assert settings.units == ("top:16", "top:64", "top:256", "top:1024") and settings.random_sets == 20
    assert settings.max_kept_mib == 2048

    klein = build_layout(json_mod.loads(Path(KLEIN_4B_CONFIG).read_text()), "plantain")
    assert klein.n_units == 16320
    folds = fold_assignment(25, 0)
    diff = np.random.default_rng(0).normal(size=(25, klein.n_units))
    sets = parse_specs(settings.units, klein, diff=diff, folds=folds)
    draw_random_sets(sets, klein, settings.random_sets, settings.seed)
    for s in sets:
        assert len(s.random) == 20
        for rand in s.random[:2]:
            assert composition(klein, rand[1]) == composition(klein, s.folds[1])
    instances = run_mod.instances_of(sets, 0)
    assert len(instances) == 84
    # bf16, 4,096 image and 512 text tokens, A and B: 16 columns x tokens x 2 bytes x 2
    cost = 2 * unit_bytes(klein, 4096, 512, 2)
    assert set(cost.tolist()) == {2 * 16 * 4096 * 2, 2 * 16 * 4608 * 2}
    budget = settings.max_kept_mib * 2**20
    groups = run_mod.group_instances(instances, cost, budget)
    assert 1 < len(groups) < 10
    for g in groups:
        union = np.unique(np.concatenate([instances[k][1] for k in g]))
        assert cost[union].sum() <= budget
    assert sorted(k for g in groups for k in g) == list(range(84))
