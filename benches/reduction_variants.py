"""Which plain-torch reduction computes per-unit RMS fastest on the real hooked shapes?

Kept as the record of the fused-reduction design (see benches/RESULTS.md). Each variant maps a
bf16 activation [B, S, C] to float32 sums of squares per 16-column group, [B, C // 16]; each is
checked against a float64 reference before it is timed. Shapes: a joint block's attention
output (4,096 image tokens x 3,072) and a single block's [attention | MLP] input (512 + 4,096
tokens x 12,288), batch 1 and 4. Run on the GPU machine with dense_plantain importable (the
timer is capture_gpu.cuda_median_ms); CI does not run it.
"""

from __future__ import annotations

import torch

from capture_gpu import cuda_median_ms  # the same CUDA-event timer as the capture bench

W = 16


def v_group_norm(x):  # the first version: one norm over (tokens, 16 columns) of a [B, S, G, 16] view
    return torch.linalg.vector_norm(x.unflatten(-1, (-1, W)), dim=(1, 3), dtype=torch.float32).square()


def v_column_then_group(x):  # column norms over tokens (coalesced along C), then a tiny group sum
    col = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32)
    return col.square().unflatten(-1, (-1, W)).sum(-1)


def v_column_sumsq(x):  # the same through a sum of squares of a float32 view... (materialises: the habit to avoid)
    return x.float().square().sum(1).unflatten(-1, (-1, W)).sum(-1)


def v_bmm(x):  # ones-vector matmul over x*x: materialises x*x in bf16 (loses precision); shown for speed only
    return (
        torch.bmm(torch.ones(x.shape[0], 1, x.shape[1], device=x.device, dtype=x.dtype), x * x)
        .float()
        .squeeze(1)
        .unflatten(-1, (-1, W))
        .sum(-1)
    )


def _split_tokens(s: int, k: int) -> int:
    """The largest chunk count <= k that divides the token count (1 if none does)."""
    return next(c for c in range(min(k, s), 0, -1) if s % c == 0)


def chunked_column(k):
    def fn(x):  # [B, c, S/c, C] -> norms over S/c: many short column reductions, no split-reduction staging
        c = _split_tokens(x.shape[1], k)
        part = torch.linalg.vector_norm(x.unflatten(1, (c, -1)), dim=2, dtype=torch.float32)
        return part.square().sum(1).unflatten(-1, (-1, W)).sum(-1)

    return fn


def chunked_group(k):
    def fn(x):
        c = _split_tokens(x.shape[1], k)
        part = torch.linalg.vector_norm(x.unflatten(1, (c, -1)).unflatten(-1, (-1, W)), dim=(2, 4), dtype=torch.float32)
        return part.square().sum(1)

    return fn


VARIANTS = {
    "group_norm (v1)": v_group_norm,
    "column_then_group": v_column_then_group,
    "float32 square sum": v_column_sumsq,
    "bmm of x*x (bf16)": v_bmm,
    "chunked column k=32": chunked_column(32),
    "chunked column k=64": chunked_column(64),
    "chunked column k=128": chunked_column(128),
    "chunked group k=64": chunked_group(64),
}


def main():
    dev = "cuda"
    for batch in (1, 4):
        for name, (s, c) in {"joint": (4096, 3072), "single": (4608, 12288)}.items():
            x = torch.randn(batch, s, c, device=dev, dtype=torch.bfloat16) * 3
            ref = x.double().square().unflatten(-1, (-1, W)).sum(dim=(1, 3))
            floor = x.numel() * 2 / 2.9e12 * 1e3
            print(
                f"\n{name} block, batch {batch}: {tuple(x.shape)} bf16, {x.numel() * 2 / 1e6:.0f} MB; read floor "
                f"at 2.9 TB/s {floor:.3f} ms"
            )
            for vname, fn in VARIANTS.items():
                got = fn(x).double()
                rel = ((got - ref).norm() / ref.norm()).item()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                fn(x)
                torch.cuda.synchronize()
                extra = (torch.cuda.max_memory_allocated() - before) / 2**20
                ms = cuda_median_ms(lambda: fn(x), 3, 30)
                print(
                    f"  {vname:22s} {ms:7.3f} ms ({floor / ms * 100:5.1f} % of floor speed)  rel.err {rel:.1e}  "
                    f"extra mem {extra:8.2f} MiB"
                )


def overlap(dev="cuda"):
    """A single block's to_out GEMM alone, then followed by the reduction on the same stream, then
    with the reduction on a side stream (what the hooks can do: the GEMM is compute-bound, the
    reduction memory-bound)."""
    fn = chunked_column(32)
    for batch in (1, 4):
        x = torch.randn(batch, 4608, 12288, device=dev, dtype=torch.bfloat16)
        w = torch.randn(3072, 12288, device=dev, dtype=torch.bfloat16) / 100
        side = torch.cuda.Stream()

        def gemm():
            return torch.nn.functional.linear(x, w)

        def serial():
            fn(x)
            return gemm()

        def overlapped():
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                fn(x)
            out = gemm()
            main.wait_stream(side)
            return out

        def many(f):
            return lambda: [f() for _ in range(20)]

        g, s_, o = (cuda_median_ms(many(f), 3, 10) / 20 for f in (gemm, serial, overlapped))
        print(
            f"\nsingle block to_out, batch {batch}: GEMM {g:.3f} ms; GEMM + reduction serial {s_:.3f} ms "
            f"(+{s_ - g:.3f}); overlapped on a side stream {o:.3f} ms (+{o - g:.3f})"
        )


if __name__ == "__main__":
    overlap()
    main()
