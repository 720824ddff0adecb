"""Capture across processes: torchrun shards the pairs, rank 0 merges the shards into one file.

    torchrun --standalone --nproc-per-node 2 -m dense_plantain capture --prompts P.toml --out cap.safetensors

Each process torchrun starts (a rank: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in its environment) captures one contiguous range of pairs, ``[r*n//W, (r+1)*n//W)``
of the ``n`` pairs for rank ``r`` of ``W``, on its own device (``cuda:LOCAL_RANK`` on a GPU node,
the CPU otherwise), into its own capture file ``OUT.shard-<r>-of-<W>.safetensors``. A shard is
made by ``run_capture`` itself, so it has the single-process run's partial file
(``OUT.shard-<r>-of-<W>.partial.safetensors``), atomic writes and ``--resume``, and records its
pair range under the metadata key ``shard``.

A rank that is done (finished or failed) meets the others at a barrier with a timeout and says
how it went. Rank 0 then trusts the shard *files*, not the collective: when every shard is
complete and agrees with this run (settings, model, prompt file hash, pair range and pair ids), it
concatenates them in pair order, writes ``OUT`` atomically with every rank's provenance under
``distributed``, and removes the shards. Otherwise it raises a `CaptureError` that lists the
missing pair ids; the shards on disk stay, and the same command with ``--resume`` captures only
what is missing (or, without torchrun, ``--resume`` finishes every shard in one process).

Values equal a single-process capture's: every prompt starts from the same noise whatever its
batch (see ``run``), so a shard boundary moves no value. They are bit-identical when the batches
hold the same prompts, i.e. when every shard starts on a batch boundary of the single-process run
(always with ``--batch-size`` 1 or 2, as the prompts go A, B, A, B in pair order); with other
batch sizes a prompt may share its forward with other prompts than before, which changes the
float32 rounding of batched kernels, as any change of ``--batch-size`` does (relative 1e-5).

Processes: the default process group is NCCL on GPUs and gloo on the CPU, made with a timeout.
The ranks exchange nothing but a few words, over a gloo group: ``monitored_barrier`` names the
ranks that did not arrive, and gloo fails at once when a peer has died, so no rank waits on a
dead one. Under torchrun a rank that dies makes torchrun stop the others with SIGTERM; a rank
takes that as Ctrl-C while capturing (it stops between batches, its finished pairs are on disk)
and ignores it while meeting and merging, so rank 0 can still say what is missing. The
environment is passed through as it is (``NCCL_*`` too: ``NCCL_NVLS_ENABLE=0`` stays in force).

Measuring the speed-up on one node with two GPUs (100 pairs; each run prints its wall time,
model loading included, and the two files must hold equal values)::

    for n in 1 2; do torchrun --standalone --nproc-per-node $n -m dense_plantain capture \
        --prompts pairs-100.toml --out scale-$n.safetensors --batch-size 2; done
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dense_plantain.capture.job import CaptureJob, CaptureSettings, ShardPlan
from dense_plantain.capture.partial import OutputLock, partial_path, stem
from dense_plantain.capture.provenance import (
    file_sha256,
    identity_problems,
    model_record,
    settings_record,
    utc_now,
    weights_record,
)
from dense_plantain.capture.run import CaptureResult, run_job
from dense_plantain.errors import CaptureError, CaptureFileError, DensePlantainError

#: The variables torchrun (``python -m torch.distributed.run``) sets for every process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: How long a rank waits to join the others and, once its shard is done, for theirs (minutes).
DEFAULT_TIMEOUT_MIN = 60.0

#: Test hook: ``RANK:PAIRS`` makes that rank fail once PAIRS of its pairs are on disk, by raising
#: (a rank that reports), ``RANK:PAIRS:exit`` by ``os._exit`` (a rank that dies, as when killed),
#: ``RANK:PAIRS:hang`` by sleeping for an hour (a rank that hangs).
FAILURE_HOOK_ENV = "DENSE_PLANTAIN_TEST_FAIL_RANK"

_SHARD_NAME = re.compile(r"^(?P<stem>.+)\.shard-(?P<rank>\d+)-of-(?P<world>\d+)(?:\.partial)?\.safetensors$")
_MAX_IDS_SHOWN = 20


# --- where this process stands -----------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """This process's place among the processes torchrun started."""

    rank: int
    world_size: int
    local_rank: int
    master: str  # MASTER_ADDR:MASTER_PORT

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def torchrun_launch(environ: dict[str, str] | None = None) -> Launch | None:
    """This process's ``Launch`` when torchrun started it (every ``TORCHRUN_ENV`` set), else None."""
    env = os.environ if environ is None else environ
    if not all(env.get(key) for key in TORCHRUN_ENV):
        return None
    try:
        rank, world, local = (int(env[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise CaptureError(
            f"torchrun's environment is malformed: RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}, "
            f"LOCAL_RANK={env['LOCAL_RANK']!r} must be integers. Start the command with torchrun, which sets them."
        ) from None
    if not (0 <= rank < world and local >= 0):
        raise CaptureError(
            f"torchrun's environment is inconsistent: RANK={rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local}. Start the command with torchrun, which sets them."
        )
    return Launch(rank, world, local, f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}")


def require_launch(environ: dict[str, str] | None = None) -> Launch:
    """``torchrun_launch``, or a `CaptureError` saying how to start a distributed capture."""
    launch = torchrun_launch(environ)
    if launch is None:
        env = os.environ if environ is None else environ
        missing = [key for key in TORCHRUN_ENV if not env.get(key)]
        raise CaptureError(
            f"--distributed needs the environment torchrun gives each process ({', '.join(missing)} not set). "
            "Start it as `torchrun --standalone --nproc-per-node N -m dense_plantain capture ...` (one process per "
            "GPU), or drop --distributed to capture in this one process."
        )
    return launch


# --- shards: which pairs, which files -------------------------------------------------------------


def shard_range(n_pairs: int, rank: int, world_size: int) -> tuple[int, int]:
    """Pairs ``[start, stop)`` of rank ``rank`` of ``world_size``: contiguous, in pair order, sizes within one."""
    plan = ShardPlan.of(n_pairs, rank, world_size)
    return plan.start, int(plan.stop or 0)


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    """The finished shard of rank ``rank``: ``OUT.shard-<r>-of-<W>.safetensors`` next to ``out``."""
    out = Path(out)
    return out.with_name(f"{stem(out)}.shard-{rank}-of-{world_size}.safetensors")


def shard_files(out: str | Path) -> dict[int, list[Path]]:
    """Shard files of ``out`` on disk (finished and partial), by the world size of the run that wrote them."""
    out = Path(out)
    found: dict[int, list[Path]] = {}
    if not out.parent.is_dir():
        return found
    for path in sorted(out.parent.iterdir()):
        match = _SHARD_NAME.match(path.name)
        if match and match["stem"] == stem(out):
            found.setdefault(int(match["world"]), []).append(path)
    return found


def _remove_shards(out: Path, world_sizes) -> None:
    files = shard_files(out)
    for world in world_sizes:
        for path in files.get(world, []):
            path.unlink(missing_ok=True)


@dataclass
class RunIdentity:
    """What a shard must agree with to join this run: settings, model and prompt file (no weights loaded)."""

    settings: dict[str, Any]
    model: dict[str, Any]
    probe: Any  # prompts.Probe
    weights: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """This run's ``settings``, ``model`` and ``weights`` records (``provenance.identity_problems``)."""
        return {"settings": self.settings, "model": self.model, "weights": self.weights}


def run_identity(model: str, settings: CaptureSettings, device, dtype: str, probe, job=None) -> RunIdentity:
    """This run's identity, as ``run_capture`` would record it, without loading the pipeline."""
    from dense_plantain.capture.model import choose_dtype, resolve_model

    source = resolve_model(model)
    image_sha = file_sha256(settings.image) if settings.image else None
    dtype_name = str(choose_dtype(dtype, device)).removeprefix("torch.")
    weights = weights_record(source)
    if job is not None:  # a --weights random run records its re-initialisation (capture.reinit)
        from dense_plantain.capture.reinit import job_weights_record

        weights = job_weights_record(weights, job.weights, job.weights_seed, getattr(device, "type", str(device)))
    return RunIdentity(settings_record(settings, dtype_name, image_sha), model_record(source), probe, weights)


@dataclass
class ShardState:
    """One shard as found on disk."""

    rank: int
    start: int
    stop: int
    path: Path
    capture: Any = None  # the finished shard (store.Capture), when complete and consistent
    n_done: int = 0  # pairs on disk, finished or partial
    where: Path | None = None  # the file holding them
    problem: str | None = None  # why the file on disk cannot be used

    @property
    def complete(self) -> bool:
        return self.capture is not None

    def missing_ids(self, ids: list[str]) -> list[str]:
        kept = 0 if self.problem else self.n_done
        return ids[self.start + kept : self.stop]


def inspect_shard(out: Path, rank: int, world_size: int, identity: RunIdentity) -> ShardState:
    """Read rank ``rank``'s shard (finished, else partial) and check it belongs to this run."""
    from dense_plantain.store import read_capture

    probe = identity.probe
    start, stop = shard_range(len(probe.pairs), rank, world_size)
    state = ShardState(rank, start, stop, shard_path(out, rank, world_size))
    expected = {"rank": rank, "world_size": world_size, "start": start, "stop": stop}
    if state.path.exists():
        try:
            cap = read_capture(state.path)
        except CaptureFileError as err:
            state.problem = f"cannot be read ({err})"
            return state
        problems = identity_problems(cap.meta, identity.record(), probe, then="shard")
        if cap.meta.get("shard") != expected:
            problems.append(f"pair range: shard {cap.meta.get('shard')!r}, this run {expected!r}")
        elif cap.pair_ids != probe.ids[start:stop]:
            problems.append(f"pair ids: shard {cap.pair_ids[:3]}..., prompt file {probe.ids[start:stop][:3]}...")
        if problems:
            state.problem = "was made with different settings, model or prompts: " + "; ".join(problems)
        else:
            state.capture, state.n_done, state.where = cap, cap.n_pairs, state.path
        return state
    partial = partial_path(state.path)
    if partial.exists():
        try:
            state.n_done = read_capture(partial, allow_partial=True, check_finite=False).n_pairs
            state.where = partial
        except CaptureFileError as err:
            state.problem = f"has an unreadable partial file ({err})"
    return state


def _id_list(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_MAX_IDS_SHOWN])
    return shown + (f" and {len(ids) - _MAX_IDS_SHOWN} more" if len(ids) > _MAX_IDS_SHOWN else "")


def incomplete_message(
    out: Path,
    states: list[ShardState],
    identity: RunIdentity,
    *,
    reports: dict[int, dict] | None = None,
    meet_error: str | None = None,
) -> str:
    """Which pairs are missing, where the finished ones are, and how to finish (for a `CaptureError`)."""
    ids = identity.probe.ids
    world = len(states)
    missing = sum(len(s.missing_ids(ids)) for s in states if not s.complete)
    lines = [f"the capture of {out} by {_processes(world)} is incomplete: {missing} of {len(ids)} pairs are missing."]
    if meet_error:
        lines.append(f"Not every rank reached the end ({meet_error}).")
    for s in states:
        if s.complete:
            continue
        size = s.stop - s.start
        text = f"  rank {s.rank} (pairs {s.start + 1}-{s.stop} of {len(ids)}): "
        if s.problem:
            text += f"its shard {s.path} {s.problem}; delete it, or pass --force to capture everything again"
        elif s.n_done:
            text += f"{s.n_done} of {size} pairs kept in {s.where}"
        else:
            text += "nothing kept"
        text += f"; missing {_id_list(s.missing_ids(ids))}."
        report = (reports or {}).get(s.rank)
        if report and report.get("error"):
            text += f" It failed: {report['error']}"
        elif reports is not None and s.rank not in reports:
            text += " It did not report (it died, hung, or was stopped)."
        lines.append(text)
    kept = [str(s.path) for s in states if s.complete]
    lines.append(
        (f"Finished shards are kept ({', '.join(kept)}). " if kept else "")
        + "Run the same command with --resume (same --nproc-per-node) to capture only the missing pairs "
        "and merge; or, on one device, the same command with --resume and without torchrun."
    )
    return "\n".join(lines)


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def _device_summary(devices: list[str]) -> str:
    if len(set(devices)) == 1:
        return f"{devices[0]} ({_processes(len(devices))})"
    return ", ".join(devices)


def merge_shards(out: Path, states: list[ShardState], *, launched: dict[str, Any]) -> Path:
    """Concatenate complete shards in pair order into ``out`` (atomically) and remove the shards."""
    from dense_plantain.store import EXTRA_TENSORS, write_capture

    caps = [s.capture for s in states]
    first = caps[0].meta
    for s, cap in zip(states, caps):
        if cap.meta.get("blocks") != first.get("blocks"):
            raise CaptureError(
                f"shard {s.path} has another unit layout than {states[0].path}; capture again with --force."
            )
    ranks = []
    for s, cap in zip(states, caps):
        meta = cap.meta
        record = {
            "rank": s.rank,
            "pairs": [s.start, s.stop],
            "device": meta["settings"].get("device"),
            "started": meta.get("started"),
            "finished": meta.get("finished"),
        }
        if meta.get("versions") != first.get("versions"):
            record["versions"] = meta.get("versions")
        ranks.append(record)
    merged = {key: value for key, value in first.items() if key not in ("shard", "partial", "n_pairs_total")}
    merged["pairs"] = [pair for cap in caps for pair in cap.meta.get("pairs", [])]
    if isinstance(first.get("text"), dict):  # each shard lists the prompts the text limit cut in its own pairs
        cut = [item for cap in caps for item in (cap.meta.get("text") or {}).get("truncated", [])]
        merged["text"] = {**first["text"], "truncated": cut}
    merged["settings"] = {**first["settings"], "device": _device_summary([r["device"] for r in ranks])}
    merged["started"] = min(str(cap.meta.get("started", "")) for cap in caps)
    merged["runs"] = sorted(
        ({"rank": s.rank, **run} for s, cap in zip(states, caps) for run in cap.meta.get("runs", [])),
        key=lambda run: str(run.get("started", "")),
    )
    merged["distributed"] = {"world_size": len(states), **launched, "ranks": ranks}
    merged["finished"] = utc_now()
    names = set(caps[0].extra)
    if any(set(c.extra) != names for c in caps):
        raise CaptureError("the shards disagree on their optional tensors (--vectors); capture again with --force.")
    extra = {k: np.concatenate([c.extra[k] for c in caps], axis=EXTRA_TENSORS[k[2:]][0]) for k in sorted(names)}
    write_capture(out, np.concatenate([c.a for c in caps]), np.concatenate([c.b for c in caps]), merged, extra=extra)
    _remove_shards(out, [len(states)])
    return out


# --- one rank's work ----------------------------------------------------------------------------


def _failure_hook(rank: int) -> Callable[[int, int], None] | None:
    spec = os.environ.get(FAILURE_HOOK_ENV)
    if not spec:
        return None
    parts = spec.split(":")
    if int(parts[0]) != rank:
        return None
    after, how = int(parts[1]), (parts[2] if len(parts) > 2 else "raise")

    def fail(done: int, total: int) -> None:
        if done >= after:
            if how == "exit":
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(17)
            if how == "hang":
                time.sleep(3600)
            raise CaptureError(f"simulated failure of rank {rank} after {done} pair(s) ({FAILURE_HOOK_ENV}).")

    return fail


def _rank_device(device: str, launch: Launch):
    """``cuda:LOCAL_RANK`` on a GPU node, else the CPU; a rank never shares another's GPU."""
    import torch

    from dense_plantain.capture.model import choose_device

    if device in ("auto", "cuda") and (device == "cuda" or torch.cuda.is_available()):
        return choose_device(f"cuda:{launch.local_rank}")
    if device in ("auto", "cpu"):
        return torch.device("cpu")
    raise CaptureError(
        f"--device {device} cannot be shared by torchrun's processes; use --device cuda (one GPU per "
        "process) or --device cpu."
    )


def _check_outputs(out: Path, world_size: int, resume: bool, force: bool) -> None:
    """Refuse to run over files of another run; every rank checks before any rank writes (init waits for all)."""
    if out.is_dir():
        raise CaptureError(
            f"--out {out} is a folder; give the capture file's name, e.g. {out / 'capture.safetensors'}."
        )
    if out.exists() and not force:
        raise CaptureError(f"{out} already exists; pass --force to overwrite it, or choose another --out.")
    if force:
        return
    if partial_path(out).exists():
        raise CaptureError(
            f"an unfinished single-process capture of this output exists ({partial_path(out)}). "
            "Finish it without torchrun (--resume), or pass --force to discard it."
        )
    files = shard_files(out)
    others = {w: paths for w, paths in files.items() if w != world_size}
    if others:
        w, paths = sorted(others.items())[0]
        raise CaptureError(
            f"shards of a {w}-process capture of this output exist ({', '.join(p.name for p in paths)}), and this run "
            f"has {world_size} processes. Finish that capture with --nproc-per-node {w} --resume (or with --resume in "
            "one process, without torchrun), or pass --force to discard it."
        )
    if files.get(world_size) and not resume:
        raise CaptureError(
            f"an unfinished {world_size}-process capture of this output exists "
            f"({', '.join(p.name for p in files[world_size])}). Pass --resume to continue it, or --force to start over."
        )


@dataclass
class _Outcome:
    """How a rank's shard went, as told to the others."""

    rank: int
    device: str
    resumed: int = 0  # pairs taken over from earlier runs
    error: BaseException | None = None

    def to_report(self) -> dict[str, Any]:
        text = None
        if isinstance(self.error, CaptureError):
            text = self.error.reason  # what was kept is said once, for every shard, by rank 0's summary
        elif isinstance(self.error, DensePlantainError):
            text = str(self.error)
        elif self.error is not None:
            text = f"{type(self.error).__name__}: {self.error}"
        return {"rank": self.rank, "device": self.device, "resumed": self.resumed, "error": text}


def _capture_shard(
    job: CaptureJob,
    launch: Launch,
    identity: RunIdentity,
    dev,
    *,
    loaded=None,
    show_progress: bool = True,
    owns_loaded: bool = False,
) -> _Outcome:
    outcome = _Outcome(launch.rank, str(dev))
    world = launch.world_size
    plan = ShardPlan.of(len(identity.probe.pairs), launch.rank, world)
    path = shard_path(job.out, launch.rank, world)
    try:
        if job.resume and path.exists():
            state = inspect_shard(Path(job.out), launch.rank, world, identity)
            if state.problem:
                raise CaptureError(
                    f"cannot resume: the finished shard {path} {state.problem}. Pass --force (without "
                    "--resume) to capture it again."
                )
            outcome.resumed = int(plan.stop or 0) - plan.start
            return outcome
        result = run_job(
            job.replace(out=path, device=str(dev), show_progress=show_progress),
            plan=plan,
            after_batch=_failure_hook(launch.rank),
            loaded=loaded,
            owns_loaded=owns_loaded,
        )
        outcome.resumed = result.resumed_from
    except KeyboardInterrupt:
        outcome.error = CaptureError(
            "interrupted (Ctrl-C, or torchrun stopping the ranks because one failed) before it began capturing."
        )
    except Exception as err:  # reported to rank 0 first, raised again after the ranks meet
        outcome.error = err
    return outcome


class _Signals:
    """SIGTERM as Ctrl-C while a rank captures; SIGTERM and Ctrl-C ignored while the ranks meet and merge.

    torchrun stops every rank with SIGTERM when one fails; a capturing rank then stops between
    batches (its finished pairs are on disk), and the short meeting that follows still happens,
    so rank 0 can say what is missing; a rank that fails keeps ignoring SIGTERM while it reports
    (``restore(hold_term=True)``). torchrun kills a rank 30 s after SIGTERM in any case.
    """

    def __init__(self) -> None:
        self.saved: dict[int, Any] = {}
        self.active = threading.current_thread() is threading.main_thread()

    def _set(self, sig, handler) -> None:
        if self.active:
            self.saved.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, handler)

    def capturing(self) -> None:
        self._set(signal.SIGTERM, signal.default_int_handler)

    def meeting(self) -> None:
        self._set(signal.SIGTERM, signal.SIG_IGN)
        self._set(signal.SIGINT, signal.SIG_IGN)

    def restore(self, *, hold_term: bool = False) -> None:
        """The saved handlers back; with ``hold_term`` SIGTERM stays ignored (a rank about to report
        a failure: torchrun's SIGTERM, sent when another rank died, must not cut the report off)."""
        for sig, handler in self.saved.items():
            signal.signal(sig, signal.SIG_IGN if hold_term and sig == signal.SIGTERM else handler)


def _first_line(err: BaseException) -> str:
    """The gist of a torch.distributed error: its first sentence, without the C++ source location."""
    text = re.sub(r"^\[[^\]]*\]:?\s*", "", str(err).strip())
    text = re.split(r"(?<=[^.])\.\s", text.splitlines()[0] if text else "")[0]
    return f"{type(err).__name__}: {text}"


def _meet(group, report: dict[str, Any], world_size: int, timeout) -> tuple[dict[int, dict] | None, str | None]:
    """Wait for every rank (named if missing), then share the reports; (None, why) when that fails."""
    import torch.distributed as dist

    try:
        dist.monitored_barrier(group=group, timeout=timeout, wait_all_ranks=True)
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, report, group=group)
    except Exception as err:  # a peer died (gloo notices at once) or the timeout passed
        return None, _first_line(err)
    return {g["rank"]: g for g in gathered}, None


def _announce(group, verdict: str | None) -> str | None:
    """Rank 0's verdict to every rank (None: merged), so no rank exits (and torchrun stops rank 0) first."""
    import torch.distributed as dist

    box = [verdict]
    try:
        dist.broadcast_object_list(box, src=0, group=group)
    except Exception as err:
        return f"rank 0 did not say whether the merge worked ({_first_line(err)})"
    return box[0]


def _probe_for(job: CaptureJob, world_size: int, too_few: Callable[[int], str]) -> Any:
    """The job's prompt file (a ``prompts.Probe``); refused when it has fewer pairs than there are
    processes (``too_few(n_pairs)`` says why, in the words of the caller's situation)."""
    from dense_plantain.prompts import load_probe

    probe = load_probe(job.prompts)
    if world_size > len(probe.pairs):
        raise CaptureError(too_few(len(probe.pairs)))
    return probe


def run_distributed_capture(
    job: CaptureJob, *, timeout_min: float = DEFAULT_TIMEOUT_MIN, launch: Launch | None = None
) -> CaptureResult | None:
    """This rank's part of a capture by every process torchrun started (see the module docstring).

    Returns the merged file's ``CaptureResult`` on rank 0 and None on the other ranks; raises a
    `CaptureError` on rank 0 when a shard is missing (naming its pairs) and on a rank whose own
    shard failed.
    """
    import torch
    import torch.distributed as dist

    t0 = time.monotonic()
    launch = launch or require_launch()
    rank, world = launch.rank, launch.world_size
    out = job.out_path
    # Checks every rank makes alike, before joining the others: a mistake stops every rank at once.
    job.validate()
    if timeout_min <= 0:
        raise CaptureError(f"--dist-timeout must be positive, got {timeout_min}.")
    probe = _probe_for(
        job,
        world,
        lambda n: (
            f"{world} processes for {n} pairs: every process needs at least one pair; "
            f"start at most {n} (--nproc-per-node)."
        ),
    )
    _check_outputs(out, world, job.resume, job.force)
    dev = _rank_device(job.device, launch)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    identity = run_identity(job.model, job.settings, dev, job.dtype, probe, job)

    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_min)
    try:
        dist.init_process_group(backend, timeout=timeout)
        group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    except Exception as err:
        raise CaptureError(
            f"{launch.name} could not join the others at {launch.master} within {timeout_min:g} min "
            f"({_first_line(err)}). Check that every process was started (torchrun --nproc-per-node) and that "
            "MASTER_ADDR is reachable from every node."
        ) from None
    signals = _Signals()
    states: list[ShardState] = []
    verdict = None  # rank 0's account of what is missing; None once merged
    try:
        signals.capturing()
        outcome = _capture_shard(job, launch, identity, dev, show_progress=job.show_progress and rank == 0)
        signals.meeting()
        reports, meet_error = _meet(group, outcome.to_report(), world, timeout)
        if rank == 0 or reports is None:
            # The files decide, whatever the collective said: a rank may die after finishing its shard.
            states = [inspect_shard(out, r, world, identity) for r in range(world)]
            if not all(s.complete for s in states):
                known = reports if reports is not None else {rank: outcome.to_report()}
                verdict = incomplete_message(out, states, identity, reports=known, meet_error=meet_error)
            elif rank == 0:
                try:
                    with OutputLock(out, list(job.command) if job.command else None):
                        if job.force:
                            _remove_shards(out, [w for w in shard_files(out) if w != world])
                            partial_path(out).unlink(missing_ok=True)
                        merge_shards(out, states, launched={"merged_by": "rank 0 (torchrun)", "backend": backend})
                except CaptureError as err:
                    verdict = f"every shard is complete, but rank 0 could not merge them: {err}"
        if reports is not None:
            _announce(group, verdict if rank == 0 else None)
    finally:
        # The group is closed before the handlers come back, and SIGTERM stays ignored until this
        # rank has nothing to report: closing can take a while after a rank died, and torchrun's
        # SIGTERM for the dead rank can land then (a CI run lost rank 0's message that way; its
        # SIGKILL 30 s later still ends a rank that hangs).
        dist.destroy_process_group()
        signals.restore(hold_term=True)

    own = outcome.error
    if own is not None and not isinstance(own, DensePlantainError):  # a bug: keep its traceback
        if verdict is not None:
            own.add_note(verdict)
        raise own
    if rank == 0:
        if verdict is not None:
            raise CaptureError(verdict)
        resumed = sum(r["resumed"] for r in reports.values()) if reports else outcome.resumed
        signals.restore()
        return CaptureResult(out, len(probe.pairs), states[0].capture.n_units, resumed, time.monotonic() - t0, world)
    if own is not None:
        raise CaptureError(f"{launch.name}: {own}")
    if reports is None:
        raise CaptureError(
            f"{launch.name} finished its shard ({shard_path(out, rank, world)}), but could not meet "
            f"rank 0 to merge ({meet_error}). "
            + (verdict or "Every shard is complete on disk: run the same command with --resume to merge them.")
        )
    signals.restore()
    return None


# --- one process finishing a distributed capture ---------------------------------------------------


def finish_shards(job: CaptureJob) -> CaptureResult:
    """Finish a distributed capture's shards one after the other in this process, then merge them.

    What ``dense-plantain capture --resume`` does without torchrun when shards of ``out`` exist:
    each unfinished shard continues (or starts) exactly as its rank would have, so the merged
    file is the one the distributed run would have written.
    """
    from dense_plantain.capture.model import choose_device

    t0 = time.monotonic()
    out = job.out_path
    job.validate()
    files = shard_files(out)
    if len(files) != 1:
        listing = "; ".join(f"{w} processes: {', '.join(p.name for p in ps)}" for w, ps in sorted(files.items()))
        raise CaptureError(
            f"shards of more than one distributed capture of {out} exist ({listing}). Delete the ones "
            "you do not want, then run again with --resume."
        )
    world = next(iter(files))
    if out.exists() and not job.force:
        raise CaptureError(f"{out} already exists; pass --force to overwrite it, or choose another --out.")
    probe = _probe_for(
        job,
        world,
        lambda n: (
            f"{out} has shards of a {world}-process capture, but the prompt file has only {n} pairs: it "
            "changed since. Pass --force to start over."
        ),
    )
    dev = choose_device(job.device)
    identity = run_identity(job.model, job.settings, dev, job.dtype, probe, job)
    with OutputLock(out, list(job.command) if job.command else None):
        return _finish_locked(job, out, world, identity, dev, t0)


def _finish_locked(job: CaptureJob, out: Path, world: int, identity: RunIdentity, dev, t0: float) -> CaptureResult:
    from dense_plantain.capture.model import load_pipeline

    probe = identity.probe
    loaded, resumed = None, 0
    for rank in range(world):
        launch = Launch(rank, world, 0, "")
        state = inspect_shard(out, rank, world, identity)
        if state.complete:
            resumed += state.n_done
            continue
        loaded = loaded or load_pipeline(job.model, device=job.device, dtype=job.dtype)
        outcome = _capture_shard(
            job.replace(resume=True, force=False),
            launch,
            identity,
            dev,
            loaded=loaded,
            show_progress=job.show_progress,
            owns_loaded=True,  # loaded above for these shards alone
        )
        if outcome.error is not None:
            states = [inspect_shard(out, r, world, identity) for r in range(world)]
            note = incomplete_message(out, states, identity)
            if isinstance(outcome.error, DensePlantainError):
                raise CaptureError(f"shard {rank} of {world}: {outcome.error}\n{note}") from None
            outcome.error.add_note(note)
            raise outcome.error
        resumed += outcome.resumed
    states = [inspect_shard(out, r, world, identity) for r in range(world)]
    if not all(s.complete for s in states):
        raise CaptureError(incomplete_message(out, states, identity))
    merge_shards(out, states, launched={"merged_by": "one process (--resume)"})
    return CaptureResult(out, len(probe.pairs), states[0].capture.n_units, resumed, time.monotonic() - t0, world)


def capture_here(job: CaptureJob) -> CaptureResult:
    """A capture in this one process.

    ``finish_shards`` when ``--resume`` finds shards of ``job.out``, else ``run.run_job``.
    """
    files = shard_files(job.out)
    if files:
        if job.resume:
            return finish_shards(job)
        if not job.force:
            names = ", ".join(p.name for paths in files.values() for p in paths)
            raise CaptureError(
                f"an unfinished distributed capture of this output exists ({names}). Pass --resume to "
                "finish it (here, or with torchrun), or --force to discard it and start over."
            )
        _remove_shards(job.out_path, list(files))
    return run_job(job)
