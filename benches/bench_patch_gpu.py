"""Speed and memory of `dense-plantain patch` at FLUX.2 [klein] 4B scale, random weights.

Two parts, on a bare ``Flux2Transformer2DModel`` built from the Klein 4B config with random bf16
weights (``capture_gpu.build_transformer``), at 1024 x 1024 (4,096 image tokens) and 512 text
tokens (``capture_gpu.transformer_inputs``):

1. one forward with no hooks against one patched forward (``patch.hooks.Write`` writing a unit
   set's kept columns from another run) for sets of 16, 64, 256, 1024 random plantain units and
   for all units, batch 1; median over repeats (CUDA events). Goal: patched within 3 % of plain.
   Also the kept columns' size per set, and the extra peak memory of a patched forward.
2. the whole measure loop of ``patch.run.run_batch`` for 25 synthetic pairs (A and B differ in
   their random text embeddings, share the noise) with sets top:16, 64, 256, 1024 (two folds,
   units drawn at random since there is no capture) and 20 composition-matched random sets each:
   the forwards counted, the wall time, and the time per forward against the plain forward
   (forward-bound: the ratio near 1).

Run on the GPU machine::

    python benches/bench_patch_gpu.py --out benches/results/patch-gpu.json

``--tiny`` runs the same code on the CPU with a tiny config and small inputs (a check that the
bench runs, not a measurement).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import capture_gpu  # noqa: E402  (the Klein 4B transformer, its inputs, CUDA timing and peak memory)
from dense_plantain.patch.hooks import ColumnPlan, Keep, Write  # noqa: E402
from dense_plantain.patch.run import BatchPatcher, PatchSettings, forward_counts, run_batch  # noqa: E402
from dense_plantain.patch.spec import UnitSet, draw_random_sets, fold_assignment  # noqa: E402
from dense_plantain.units import build_layout  # noqa: E402

SET_SIZES = (16, 64, 256, 1024)


def build(tiny: bool, device: str):
    if not tiny:
        model = capture_gpu.build_transformer(device)
        return model, lambda batch, seed: capture_gpu.transformer_inputs(model, batch, device, seed)
    from dense_plantain.capture.model import random_transformer, synthetic_inputs
    from dense_plantain.capture.tiny import TINY_TRANSFORMER

    model = random_transformer(TINY_TRANSFORMER, device=device, dtype=torch.float32).requires_grad_(False)
    return model, lambda batch, seed: synthetic_inputs(
        model, batch_size=batch, image_grid=(8, 8), text_tokens=32, seed=seed
    )


def timer(device: str):
    """Median ms of ``fn``: CUDA events on the GPU (capture_gpu's), wall time on the CPU."""
    if device == "cuda":
        return capture_gpu.cuda_median_ms

    def wall_ms(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def cpu_median_ms(fn, warmup: int, repeats: int) -> float:
        [fn() for _ in range(warmup)]
        return statistics.median(wall_ms(fn) for _ in range(repeats))

    return cpu_median_ms


def peak_extra_mib(device: str, fn) -> float | None:
    return capture_gpu.peak_extra_mib(fn) if device == "cuda" else None


def bench_forward(model, inputs, layout, device: str, warmup: int, repeats: int) -> dict:
    median_ms = timer(device)
    rng = np.random.default_rng(0)
    kw_a, kw_b = inputs(1, 0), inputs(1, 1)
    kw_b["hidden_states"] = kw_a["hidden_states"]

    def plain():
        with torch.inference_mode():
            model(**kw_a)

    plain_ms = median_ms(plain, warmup, repeats)
    plain_peak = peak_extra_mib(device, plain)
    rows = []
    sizes = [k for k in SET_SIZES if k <= layout.n_units] + [layout.n_units]
    for k in sizes:
        units = np.sort(rng.choice(layout.n_units, size=k, replace=False))
        plan = ColumnPlan(layout, units, device=model.device)
        with Keep(model, plan) as keep, torch.inference_mode():
            model(**kw_b)
        kept = keep.kept
        kept_mib = sum(v.numel() * v.element_size() for v in kept.values()) / 2**20

        def patched(plan=plan, kept=kept):
            with Write(model, plan, plan, kept), torch.inference_mode():
                model(**kw_a)

        ms = median_ms(patched, warmup, repeats)
        peak = peak_extra_mib(device, patched)
        rows.append(
            {
                "units": int(k),
                "patched_ms": ms,
                "overhead_pct": 100.0 * (ms / plain_ms - 1.0),
                "kept_columns_mib": kept_mib,
                "peak_extra_mib_over_plain": None if peak is None else peak - plain_peak,
            }
        )
    return {"plain_ms": plain_ms, "sets": rows}


class SyntheticPatcher(BatchPatcher):
    """``BatchPatcher`` whose A and B passes are transformer forwards on synthetic inputs."""

    def __init__(self, model, inputs, layout, n_image: int, settings: PatchSettings):
        self.pipe = SimpleNamespace(transformer=model)
        self.settings = settings
        self.layout = layout
        self.n_image = n_image
        self.device = model.device
        self.inputs = inputs
        self._init_counts()
        self.n_text = inputs(1, 0)["encoder_hidden_states"].shape[1]

    def base_pass(self, prompts, keep_plan):
        parts = [self.inputs(1, int(p)) for p in prompts]
        noise = self.inputs(1, 0)["hidden_states"]
        kw = dict(parts[0])
        kw["hidden_states"] = noise.expand(len(prompts), -1, -1).contiguous()
        for key in ("encoder_hidden_states", "timestep", "img_ids", "txt_ids"):
            kw[key] = torch.cat([p[key] for p in parts])
        with Keep(self.pipe.transformer, keep_plan) as keep, torch.inference_mode():
            out = self.pipe.transformer(**kw)[0]
        self.forwards["pipeline"] += 1
        return kw, out[:, : self.n_image], keep.kept


def bench_run(model, inputs, layout, device: str, args, plain_ms: float) -> dict:
    """The CLI's pair loop (``run_batch`` per batch, fold by fold) on synthetic pairs, counted as the CLI counts."""
    n_pairs, batch = args.pairs, args.batch
    n_image = inputs(1, 0)["hidden_states"].shape[1]
    settings = PatchSettings(batch_size=batch, random_sets=args.random_sets, max_kept_mib=args.max_kept_mib)
    patcher = SyntheticPatcher(model, inputs, layout, n_image, settings)
    folds = fold_assignment(n_pairs, 0)
    rng = np.random.default_rng(1)
    sets = []
    for k in SET_SIZES:
        if k > layout.n_units:
            continue
        chosen = [np.sort(rng.choice(layout.n_units, size=k, replace=False)) for _ in (0, 1)]
        sets.append(UnitSet(f"top:{k}", f"top:{k}", chosen, cross_fitted=True, top_k=k))
    draw_random_sets(sets, layout, args.random_sets, seed=0)
    pairs = [SimpleNamespace(id=f"p{i}", a=str(2 * i + 1), b=str(2 * i + 2)) for i in range(n_pairs)]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n_batches = 0
    for fold in (0, 1):
        idx = [i for i in range(n_pairs) if folds[i] == fold]
        for k in range(0, len(idx), batch):
            run_batch(patcher, [pairs[i] for i in idx[k : k + batch]], sets, fold)
            n_batches += 1
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    counts = forward_counts(patcher, sets, n_batches, n_pairs, seconds)
    return {
        "pairs": n_pairs,
        "sets": [s.spec for s in sets],
        "random_sets_per_set": args.random_sets,
        "batch_pairs": batch,
        "max_kept_mib": args.max_kept_mib,
        "forwards": counts,
        "seconds": seconds,
        "ms_per_forward": counts["ms_per_forward"],
        "forward_bound_ratio": counts["ms_per_forward"] / plain_ms if batch == 1 else None,
        "kept_peak_mib": patcher.kept_peak_bytes / 2**20,
        "kept_groups": {str(f): len(patcher.groups_for(sets, f)) for f in (0, 1)},
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="Write the figures as JSON here.")
    ap.add_argument("--tiny", action="store_true", help="Tiny config on the CPU: a check that the bench runs.")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=25)
    ap.add_argument("--random-sets", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1, help="Pairs per forward in the run part.")
    ap.add_argument("--max-kept-mib", type=float, default=PatchSettings.max_kept_mib, help="As the CLI's.")
    ap.add_argument("--skip-run", action="store_true", help="Only the forward timings.")
    args = ap.parse_args()
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here; use --tiny for a CPU check")
    if args.tiny:
        args.warmup, args.repeats = min(args.warmup, 1), min(args.repeats, 3)
    model, inputs = build(args.tiny, device)
    layout = build_layout(dict(model.config), "plantain")
    fwd = bench_forward(model, inputs, layout, device, args.warmup, args.repeats)
    print(f"plain forward: {fwd['plain_ms']:.2f} ms ({layout.n_units:,} plantain units)")
    print(f"{'units':>7} {'patched ms':>11} {'overhead %':>11} {'kept MiB':>9} {'extra peak MiB':>15}")
    for r in fwd["sets"]:
        peak = "n/a" if r["peak_extra_mib_over_plain"] is None else f"{r['peak_extra_mib_over_plain']:.1f}"
        print(
            f"{r['units']:>7,} {r['patched_ms']:>11.2f} {r['overhead_pct']:>11.2f} {r['kept_columns_mib']:>9.2f} "
            f"{peak:>15}"
        )
    record = {
        "bench": "patch",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine(),
        "tiny": args.tiny,
        "torch": torch.__version__,
        "forward": fwd,
    }
    if not args.skip_run:
        run = bench_run(model, inputs, layout, device, args, fwd["plain_ms"])
        record["run"] = run
        ratio, f = run["forward_bound_ratio"], run["forwards"]
        print(
            f"run: {run['pairs']} pairs, sets {', '.join(run['sets'])} x (1 + {run['random_sets_per_set']} random): "
            f"{f['pipeline_passes']} base + {f['keep_forwards']} keep + {f['patched_forwards']} patched forwards "
            f"in {run['seconds']:.1f} s, {run['ms_per_forward']:.2f} ms per forward"
            + ("" if ratio is None else f" ({ratio:.3f} x the plain forward)")
            + f"; kept peak {run['kept_peak_mib']:.1f} MiB, kept groups {run['kept_groups']}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
