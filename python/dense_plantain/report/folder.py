"""The results folder: written whole or not at all, and never over someone else's files.

Every output is first written into a hidden staging folder next to DIR (``.DIR.<random>.partial``);
only when all of them are complete is the staging folder moved into place, so a failure (or a
crash) leaves DIR as it was. The policy for an existing DIR:

* missing or empty: the staging folder becomes DIR;
* a previous dense-plantain results folder (its ``results.json`` is ours and it holds only files
  that dense-plantain writes): replaced as a whole, so no stale file of the old run survives;
* anything else (other files in it): refused, unless ``force``; then each of our files is moved
  into DIR over any file of the same name, and the other files are left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from dense_plantain.errors import DensePlantainError
from dense_plantain.report.records import RESULTS_JSON, ResultsFileError, load_results

#: Every name a results folder may hold; a folder with only these (and our results.json) is ours.
OUTPUT_NAMES = frozenset(
    {"results.json", "units.csv", "results.md", "abs_t_by_block.png", "null_counts.png", "split_half_r.png"}
)


class OutputFolderError(DensePlantainError):
    """The output folder cannot be written without losing files that are not ours."""


def is_results_folder(folder: Path) -> bool:
    """True for a folder that a previous ``analyze``/``compare`` wrote and nobody added to."""
    names = {p.name for p in folder.iterdir()}
    if RESULTS_JSON not in names or not names <= OUTPUT_NAMES:
        return False
    try:
        load_results(folder)
    except ResultsFileError:
        return False
    return True


def check_out_dir(out: Path, force: bool = False) -> None:
    """Raise `OutputFolderError` now, before any work, if writing ``out`` would be refused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} exists and is not a folder. Choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_results_folder(out) and not force:
        raise OutputFolderError(
            f"{out} is not empty and is not a dense-plantain results folder; nothing was written. Choose a new or "
            "empty --out, or pass --force to write the results files into it (other files are left alone)"
        )


def write_folder(out: Path, fill: Callable[[Path], None], force: bool = False) -> list[Path]:
    """Call ``fill(staging)`` to write every output, then move them into ``out`` by the policy above."""
    out = Path(out)
    check_out_dir(out, force)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the results folder should not be
    try:
        fill(staging)
        names = sorted(p.name for p in staging.iterdir())
        unknown = set(names) - OUTPUT_NAMES
        if unknown:
            raise RuntimeError(f"results folder writer produced unlisted files {sorted(unknown)}")
        _publish(staging, out, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(staging: Path, out: Path, force: bool) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(staging, out)
        return
    if is_results_folder(out):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=staging.parent))
        old.rmdir()
        os.rename(out, old)
        try:
            os.rename(staging, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    if not force:  # someone added a file since check_out_dir
        raise OutputFolderError(
            f"{out} changed while the analysis ran and is no longer a results folder; "
            f"nothing was written. Pass --force or choose another --out"
        )
    for path in staging.iterdir():
        os.replace(path, out / path.name)
