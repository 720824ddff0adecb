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
def _shared_load():
    from dense_plantain.capture.model import load_pipeline

    loaded = load_pipeline(tiny_dir(), device="cpu", dtype="float32")
    return loaded, WeightsSnapshot(loaded.pipe)


def tiny_loaded():
    """The shared float32 CPU load, checked on every call to hold the weights it was loaded with.

    Tests share this one object, so a test that changes it in place (casting it to bfloat16 and
    back rounds every weight) would move the values of every later capture of it.
    """
    loaded, snapshot = _shared_load()
    snapshot.check(loaded.pipe)
    return loaded


class WeightsSnapshot:
    """A copy of a pipeline's weights (transformer, text encoder, VAE), to tell whether they changed."""

    PARTS = ("transformer", "text_encoder", "vae")

    def __init__(self, pipe) -> None:
        self.tensors = {
            (part, name): tensor.detach().clone()
            for part in self.PARTS
            for name, tensor in getattr(pipe, part).state_dict().items()
        }

    def changed(self, pipe) -> list[str]:
        """The ``part.name`` of every tensor whose dtype, shape or bits differ from the snapshot's."""
        import torch

        now = {(part, name): t for part in self.PARTS for name, t in getattr(pipe, part).state_dict().items()}
        out = sorted(f"{part}.{name}" for part, name in set(now) ^ set(self.tensors))
        for key, kept in self.tensors.items():
            t = now.get(key)
            if t is not None and not (t.dtype == kept.dtype and t.shape == kept.shape and torch.equal(t, kept)):
                out.append(f"{key[0]}.{key[1]}")
        return out

    def check(self, pipe) -> None:
        changed = self.changed(pipe)
        if changed:
            raise AssertionError(
                f"the shared tiny pipeline (tests/tiny_klein.py tiny_loaded) no longer holds the weights it was "
                f"loaded with: {len(changed)} tensor(s) changed, e.g. {', '.join(changed[:3])}. A test that ran "
                "before this one changed it in place (a cast to bfloat16 and back rounds every weight); such a "
                "test must use a load of its own (load_pipeline(tiny_dir(), ...))."
            )


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
