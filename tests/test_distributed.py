"""Distributed capture: torchrun, gloo on the CPU, two processes, the tiny random pipeline.

The reference is a capture by one plain process with the same settings, run as its own
subprocess beside the first torchrun launch, so that every run uses one thread per process and
the same kernels: the merged file must equal it bit for bit (``--batch-size 2`` puts each pair's
A and B in one forward, in the single process and in every shard alike, so the arithmetic is
the same). Every subprocess has a timeout, and the ranks a 1-minute ``--dist-timeout``, so a
hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import dense_plantain
from dense_plantain.capture.distributed import (
    FAILURE_HOOK_ENV,
    TORCHRUN_ENV,
    Launch,
    capture_here,
    incomplete_message,
    inspect_shard,
    merge_shards,
    require_launch,
    run_distributed_capture,
    run_identity,
    shard_files,
    shard_path,
    shard_range,
    torchrun_launch,
)
from dense_plantain.capture.job import CaptureJob
from dense_plantain.capture.run import CaptureSettings, partial_path
from dense_plantain.errors import CaptureError
from dense_plantain.store import read_capture, write_capture
from tiny_klein import PAIRS, capture_args, tiny_dir, write_probe

SIZE = 16  # pixels: 8 x 8 image tokens, the smallest the tiny pipeline takes
BATCH = 2
LAUNCH_TIMEOUT_S = 180
IDS = [p[0] for p in PAIRS]  # 5 pairs: rank 0 of 2 gets p1, p2; rank 1 gets p3, p4, p5


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV and k != FAILURE_HOOK_ENV}
    # The subprocesses import the package this test imported (a source tree in development, the
    # installed wheel in CI), one thread each: CI has two cores for two ranks.
    package_root = str(Path(dense_plantain.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def _capture_cmd(probe: Path, out: Path, *more: str, nproc: int | None = 2) -> list[str]:
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    capture = capture_args(probe, out, BATCH, "--dist-timeout", "1", *more, size=SIZE)
    return [sys.executable, *launcher, "-m", "dense_plantain", *capture]


def _start(cmd: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"timed out after {LAUNCH_TIMEOUT_S} s:\n{output}")
    return proc.returncode, output


def _run(cmd: list[str], **env: str) -> tuple[int, str]:
    return _finish(_start(cmd, **env))


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return write_probe(tmp_path_factory.mktemp("probe") / "probe.toml", PAIRS)


class _Reference:
    """The single-process capture, started once and awaited by whichever test needs it first."""

    def __init__(self, probe: Path, folder: Path):
        self.path = folder / "single.safetensors"
        self.proc = _start(_capture_cmd(probe, self.path, nproc=None))
        self._capture = None

    def capture(self):
        if self._capture is None:
            code, output = _finish(self.proc)
            assert code == 0, output
            self._capture = read_capture(self.path)
        return self._capture


@pytest.fixture(scope="module")
def reference(probe, tmp_path_factory) -> _Reference:
    return _Reference(probe, tmp_path_factory.mktemp("reference"))


def _assert_same_capture(got, want) -> None:
    assert got.pair_ids == want.pair_ids == IDS
    assert np.array_equal(got.a, want.a) and np.array_equal(got.b, want.b)  # bit for bit, in pair order
    assert np.abs(want.b - want.a).max() > 1e-4  # the prompts really differ, so equality is not trivial
    for key in ("pairs", "probe", "model", "blocks", "layout", "tokens"):
        assert got.meta[key] == want.meta[key], key
    settings = {k: v for k, v in got.meta["settings"].items() if k != "device"}
    assert settings == {k: v for k, v in want.meta["settings"].items() if k != "device"}
    assert not got.partial and "finished" in got.meta


def _no_shards_left(out: Path) -> bool:
    return not shard_files(out) and not partial_path(out).exists()


# --- pair ranges and torchrun's environment (no processes) ----------------------------------------


def test_shard_ranges_cover_every_pair_once_in_order():
    for n in range(1, 40):
        for world in range(1, min(n, 9) + 1):
            ranges = [shard_range(n, r, world) for r in range(world)]
            covered = [i for start, stop in ranges for i in range(start, stop)]
            assert covered == list(range(n))
            sizes = [stop - start for start, stop in ranges]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
            # the documented rule, in exact rationals: rank r gets [r n / W, (r + 1) n / W)
            assert ranges == [(int(Fraction(r * n, world)), int(Fraction((r + 1) * n, world))) for r in range(world)]
    assert shard_path("runs/cap.safetensors", 1, 4) == Path("runs/cap.shard-1-of-4.safetensors")


def test_torchrun_environment_is_read_and_explained():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}
    assert torchrun_launch(env) == Launch(1, 2, 1, "localhost:29500")
    assert torchrun_launch({k: v for k, v in env.items() if k != "MASTER_PORT"}) is None
    with pytest.raises(CaptureError, match="RANK=3, WORLD_SIZE=2"):
        torchrun_launch({**env, "RANK": "3"})
    with pytest.raises(
        CaptureError, match=r"MASTER_ADDR, MASTER_PORT not set.*torchrun --standalone --nproc-per-node N"
    ):
        require_launch({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_cli_distributed_without_torchrun_is_refused(monkeypatch, probe, tmp_path):
    from click.testing import CliRunner

    from dense_plantain.cli import main

    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    res = CliRunner().invoke(
        main,
        [
            "capture",
            "--model",
            str(tmp_path),
            "--prompts",
            str(probe),
            "--out",
            str(tmp_path / "x.safetensors"),
            "--distributed",
        ],
    )
    assert res.exit_code == 2 and "needs the environment torchrun gives" in res.output
    assert "Traceback" not in res.output


def test_more_processes_than_pairs_are_refused_before_joining(probe, tmp_path):
    with pytest.raises(CaptureError, match="6 processes for 5 pairs"):
        run_distributed_capture(
            CaptureJob(
                prompts=probe,
                out=tmp_path / "x.safetensors",
                model="/no/model/needed",
                settings=CaptureSettings(height=SIZE, width=SIZE),
                device="cpu",
            ),
            launch=Launch(0, 6, 0, "nowhere:1"),
        )


# --- two processes ---------------------------------------------------------------------------------


def test_merged_capture_equals_one_process(probe, reference, tmp_path):
    out = tmp_path / "dist.safetensors"
    code, output = _run(_capture_cmd(probe, out))
    assert code == 0, output
    assert f"wrote {out}: 5 pairs x 340 units" in output and "by 2 processes" in output, output
    merged = read_capture(out)
    _assert_same_capture(merged, reference.capture())
    dist = merged.meta["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo" and dist["merged_by"] == "rank 0 (torchrun)"
    assert [r["pairs"] for r in dist["ranks"]] == [[0, 2], [2, 5]]
    assert all(r["device"].startswith("cpu") for r in dist["ranks"])
    assert sorted(run["rank"] for run in merged.meta["runs"]) == [0, 1]
    assert "shard" not in merged.meta and _no_shards_left(out)


def test_failed_rank_leaves_shards_names_missing_pairs_and_resume_finishes(probe, reference, tmp_path):
    out = tmp_path / "cap.safetensors"
    code, output = _run(_capture_cmd(probe, out), **{FAILURE_HOOK_ENV: "1:1"})
    assert code != 0
    assert "is incomplete: 2 of 5 pairs are missing" in output, output
    assert "rank 1 (pairs 3-5 of 5): 1 of 3 pairs kept" in output and "missing 'p4', 'p5'." in output, output
    assert "simulated failure of rank 1" in output and "--resume" in output, output
    assert not out.exists()
    # rank 0's shard is whole and says which pairs it holds; rank 1 kept its first pair
    shard0 = read_capture(shard_path(out, 0, 2))
    assert shard0.pair_ids == IDS[:2] and shard0.meta["shard"] == {"rank": 0, "world_size": 2, "start": 0, "stop": 2}
    part1 = read_capture(partial_path(shard_path(out, 1, 2)), allow_partial=True)
    assert part1.pair_ids == IDS[2:3] and part1.meta["n_pairs_total"] == 3
    want = reference.capture()
    assert np.array_equal(shard0.a, want.a[:2]) and np.array_equal(part1.b, want.b[2:3])

    # one process refuses to start over them; torchrun --resume captures only p4, p5 and merges
    with pytest.raises(CaptureError, match="unfinished distributed capture .* Pass --resume"):
        capture_here(
            CaptureJob(prompts=probe, out=out, model=str(tiny_dir()), settings=CaptureSettings(height=SIZE, width=SIZE))
        )
    code, output = _run(_capture_cmd(probe, out, "--resume"))
    assert code == 0, output
    assert "3 of them from the unfinished run" in output, output
    resumed = read_capture(out)
    _assert_same_capture(resumed, want)
    assert [run["pairs_before"] for run in resumed.meta["runs"] if run["rank"] == 1] == [0, 1]
    assert _no_shards_left(out)


def test_dead_rank_then_one_process_resume(probe, reference, tmp_path):
    """Rank 1 dies (os._exit); torchrun stops rank 0, which still names what is missing."""
    out = tmp_path / "cap.safetensors"
    code, output = _run(_capture_cmd(probe, out), **{FAILURE_HOOK_ENV: "1:1:exit"})
    assert code != 0
    # On a failure the assertion prints the whole output (pytest's own report cuts it short).
    assert "is incomplete" in output and "missing 'p4', 'p5'." in output and "--resume" in output, output
    assert not out.exists()
    part1 = read_capture(partial_path(shard_path(out, 1, 2)), allow_partial=True)
    assert part1.pair_ids == IDS[2:3]
    # rank 0 kept whatever it finished before torchrun stopped it, in order
    kept0 = [p for p in (shard_path(out, 0, 2), partial_path(shard_path(out, 0, 2))) if p.exists()]
    if kept0:
        assert (
            IDS[:2][: read_capture(kept0[0], allow_partial=True).n_pairs]
            == read_capture(kept0[0], allow_partial=True).pair_ids
        )

    # one process (no torchrun) finishes both shards as their ranks would have, and merges
    code, output = _run(_capture_cmd(probe, out, "--resume", nproc=None))
    assert code == 0, output
    assert "by 2 processes" in output, output
    merged = read_capture(out)
    _assert_same_capture(merged, reference.capture())
    assert merged.meta["distributed"]["merged_by"] == "one process (--resume)"
    assert _no_shards_left(out)


# --- shard files checked and merged in this process (no model loaded) -------------------------------


def _write_shard(reference_capture, out: Path, rank: int, count: int | None = None, **settings_changes):
    """Rank ``rank``'s shard of a 2-process run cut from the reference capture (the first ``count`` pairs: partial)."""
    start, stop = shard_range(len(IDS), rank, 2)
    end = stop if count is None else start + count
    meta = {k: v for k, v in reference_capture.meta.items() if k != "finished"}
    meta["settings"] = {**meta["settings"], **settings_changes}
    meta["pairs"] = meta["pairs"][start:end]
    meta["shard"] = {"rank": rank, "world_size": 2, "start": start, "stop": stop}
    path = shard_path(out, rank, 2)
    if count is not None:
        meta.update(partial=True, n_pairs_total=stop - start)
        path = partial_path(path)
    else:
        meta["finished"] = reference_capture.meta["finished"]
    write_capture(path, reference_capture.a[start:end], reference_capture.b[start:end], meta)


def test_shards_are_checked_and_merged_from_files(probe, reference, tmp_path):
    import torch

    from dense_plantain.prompts import load_probe

    want = reference.capture()
    out = tmp_path / "cap.safetensors"
    settings = CaptureSettings(height=SIZE, width=SIZE)
    identity = run_identity(str(tiny_dir()), settings, torch.device("cpu"), "auto", load_probe(probe))
    _write_shard(want, out, 0)
    _write_shard(want, out, 1, count=1)
    states = [inspect_shard(out, r, 2, identity) for r in range(2)]
    assert states[0].complete and not states[1].complete and states[1].n_done == 1
    text = incomplete_message(out, states, identity, reports={0: {"error": None}})
    assert "2 of 5 pairs are missing" in text and "missing 'p4', 'p5'." in text and "did not report" in text

    # a shard made with other settings is never merged, and says why
    _write_shard(want, out, 0, seed=5)
    bad = inspect_shard(out, 0, 2, identity)
    assert not bad.complete and "seed: shard 5, this run 0" in bad.problem
    assert "missing 'p1', 'p2'" in incomplete_message(out, [bad, states[1]], identity)

    _write_shard(want, out, 0)
    _write_shard(want, out, 1)
    states = [inspect_shard(out, r, 2, identity) for r in range(2)]
    merge_shards(out, states, launched={"merged_by": "test"})
    _assert_same_capture(read_capture(out), want)
    assert _no_shards_left(out)


def test_shards_of_another_process_count_are_not_mixed_in(probe, tmp_path):
    out = tmp_path / "cap.safetensors"
    for rank in range(3):
        shard_path(out, rank, 3).write_bytes(b"")
    settings = CaptureSettings(height=SIZE, width=SIZE)
    with pytest.raises(CaptureError, match="shards of a 3-process capture .* --nproc-per-node 3 --resume"):
        run_distributed_capture(
            CaptureJob(prompts=probe, out=out, model="/no/model/needed", settings=settings, device="cpu", resume=True),
            launch=Launch(0, 2, 0, "nowhere:1"),
        )
    assert sorted(shard_files(out)) == [3]


def test_signal_states_of_a_rank():
    """SIGTERM is Ctrl-C while capturing, ignored while meeting, still ignored while a failing rank
    reports (``hold_term``), and both handlers are what they were before once the rank is done."""
    import signal

    from dense_plantain.capture.distributed import _Signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signals = _Signals()
    try:
        signals.capturing()
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        signals.meeting()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN == signal.getsignal(signal.SIGINT)
        signals.restore(hold_term=True)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]
        signals.restore()
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
