"""Real-scale capture speed and memory on one GPU: FLUX.2 [klein] 4B shapes, random weights.

No real weights can reach the GPU machine, so the transformer is built from the Klein 4B config
(dense_plantain/capture/klein_4b_transformer.json) with random bf16 weights. The end-to-end part
puts it in a real ``Flux2KleinPipeline`` with a full-size Qwen3-4B-config text encoder (random
bf16 weights), the project's locally trained tiny tokenizer (prompts still pad to 512 tokens),
and a full-config ``AutoencoderKLFlux2`` (random; not run: the capture stops at latents).

Measured, at 1024 x 1024 (4,096 image tokens) and 512 text tokens, with CUDA events after
warm-up, median over repeats:

* the transformer forward with no hooks vs with the project's capture hooks (fused per-unit
  RMS, one device-to-host copy per batch, included in the time), batch 1, 2, 4, 8;
* two rival habits at batch 1: an unfused float32 RMS in the hooks, and copying every hooked
  activation to the host (what general-purpose capture tools do);
* extra peak GPU memory of the capture over the plain forward;
* unit count and finiteness;
* end-to-end capture of the 25 bundled dense-plantain pairs (text encoding + one step per
  prompt) after the model is loaded.

Run on the GPU machine: ``python benches/capture_gpu.py --out benches/results/capture-gpu.json``.
CI does not run this.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dense_plantain.capture import KLEIN_4B_CONFIG, capture_prompts, install_unit_hooks
from dense_plantain.capture.tiny import TINY_SCHEDULER, build_tokenizer
from dense_plantain.prompts import bundled_path, load_probe
from dense_plantain.units import build_layout

HEIGHT = WIDTH = 1024
TEXT_TOKENS = 512
#: Qwen3-4B's public config (the FLUX.2 [klein] 4B text encoder).
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def build_transformer(device: str):
    from diffusers import Flux2Transformer2DModel

    config = json.loads(Path(KLEIN_4B_CONFIG).read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    with torch.device(device):
        model = Flux2Transformer2DModel.from_config(config)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def transformer_inputs(model, batch: int, device: str, seed: int = 0) -> dict:
    from diffusers import Flux2KleinPipeline

    g = torch.Generator(device).manual_seed(seed)
    side = HEIGHT // 16  # VAE x8, 2x2 patches
    latents = torch.randn(batch, model.config.in_channels, side, side, generator=g, device=device)
    hidden = latents.flatten(2).transpose(1, 2).to(torch.bfloat16)
    text = torch.randn(batch, TEXT_TOKENS, model.config.joint_attention_dim, generator=g, device=device)
    return dict(
        hidden_states=hidden,
        encoder_hidden_states=text.to(torch.bfloat16),
        timestep=torch.ones(batch, device=device, dtype=torch.bfloat16),
        img_ids=Flux2KleinPipeline._prepare_latent_ids(latents).to(device),
        txt_ids=Flux2KleinPipeline._prepare_text_ids(text).to(device),
        guidance=None,
        return_dict=False,
    )


def timed(fn) -> float:
    """Milliseconds of one call of ``fn`` on the GPU: between two CUDA events, the second waited for.

    The one timer of the GPU benches (this file, vectors_gpu.py, hook_variants_gpu.py).
    """
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop)


def cuda_median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return statistics.median([timed(fn) for _ in range(repeats)])


def peak_extra_mib(fn) -> float:
    """Peak allocated memory during ``fn`` above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


class RivalHooks:
    """Pre-hooks on the same modules doing what a user might write instead of the fused reduction."""

    def __init__(self, model, layout, mode: str):
        modules = dict(model.named_modules())
        self.paths = sorted({r.module for r in layout.readouts})
        self.mode = mode
        self.out: list = []
        self.handles = [modules[p].register_forward_pre_hook(self.hook) for p in self.paths]

    def hook(self, module, args):
        x = args[0]
        if self.mode == "unfused":  # float32 copy, squared tensor, then the mean
            self.out.append(x.float().square().unflatten(-1, (-1, 16)).mean(dim=(1, 3)).sqrt())
        else:  # "copy": the whole activation to the host, as general capture tools keep it
            self.out.append(x.detach().to("cpu"))

    def finish(self):
        if self.mode == "unfused":
            torch.cat(self.out, dim=1).cpu()
        self.out.clear()

    def remove(self):
        for h in self.handles:
            h.remove()


def bench_transformer(model, layout, device: str, batches, warmup: int, repeats: int) -> dict:
    """Plain vs hooked forwards, interleaved (plain, hooked, hooked, plain, ...) so that clock or
    contention drift hits both alike; the overhead is the median of per-repeat ratios."""
    rows = {}
    hooks = install_unit_hooks(model, layout)
    hooks.remove()
    for batch in batches:
        inputs = transformer_inputs(model, batch, device)

        def plain():
            with torch.inference_mode():
                model(**inputs)

        def ours():
            with torch.inference_mode():
                hooks.begin()
                model(**inputs)
                hooks.collect()  # the batch's one device-to-host copy

        plain_mem = peak_extra_mib(plain)
        for _ in range(warmup):
            plain()
        plain_times, capture_times = [], []
        for i in range(repeats):
            order = (False, True) if i % 2 == 0 else (True, False)
            for hooked in order:
                if hooked:
                    hooks.install()
                    try:
                        if not capture_times and i == 0:
                            for _ in range(warmup):
                                ours()
                        capture_times.append(timed(ours))
                    finally:
                        hooks.remove()
                else:
                    plain_times.append(timed(plain))
        hooks.install()
        try:
            capture_mem = peak_extra_mib(ours)
            with torch.inference_mode():
                hooks.begin()
                model(**inputs)
                values = hooks.collect()
        finally:
            hooks.remove()
        ratios = [c / p for p, c in zip(plain_times, capture_times)]
        plain_ms, capture_ms = statistics.median(plain_times), statistics.median(capture_times)
        # 95 % interval of the median ratio: percentile bootstrap over the repeats (seeded).
        r = np.asarray(ratios)
        boot = np.median(r[np.random.default_rng(0).integers(0, len(r), size=(2000, len(r)))], axis=1)
        rows[batch] = dict(
            plain_ms=plain_ms,
            capture_ms=capture_ms,
            overhead=statistics.median(ratios) - 1.0,
            overhead_ci95=[float(np.percentile(boot, 2.5)) - 1.0, float(np.percentile(boot, 97.5)) - 1.0],
            repeats=len(ratios),
            overhead_of_medians=capture_ms / plain_ms - 1.0,
            plain_ms_spread=[min(plain_times), max(plain_times)],
            capture_ms_spread=[min(capture_times), max(capture_times)],
            plain_peak_mib=plain_mem,
            capture_peak_mib=capture_mem,
            extra_peak_mib=capture_mem - plain_mem,
            units=int(values.shape[1]),
            finite=bool(np.isfinite(values).all()),
            value_range=[float(values.min()), float(values.max())],
        )
        print(
            f"batch {batch}: plain {plain_ms:.2f} ms [{min(plain_times):.1f}, {max(plain_times):.1f}], capture "
            f"{capture_ms:.2f} ms [{min(capture_times):.1f}, {max(capture_times):.1f}] -> overhead (median of "
            f"paired ratios) {100 * rows[batch]['overhead']:+.2f} % "
            f"(95 % CI {100 * rows[batch]['overhead_ci95'][0]:+.2f} .. {100 * rows[batch]['overhead_ci95'][1]:+.2f}), "
            f"extra peak {capture_mem - plain_mem:.2f} MiB, "
            f"units {values.shape[1]}, finite {rows[batch]['finite']}",
            flush=True,
        )
    return rows


def bench_reduction(model, layout, device: str, batches, repeats: int) -> dict:
    """The fused reduction alone on the real hooked shapes: time per forward's worth of hooks,
    its own peak memory (a float32 copy of the activation would show here), and the floor set by
    reading each activation once at the measured copy bandwidth. On the current stream
    (``_reduce_here``), so that the CUDA events time it even with ``side_stream=True``."""
    from dense_plantain.capture.hooks import UnitHooks

    hooks = UnitHooks(model, layout)
    plan = hooks.plan[0]
    joint = next(p for p in plan if p.startswith("transformer_blocks"))
    single = next(p for p in plan if p.startswith("single"))
    inner = model.config.num_attention_heads * model.config.attention_head_dim
    mlp = int(inner * model.config.mlp_ratio)
    n_img, n_txt = (HEIGHT // 16) * (WIDTH // 16), TEXT_TOKENS
    out = {}
    for batch in batches:
        xj = torch.randn(batch, n_img, inner, device=device, dtype=torch.bfloat16)
        xs = torch.randn(batch, n_txt + n_img, inner + mlp, device=device, dtype=torch.bfloat16)
        hooks.n_text = n_txt
        hooks._buffer = torch.empty(batch, layout.n_units, device=device, dtype=torch.float32)

        def one_forward_of_hooks():
            for _ in range(model.config.num_layers):
                hooks._reduce_here(xj, "image", plan[joint])
            for _ in range(model.config.num_single_layers):
                hooks._reduce_here(xs, "joint", plan[single])

        ms = cuda_median_ms(one_forward_of_hooks, 3, repeats)
        mem = peak_extra_mib(lambda: hooks._reduce_here(xs, "joint", plan[single]))
        nbytes = model.config.num_layers * xj.numel() * 2 + model.config.num_single_layers * xs.numel() * 2
        copy_src = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16)
        copy_ms = cuda_median_ms(lambda: copy_src.clone(), 3, repeats)
        read_floor_ms = copy_ms / 2  # a clone reads and writes each byte once
        out[batch] = dict(
            ms=ms,
            read_floor_ms=read_floor_ms,
            bytes_read=nbytes,
            peak_mib_single_block=mem,
            activation_mib_single_block=xs.numel() * 2 / 2**20,
        )
        print(
            f"reduction alone, batch {batch}: {ms:.2f} ms per forward's hooks ({nbytes / 1e9:.2f} GB read; "
            f"read floor {read_floor_ms:.2f} ms); peak extra memory of one single-block reduction "
            f"{mem:.2f} MiB (activation itself {xs.numel() * 2 / 2**20:.0f} MiB)",
            flush=True,
        )
        del xj, xs, copy_src
    return out


def gpu_health(device: str) -> dict:
    """Clocks and the two ceilings, measured now (matmul rate, copy bandwidth)."""
    import subprocess

    query = (
        "clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,utilization.gpu,"
        "clocks_throttle_reasons.active"
    )
    smi = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True
    ).stdout.strip()
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_ms = cuda_median_ms(lambda: a @ b, 3, 10)
    big = torch.empty(2**30, device=device, dtype=torch.bfloat16)
    cp_ms = cuda_median_ms(lambda: big.clone(), 3, 10)
    out = dict(nvidia_smi=smi, matmul_tflops=2 * 8192**3 / mm_ms / 1e9, copy_tb_s=2 * big.numel() * 2 / cp_ms / 1e9)
    print(f"gpu: {smi}; bf16 matmul {out['matmul_tflops']:.0f} TFLOP/s; copy {out['copy_tb_s']:.2f} TB/s", flush=True)
    return out


def profile_forward(model, device: str, batch: int, path: Path, layout=None) -> None:
    """A torch-profiler table of one forward; with ``layout``, of one hooked forward."""
    from torch.profiler import ProfilerActivity, profile

    inputs = transformer_inputs(model, batch, device)
    hooks = install_unit_hooks(model, layout) if layout is not None else None
    try:
        with torch.inference_mode():
            model(**inputs)
            if hooks:
                hooks.collect()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                model(**inputs)
                if hooks:
                    hooks.collect()
                torch.cuda.synchronize()
    finally:
        if hooks:
            hooks.remove()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    path.write_text(table)
    print("\n".join(table.splitlines()[:30]), flush=True)


def bench_rivals(model, layout, device: str, warmup: int, repeats: int, plain_ms: float) -> dict:
    inputs = transformer_inputs(model, 1, device)
    out = {}
    for mode, reps in (("unfused", repeats), ("copy", max(3, repeats // 4))):
        rival = RivalHooks(model, layout, mode)

        def run():
            with torch.inference_mode():
                model(**inputs)
                rival.finish()

        try:
            ms = cuda_median_ms(run, 1, reps)
            mem = peak_extra_mib(run)
        finally:
            rival.remove()
        out[mode] = dict(ms=ms, overhead=ms / plain_ms - 1.0, ratio_to_plain=ms / plain_ms, peak_mib=mem)
        print(f"rival {mode}: {ms:.2f} ms ({ms / plain_ms:.2f}x plain), peak {mem:.0f} MiB", flush=True)
    return out


def build_pipeline(transformer, device: str):
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            text_encoder = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B)).eval().requires_grad_(False)
            vae = AutoencoderKLFlux2().eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**TINY_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        transformer=transformer,
    )


def bench_end_to_end(pipe, batch_sizes) -> dict:
    probe = load_probe(bundled_path("dense-plantain"))
    prompts = [p for pair in probe.pairs for p in (pair.a, pair.b)]
    capture_prompts(pipe, prompts[:2], height=HEIGHT, width=WIDTH, batch_size=1)  # warm-up
    out = {}
    for bs in batch_sizes:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        values = capture_prompts(pipe, prompts, height=HEIGHT, width=WIDTH, batch_size=bs)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        arr = np.asarray(values.values)
        out[bs] = dict(
            seconds=seconds, prompts=len(prompts), shape=list(arr.shape), finite=bool(np.isfinite(arr).all())
        )
        print(
            f"end-to-end, {len(probe.pairs)} pairs ({len(prompts)} prompts), batch {bs}: {seconds:.2f} s, "
            f"values {arr.shape}, finite {out[bs]['finite']}",
            flush=True,
        )
    return out


def forward_bench_parser(doc: str, out: str, batches: str, repeats: int) -> argparse.ArgumentParser:
    """The arguments of a bench that times transformer forwards by batch (this file, vectors_gpu.py).

    --out (the JSON record), --batches (comma-separated), --warmup and --repeats; ``doc``'s first
    line describes the bench, the rest are the defaults.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--batches", default=batches)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser


def main() -> None:
    parser = forward_bench_parser(__doc__, "benches/results/capture-gpu.json", "1,2,4,8", 20)
    parser.add_argument("--e2e-batches", default="1,4")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile one plain and one hooked forward at batch 1")
    args = parser.parse_args()
    device = "cuda"
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    torch.backends.cuda.matmul.allow_tf32 = True

    import diffusers
    import transformers

    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_transformer(device)
    layout = build_layout(model.config, "plantain")
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"transformer: {n_params / 1e9:.3f} B parameters (random bf16), built in {time.perf_counter() - t0:.1f} s; "
        f"plantain units {layout.n_units}",
        flush=True,
    )
    batches = [int(b) for b in args.batches.split(",")]
    health = gpu_health(device)
    if args.profile:
        profile_forward(model, device, 1, args.out.with_suffix(".profile-plain.txt"))
        profile_forward(model, device, 1, args.out.with_suffix(".profile-hooked.txt"), layout)
    reduction = bench_reduction(model, layout, device, batches, args.repeats)
    rows = bench_transformer(model, layout, device, batches, args.warmup, args.repeats)
    rivals = bench_rivals(model, layout, device, args.warmup, args.repeats, rows[batches[0]]["plain_ms"])

    e2e = {}
    if not args.skip_e2e:
        pipe = build_pipeline(model, device)
        e2e = bench_end_to_end(pipe, [int(b) for b in args.e2e_batches.split(",")])

    b1 = rows[batches[0]]
    result = dict(
        device=torch.cuda.get_device_name(0),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        height=HEIGHT,
        width=WIDTH,
        text_tokens=TEXT_TOKENS,
        transformer_params=n_params,
        weights="random bf16 (Klein 4B config)",
        plain_ms=b1["plain_ms"],
        capture_ms=b1["capture_ms"],
        overhead=b1["overhead"],
        overhead_by_batch={str(b): r["overhead"] for b, r in rows.items()},
        overhead_ci95_by_batch={str(b): r["overhead_ci95"] for b, r in rows.items()},
        hooks="capture.hooks.UnitHooks as installed by install_unit_hooks (defaults)",
        extra_peak_mib=max(r["extra_peak_mib"] for r in rows.values()),
        units=b1["units"],
        all_finite=all(r["finite"] for r in rows.values()),
        by_batch={str(b): r for b, r in rows.items()},
        rivals_batch1=rivals,
        reduction_alone={str(b): r for b, r in reduction.items()},
        gpu_health=health,
        e2e_25_pairs_s=min((r["seconds"] for r in e2e.values()), default=None),
        e2e_by_batch={str(b): r for b, r in e2e.items()},
        text_encoder="full-size Qwen3-4B config, random bf16 weights, the real Qwen3 tokenizer (512-token padding)",
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| batch | plain ms | capture ms | overhead | extra peak MiB |")
    print("|---|---|---|---|---|")
    for b, r in rows.items():
        print(
            f"| {b} | {r['plain_ms']:.2f} | {r['capture_ms']:.2f} | {100 * r['overhead']:+.2f} % "
            f"| {r['extra_peak_mib']:.1f} |"
        )
    for mode, r in rivals.items():
        print(f"| rival {mode} (b1) | {b1['plain_ms']:.2f} | {r['ms']:.2f} | {100 * r['overhead']:+.1f} % | |")
    if e2e:
        print(f"end-to-end 25 pairs: {result['e2e_25_pairs_s']:.2f} s (best of batch sizes {list(e2e)})")
    if not math.isfinite(result["overhead"]):
        raise SystemExit("overhead is not finite")


if __name__ == "__main__":
    main()
