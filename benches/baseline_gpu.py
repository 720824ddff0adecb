"""Cost of the random-weights baseline's re-initialisation (``capture --weights random``) on one GPU.

Builds the full FLUX.2 [klein] 4B transformer from its config in bf16 (``capture_gpu.build_transformer``)
and times ``capture.reinit.reinitialise_module`` on it, the very function ``capture --weights random``
calls: a fresh default initialisation built on the device under ``torch.manual_seed``, copied into
the loaded tensors. Also reported: extra peak GPU memory, whether two re-initialisations with one
seed are bit-identical and with another seed differ, and whether the global random state is restored.
``--text-encoder`` also times ``random-all``'s text-encoder part on a Qwen3-4B-config model.

GPU: ``python benches/baseline_gpu.py --out benches/results/baseline-gpu.json``.
CPU check (a tiny config, seconds): ``python benches/baseline_gpu.py --tiny --device cpu --out /tmp/b.json``.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dense_plantain.capture.reinit import reinitialise_module  # noqa: E402


def build(device: str, tiny: bool):
    if not tiny:
        from capture_gpu import build_transformer

        return build_transformer(device)
    from diffusers import Flux2Transformer2DModel

    from dense_plantain.capture.tiny import TINY_TRANSFORMER

    torch.manual_seed(0)
    with torch.device(device):
        model = Flux2Transformer2DModel(**TINY_TRANSFORMER)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def build_text_encoder(device: str, tiny: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from capture_gpu import QWEN3_4B

    cfg = dict(QWEN3_4B)
    if tiny:
        cfg.update(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        cfg.update(num_key_value_heads=1, head_dim=16)
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config(**cfg))
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def checksum(model) -> float:
    return float(sum(p.detach().double().abs().sum().item() for p in model.parameters()))


def time_reinit(model, device: str, repeats: int) -> dict:
    seconds = []
    peak = None
    for k in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sync(device)
        t0 = time.perf_counter()
        reinitialise_module(model, seed=k % 2)
        sync(device)
        seconds.append(time.perf_counter() - t0)
        if device.startswith("cuda"):
            peak = max(peak or 0.0, (torch.cuda.max_memory_allocated() - base) / 2**30)
    reinitialise_module(model, seed=0)
    first = checksum(model)
    reinitialise_module(model, seed=0)
    same = checksum(model) == first and all(torch.isfinite(p).all().item() for p in model.parameters())
    reinitialise_module(model, seed=1)
    differs = checksum(model) != first
    torch.manual_seed(123)
    expect = torch.rand(4)
    torch.manual_seed(123)
    reinitialise_module(model, seed=5)
    restored = bool(torch.equal(torch.rand(4), expect))
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "parameters": n_params,
        "seconds_median": statistics.median(seconds),
        "seconds_max": max(seconds),
        "seconds": seconds,
        "extra_peak_gib": peak,
        "same_seed_identical": bool(same),
        "other_seed_differs": bool(differs),
        "global_rng_restored": restored,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benches/results/baseline-gpu.json"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a tiny config (to check the script on a CPU)")
    parser.add_argument("--text-encoder", action="store_true", help="also the Qwen3-4B-config text encoder")
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = build(args.device, args.tiny)
    sync(args.device)
    rows = {"transformer": {"build_s": time.perf_counter() - t0, **time_reinit(model, args.device, args.repeats)}}
    del model
    if args.text_encoder:
        t0 = time.perf_counter()
        te = build_text_encoder(args.device, args.tiny)
        sync(args.device)
        rows["text_encoder"] = {"build_s": time.perf_counter() - t0, **time_reinit(te, args.device, args.repeats)}
        del te
    record = {
        "bench": "baseline_gpu",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "tiny": args.tiny,
        "torch": torch.__version__,
        "results": rows,
    }
    print(f"{'part':<14}{'params':>16}{'reinit s (median)':>20}{'max s':>8}{'extra GiB':>11}  same seed / other / rng")
    for part, r in rows.items():
        gib = "-" if r["extra_peak_gib"] is None else f"{r['extra_peak_gib']:.1f}"
        checks = f"{r['same_seed_identical']} / {r['other_seed_differs']} / {r['global_rng_restored']}"
        print(
            f"{part:<14}{r['parameters']:>16,}{r['seconds_median']:>20.2f}{r['seconds_max']:>8.2f}{gib:>11}  {checks}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
