"""Loading a full-size FLUX.2 [klein] 4B pipeline folder onto one GPU: two ways, timed.

No real weights reach the GPU machine, so ``make`` writes a local pipeline folder of the real
sizes with random bf16 weights: the Klein 4B transformer (``capture_gpu.build_transformer``), a
Qwen3-4B-config text encoder, a full-config ``AutoencoderKLFlux2``, the scheduler and the real
Qwen3 tokenizer (``capture_gpu.build_pipeline``), saved with ``save_pretrained`` as safetensors.

``load`` times, in a fresh process each time, from the call to the pipeline being usable on the
GPU (``torch.cuda.synchronize()`` after the move):

* ``project``: what ``dense-plantain capture --model FOLDER`` does, ``capture.model.load_pipeline``;
* ``cpu-then-cuda``: ``Flux2KleinPipeline.from_pretrained(folder, torch_dtype=bf16)`` then ``.to("cuda")``;
* ``device-map``: ``from_pretrained(folder, torch_dtype=bf16, device_map="cuda")``: safetensors
  loaded straight to the GPU.

Each process also reports a checksum of a few weights, so the ways are seen to load the same
tensors. The page cache is whatever the machine has (the folder was just written, so warm,
unless ``--drop-caches`` works, which needs root). Run on the GPU machine::

    python benches/load_gpu.py make /tmp/klein4b-random
    python benches/load_gpu.py compare /tmp/klein4b-random --repeats 2 --out $OUT/load-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODES = ("cpu-then-cuda", "device-map")


def make(folder: Path) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from capture_gpu import build_pipeline, build_transformer

    t0 = time.perf_counter()
    pipe = build_pipeline(build_transformer("cuda"), "cuda")
    torch.cuda.synchronize()
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe.save_pretrained(folder, safe_serialization=True)
    saved = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    out = {"build_s": built, "save_s": saved, "bytes": size}
    print(f"made {folder}: built {built:.1f} s, saved {saved:.1f} s, {size / 2**30:.2f} GiB", flush=True)
    return out


def load_once(folder: Path, mode: str) -> dict:
    import torch

    t0 = time.perf_counter()
    if mode == "project":
        from dense_plantain.capture.model import load_pipeline

        pipe = load_pipeline(str(folder), device="cuda", dtype="bfloat16").pipe
    else:
        from diffusers import Flux2KleinPipeline

        if mode == "cpu-then-cuda":
            pipe = Flux2KleinPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
            pipe.to("cuda")
        else:
            pipe = Flux2KleinPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, device_map="cuda")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    devices = sorted({str(p.device) for m in (pipe.transformer, pipe.text_encoder, pipe.vae) for p in m.parameters()})
    checksum = float(sum(p.float().sum().item() for p in list(pipe.transformer.parameters())[:8]))
    return {
        "mode": mode,
        "seconds": seconds,
        "devices": devices,
        "checksum": checksum,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def compare(folder: Path, repeats: int, drop: bool) -> dict:
    rows = []
    for r in range(repeats):
        order = MODES if r % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            dropped = drop_caches() if drop else False
            proc = subprocess.run(
                [sys.executable, __file__, "once", str(folder), "--mode", mode],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"load {mode} failed")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["cold_cache"] = dropped
            rows.append(row)
            print(
                f"{mode:14s} {row['seconds']:6.2f} s  devices {row['devices']}  peak {row['peak_gib']:.1f} GiB  "
                f"checksum {row['checksum']:.6g}  cold cache {dropped}",
                flush=True,
            )
    summary = {m: min(r["seconds"] for r in rows if r["mode"] == m) for m in MODES}
    return {"rows": rows, "best_seconds": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("folder", type=Path)
    o = sub.add_parser("once")
    o.add_argument("folder", type=Path)
    o.add_argument("--mode", choices=MODES, required=True)
    c = sub.add_parser("compare")
    c.add_argument("folder", type=Path)
    c.add_argument("--repeats", type=int, default=2)
    c.add_argument("--drop-caches", action="store_true")
    c.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.cmd == "make":
        made = make(args.folder)
        (args.folder / "made.json").write_text(json.dumps(made))
    elif args.cmd == "once":
        print(json.dumps(load_once(args.folder, args.mode)))
    else:
        result = compare(args.folder, args.repeats, args.drop_caches)
        made = args.folder / "made.json"
        if made.exists():
            result["made"] = json.loads(made.read_text())
        result["host"] = {"cpus": os.cpu_count()}
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
