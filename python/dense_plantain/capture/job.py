"""A capture as one job: what to capture (model, prompts, settings) and how (device, dtype, batches).

``CaptureSettings`` is what a capture measures (recorded in the file, compared on ``--resume``).
``CaptureJob`` is the whole option list of a run, spelled once here: the CLI, the notebook API,
the demo and torchrun all build one. ``ShardPlan`` says which pairs one process captures; a
run in one process is the plan with ``world_size = 1`` (every pair, no shard files).

Protocol (PROTOCOL.md): one denoising step (``steps=1``) at ``guidance_scale=1.0``, pipeline
defaults for the rest (512 text tokens, text-encoder layers 9, 18, 27), ``output_type="latent"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dense_plantain.capture.model import DEFAULT_MODEL
from dense_plantain.errors import CaptureError, DensePlantainError
from dense_plantain.units import LAYOUTS

#: guidance 1.0: no classifier-free second pass; the family's protocol.
GUIDANCE_SCALE = 1.0
#: The Klein pipeline's defaults, recorded in every capture: prompts are padded or cut to this many tokens.
TEXT_TOKENS = 512
TEXT_LAYERS = (9, 18, 27)
#: FLUX.2's VAE downsamples 8x and the transformer packs 2x2 latent patches.
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class PipelineSettings:
    """What every run of the pipeline in the family fixes: the layout, the noise seed, the image size.

    ``capture`` and ``patch`` settings extend it (``CaptureSettings``, ``patch.run.PatchSettings``).
    """

    layout: str = "plantain"
    seed: int = 0
    height: int = 1024
    width: int = 1024

    def validate_pipeline(self, error: type[DensePlantainError] = CaptureError) -> None:
        """Raise ``error`` on a layout, seed or image size the pipeline cannot run."""
        if self.layout not in LAYOUTS:
            raise error(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}.")
        for name, value in (("height", self.height), ("width", self.width)):
            if not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
                lower = (
                    max(SIZE_MULTIPLE, (int(value) // SIZE_MULTIPLE) * SIZE_MULTIPLE)
                    if isinstance(value, int)
                    else SIZE_MULTIPLE
                )
                raise error(
                    f"--{name} {value} is not a positive multiple of {SIZE_MULTIPLE}: FLUX.2 downsamples images 8x "
                    f"and packs 2x2 latent patches, and the pipeline would silently resize. Use e.g. {lower} or "
                    f"{lower + SIZE_MULTIPLE}."
                )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise error(f"--seed must be a non-negative integer, got {self.seed!r}.")


@dataclass(frozen=True)
class CaptureSettings(PipelineSettings):
    """What a capture measures; everything here is recorded and must match on ``--resume``."""

    steps: int = 1
    capture_steps: tuple[int, ...] = (0,)
    image: str | None = None  # path of a reference image every prompt is conditioned on
    #: Also keep each unit's signed per-column token means (``a_vec``/``b_vec``, ``capture --vectors``).
    vectors: bool = False

    def validate(self) -> None:
        """Raise ``CaptureError`` on a setting the pipeline cannot run; touches nothing else."""
        self.validate_pipeline()
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


@dataclass(frozen=True)
class ShardPlan:
    """The pairs ``[start, stop)`` of the prompt file that process ``rank`` of ``world_size`` captures.

    ``ShardPlan()`` is one process capturing everything (``stop=None``: to the last pair); its
    file carries no ``shard`` key. Ranks of a torchrun capture get contiguous ranges, in pair
    order, whose sizes differ by at most one (``ShardPlan.of``).
    """

    rank: int = 0
    world_size: int = 1
    start: int = 0
    stop: int | None = None

    @classmethod
    def of(cls, n_pairs: int, rank: int, world_size: int) -> ShardPlan:
        """Rank ``rank``'s share of ``n_pairs`` pairs: ``[r*n//W, (r+1)*n//W)``."""
        return cls(rank, world_size, rank * n_pairs // world_size, (rank + 1) * n_pairs // world_size)

    @property
    def single(self) -> bool:
        return self.world_size == 1

    def select(self, items: list[Any]) -> list[Any]:
        """This plan's pairs (or pair ids) of the whole prompt file's list."""
        return list(items[self.start : self.stop])

    def record(self) -> dict[str, int] | None:
        """The capture file's ``shard`` key (None for one process)."""
        if self.single:
            return None
        return {"rank": self.rank, "world_size": self.world_size, "start": self.start, "stop": int(self.stop or 0)}


@dataclass(frozen=True)
class CaptureJob:
    """One capture run: every option of ``dense-plantain capture``, spelled once.

    ``prompts`` is a prompt file (TOML) path; ``out`` the capture file to write. ``resume``
    continues an unfinished capture of ``out``; ``force`` overwrites ``out`` and discards
    unfinished work. ``command`` is the argv that started the run, recorded as ``meta["command"]``.
    ``show_progress`` draws a progress bar; ``interruptible`` see below.
    """

    prompts: str | Path
    out: str | Path
    model: str = DEFAULT_MODEL
    settings: CaptureSettings = field(default_factory=CaptureSettings)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 1
    resume: bool = False
    force: bool = False
    show_progress: bool = True
    command: tuple[str, ...] | None = None
    #: Run each forward in a worker thread so that Ctrl-C stops the run within a second (a long CPU
    #: forward never returns to Python otherwise). For a process that ends after the run (the CLI):
    #: the interrupted forward is abandoned, not stopped.
    interruptible: bool = False
    #: ``saved`` (as loaded), ``random`` (transformer re-initialised), ``random-all`` (text encoder too): ``reinit``.
    weights: str = "saved"
    #: Seed of the re-initialisation (``torch.manual_seed``); recorded, and must match on ``--resume``.
    weights_seed: int = 0

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    def replace(self, **changes: Any) -> CaptureJob:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Everything that needs neither the model nor the prompt file; raises ``CaptureError``."""
        self.settings.validate()
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise CaptureError(f"--batch-size must be at least 1, got {self.batch_size}.")
        from dense_plantain.capture.reinit import parts_of

        parts_of(self.weights)
        if not isinstance(self.weights_seed, int) or self.weights_seed < 0:
            raise CaptureError(f"--weights-seed must be a non-negative integer, got {self.weights_seed!r}.")
        out = self.out_path
        if out.is_dir():
            raise CaptureError(
                f"--out {out} is a folder; give the capture file's name, e.g. {out / 'capture.safetensors'}."
            )
