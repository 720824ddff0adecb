"""Unfinished work: the partial file, resuming from it, what is on disk, and one run per output.

While a run captures ``OUT``, its finished pairs go atomically to ``OUT.partial.safetensors``
after every batch (store's ``partial: true``), so an interruption loses at most one batch.
``OutputLock`` holds an exclusive ``flock`` on ``OUT.lock`` for the whole run (the partial file
included), so a second run on the same ``--out`` is refused with the first's pid, host and start
time. What a failed run says it kept is read back from the partial file on disk (``kept_pair_ids``),
never counted in memory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from dense_plantain.capture.provenance import utc_now
from dense_plantain.errors import CaptureError, CaptureFileError

#: errno values that mean "this disk cannot take the file", said in words by ``disk_error``.
DISK_ERRNOS = {
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def stem(out: Path) -> str:
    return out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name


def partial_path(out: str | Path) -> Path:
    """Where an unfinished capture of ``out`` is kept: ``X.partial.safetensors`` next to it."""
    out = Path(out)
    return out.with_name(f"{stem(out)}.partial.safetensors")


def lock_path(out: str | Path) -> Path:
    """The lock file of a run writing ``out``: ``X.lock`` next to it."""
    out = Path(out)
    return out.with_name(f"{stem(out)}.lock")


def disk_error(err: OSError, path: Path, what: str) -> str | None:
    """One sentence for a disk that cannot take ``path`` (read-only, full, no permission), else None."""
    words = DISK_ERRNOS.get(err.errno or -1)
    if words is None:
        return None
    return f"cannot write {what} {path}: {words} ({err.strerror or err})."


def kept_pair_ids(partial: Path) -> list[str]:
    """The ids of the pairs an unfinished capture file holds on disk (empty when there is none or it is unreadable)."""
    from dense_plantain.store import read_capture

    if not partial.exists():
        return []
    try:
        return read_capture(partial, allow_partial=True, check_finite=False).pair_ids
    except CaptureFileError:
        return []


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``OUT.lock`` for one run; refuses a second run on ``out``.

    Taking it also proves the output folder is writable (it is created if missing), before any
    model loads. The lock file holds the holder's pid, host and start time; it is removed on release.
    """

    def __init__(self, out: str | Path, command: list[str] | None = None):
        self.out = Path(out)
        self.path = lock_path(self.out)
        self.command = command
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CaptureError(
                (disk_error(err, folder, "the output folder") or f"cannot create the output folder {folder} ({err}).")
                + " Choose another --out."
            ) from None
        for _ in range(10):  # a holder may remove the file between our open and our flock: open again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise CaptureError(
                    (disk_error(err, self.path, "the lock file") or f"cannot create {self.path} ({err}).")
                    + f" The output folder {folder} must be writable; choose another --out."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise CaptureError(
                    f"another capture is writing {self.out} ({holder}; lock {self.path}). Wait for it to finish, "
                    "stop it, or choose another --out."
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise CaptureError(f"could not take the lock {self.path}: it keeps being replaced. Try again.")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(), "command": self.command}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(record).encode())
        except OSError as err:
            os.close(fd)
            raise CaptureError(
                (disk_error(err, self.path, "the lock file") or f"cannot write {self.path} ({err}).")
                + " Free some space or choose another --out."
            ) from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0).decode())
        return f"pid {data.get('pid')} on {data.get('host')}, started {data.get('started')}"
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return "a process that has not yet said who it is"


def check_resumable(
    partial: Path, meta: dict, this_run: dict, probe, n_total: int, shard: dict[str, int] | None
) -> None:
    """Refuse to resume from ``partial`` when its settings, model, prompts, pair count or shard differ."""
    from dense_plantain.capture.provenance import identity_problems

    problems = identity_problems(meta, this_run, probe)
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
