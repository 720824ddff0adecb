"""Forward pre-hooks that turn hooked activations into unit values, on the device.

A unit is the root mean square of a group of columns of a hooked input over a region of
tokens (see ``units``). The hooks read each readout's module input as it enters the module and
reduce it at once, in two stages of plain torch:

    part = torch.linalg.vector_norm(x.unflatten(1, (32, -1)), dim=2, dtype=torch.float32)
    norm = torch.linalg.vector_norm(part.unflatten(-1, (G, w)), dim=(1, 3))

Stage 1 reads the activation once: per column, the float32 norm over each of 32 token chunks,
accumulated straight from the bf16/fp16 values (PyTorch's norm kernels cast on load: no float32
copy and no squared tensor is materialised), coalesced along the contiguous columns, into a
small ``[batch, 32, columns]`` tensor. Stage 2 folds the chunks and each unit's ``w`` columns:
``[batch, G]`` norms, and RMS = norm / sqrt(tokens * w). Why two stages: measured on an H100
(benches/RESULTS.md), one norm over (tokens, w) of a ``[B, S, G, w]`` view ran at 31-41 % of the
read bandwidth on single-block inputs; one column norm over all tokens was faster but made the
reduction kernel stage 96-144 MiB; 32 token chunks ran at up to 77 % with at most 13 MiB.
On the CPU (tests, the demo) one call, ``torch.linalg.vector_norm(x.unflatten(-1, (G, w)),
dim=(1, 3), dtype=torch.float32)``, is faster and gives the same sums. Readouts of one module that share a
token region and a group width and sit side by side in its columns are merged into one call
(plantain single blocks: the 192 attention and 576 MLP slices are one norm over 768 groups).

Results go into one float32 ``[batch, units]`` buffer on the activation's device. Nothing in a
hook synchronises or copies to the host; ``UnitHooks.collect`` makes the batch's single
device-to-host copy.

``side_stream=True`` (off by default) issues the reductions on a second CUDA stream: the side
stream waits for the main stream's work up to the hook (so it reads the finished activation), the
activation is marked as used by the side stream (``record_stream``, so the allocator does not
hand its memory out again while the side stream still reads it), and ``end()`` makes the main
stream wait for the side stream before the buffer is used. The kernels and their inputs are the
same, so the values are the same bits (checked on an H200 by ``benches/hook_variants_gpu.py``).
It is off because it did not pay reliably: at batch 1 on an H200 (benches/RESULTS.md), in seven
interleaved runs that timed both in one process, it was clearly below the serial hooks in two
and level with or above them in the other five.

Signed vectors (``vectors=True``, ``capture --vectors``): per unit also the mean over the unit's
tokens of each of its ``W`` columns (the layout's one group width), into a second float32
``[batch, units * W]`` buffer (unit-major: unit ``u`` owns columns ``u*W .. u*W+W-1``). On the
GPU the column sums come from the same ``[B, 32, S/32, C]`` chunked view as stage 1
(``torch.sum(..., dtype=torch.float32)`` per chunk, then a sum over the chunks); on the CPU one
``torch.sum`` over the tokens. The norms are computed exactly as without vectors, so the RMS
values are the same bits. ``collect_vectors()`` makes the second buffer's one device-to-host copy.

Steps: a pre-hook on the transformer itself counts its forwards since the batch began (forward
0 = denoising step 0, ...) and remembers the text length (the single-stream input is text
tokens first, then image tokens). Only the layout's steps are reduced.

For benchmarks on a bare ``Flux2Transformer2DModel``::

    hooks = install_unit_hooks(transformer, layout)
    out = transformer(**inputs); values = hooks.end()   # device tensor, no sync
    ...
    hooks.remove()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dense_plantain import units
from dense_plantain.units import Layout, Readout

if TYPE_CHECKING:
    import torch

#: Which tokens a hooked module sees: ``units`` owns the module paths and their streams.
module_stream = units.module_stream


def _check_region(module: str, region: str) -> None:
    stream = module_stream(module)
    if stream != "joint" and region not in ("all", stream):
        raise ValueError(f"module {module} sees only {stream} tokens; a readout there cannot pool region {region!r}")


@dataclass
class Reduction:
    """One fused norm over a run of equal column groups of one module's input."""

    region: str
    col_start: int
    group_width: int
    n_groups: int = 0
    #: Where the groups go in the unit buffer: (first group, first unit, number of groups).
    segments: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def col_stop(self) -> int:
        return self.col_start + self.n_groups * self.group_width

    def add(self, readout: Readout, unit_start: int) -> None:
        last = self.segments[-1] if self.segments else None
        if last and last[1] + last[2] == unit_start:
            self.segments[-1] = (last[0], last[1], last[2] + readout.n_groups)
        else:
            self.segments.append((self.n_groups, unit_start, readout.n_groups))
        self.n_groups += readout.n_groups


def plan_reductions(layout: Layout) -> dict[int, dict[str, list[Reduction]]]:
    """step -> module path -> fused reductions, merging what can share one norm call."""
    plan: dict[int, dict[str, list[Reduction]]] = {}
    unit = 0
    for r in layout.readouts:
        _check_region(r.module, r.region)
        reductions = plan.setdefault(r.step, {}).setdefault(r.module, [])
        for red in reductions:
            if red.region == r.region and red.group_width == r.group_width and red.col_stop == r.col_start:
                red.add(r, unit)
                break
        else:
            red = Reduction(r.region, r.col_start, r.group_width)
            red.add(r, unit)
            reductions.append(red)
        unit += r.n_groups
    return plan


class UnitHooks:
    """Hooks on one transformer that fill a ``[batch, units]`` buffer per batch (see module doc).

    Use ``install()``/``remove()`` (or ``with``). Each batch begins at the transformer's first
    forward after ``end()`` (or an explicit ``begin()``); ``end()`` returns the device buffer
    without synchronising, ``collect()`` returns it as a numpy array (one device-to-host copy).
    Units not written (a captured step the batch never reached) stay NaN.
    """

    def __init__(self, transformer: Any, layout: Layout, *, vectors: bool = False, side_stream: bool = False):
        if not layout.has_labels():
            raise ValueError("this layout has no readouts (it was read from a foreign capture file)")
        #: Column width of every unit when ``vectors`` is on (``vector_width(layout)``), else 0.
        self.vector_width = vector_width(layout) if vectors else 0
        self.transformer = transformer
        self.layout = layout
        self.plan = plan_reductions(layout)
        modules = dict(transformer.named_modules())
        missing = sorted({m for per_step in self.plan.values() for m in per_step if m not in modules})
        if missing:
            raise ValueError(
                f"layout {layout.name!r} hooks {len(missing)} module(s) this transformer does not have, "
                f"e.g. {missing[0]}: the layout was built for a different model config"
            )
        self._modules = {m: modules[m] for per_step in self.plan.values() for m in per_step}
        self._handles: list[Any] = []
        #: Issue the reductions on a second CUDA stream (module doc); ignored off CUDA.
        self.side_stream = side_stream
        self._side: Any = None  # the side torch.cuda.Stream, made at the first CUDA reduction
        self._side_used = False  # a reduction of this batch ran on the side stream
        self._buffer: torch.Tensor | None = None
        self._vec_buffer: Any = None  # float32 [batch, units * W] on the device (vectors on)
        self._open = False
        self._step = -1
        self._active: dict[str, list[Reduction]] | None = None
        #: Tokens of the last forward: text, and image (generated + reference) tokens.
        self.n_text = 0
        self.n_image = 0
        #: Transformer forwards seen in the current/last batch, and which steps were reduced.
        self.forwards = 0
        self.steps_captured: list[int] = []

    # --- installation ------------------------------------------------------------------------
    def install(self) -> UnitHooks:
        if self._handles:
            return self
        self._handles.append(self.transformer.register_forward_pre_hook(self._on_transformer, with_kwargs=True))
        for path, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(self._make_hook(path), with_kwargs=True))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> UnitHooks:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # --- batches -----------------------------------------------------------------------------
    def begin(self) -> None:
        """Start a new batch: the next transformer forward is step 0."""
        self._buffer = None
        self._vec_buffer = None
        self._side_used = False
        self._open = True
        self._step = -1
        self._active = None
        self.forwards = 0
        self.steps_captured = []

    def end(self):
        """Close the batch and return its ``[batch, units]`` float32 buffer, still on the device."""
        if self._buffer is None:
            raise RuntimeError("no transformer forward ran since the batch began; nothing was captured")
        self._open = False
        self._active = None
        self._join_side()
        return self._buffer

    def _join_side(self) -> None:
        """Make the current stream wait for the reductions issued on the side stream."""
        if self._side_used:
            import torch

            torch.cuda.current_stream(self._side.device).wait_stream(self._side)
            self._side_used = False

    def collect(self) -> np.ndarray:
        """``end()`` plus the one device-to-host copy: float32 numpy ``[batch, units]``."""
        return self.end().cpu().numpy()

    def end_vectors(self):
        """The batch's ``[batch, units * W]`` float32 vector buffer, still on the device (``vectors`` on)."""
        if self._vec_buffer is None:
            raise RuntimeError("no vectors were captured: the hooks were built without vectors=True, or no forward ran")
        self._join_side()
        return self._vec_buffer

    def collect_vectors(self) -> np.ndarray:
        """The vector buffer's one device-to-host copy: float32 numpy ``[batch, units * W]``."""
        return self.end_vectors().cpu().numpy()

    # --- the hooks ---------------------------------------------------------------------------
    def _on_transformer(self, module, args, kwargs) -> None:
        import torch

        if not self._open:
            self.begin()
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        self._step += 1
        self.forwards += 1
        self.n_text = int(text.shape[1])
        self.n_image = int(hidden.shape[1])
        if self._buffer is None:
            self._buffer = torch.full(
                (hidden.shape[0], self.layout.n_units), float("nan"), dtype=torch.float32, device=hidden.device
            )
            if self.vector_width:
                self._vec_buffer = torch.full(
                    (hidden.shape[0], self.layout.n_units * self.vector_width),
                    float("nan"),
                    dtype=torch.float32,
                    device=hidden.device,
                )
        self._active = self.plan.get(self._step)
        if self._active is not None:
            self.steps_captured.append(self._step)

    def _make_hook(self, path: str):
        stream = module_stream(path)

        def hook(module, args, kwargs):
            active = self._active
            if active is None:
                return None
            reductions = active.get(path)
            if reductions is None:
                return None
            x = args[0] if args else kwargs["input"]
            self._reduce(x, stream, reductions)
            return None

        return hook

    def _reduce(self, x, stream: str, reductions: list[Reduction]) -> None:
        if not (self.side_stream and x.is_cuda):
            self._reduce_here(x, stream, reductions)
            return
        import torch

        main = torch.cuda.current_stream(x.device)
        if self._side is None or self._side.device != x.device:
            self._side = torch.cuda.Stream(device=x.device)
        side = self._side
        side.wait_stream(main)  # the activation (and the batch's buffers) are ready
        if not self._side_used:
            # The buffers were made on the main stream: keep their memory until the side stream is done.
            for buffer in (self._buffer, self._vec_buffer):
                if buffer is not None:
                    buffer.record_stream(side)
            self._side_used = True
        with torch.cuda.stream(side):
            self._reduce_here(x, stream, reductions)
        x.record_stream(side)

    def _reduce_here(self, x, stream: str, reductions: list[Reduction]) -> None:
        """The reductions of one hooked input, on the current stream."""
        import torch

        buf = self._buffer
        assert buf is not None, "the forward pre-hook allocates the buffer before any module hook runs"
        n_text = self.n_text
        for red in reductions:
            if stream == "joint" and red.region == "text":
                xr = x[:, :n_text]
            elif stream == "joint" and red.region == "image":
                xr = x[:, n_text:]
            else:
                xr = x
            cols = xr[..., red.col_start : red.col_stop]
            if self.vector_width:
                norms, sums = _group_norms_and_sums(cols, red.n_groups, red.group_width)
                self._store_means(sums, xr.shape[1], red)
            else:
                norms = _group_norms(cols, red.n_groups, red.group_width)
            scale = 1.0 / math.sqrt(xr.shape[1] * red.group_width)
            for first_group, first_unit, n in red.segments:
                src = norms if n == red.n_groups else norms[:, first_group : first_group + n]
                torch.mul(src, scale, out=buf[:, first_unit : first_unit + n])

    def _store_means(self, sums, n_tokens: int, red: Reduction) -> None:
        """Column sums ``[B, n_groups * W]`` -> means in the vector buffer at each segment's units."""
        import torch

        vec = self._vec_buffer
        w = red.group_width
        inv = 1.0 / n_tokens
        for first_group, first_unit, n in red.segments:
            src = sums if n == red.n_groups else sums[:, first_group * w : (first_group + n) * w]
            torch.mul(src, inv, out=vec[:, first_unit * w : (first_unit + n) * w])


def vector_width(layout: Layout) -> int:
    """The one column width ``W`` of every unit of ``layout`` (the signed vectors' length per unit).

    Both built-in layouts have one group width (plantain 16; heads the head dimension, MLP groups
    included); a layout mixing widths cannot hold its vectors in one ``[units x W]`` grid and is refused.
    """
    widths = sorted({r.group_width for r in layout.readouts})
    if len(widths) != 1:
        raise ValueError(
            f"layout {layout.name!r} has units of {len(widths)} column widths ({', '.join(map(str, widths))}); "
            "--vectors needs one width for every unit. Capture without --vectors, or use the plantain or heads layout."
        )
    return widths[0]


#: Token chunks of the first reduction stage (see the module docstring).
TOKEN_CHUNKS = 32


def _group_norms(cols, n_groups: int, width: int):
    """``[B, S, n_groups * width]`` (any float dtype) -> float32 ``[B, n_groups]`` L2 norms over
    tokens and each group's columns: two stages on a GPU (module docstring), one call elsewhere."""
    import torch

    if cols.device.type != "cuda":
        # On the CPU the strided chunk reduction of stage 1 is ~6x slower than one norm call
        # (tiny-pipeline activations, 2 cores); the two compute the same sums.
        return torch.linalg.vector_norm(cols.unflatten(-1, (n_groups, width)), dim=(1, 3), dtype=torch.float32)
    return _two_stage_norms(cols, n_groups, width)


def _two_stage_norms(cols, n_groups: int, width: int):
    """The GPU path of ``_group_norms``: column norms over token chunks, then chunks x groups."""
    import torch

    n_tok = cols.shape[1]
    whole = (n_tok // TOKEN_CHUNKS) * TOKEN_CHUNKS
    if whole:
        part = torch.linalg.vector_norm(cols[:, :whole].unflatten(1, (TOKEN_CHUNKS, -1)), dim=2, dtype=torch.float32)
    if whole != n_tok:  # a remainder of fewer than 32 tokens: one more row of partial norms
        rest = torch.linalg.vector_norm(cols[:, whole:], dim=1, keepdim=True, dtype=torch.float32)
        part = torch.cat([part, rest], dim=1) if whole else rest
    return torch.linalg.vector_norm(part.unflatten(-1, (n_groups, width)), dim=(1, 3))


def _group_norms_and_sums(cols, n_groups: int, width: int):
    """``_group_norms`` (the same calls, so the same bits) plus float32 column sums over tokens
    ``[B, n_groups * width]``: on a GPU over the same 32-chunk view as stage 1, then over chunks."""
    import torch

    norms = _group_norms(cols, n_groups, width)
    if cols.device.type != "cuda":
        return norms, torch.sum(cols, dim=1, dtype=torch.float32)
    n_tok = cols.shape[1]
    whole = (n_tok // TOKEN_CHUNKS) * TOKEN_CHUNKS
    sums = None
    if whole:
        sums = torch.sum(cols[:, :whole].unflatten(1, (TOKEN_CHUNKS, -1)), dim=2, dtype=torch.float32).sum(dim=1)
    if whole != n_tok:
        rest = torch.sum(cols[:, whole:], dim=1, dtype=torch.float32)
        sums = sums + rest if sums is not None else rest
    return norms, sums


def install_unit_hooks(
    transformer: Any, layout: Layout, *, vectors: bool = False, side_stream: bool = False
) -> UnitHooks:
    """Install unit hooks on a ``Flux2Transformer2DModel`` (bare or inside a pipeline)."""
    return UnitHooks(transformer, layout, vectors=vectors, side_stream=side_stream).install()
