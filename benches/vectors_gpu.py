"""What ``capture --vectors`` costs on one GPU: the capture hooks with and without signed vectors.

FLUX.2 [klein] 4B shapes with random bf16 weights (``capture_gpu.build_transformer``), 1024 x 1024
(4,096 image tokens) and 512 text tokens (``capture_gpu.transformer_inputs``). Three forwards are
timed with CUDA events after warm-up, interleaved in a rotating order (plain, RMS hooks, RMS +
vector hooks; then shifted by one each repeat) so that clock or contention drift hits all alike:

* ``plain``: the transformer with no hooks;
* ``rms``: the capture hooks as without ``--vectors`` (the batch's one device-to-host copy of the
  ``[batch, units]`` RMS buffer included);
* ``vectors``: the hooks with ``vectors=True`` (both copies included: RMS and the
  ``[batch, units * 16]`` vector buffer).

The overhead of vectors is the median over repeats of ``vectors / rms - 1`` (goal: within 1 % at
batch 4); the table also gives each against the plain forward. Checked once per batch: the RMS
with vectors on equals the RMS without bit for bit, and every vector value is finite.

Run on the GPU machine: ``python benches/vectors_gpu.py --out benches/results/vectors-gpu.json``
(needs diffusers there). CI does not run this; ``python -m py_compile`` checks it elsewhere.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import statistics
from typing import Any

import numpy as np

MODES = ("plain", "rms", "vectors")


def rotating_order(i: int) -> tuple[str, ...]:
    """The order of the three modes in repeat ``i``: each mode runs first, second and third alike."""
    k = i % len(MODES)
    return MODES[k:] + MODES[:k]


def overhead_row(times: dict[str, list[float]]) -> dict[str, Any]:
    """Medians, spreads and median per-repeat ratios of one batch's timings (ms lists, same length)."""
    med = {m: statistics.median(times[m]) for m in MODES}

    def ratio(num: str, den: str) -> float:
        return statistics.median([a / b for a, b in zip(times[num], times[den])]) - 1.0

    return {
        **{f"{m}_ms": med[m] for m in MODES},
        **{f"{m}_ms_spread": [min(times[m]), max(times[m])] for m in MODES},
        "vectors_over_rms": ratio("vectors", "rms"),
        "rms_over_plain": ratio("rms", "plain"),
        "vectors_over_plain": ratio("vectors", "plain"),
        "repeats": len(times["plain"]),
    }


def table(rows: dict[int, dict[str, Any]]) -> str:
    lines = [
        "| batch | plain | RMS hooks | RMS + vectors | vectors vs RMS | RMS vs plain | vectors vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, r in rows.items():
        lines.append(
            f"| {batch} | {r['plain_ms']:.2f} ms | {r['rms_ms']:.2f} ms | {r['vectors_ms']:.2f} ms | "
            f"{100 * r['vectors_over_rms']:+.2f} % | {100 * r['rms_over_plain']:+.2f} % | "
            f"{100 * r['vectors_over_plain']:+.2f} % |"
        )
    return "\n".join(lines)


def bench(model, layout, device: str, batches: list[int], warmup: int, repeats: int) -> dict[int, dict[str, Any]]:
    import torch

    from capture_gpu import timed, transformer_inputs
    from dense_plantain.capture.hooks import UnitHooks

    hooks = {"rms": UnitHooks(model, layout), "vectors": UnitHooks(model, layout, vectors=True)}
    rows: dict[int, dict[str, Any]] = {}
    for batch in batches:
        inputs = transformer_inputs(model, batch, device)

        def run(mode: str) -> tuple[Any, Any]:
            h = hooks.get(mode)
            with torch.inference_mode():
                if h is None:
                    model(**inputs)
                    return None, None
                h.install()
                try:
                    h.begin()
                    model(**inputs)
                    values = h.collect()
                    vec = h.collect_vectors() if mode == "vectors" else None
                finally:
                    h.remove()
                return values, vec

        for mode in MODES:
            for _ in range(warmup):
                run(mode)
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for i in range(repeats):
            for mode in rotating_order(i):
                times[mode].append(timed(lambda: run(mode)))
        rms, _ = run("rms")
        rms_v, vec = run("vectors")
        row = overhead_row(times)
        row.update(
            units=int(rms.shape[1]),
            vector_columns=int(vec.shape[1]),
            rms_identical=bool(np.array_equal(rms, rms_v)),
            vectors_finite=bool(np.isfinite(vec).all()),
            vector_range=[float(vec.min()), float(vec.max())],
        )
        rows[batch] = row
        print(
            f"batch {batch}: plain {row['plain_ms']:.2f} ms, RMS {row['rms_ms']:.2f} ms, RMS + vectors "
            f"{row['vectors_ms']:.2f} ms -> vectors vs RMS {100 * row['vectors_over_rms']:+.2f} % "
            f"(RMS identical {row['rms_identical']}, finite {row['vectors_finite']})",
            flush=True,
        )
    return rows


def main() -> None:
    from capture_gpu import build_transformer, forward_bench_parser, gpu_health

    args = forward_bench_parser(__doc__, "benches/results/vectors-gpu.json", "1,4", 21).parse_args()

    import torch

    from dense_plantain.units import build_layout

    device = "cuda"
    health = gpu_health(device)
    model = build_transformer(device)
    layout = build_layout(dict(model.config), "plantain")
    batches = [int(b) for b in args.batches.split(",")]
    rows = bench(model, layout, device, batches, args.warmup, args.repeats)
    record = {
        "bench": "vectors_gpu",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "health": health,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "layout": layout.name,
        "n_units": layout.n_units,
        "vector_width": 16,
        "height": 1024,
        "width": 1024,
        "text_tokens": 512,
        "warmup": args.warmup,
        "batches": {str(b): r for b, r in rows.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
