"""``capture --seeds 0,1,2,3``: every prompt under each of several noise seeds.

Each seed is an ordinary capture (same prompts, settings and batching, the noise drawn with that
seed) written to ``OUT.seed-<s>.safetensors``, with its own partial file, so an interrupted run
resumes per seed (``--resume`` keeps finished seed files and continues the unfinished one). When
every seed is done, ``OUT`` gets:

* ``a``/``b``: per prompt, the mean over seeds of the per-seed values (float64 mean, stored float32);
* ``a_seeds``/``b_seeds`` ``[seeds x pairs x units]``: each seed's values, as captured;
* ``meta["seeds"]``: the seeds in order; ``meta["settings"]["seed"]`` the same list (so two
  captures compare equal only with the same seeds); the rest of the metadata is the first seed's,
  with every seed's runs.

The per-seed files are removed once ``OUT`` is written (``OUT`` holds all their values). One seed
(``--seed N`` or ``--seeds N``) is exactly today's capture, with no ``seeds`` tensors. torchrun
captures take one seed at a time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dense_plantain.capture.job import CaptureJob
from dense_plantain.capture.run import CaptureResult, run_job
from dense_plantain.errors import CaptureError

__all__ = ["combine_seed_captures", "parse_seeds", "run_seeds", "seed_path"]

#: More seeds than this in one capture is refused (a typo such as 0-1000 would run for days).
MAX_SEEDS = 64


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "0,1,2,3", "0-7" or "0-3,9" as distinct non-negative seeds, in the order given."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
                if hi < lo:
                    raise CaptureError(f"--seeds: range {part!r} runs backwards; write it as {hi}-{lo}.")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise CaptureError(
                f"--seeds: {part!r} is not a seed or a range; use e.g. 0,1,2,3 or 0-7 (non-negative integers)."
            ) from None
    if not out:
        raise CaptureError("--seeds: give at least one seed, e.g. 0,1,2,3 or 0-7.")
    if any(s < 0 for s in out):
        raise CaptureError(f"--seeds: seeds must be non-negative, got {min(out)}.")
    repeated = sorted({s for s in out if out.count(s) > 1})
    if repeated:
        raise CaptureError(f"--seeds: seed(s) {', '.join(map(str, repeated))} given more than once.")
    if len(out) > MAX_SEEDS:
        raise CaptureError(f"--seeds: {len(out)} seeds; at most {MAX_SEEDS} in one capture.")
    return tuple(out)


def seed_path(out: str | Path, seed: int) -> Path:
    """Where seed ``seed`` of a multi-seed capture of ``out`` is captured: ``OUT.seed-<s>.safetensors``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.seed-{seed}{out.suffix or '.safetensors'}")


def _seed_of(meta: dict[str, Any]) -> Any:
    settings = meta.get("settings")
    return settings.get("seed") if isinstance(settings, dict) else None


def combine_seed_captures(out: str | Path, paths: Sequence[Path], seeds: Sequence[int]) -> Path:
    """Write ``out`` from finished per-seed captures (see the module docs); returns ``out``."""
    from dense_plantain.store import read_capture, write_capture

    caps = [read_capture(p) for p in paths]
    first = caps[0]
    ids = [p.get("id") for p in first.meta.get("pairs", [])]
    for cap, seed in zip(caps, seeds, strict=True):
        if _seed_of(cap.meta) != seed:
            raise CaptureError(f"{cap.path} was captured with seed {_seed_of(cap.meta)!r}, not {seed}.")
        if cap.a.shape != first.a.shape or [p.get("id") for p in cap.meta.get("pairs", [])] != ids:
            raise CaptureError(
                f"{cap.path} holds {cap.a.shape[0]} pairs x {cap.a.shape[1]} units, {first.path} holds "
                f"{first.a.shape[0]} x {first.a.shape[1]} (or other pair ids); the seeds of one capture must "
                "share prompts and layout. Remove the seed files and capture again with --force."
            )
    a_seeds = np.stack([c.a for c in caps]).astype(np.float32)
    b_seeds = np.stack([c.b for c in caps]).astype(np.float32)
    a = a_seeds.astype(np.float64).mean(axis=0).astype(np.float32)
    b = b_seeds.astype(np.float64).mean(axis=0).astype(np.float32)
    meta = dict(first.meta)
    settings = dict(meta.get("settings") or {})
    settings["seed"] = [int(s) for s in seeds]
    settings["noise"] = (
        f"torch.Generator('cpu').manual_seed(s) for each s in {list(seeds)}; each seed's single-prompt draw of "
        "Flux2KleinPipeline.prepare_latents, repeated for every prompt; a/b hold the mean over seeds"
    )
    meta["settings"] = settings
    meta["seeds"] = [int(s) for s in seeds]
    meta["runs"] = [dict(run, seed=int(s)) for cap, s in zip(caps, seeds) for run in cap.meta.get("runs", [])]
    meta["finished"] = max(str(c.meta.get("finished", "")) for c in caps) or meta.get("finished")
    return write_capture(Path(out), a, b, meta, extra={"a_seeds": a_seeds, "b_seeds": b_seeds})


def run_seeds(job: CaptureJob, seeds: Sequence[int], *, loaded=None) -> CaptureResult:
    """Capture ``job`` under each seed and combine (one seed: ``run_job`` with that seed, unchanged)."""
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) == 1:
        return run_job(job.replace(settings=dataclasses.replace(job.settings, seed=seeds[0])), loaded=loaded)
    t0 = time.monotonic()
    job.validate()
    out = job.out_path
    if out.exists() and not job.force:
        raise CaptureError(f"{out} already exists; pass --force to overwrite it, or choose another --out.")
    paths = [seed_path(out, s) for s in seeds]
    resumed = 0
    owned = False  # whether this function loaded the pipeline itself (a baseline may then leave it random)
    for seed, path in zip(seeds, paths, strict=True):
        sub = job.replace(out=path, settings=dataclasses.replace(job.settings, seed=seed))
        if path.exists() and not job.force:
            if not job.resume:
                raise CaptureError(
                    f"seed {seed} of an unfinished multi-seed capture of {out} exists ({path}). Pass --resume to "
                    "keep the finished seeds and continue, or --force to start over."
                )
            from dense_plantain.store import read_capture

            if _seed_of(read_capture(path).meta) != seed:
                raise CaptureError(f"{path} was not captured with seed {seed}; remove it or pass --force.")
            resumed += 1
            continue
        if loaded is None:
            from dense_plantain.capture.model import load_pipeline

            loaded, owned = load_pipeline(job.model, device=job.device, dtype=job.dtype), True
        run_job(sub, loaded=loaded, owns_loaded=owned)
    combine_seed_captures(out, paths, seeds)
    for path in paths:
        path.unlink(missing_ok=True)
    from dense_plantain.store import read_capture

    cap = read_capture(out)
    # resumed_from counts pairs: those of the seeds finished before this run.
    return CaptureResult(out, cap.n_pairs, cap.n_units, resumed * cap.n_pairs, time.monotonic() - t0)
