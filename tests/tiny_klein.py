"""One tiny random FLUX.2 [klein] pipeline per test process, shared by the capture tests.

A plain module (not a conftest fixture) so that several test files share one build: the folder
is made once, in a temporary directory removed at exit, and loaded once on the CPU in float32.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

SIZE = 32  # pixels; 16 x 16 = 256 image tokens with the tiny one-level VAE


@functools.cache
def tiny_dir() -> Path:
    from dense_plantain.capture.tiny import make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="dp-tiny-klein-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_tiny_model(root / "tiny", seed=0)


@functools.cache
def tiny_loaded():
    from dense_plantain.capture.model import load_pipeline

    return load_pipeline(tiny_dir(), device="cpu", dtype="float32")


def write_probe(path: Path, pairs: list[tuple[str, str, str]]) -> Path:
    lines = ["[probe]", 'name = "tiny-test"', 'label_a = "plain"', 'label_b = "fancy"', ""]
    for pair_id, a, b in pairs:
        lines += ["[[pairs]]", f'id = "{pair_id}"', f'a = "{a}"', f'b = "{b}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def capture_args(probe: Path, out: Path, batch_size: int, *more: str, size: int = SIZE) -> list[str]:
    """The arguments of ``dense-plantain capture`` of ``probe`` with the tiny pipeline: on the CPU, at
    ``size`` x ``size`` pixels, quiet, ``batch_size`` prompts per forward; ``more`` follow."""
    args = ["capture", "--model", str(tiny_dir()), "--prompts", str(probe), "--out", str(out)]
    args += ["--height", str(size), "--width", str(size), "--device", "cpu", "--batch-size", str(batch_size)]
    return [*args, "--quiet", *more]


PAIRS = [
    ("p1", "a person standing in a T-pose on a stage", "a person leaping mid-dance on a stage"),
    ("p2", "a man in a blue jacket, arms out to the sides", "a man in a blue jacket, crouching low"),
    ("p3", "a child in a yellow raincoat standing still", "a child in a yellow raincoat jumping"),
    ("p4", "a climber on a rock wall, arms straight out", "a climber on a rock wall reaching up"),
    ("p5", "a dancer on a wooden stage in a T-pose", "a dancer on a wooden stage turning"),
]
