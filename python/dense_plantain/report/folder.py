"""The results folder: written whole or not at all, and never over someone else's files.

Every output is first written into a hidden staging folder next to DIR (``.DIR.<random>.partial``);
only when all of them are complete is the staging folder moved into place, so a failure (or a
crash) leaves DIR as it was. The staging folder holds an ``owner`` file (``pid host``) while it
is filled; a staging folder for DIR whose owner process no longer runs on this host (a run killed
with kill -9) is removed by the next run. A disk error (read-only, full) becomes one
`OutputFolderError` naming DIR and the error, with nothing half-written left. The policy for an
existing DIR:

* missing or empty: the staging folder becomes DIR;
* a previous dense-plantain results folder (its ``results.json`` is ours and it holds only files
  that dense-plantain writes): replaced as a whole, so no stale file of the old run survives;
* anything else (other files in it): refused, unless ``force``; then each of our files is moved
  into DIR over any file of the same name, and the other files are left alone.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dense_plantain.errors import DensePlantainError
from dense_plantain.report.records import (
    CONTROLS_BLOCKS,
    DIRECTION_FIGURE,
    FIGURES,
    HEATMAP,
    RESULTS_JSON,
    RESULTS_MD,
    UNITS_CSV,
    ResultsFileError,
    load_results,
)

#: Every name a results folder may hold; a folder with only these (and our results.json) is ours.
OUTPUT_NAMES = frozenset({RESULTS_JSON, UNITS_CSV, RESULTS_MD, *FIGURES, HEATMAP, CONTROLS_BLOCKS, DIRECTION_FIGURE})


#: The file in a staging folder that names the process filling it: "<pid> <host>".
OWNER = "owner"


class OutputFolderError(DensePlantainError):
    """The output folder cannot be written (not ours, read-only, full, ...); nothing was written."""


def disk_error(path: Path, err: OSError) -> OutputFolderError:
    """One clear sentence for an OSError while writing ``path``."""
    why = {
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(err.errno or 0, err.strerror or str(err))
    return OutputFolderError(
        f"cannot write {path}: {why} ({err.__class__.__name__}, errno {err.errno}); nothing was written. "
        "Free space, or choose an --out on a writable disk"
    )


def _owner_alive(staging: Path) -> bool:
    """True unless the staging folder's recorded owner is a process of this host that has ended."""
    try:
        pid_text, host = (staging / OWNER).read_text(encoding="utf-8").split()
        pid = int(pid_text)
    except (OSError, ValueError):
        # No owner file: a folder from before owner files, or one being created this instant.
        try:
            return staging.stat().st_mtime > time.time() - 3600
        except OSError:
            return False
    if host != socket.gethostname():
        return True  # another machine's run (shared disk): not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove ``.OUT.*.partial`` staging folders next to ``out`` whose owner has ended.

    (``.OUT.*.old`` folders are never removed here: one left by a crash may hold the only copy of
    the previous results.)"""
    parent = out.parent if str(out.parent) else Path(".")
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{out.name}.*"):
        if path.is_dir() and path.suffix == ".partial" and not _owner_alive(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def holds_only(folder: Path, names: frozenset[str], main: str, is_valid: Callable[[Path], bool]) -> bool:
    """True when ``folder`` holds its ``main`` file, no name outside ``names``, and ``is_valid(folder)``."""
    found = {p.name for p in folder.iterdir()}
    return main in found and found <= names and is_valid(folder)


def _loads_results(folder: Path) -> bool:
    try:
        load_results(folder)
    except ResultsFileError:
        return False
    return True


def is_results_folder(folder: Path) -> bool:
    """True for a folder that a previous ``analyze``/``compare`` wrote and nobody added to."""
    return holds_only(folder, OUTPUT_NAMES, RESULTS_JSON, _loads_results)


def check_out_dir(out: str | os.PathLike[str], force: bool = False) -> None:
    """Raise `OutputFolderError` now, before any work, if writing ``out`` would be refused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} exists and is not a folder. Choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_results_folder(out) and not force:
        raise OutputFolderError(
            f"{out} is not empty and is not a dense-plantain results folder; nothing was written. Choose a new or "
            "empty --out, or pass --force to write the results files into it (other files are left alone)"
        )


def write_folder(
    out: Path,
    fill: Callable[[Path], None],
    force: bool = False,
    *,
    names: frozenset[str] = OUTPUT_NAMES,
    is_ours: Callable[[Path], bool] = is_results_folder,
    check: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Call ``fill(staging)`` to write every output, then move them into ``out`` by the policy above.

    ``names`` (the files a folder of this kind may hold), ``is_ours`` (whether an existing folder
    is one of them) and ``check`` (the refusal before any work; default `check_out_dir`) let
    another command's folder (``patch``) go through the same staging, cleanup and publishing."""
    out = Path(out)
    if check is None:
        check_out_dir(out, force)
    else:
        check(out)
    parent = out.parent if str(out.parent) else Path(".")
    staging: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the results folder should not be
        (staging / OWNER).write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
        fill(staging)
        (staging / OWNER).unlink()
        written = sorted(p.name for p in staging.iterdir())
        unknown = set(written) - names
        if unknown:
            raise RuntimeError(f"folder writer produced unlisted files {sorted(unknown)}")
        _publish(staging, out, force, is_ours)
    except OSError as err:
        raise disk_error(out, err) from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in written]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(staging: Path, out: Path, force: bool, is_ours: Callable[[Path], bool] = is_results_folder) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(staging, out)
        return
    if is_ours(out):
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
