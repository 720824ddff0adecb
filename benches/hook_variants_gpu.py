"""Where the capture's batch-1 overhead goes, and what takes it back: hook variants on one GPU.

The Klein 4B transformer (random bf16 weights, 1024 x 1024, 512 text tokens) runs plain and with
each variant of the unit hooks, interleaved (plain, variant, variant, plain, ...), with CUDA
events; the overhead is the median of per-repeat ratios, as in ``capture_gpu.py``.

Variants:

* ``project``: the project's hooks (``capture.hooks.UnitHooks``), as shipped (reduction on the
  main stream);
* ``side``: the same hooks with ``side_stream=True``: the reduction on a second CUDA stream,
  overlapping the output projection that reads the same activation (checked to give the same bits);
* ``empty``: pre-hooks on the same modules that do nothing (the cost of the hook calls alone);
* ``stage1``: only the first reduction stage (column norms over 32 token chunks);

Every variant that fills the buffer is checked against ``project``'s values (the same kernels
on another stream must give the same bits).

Run on the GPU machine: ``python benches/hook_variants_gpu.py --out $OUT/hook-variants.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capture_gpu import build_transformer, gpu_health, timed, transformer_inputs  # noqa: E402
from dense_plantain.capture.hooks import UnitHooks  # noqa: E402
from dense_plantain.units import build_layout  # noqa: E402


class EmptyHooks(UnitHooks):
    """The same pre-hooks, doing nothing: what the calls alone cost."""

    def _reduce(self, x, stream, reductions) -> None:
        return None


class Stage1Hooks(UnitHooks):
    """Only the first stage of the reduction (the one pass over the activation)."""

    def _reduce(self, x, stream, reductions) -> None:
        for red in reductions:
            cols = x[..., red.col_start : red.col_stop]
            n_tok = cols.shape[1]
            whole = (n_tok // 32) * 32
            torch.linalg.vector_norm(cols[:, :whole].unflatten(1, (32, -1)), dim=2, dtype=torch.float32)


class SideStreamHooks(UnitHooks):
    """The project's reduction on a second CUDA stream (``side_stream=True``)."""

    def __init__(self, transformer, layout):
        super().__init__(transformer, layout, side_stream=True)


VARIANTS = {"project": UnitHooks, "side": SideStreamHooks, "empty": EmptyHooks, "stage1": Stage1Hooks}


def measure(model, layout, batch: int, warmup: int, repeats: int, variants=tuple(VARIANTS)) -> dict:
    inputs = transformer_inputs(model, batch, "cuda")
    hooks = {name: VARIANTS[name](model, layout) for name in variants}

    def plain():
        with torch.inference_mode():
            model(**inputs)

    def hooked(h):
        def run():
            with torch.inference_mode():
                h.begin()
                model(**inputs)
                return h.end().cpu().numpy()

        return run

    ref = None
    values = {}
    for name, h in hooks.items():
        h.install()
        try:
            values[name] = hooked(h)()
        finally:
            h.remove()
    ref = values["project"]
    for _ in range(warmup):
        plain()
    times: dict[str, list[float]] = {name: [] for name in hooks}
    plain_times: list[float] = []
    for i in range(repeats):
        names = list(hooks) if i % 2 == 0 else list(reversed(hooks))
        plain_times.append(timed(plain))
        for name in names:
            h = hooks[name]
            h.install()
            try:
                times[name].append(timed(hooked(h)))
            finally:
                h.remove()
        plain_times.append(timed(plain))
    plain_pairs = [(plain_times[2 * i] + plain_times[2 * i + 1]) / 2 for i in range(repeats)]
    out = {"batch": batch, "plain_ms": statistics.median(plain_times), "variants": {}}
    for name, ts in times.items():
        ratios = np.array([t / p for t, p in zip(ts, plain_pairs)])
        # 95 % interval of the median ratio: percentile bootstrap over the repeats (seeded).
        rng = np.random.default_rng(0)
        boot = np.median(ratios[rng.integers(0, len(ratios), size=(2000, len(ratios)))], axis=1)
        row = {
            "ms": statistics.median(ts),
            "overhead": float(np.median(ratios)) - 1.0,
            "overhead_ci95": [float(np.percentile(boot, 2.5)) - 1.0, float(np.percentile(boot, 97.5)) - 1.0],
            "spread_ms": [min(ts), max(ts)],
        }
        if name == "side":
            row["bit_identical_to_project"] = bool(np.array_equal(values[name], ref))
        out["variants"][name] = row
        print(
            f"batch {batch} {name:8s}: {row['ms']:.2f} ms (plain {out['plain_ms']:.2f}) overhead "
            f"{100 * row['overhead']:+.2f} % (95 % CI {100 * row['overhead_ci95'][0]:+.2f} .. "
            f"{100 * row['overhead_ci95'][1]:+.2f})"
            + (f", same bits {row.get('bit_identical_to_project')}" if name == "side" else ""),
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset of the variants.")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    model = build_transformer("cuda")
    layout = build_layout(model.config, "plantain")
    health = gpu_health("cuda")
    variants = ("project", *[v for v in args.variants.split(",") if v != "project"])
    rows = [measure(model, layout, int(b), args.warmup, args.repeats, variants) for b in args.batches.split(",")]
    args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "health": health, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
