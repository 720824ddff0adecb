"""The capture runner and the notebook API: prompts through the pipeline, unit values out.

Noise: every prompt starts from the very latents the pipeline draws for a *single* prompt with
``generator=torch.Generator("cpu").manual_seed(seed)`` at that height and width. The run draws
them once (as the pipeline would, same shape, dtype and generator) and passes them repeated as
``latents=``, so batching cannot change them and plain diffusers reproduces any capture.

Entry points:

* ``capture_pairs(pipe, probe, ...) -> store.Capture``: for notebooks; an already-loaded pipeline
  and a prompt file (or ``Probe``) in, the capture in memory out (layout and metadata included),
  so ``analysis.analyze(capture_pairs(pipe, probe))`` works without a file.
* ``capture_prompts(pipe, prompts, ...) -> UnitValues``: a plain list of prompts (benchmarks).
* ``run_job(job, plan=ShardPlan())``: a ``CaptureJob`` into its capture file, in batches, with the
  partial file, resume and the output lock of ``partial``; ``run_capture(model, prompts_file, out,
  ...)`` is the same with the job's options as keywords (the CLI and the demo).
"""

from __future__ import annotations

import errno
import resource
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dense_plantain.capture.job import (
    GUIDANCE_SCALE,
    SIZE_MULTIPLE,
    TEXT_LAYERS,
    TEXT_TOKENS,
    CaptureJob,
    CaptureSettings,
    ShardPlan,
)
from dense_plantain.capture.partial import (
    OutputLock,
    check_resumable,
    disk_error,
    kept_pair_ids,
    partial_path,
)
from dense_plantain.capture.provenance import (
    file_sha256,
    package_versions,
    settings_record,
    utc_now,
    weights_record,
)
from dense_plantain.capture.text import PairTokens, check_pairs, truncation_warning
from dense_plantain.errors import CaptureError, CaptureFileError
from dense_plantain.progress import Bar
from dense_plantain.units import Layout, build_layout

__all__ = [
    "GUIDANCE_SCALE",
    "SIZE_MULTIPLE",
    "TEXT_LAYERS",
    "TEXT_TOKENS",
    "CaptureJob",
    "CaptureResult",
    "CaptureSettings",
    "CaptureWarning",
    "ShardPlan",
    "UnitValues",
    "capture_pairs",
    "capture_prompts",
    "initial_noise",
    "partial_path",
    "run_capture",
    "run_job",
]

#: A run whose estimated remaining time exceeds this (seconds) is warned about after its first batch.
SLOW_RUN_S = 600.0


class CaptureWarning(UserWarning):
    """Something about a capture the user should know that does not stop it (cut prompts, a long run)."""


def warn(message: str) -> None:
    warnings.warn(message, CaptureWarning, stacklevel=2)


@dataclass
class UnitValues:
    """Unit values of a list of prompts: ``values[i, j]`` is prompt i's unit j (layout order)."""

    values: np.ndarray  # float32 [prompts x units]
    layout: Layout
    prompts: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # settings and token counts


# --- noise -----------------------------------------------------------------------------------


def latent_grid(pipe, height: int, width: int) -> tuple[int, int]:
    """Packed latent height and width (tokens per side) the pipeline uses for an image size."""
    f = pipe.vae_scale_factor * 2
    return int(height) // f, int(width) // f


def initial_noise(pipe, height: int, width: int, seed: int):
    """The unpacked latents ``[1, C, h, w]`` the pipeline draws for one prompt with this seed.

    Same shape, dtype (the prompt embeddings' dtype, i.e. the text encoder's) and generator as
    ``Flux2KleinPipeline.prepare_latents``; a CPU generator draws on the CPU whatever the device.
    """
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    h, w = latent_grid(pipe, height, width)
    channels = (pipe.transformer.config.in_channels // 4) * 4
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return randn_tensor(
        (1, channels, h, w), generator=generator, device=torch.device("cpu"), dtype=pipe.text_encoder.dtype
    )


# --- one batch -------------------------------------------------------------------------------


class PromptRunner:
    """Runs batches of prompts through a pipeline with unit hooks installed (see ``capture_prompts``)."""

    def __init__(self, pipe, settings: CaptureSettings):
        from dense_plantain.capture.embeddings import InputHook
        from dense_plantain.capture.hooks import UnitHooks

        settings.validate()
        multiple = pipe.vae_scale_factor * 2
        if settings.height % multiple or settings.width % multiple:
            raise CaptureError(
                f"height {settings.height} and width {settings.width} must be multiples of {multiple} "
                "for this pipeline."
            )
        self.pipe = pipe
        self.settings = settings
        self.layout = build_layout(dict(pipe.transformer.config), settings.layout, steps=settings.capture_steps)
        self.input_hook = InputHook(pipe, TEXT_TOKENS)  # the prompt embeddings' units (capture.embeddings)
        self.input_values: np.ndarray | None = None
        try:
            self.hooks = UnitHooks(pipe.transformer, self.layout, vectors=settings.vectors)
        except ValueError as err:
            raise CaptureError(str(err)) from None
        #: The last batch's signed vectors, float32 ``[batch x units * W]`` (None without ``vectors``).
        self.vectors: np.ndarray | None = None
        self.noise = initial_noise(pipe, settings.height, settings.width, settings.seed)
        self.image = _open_image(pipe, settings.image) if settings.image else None
        self.token_counts: dict[str, int] = {}
        self._last_step = max(settings.capture_steps)

    def __enter__(self) -> PromptRunner:
        self.hooks.install()
        self.input_hook.install()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.remove()
        self.input_hook.remove()

    def _stop_after_last_captured_step(self, pipe, step, timestep, callback_kwargs):
        # Later steps cannot change what was captured; the pipeline skips them once interrupted.
        if step >= self._last_step:
            pipe._interrupt = True
        return {}

    def run(self, prompts: Sequence[str]) -> np.ndarray:
        """Unit values of one batch: float32 ``[len(prompts) x units]`` (one device-to-host copy)."""
        import torch

        s = self.settings
        n = len(prompts)
        latents = self.noise.expand(n, -1, -1, -1)
        self.hooks.begin()
        self.input_hook.begin(prompts)
        callback = self._stop_after_last_captured_step if self._last_step < s.steps - 1 else None
        with torch.inference_mode():
            self.pipe(
                prompt=list(prompts),
                image=self.image,
                height=s.height,
                width=s.width,
                num_inference_steps=s.steps,
                guidance_scale=GUIDANCE_SCALE,
                latents=latents,
                output_type="latent",
                max_sequence_length=TEXT_TOKENS,
                text_encoder_out_layers=TEXT_LAYERS,
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=[],
            )
        if self.hooks.steps_captured != sorted(s.capture_steps):
            raise CaptureError(
                f"the pipeline ran {self.hooks.forwards} transformer forward(s), so steps "
                f"{sorted(set(s.capture_steps) - set(self.hooks.steps_captured))} were never captured."
            )
        values = self.hooks.collect()
        self.input_values = self.input_hook.collect()
        self.vectors = self.hooks.collect_vectors() if self.hooks.vector_width else None
        h, w = latent_grid(self.pipe, s.height, s.width)
        self.token_counts = {
            "text": self.hooks.n_text,
            "image": h * w,
            "reference": self.hooks.n_image - h * w,
        }
        return values


def _open_image(pipe, path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            img = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise CaptureError(f"cannot read reference image {path} ({err}); pass a PNG or JPEG file.") from None
    try:
        pipe.image_processor.check_image_input(img)
    except ValueError as err:
        raise CaptureError(f"reference image {path} cannot condition the pipeline: {err}.") from None
    return img


def _first_bad(values: np.ndarray, layout: Layout) -> tuple[int, int] | None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    row, unit = (int(v) for v in np.argwhere(bad)[0])
    return row, unit


def _non_finite_message(values: np.ndarray, layout: Layout, row: int, unit: int, prompt_desc: str) -> str:
    lab = layout.labels()
    count = int((~np.isfinite(values[row])).sum())
    blocks = sorted({str(b) for b in lab["block"][~np.isfinite(values[row])]}, key=lambda b: layout.block(b).start)
    return (
        f"the capture produced {values[row, unit]} in block {lab['block'][unit]} (unit {lab['name'][unit]}; "
        f"{count} non-finite unit(s) in {len(blocks)} block(s): {', '.join(blocks[:5])}"
        f"{', ...' if len(blocks) > 5 else ''}) for {prompt_desc}. Half-precision activations can overflow: try "
        "--dtype bfloat16 or --dtype float32."
    )


def _oom_message(batch_size: int) -> str:
    if batch_size > 1:
        return (
            f"CUDA ran out of memory at --batch-size {batch_size}. Run with --batch-size {max(1, batch_size // 2)}"
            " (values do not depend on the batch size)."
        )
    return (
        "CUDA ran out of memory at --batch-size 1. Free the GPU (other processes), use a smaller --height/--width, "
        "or a GPU with more memory."
    )


def _run_batch_guarded(runner: PromptRunner, batch: Sequence[str], batch_size: int) -> np.ndarray:
    import torch

    try:
        return runner.run(batch)
    except torch.cuda.OutOfMemoryError:
        raise CaptureError(_oom_message(batch_size)) from None


class _progress_bar_off:
    """Hide the pipeline's own per-call step bar, restoring the user's setting afterwards."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __enter__(self):
        self.saved = dict(getattr(self.pipe, "_progress_bar_config", {}) or {})
        self.pipe.set_progress_bar_config(disable=True)

    def __exit__(self, *exc):
        self.pipe._progress_bar_config = self.saved


def capture_prompts(
    pipe,
    prompts: Sequence[str],
    *,
    layout: str = "plantain",
    seed: int = 0,
    height: int = 1024,
    width: int = 1024,
    batch_size: int = 1,
    steps: int = 1,
    capture_steps: Sequence[int] = (0,),
    image: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> UnitValues:
    """Unit values of ``prompts`` under an already-loaded ``Flux2KleinPipeline``.

    Returns ``UnitValues`` with ``values`` float32 ``[prompts x units]`` in layout order and the
    ``layout`` (``values.layout.unit_names()`` names the columns). ``progress(done, total)`` is
    called after each batch. The pipeline is left as it was (hooks removed).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise CaptureError("no prompts to capture.")
    if batch_size < 1:
        raise CaptureError(f"batch size must be at least 1, got {batch_size}.")
    settings = CaptureSettings(
        layout=layout,
        seed=seed,
        height=height,
        width=width,
        steps=steps,
        capture_steps=tuple(int(s) for s in capture_steps),
        image=image,
    )
    out = []
    with PromptRunner(pipe, settings) as runner, _progress_bar_off(pipe):
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            values = _run_batch_guarded(runner, batch, batch_size)
            bad = _first_bad(values, runner.layout)
            if bad:
                row, unit = bad
                raise CaptureError(
                    _non_finite_message(values, runner.layout, row, unit, f"prompt {start + row} ({batch[row]!r})")
                )
            out.append(values)
            if progress is not None:
                progress(start + len(batch), len(prompts))
    info = {**asdict(settings), "guidance_scale": GUIDANCE_SCALE, "tokens": runner.token_counts}
    return UnitValues(np.concatenate(out, axis=0), runner.layout, prompts, info)


# --- pairs -------------------------------------------------------------------------------------


class _Pairs:
    """Pairs captured so far: rows of A and B in pair order; a batch may split a pair (``pending``)."""

    def __init__(
        self,
        pairs: list[Any],
        a_rows: list[np.ndarray],
        b_rows: list[np.ndarray],
        inputs: dict | None = None,
        vec_rows: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    ):
        self.pairs = pairs
        self.a_rows = list(a_rows)
        self.b_rows = list(b_rows)
        self.pending: dict[int, list[np.ndarray | None]] = {}
        # input-embedding units (capture.embeddings), rows beside a/b; None once a resumed file lacks them
        inputs = {} if inputs is None else inputs
        a_in, b_in = inputs.get("a_input"), inputs.get("b_input")
        self.in_rows: list[list[np.ndarray]] | None = (
            [list(a_in), list(b_in)] if a_in is not None and b_in is not None else (None if a_rows else [[], []])
        )
        self.pending_in: dict[int, list[np.ndarray | None]] = {}
        #: Signed vectors (``capture --vectors``): rows of a_vec and b_vec beside a and b, else None.
        self.vec_rows = None if vec_rows is None else (list(vec_rows[0]), list(vec_rows[1]))
        self.vec_pending: dict[int, list[np.ndarray | None]] = {}

    @property
    def n_done(self) -> int:
        return len(self.a_rows)

    def prompts_left(self) -> list[tuple[int, str, str]]:
        """(pair index, condition, text) of every prompt still to run, A then B, in pair order."""
        order = [(i, cond, getattr(p, cond)) for i, p in enumerate(self.pairs) for cond in ("a", "b")]
        return order[2 * self.n_done :]

    def add(
        self,
        batch: list[tuple[int, str, str]],
        values: np.ndarray,
        inputs: np.ndarray | None = None,
        vectors: np.ndarray | None = None,
    ) -> None:
        if self.vec_rows is not None:
            if vectors is None:
                raise RuntimeError("this capture keeps vectors, but the batch brought none")
            for row, (i, cond, _) in enumerate(batch):
                vslot = self.vec_pending.setdefault(i, [None, None])
                vslot[0 if cond == "a" else 1] = vectors[row]
                if vslot[0] is not None and vslot[1] is not None:
                    self.vec_rows[0].append(vslot[0])
                    self.vec_rows[1].append(vslot[1])
                    del self.vec_pending[i]
        for row, (i, cond, _) in enumerate(batch):
            slot = self.pending.setdefault(i, [None, None])
            slot_in = self.pending_in.setdefault(i, [None, None])
            slot[0 if cond == "a" else 1] = values[row]
            slot_in[0 if cond == "a" else 1] = None if inputs is None else inputs[row]
            if slot[0] is not None and slot[1] is not None:
                self.a_rows.append(slot[0])
                self.b_rows.append(slot[1])
                del self.pending[i]
                if self.in_rows is not None and slot_in[0] is not None and slot_in[1] is not None:
                    self.in_rows[0].append(slot_in[0])
                    self.in_rows[1].append(slot_in[1])
                else:
                    self.in_rows = None
                del self.pending_in[i]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.stack(self.a_rows), np.stack(self.b_rows)

    def extra(self) -> dict[str, np.ndarray]:
        """The capture file's optional tensors: ``a_input``/``b_input`` of the finished pairs (none
        when some pair lacks them, e.g. an older partial) and ``a_vec``/``b_vec`` with vectors."""
        out: dict[str, np.ndarray] = {}
        if self.in_rows is not None and len(self.in_rows[0]) == self.n_done and self.n_done:
            out.update(a_input=np.stack(self.in_rows[0]), b_input=np.stack(self.in_rows[1]))
        if self.vec_rows is not None:
            out.update(a_vec=np.stack(self.vec_rows[0]), b_vec=np.stack(self.vec_rows[1]))
        return out


#: Forwards left running in a worker thread by Ctrl-C (``_interruptible``).
_ABANDONED: list[threading.Thread] = []
_WORKER = "dense-plantain-forward"


def abandoned_forward() -> bool:
    """True when Ctrl-C left a forward running in a worker thread: the process should end with
    ``os._exit`` (after its message), as the interpreter's shutdown would abort on the running thread."""
    return bool(_ABANDONED) or any(t.name == _WORKER and t.is_alive() for t in threading.enumerate())


def _interruptible(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread while the main thread waits in short, interruptible steps.

    One forward of a large image on the CPU is a few long C++ operations (attention over 260k
    tokens for the tiny pipeline at 1024x1024), during which Python never runs a signal handler,
    so Ctrl-C would wait for minutes. Waiting in ``join(0.1)`` lets KeyboardInterrupt through at
    once; the abandoned forward (a daemon thread) writes nothing and ends with the process.
    Off the main thread (where no signal arrives) ``fn`` simply runs here.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # handed to the waiting thread
            box["error"] = err

    worker = threading.Thread(target=work, name=_WORKER, daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        _ABANDONED.append(worker)
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def _forward_in_thread(runner: PromptRunner, texts: list[str], batch_size: int) -> np.ndarray:
    device = getattr(runner.pipe, "device", None)
    if device is not None and getattr(device, "type", None) == "cuda" and device.index is not None:
        import torch

        torch.cuda.set_device(device)  # the current CUDA device is per thread
    return _run_batch_guarded(runner, texts, batch_size)


def _capture_batches(
    runner: PromptRunner,
    done: _Pairs,
    batch_size: int,
    progress: _Progress,
    on_batch: Callable[[int, int, float], None] | None = None,
    *,
    interruptible: bool = False,
) -> None:
    """Run every prompt left in ``done``; ``on_batch(batch_index, n_batches, seconds)`` after each batch.

    ``interruptible``: run each forward in a worker thread so that Ctrl-C stops the run at once
    (``_interruptible``); for the CLI's runs, whose process ends after the interruption.
    """
    prompts = done.prompts_left()
    n_batches = -(-len(prompts) // batch_size)
    for k, start in enumerate(range(0, len(prompts), batch_size)):
        batch = prompts[start : start + batch_size]
        progress.describe(f"pair {done.pairs[batch[0][0]].id}")
        t0 = time.monotonic()
        texts = [text for _, _, text in batch]
        if interruptible:
            values = _interruptible(_forward_in_thread, runner, texts, batch_size)
        else:
            values = _run_batch_guarded(runner, texts, batch_size)
        bad = _first_bad(values, runner.layout)
        if bad:
            row, unit = bad
            i, cond, text = batch[row]
            raise CaptureError(
                _non_finite_message(
                    values, runner.layout, row, unit, f"pair {done.pairs[i].id!r}, condition {cond.upper()} ({text!r})"
                )
            )
        done.add(batch, values, runner.input_values, runner.vectors)
        progress.advance(len(batch))
        if on_batch is not None:
            on_batch(k, n_batches, time.monotonic() - t0)


def _input_meta(extra: dict[str, np.ndarray]) -> dict[str, Any]:
    from dense_plantain.capture.embeddings import INPUT_SLICE, input_record

    return {"input_units": input_record(extra["a_input"].shape[1] * INPUT_SLICE)} if extra else {}


def _pair_records(pairs: list[Any], counts: list[PairTokens]) -> list[dict[str, Any]]:
    return [
        {
            "id": p.id,
            "a": p.a,
            "b": p.b,
            "tokens_a": c.tokens_a,
            "tokens_b": c.tokens_b,
            # The pair's factor labels (body, clothing, ...), for `analyze --by`; absent when unlabelled.
            **({"factors": dict(p.factors)} if getattr(p, "factors", None) else {}),
        }
        for p, c in zip(pairs, counts)
    ]


def _text_record(counts: list[PairTokens]) -> dict[str, Any]:
    cut = [
        {"id": c.pair_id, "condition": cond, "tokens": n}
        for c in counts
        for cond, n in (("a", c.tokens_a), ("b", c.tokens_b))
        if n > TEXT_TOKENS
    ]
    return {
        "max_sequence_length": TEXT_TOKENS,
        "counted_with": "the pipeline's tokenizer and chat template, as Flux2KleinPipeline.encode_prompt",
        "truncated": cut,
    }


def _count_tokens(pipe, pairs: list[Any]) -> list[PairTokens]:
    counts = check_pairs(pipe.tokenizer, pairs, TEXT_TOKENS)
    message = truncation_warning(counts, TEXT_TOKENS)
    if message:
        warn(message)
    return counts


def _in_memory_model(pipe) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model`` and ``weights`` records of a pipeline loaded by the caller (notebooks)."""
    from dense_plantain.capture.model import ModelSource, _plain, config_sha256

    name = str(getattr(pipe.config, "_name_or_path", "") or getattr(pipe, "name_or_path", "") or "")
    folder = Path(name) if name and Path(name).is_dir() else None
    model = {
        "id": str(folder.resolve()) if folder else (name or None),
        "source": "folder" if folder else "in-memory",
        "revision": None,
        "config_sha256": config_sha256(folder) if folder else None,
        "pipeline_class": type(pipe).__name__,
        "transformer_config": _plain(dict(pipe.transformer.config)),
    }
    if folder is not None:
        weights = weights_record(ModelSource(name, "folder", folder.resolve()))
        weights["description"] = (
            f"{weights.get('description') or 'weights'}; the sha256 are those of the folder the pipeline was "
            "loaded from: changes made to the pipeline in memory after loading are not detected"
        )
        weights["in_memory_checked"] = False
    else:
        weights = {
            "random": False,
            "kind": "pretrained",
            "description": f"an in-memory pipeline ({name or 'origin unknown'}); its weights were not hashed",
            "seed": None,
            "parts": [],
            "sha256": None,
        }
    return model, weights


def capture_pairs(
    pipe,
    probe,
    *,
    settings: CaptureSettings = CaptureSettings(),
    batch_size: int = 1,
    show_progress: bool = False,
) -> Any:
    """Capture every pair of ``probe`` (a ``prompts.Probe``, or a prompt file's path) under a loaded pipeline.

    Returns a ``store.Capture`` in memory (``path`` None): ``a``/``b`` float32 ``[pairs x units]``,
    the layout, and the metadata a capture file carries (pairs with token counts, settings,
    model, weights, versions), so ``analysis.analyze(capture_pairs(pipe, probe))`` works as on a
    file. Pairs whose A and B are the same after the 512-token cut are refused before any forward.
    """
    from dense_plantain.capture.model import device_name
    from dense_plantain.prompts import Probe, load_probe
    from dense_plantain.store import Capture

    probe = probe if isinstance(probe, Probe) else load_probe(probe)
    settings.validate()
    if batch_size < 1:
        raise CaptureError(f"batch size must be at least 1, got {batch_size}.")
    counts = _count_tokens(pipe, probe.pairs)
    model, weights = _in_memory_model(pipe)
    image_sha = file_sha256(settings.image) if settings.image else None
    settings_meta = settings_record(settings, str(pipe.transformer.dtype).removeprefix("torch."), image_sha)
    settings_meta.update(device=device_name(pipe.device), batch_size=batch_size)
    runner = PromptRunner(pipe, settings)
    done = _Pairs(probe.pairs, [], [], vec_rows=([], []) if settings.vectors else None)
    started = utc_now()
    with runner, _progress_bar_off(pipe), _Progress(show_progress, total=2 * len(probe.pairs), done=0) as progress:
        _capture_batches(runner, done, batch_size, progress)
    a, b = done.arrays()
    extra = done.extra()
    meta = {
        **runner.layout.to_metadata(),
        **_input_meta(extra),
        "pairs": _pair_records(probe.pairs, counts),
        "probe": probe.to_dict(),
        "model": model,
        "weights": weights,
        "settings": settings_meta,
        "text": _text_record(counts),
        "tokens": runner.token_counts,
        "versions": package_versions(),
        "command": None,
        "started": started,
        "finished": utc_now(),
    }
    if settings.vectors:
        meta["vector_width"] = runner.hooks.vector_width
    return Capture(path=None, a=a, b=b, meta=meta, layout=runner.layout, extra=extra)


# --- the capture job -------------------------------------------------------------------------------


@dataclass
class CaptureResult:
    path: Path
    n_pairs: int
    n_units: int
    resumed_from: int  # pairs taken over from an unfinished run
    seconds: float
    world_size: int = 1  # processes that captured it (torchrun), see ``distributed``


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def peak_memory_gib(device: Any) -> float:
    """Peak memory of this run so far: the GPU's allocator peak on CUDA, the process's peak RSS elsewhere."""
    import torch

    if getattr(device, "type", None) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def slow_run_message(
    first_batch_s: float, batches_left: int, settings: CaptureSettings, device: Any, random_weights: bool
) -> str | None:
    """A warning when the first batch says the rest of the run will take longer than ``SLOW_RUN_S``."""
    eta = first_batch_s * batches_left
    if eta < SLOW_RUN_S:
        return None
    text = (
        f"the first batch took {first_batch_s:.1f} s, so the remaining {batches_left} batch(es) will take about "
        f"{_duration(eta)} at {settings.height}x{settings.width} on {getattr(device, 'type', device)} "
        f"(peak memory so far {peak_memory_gib(device):.1f} GiB)."
    )
    if random_weights or getattr(device, "type", None) == "cpu":
        side = max(SIZE_MULTIPLE, min(settings.height, settings.width, 64))
        text += (
            f" To try the tool, a small image is enough: --height {side} --width {side} (the time grows with the "
            "square of the image's token count)."
        )
    return text + " Ctrl-C stops it and keeps the finished pairs; --resume continues."


def run_job(
    job: CaptureJob,
    *,
    plan: ShardPlan = ShardPlan(),
    loaded=None,
    after_batch: Callable[[int, int], None] | None = None,
    owns_loaded: bool = False,
) -> CaptureResult:
    """Capture ``plan``'s pairs of ``job.prompts`` into ``job.out`` (see the module docstring).

        Everything that needs no model is checked first (settings, prompt file, existing outputs, a
        writable folder, the output lock). ``after_batch(pairs_done, pairs_total)`` runs after each
        batch's pairs are safe on disk; ``loaded`` (a ``model.LoadedModel``) skips loading, and is put
    back as it was after a random-weights baseline unless ``owns_loaded`` says the caller loaded it
    for this run alone (``run_seeds``, the shard loop of ``distributed``: no host copy). On failure
        the ``CaptureError`` carries ``kept_pair_ids`` (read back from the partial file) and ``partial_path``.
        ``job.interruptible`` runs the forwards in a worker thread so that Ctrl-C stops at once.
    """
    from dense_plantain.capture.model import device_name, load_pipeline
    from dense_plantain.prompts import load_probe
    from dense_plantain.store import read_capture, write_capture

    t0 = time.monotonic()
    job.validate()
    settings, batch_size = job.settings, job.batch_size
    out = job.out_path
    partial = partial_path(out)
    probe = load_probe(job.prompts)
    lock = OutputLock(out, list(job.command) if job.command else None).acquire()
    restore_weights: Callable[[], None] | None = None
    try:
        if out.exists() and not job.force:
            raise CaptureError(f"{out} already exists; pass --force to overwrite it, or choose another --out.")
        pairs = plan.select(probe.pairs)
        n_total = len(pairs)
        previous = None
        if partial.exists():
            if job.resume:
                try:
                    previous = read_capture(partial, allow_partial=True)
                except CaptureFileError as err:
                    raise CaptureError(f"cannot resume: {err} Pass --force (without --resume) to start over.") from None
            elif not job.force:
                kept = kept_pair_ids(partial)
                what = f"{len(kept)} of {n_total} pairs" if kept else "unreadable or empty"
                raise CaptureError(
                    f"an unfinished capture of this output exists ({partial}, {what}). Pass --resume to continue "
                    "it, or --force to discard it and start over."
                )
        image_sha = file_sha256(settings.image) if settings.image else None

        callers = loaded is not None and not owns_loaded  # the caller's pipeline: put back after a baseline
        loaded = loaded or load_pipeline(job.model, device=job.device, dtype=job.dtype)
        pipe = loaded.pipe
        counts = _count_tokens(pipe, pairs)  # before any forward: refuses pairs the 512-token cut makes equal
        model_meta = loaded.provenance()
        weights = weights_record(loaded.source)
        if job.weights != "saved":  # a random-weights baseline (capture.reinit)
            from dense_plantain.capture.reinit import job_weights_record, keep_weights, reinitialise

            if callers:
                restore_weights = keep_weights(pipe, job.weights)
            done_reinit = reinitialise(pipe, job.weights, job.weights_seed)
            weights = job_weights_record(weights, job.weights, job.weights_seed, done_reinit["device"])
        settings_meta = settings_record(settings, str(loaded.dtype).removeprefix("torch."), image_sha)
        settings_meta.update(device=device_name(loaded.device), batch_size=batch_size)
        shard = plan.record()
        started = utc_now()
        vec_rows: tuple[list[np.ndarray], list[np.ndarray]] | None = ([], []) if settings.vectors else None
        done = _Pairs(pairs, [], [], vec_rows=vec_rows)
        history: list[dict[str, Any]] = []
        if previous is not None:
            this_run = {"settings": settings_meta, "model": model_meta, "weights": weights}
            check_resumable(partial, previous.meta, this_run, probe, n_total, shard)
            has_vec = "a_vec" in previous.extra
            if has_vec != settings.vectors:
                raise CaptureError(
                    f"cannot resume: {partial} was captured {'with' if has_vec else 'without'} --vectors and this run "
                    f"is {'without' if has_vec else 'with'}; run again {'with' if has_vec else 'without'} --vectors, "
                    "or pass --force (without --resume) to start over."
                )
            if has_vec:
                vec_rows = (list(previous.extra["a_vec"]), list(previous.extra["b_vec"]))
            done = _Pairs(pairs, list(previous.a), list(previous.b), previous.extra, vec_rows)
            started = previous.meta.get("started", started)
            history = list(previous.meta.get("runs", []))
        elif partial.exists():  # --force: start over
            partial.unlink()
        n_resumed = done.n_done
        history.append(
            {
                "started": utc_now(),
                "device": settings_meta["device"],
                "batch_size": batch_size,
                "pairs_before": n_resumed,
            }
        )
        runner = PromptRunner(pipe, settings)

        def metadata(n_done: int, finished: bool) -> dict[str, Any]:
            meta = {
                **runner.layout.to_metadata(),
                **_input_meta(done.extra()),
                "pairs": _pair_records(pairs[:n_done], counts[:n_done]),
                "probe": probe.to_dict(),
                "model": model_meta,
                "weights": weights,
                "settings": settings_meta,
                "text": _text_record(counts),
                "tokens": runner.token_counts,
                "versions": package_versions(),
                "command": list(job.command) if job.command else None,
                "started": started,
                "runs": history,
            }
            if shard is not None:
                meta["shard"] = dict(shard)
            if settings.vectors:
                meta["vector_width"] = runner.hooks.vector_width
            if finished:
                meta["finished"] = utc_now()
            else:
                meta["partial"] = True
                meta["n_pairs_total"] = n_total
            return meta

        written = {"n": n_resumed}

        def on_batch(k: int, n_batches: int, seconds: float) -> None:
            if written["n"] < done.n_done < n_total:
                a, b = done.arrays()
                write_capture(partial, a, b, metadata(done.n_done, finished=False), extra=done.extra())
                written["n"] = done.n_done
            if k == 0:
                message = slow_run_message(seconds, n_batches - 1, settings, loaded.device, weights["random"])
                if message:
                    warn(message)
            if after_batch is not None:
                after_batch(done.n_done, n_total)

        def failed(reason: str) -> CaptureError:
            return CaptureError(
                reason, kept_pair_ids=kept_pair_ids(partial), partial_path=partial, n_pairs_total=n_total
            )

        progress = _Progress(job.show_progress, total=2 * n_total, done=2 * n_resumed)
        try:
            with runner, _progress_bar_off(pipe), progress:
                _capture_batches(runner, done, batch_size, progress, on_batch, interruptible=job.interruptible)
            history[-1]["finished"] = utc_now()
            a, b = done.arrays()
            write_capture(out, a, b, metadata(n_total, finished=True), extra=done.extra())
        except KeyboardInterrupt:
            raise failed("interrupted.") from None
        except CaptureError as err:
            raise failed(err.reason) from None
        except OSError as err:
            words = disk_error(err, Path(err.filename) if err.filename else partial, "the capture file")
            if words is None and err.errno not in (errno.EIO,):
                raise
            raise failed(
                (words or f"cannot write the capture ({err}).") + " Free space or choose another --out."
            ) from None
        except BaseException as err:
            if isinstance(err, Exception):
                err.add_note(str(failed("")).strip())
            raise
        partial.unlink(missing_ok=True)
        return CaptureResult(out, n_total, runner.layout.n_units, n_resumed, time.monotonic() - t0)
    finally:
        if restore_weights is not None:
            restore_weights()
        lock.release()


def run_capture(
    model: str,
    prompts_file: str | Path,
    out: str | Path,
    *,
    loaded=None,
    after_batch: Callable[[int, int], None] | None = None,
    plan: ShardPlan = ShardPlan(),
    **options: Any,
) -> CaptureResult:
    """``run_job`` with the ``CaptureJob``'s options as keywords (``settings``, ``device``, ``dtype``,
    ``batch_size``, ``resume``, ``force``, ``show_progress``, ``command``)."""
    job = CaptureJob(prompts=prompts_file, out=out, model=model, **options)
    return run_job(job, plan=plan, loaded=loaded, after_batch=after_batch)


class _Progress(Bar):
    """A rich progress bar counting prompts (or nothing, when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        super().__init__(enabled, total, done, verb="capture", noun="prompts")
