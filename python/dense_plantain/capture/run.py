"""The capture run: prompts through the pipeline, unit values out, kept safe on disk.

Protocol (PROTOCOL.md): one denoising step (``steps=1``) at ``guidance_scale=1.0``, pipeline
defaults for the rest (512 text tokens, text-encoder layers 9, 18, 27), ``output_type="latent"``.

Noise: every prompt starts from the very latents the pipeline draws for a *single* prompt with
``generator=torch.Generator("cpu").manual_seed(seed)`` at that height and width. The run draws
them once (as the pipeline would, same shape, dtype and generator) and passes them repeated as
``latents=``, so batching cannot change them and plain diffusers reproduces any capture.

Two entry points:

* ``capture_prompts(pipe, prompts, ...)``: for notebooks; an already-loaded pipeline and a list of
  prompts in, ``UnitValues`` (float32 ``[prompts x units]`` in layout order, plus the layout) out.
* ``run_capture(model, prompts_file, out, ...)``: what ``dense-plantain capture`` runs. Pairs
  A/B in batches; after every batch the finished pairs go atomically to ``OUT.partial.safetensors``
  (store's ``partial: true``), so an interruption (Ctrl-C, crash, out of memory) loses at most one
  batch; ``resume=True`` continues from that file after checking that model, settings and prompts
  match; the finished capture is written atomically and the partial file removed.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dense_plantain.errors import CaptureError, CaptureFileError
from dense_plantain.units import LAYOUTS, Layout, build_layout

#: guidance 1.0: no classifier-free second pass; the family's protocol.
GUIDANCE_SCALE = 1.0
#: The Klein pipeline's defaults, recorded in every capture.
TEXT_TOKENS = 512
TEXT_LAYERS = (9, 18, 27)
#: FLUX.2's VAE downsamples 8x and the transformer packs 2x2 latent patches.
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class CaptureSettings:
    """What a capture measures; everything here is recorded and must match on ``--resume``."""

    layout: str = "plantain"
    seed: int = 0
    height: int = 1024
    width: int = 1024
    steps: int = 1
    capture_steps: tuple[int, ...] = (0,)
    image: str | None = None  # path of a reference image every prompt is conditioned on

    def validate(self) -> None:
        """Raise ``CaptureError`` on a setting the pipeline cannot run; touches nothing else."""
        if self.layout not in LAYOUTS:
            raise CaptureError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}.")
        for name, value in (("height", self.height), ("width", self.width)):
            if not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
                lower = (
                    max(SIZE_MULTIPLE, (int(value) // SIZE_MULTIPLE) * SIZE_MULTIPLE)
                    if isinstance(value, int)
                    else SIZE_MULTIPLE
                )
                raise CaptureError(
                    f"--{name} {value} is not a positive multiple of {SIZE_MULTIPLE}: FLUX.2 downsamples images 8x "
                    f"and packs 2x2 latent patches, and the pipeline would silently resize. Use e.g. {lower} or "
                    f"{lower + SIZE_MULTIPLE}."
                )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise CaptureError(f"--seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise CaptureError(f"--steps must be at least 1, got {self.steps!r}.")
        steps = tuple(self.capture_steps)
        if not steps or len(set(steps)) != len(steps) or any(not isinstance(s, int) or s < 0 for s in steps):
            raise CaptureError(f"--capture-steps must be distinct non-negative step indices, got {list(steps)}.")
        if max(steps) >= self.steps:
            raise CaptureError(
                f"--capture-steps {','.join(map(str, steps))} asks for step {max(steps)}, but the run has only "
                f"{self.steps} denoising step(s) (indices 0..{self.steps - 1}); raise --steps."
            )
        if self.image is not None and not Path(self.image).is_file():
            raise CaptureError(f"reference image {self.image} does not exist (or is not a file).")


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
        self.hooks = UnitHooks(pipe.transformer, self.layout)
        self.noise = initial_noise(pipe, settings.height, settings.width, settings.seed)
        self.image = _open_image(pipe, settings.image) if settings.image else None
        self.token_counts: dict[str, int] = {}
        self._last_step = max(settings.capture_steps)

    def __enter__(self) -> PromptRunner:
        self.hooks.install()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.remove()

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
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise CaptureError(f"cannot read reference image {path} ({err}); pass a PNG or JPEG file.") from None
    try:
        pipe.image_processor.check_image_input(img)
    except ValueError as err:
        raise CaptureError(f"reference image {path} cannot condition the pipeline: {err}.") from None
    return img


def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


# --- capture files ---------------------------------------------------------------------------


def partial_path(out: str | Path) -> Path:
    """Where an unfinished capture of ``out`` is kept: ``X.partial.safetensors`` next to it."""
    out = Path(out)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    return out.with_name(f"{stem}.partial.safetensors")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from dense_plantain import __version__

    out = {"dense-plantain": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "tokenizers", "numpy", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


#: Settings that must agree between an unfinished capture and the run that resumes it.
_RESUME_KEYS = (
    "layout",
    "seed",
    "height",
    "width",
    "steps",
    "capture_steps",
    "guidance_scale",
    "text_tokens",
    "text_encoder_layers",
    "dtype",
    "image_sha256",
)


def settings_record(settings: CaptureSettings, dtype: str, image_sha256: str | None) -> dict[str, Any]:
    """The ``settings`` record of a capture file, less the run's device and batch size."""
    return {
        **asdict(settings),
        "capture_steps": list(settings.capture_steps),
        "image_sha256": image_sha256,
        "guidance_scale": GUIDANCE_SCALE,
        "text_tokens": TEXT_TOKENS,
        "text_encoder_layers": list(TEXT_LAYERS),
        "dtype": dtype,
        "noise": (
            f"torch.Generator('cpu').manual_seed({settings.seed}); the single-prompt draw of "
            "Flux2KleinPipeline.prepare_latents, repeated for every prompt"
        ),
    }


def identity_problems(
    meta: dict, settings_meta: dict, model_meta: dict, probe, *, then: str = "unfinished run"
) -> list[str]:
    """How a capture file's settings, model and prompt file differ from this run's (empty: they agree)."""
    problems = []
    old = meta.get("settings") or {}
    for key in _RESUME_KEYS:
        if old.get(key) != settings_meta.get(key):
            problems.append(f"{key}: {then} {old.get(key)!r}, this run {settings_meta.get(key)!r}")
    old_model = meta.get("model") or {}
    # A folder may move between runs; its configuration is what must not change.
    keys = ("config_sha256",) if model_meta.get("source") == "folder" else ("id", "revision", "config_sha256")
    for key in keys:
        if old_model.get(key) != model_meta.get(key):
            problems.append(f"model {key}: {then} {old_model.get(key)!r}, this run {model_meta.get(key)!r}")
    old_probe = meta.get("probe") or {}
    if old_probe.get("sha256") != probe.sha256:
        problems.append(
            f"prompt file {probe.path} changed since the {then} (sha256 "
            f"{str(old_probe.get('sha256'))[:12]}... then, {probe.sha256[:12]}... now)"
        )
    return problems


def _check_resumable(
    partial: Path, meta: dict, settings_meta: dict, model_meta: dict, probe, n_total: int, shard: dict[str, int] | None
) -> None:
    problems = identity_problems(meta, settings_meta, model_meta, probe)
    if meta.get("n_pairs_total") != n_total:
        problems.append(f"pairs: unfinished run expects {meta.get('n_pairs_total')}, this run has {n_total}")
    if meta.get("shard") != shard:
        problems.append(f"shard: unfinished run {meta.get('shard')!r}, this run {shard!r}")
    if problems:
        raise CaptureError(
            f"cannot resume from {partial}: it was made with different settings, model or prompts: "
            + "; ".join(problems)
            + ". Rerun with the same options, or pass --force to discard it and start over."
        )


def _pair_records(pairs) -> list[dict[str, str]]:
    return [{"id": p.id, "a": p.a, "b": p.b} for p in pairs]


@dataclass
class CaptureResult:
    path: Path
    n_pairs: int
    n_units: int
    resumed_from: int  # pairs taken over from an unfinished run
    seconds: float
    world_size: int = 1  # processes that captured it (torchrun), see ``distributed``


def run_capture(
    model: str,
    prompts_file: str | Path,
    out: str | Path,
    *,
    settings: CaptureSettings = CaptureSettings(),
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 1,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
    after_batch: Callable[[int, int], None] | None = None,
    loaded=None,
    shard: dict[str, int] | None = None,
) -> CaptureResult:
    """Capture every pair of a prompt file into ``out`` (see the module docstring).

    ``after_batch(pairs_done, pairs_total)`` runs after each batch's pairs are safe on disk.
    ``loaded`` (a ``model.LoadedModel``) skips loading, for callers that hold the pipeline.
    ``shard`` (``{"rank", "world_size", "start", "stop"}``, see ``distributed``) captures only
    pairs ``start:stop`` of the prompt file and records the range in the file's ``shard`` key.
    """
    from dense_plantain.capture.model import load_pipeline
    from dense_plantain.prompts import load_probe
    from dense_plantain.store import read_capture, write_capture

    t0 = time.monotonic()
    # Everything that needs no model is checked before loading one.
    settings.validate()
    if batch_size < 1:
        raise CaptureError(f"--batch-size must be at least 1, got {batch_size}.")
    out = Path(out)
    partial = partial_path(out)
    if out.is_dir():
        raise CaptureError(
            f"--out {out} is a folder; give the capture file's name, e.g. {out / 'capture.safetensors'}."
        )
    probe = load_probe(prompts_file)
    if out.exists() and not force:
        raise CaptureError(f"{out} already exists; pass --force to overwrite it, or choose another --out.")
    previous = None
    if partial.exists():
        if resume:
            try:
                previous = read_capture(partial, allow_partial=True)
            except CaptureFileError as err:
                raise CaptureError(f"cannot resume: {err} Pass --force (without --resume) to start over.") from None
        elif not force:
            try:
                done = read_capture(partial, allow_partial=True, check_finite=False).n_pairs
                what = f"{done} of {len(probe.pairs)} pairs"
            except CaptureFileError:
                what = "unreadable"
            raise CaptureError(
                f"an unfinished capture of this output exists ({partial}, {what}). Pass --resume to continue it, "
                "or --force to discard it and start over."
            )
    image_sha = _file_sha256(settings.image) if settings.image else None

    loaded = loaded or load_pipeline(model, device=device, dtype=dtype)
    pipe = loaded.pipe
    model_meta = loaded.provenance()
    started = _utc_now()
    settings_meta = settings_record(settings, str(loaded.dtype).removeprefix("torch."), image_sha)
    from dense_plantain.capture.model import device_name

    settings_meta["device"] = device_name(loaded.device)
    settings_meta["batch_size"] = batch_size
    pairs = probe.pairs if shard is None else probe.pairs[shard["start"] : shard["stop"]]
    n_total = len(pairs)
    a_rows: list[np.ndarray] = []
    b_rows: list[np.ndarray] = []
    n_resumed = 0
    history: list[dict[str, Any]] = []
    if previous is not None:
        _check_resumable(partial, previous.meta, settings_meta, model_meta, probe, n_total, shard)
        a_rows = list(previous.a)
        b_rows = list(previous.b)
        n_resumed = previous.n_pairs
        started = previous.meta.get("started", started)
        history = list(previous.meta.get("runs", []))
    elif partial.exists():  # --force: start over
        partial.unlink()
    history.append(
        {"started": _utc_now(), "device": settings_meta["device"], "batch_size": batch_size, "pairs_before": n_resumed}
    )

    runner = PromptRunner(pipe, settings)
    layout = runner.layout

    def metadata(n_done: int, finished: bool) -> dict[str, Any]:
        meta = {
            **layout.to_metadata(),
            "pairs": _pair_records(pairs[:n_done]),
            "probe": probe.to_dict(),
            "model": model_meta,
            "settings": settings_meta,
            "tokens": runner.token_counts,
            "versions": package_versions(),
            "started": started,
            "runs": history,
        }
        if shard is not None:
            meta["shard"] = dict(shard)
        if finished:
            meta["finished"] = _utc_now()
        else:
            meta["partial"] = True
            meta["n_pairs_total"] = n_total
        return meta

    # Prompts in pair order, A then B; a batch may split a pair, whose first half waits in `pending`.
    prompts = [(i, cond, getattr(p, cond)) for i, p in enumerate(pairs) for cond in ("a", "b")][2 * n_resumed :]
    pending: dict[int, list[np.ndarray | None]] = {}
    n_done = n_written = n_resumed
    progress = _Progress(show_progress, total=2 * n_total, done=2 * n_resumed)
    try:
        with runner, _progress_bar_off(pipe), progress:
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start : start + batch_size]
                progress.describe(f"pair {pairs[batch[0][0]].id}")
                values = _run_batch_guarded(runner, [text for _, _, text in batch], batch_size)
                bad = _first_bad(values, layout)
                if bad:
                    row, unit = bad
                    i, cond, text = batch[row]
                    raise CaptureError(
                        _non_finite_message(
                            values, layout, row, unit, f"pair {pairs[i].id!r}, condition {cond.upper()} ({text!r})"
                        )
                    )
                for row, (i, cond, _) in enumerate(batch):
                    pending.setdefault(i, [None, None])[0 if cond == "a" else 1] = values[row]
                    if pending[i][0] is not None and pending[i][1] is not None:
                        a_rows.append(pending[i][0])
                        b_rows.append(pending[i][1])
                        del pending[i]
                        n_done += 1
                progress.advance(len(batch))
                if n_written < n_done < n_total:
                    write_capture(partial, np.stack(a_rows), np.stack(b_rows), metadata(n_done, finished=False))
                    n_written = n_done
                if after_batch is not None:
                    after_batch(n_done, n_total)
    except KeyboardInterrupt:
        raise CaptureError("interrupted." + _kept_note(partial, n_done, n_total)) from None
    except CaptureError as err:
        raise CaptureError(str(err) + _kept_note(partial, n_done, n_total)) from None
    except BaseException as err:
        if isinstance(err, Exception) and hasattr(err, "add_note"):
            err.add_note(_kept_note(partial, n_done, n_total).strip())
        raise
    history[-1]["finished"] = _utc_now()
    write_capture(out, np.stack(a_rows), np.stack(b_rows), metadata(n_total, finished=True))
    partial.unlink(missing_ok=True)
    return CaptureResult(out, n_total, layout.n_units, n_resumed, time.monotonic() - t0)


def _kept_note(partial: Path, n_done: int, n_total: int) -> str:
    if n_done == 0:
        return " Nothing was finished yet, so nothing is kept."
    return (
        f" The {n_done} of {n_total} pairs finished before this are kept in {partial}; run the same command "
        "with --resume to continue from there."
    )


class _Progress:
    """A rich progress bar counting prompts (or nothing, when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled = enabled
        self.total = total
        self.done = done
        self._bar = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]capture[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("prompts"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total, completed=self.done)
        return self

    def describe(self, text: str) -> None:
        if self._bar is not None:
            from rich.markup import escape

            self._bar.update(self._task, description=escape(text))

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
