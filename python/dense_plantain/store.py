"""Capture files: the boundary between the capture (GPU) and the analysis (CPU).

A capture file is a safetensors file with

* ``a`` and ``b``: float32 ``[pairs x units]``, the unit values under conditions A and B, rows
  in pair order, columns in layout order (``read_capture`` also reads float64 as is; any other
  dtype, e.g. float16, int or bool, is refused with the tensor's name);
* metadata key ``dense_plantain``: a JSON object. Required: ``format`` (= 1) and ``blocks``
  (``[{"name": "joint[0]", "n_units": 192}, ...]`` in unit order, summing to the unit count).
  Written by ``dense-plantain capture`` and read when present: ``layout``, ``readouts`` and
  ``steps`` (per-unit labels, see ``units``), ``pairs`` (ids, prompt texts and each prompt's real
  token count ``tokens_a``/``tokens_b``), ``text`` (``max_sequence_length`` and the prompts it
  cut), ``probe``, ``model``, ``weights`` (``random``, ``kind``, ``description``, ``seed``,
  ``parts``, ``sha256``), ``settings``, ``versions``, ``command`` (the argv that started the
  capture), ``started``, ``finished``, and ``partial`` (true while a capture is unfinished;
  ``n_pairs_total`` then says how many pairs the run will have).

Optional tensors beside ``a`` and ``b`` (``Capture.extra``), each a condition-A/condition-B pair
of float32 arrays with the pairs on a known axis, are listed in `EXTRA_TENSORS` with their
meaning; files without them read exactly as before.

Other tools may write such files; ``read_capture`` accepts any file with ``a``, ``b`` and
``blocks``. Writes are atomic: the file appears under its final name whole, or not at all.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dense_plantain.errors import CaptureFileError
from dense_plantain.units import Layout

FORMAT = 1
META_KEY = "dense_plantain"

#: Optional tensors a capture may hold beside ``a`` and ``b``: name -> (the axis that runs over
#: pairs, what it holds). Each comes as an ``a_*`` / ``b_*`` pair of one shape, float32.
EXTRA_TENSORS: dict[str, tuple[int, str]] = {
    "seeds": (1, "[seeds x pairs x units]: each noise seed's values (capture --seeds); a/b hold their mean"),
    "input": (0, "prompt-embedding units: RMS of 16-column slices over real tokens [pairs x input units]"),
    "vec": (0, "signed per-column token means, [pairs x units * vector_width], unit-major (capture --vectors)"),
}


@dataclass
class Capture:
    """A capture file in memory."""

    path: Path | None
    a: np.ndarray  # float32 [pairs x units] (float64 when the file holds float64)
    b: np.ndarray  # same dtype and shape as a
    meta: dict[str, Any]
    layout: Layout
    #: Optional tensors (`EXTRA_TENSORS`), by name; empty for a plain capture.
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        return int(self.a.shape[0])

    @property
    def n_units(self) -> int:
        return int(self.a.shape[1])

    @property
    def pair_ids(self) -> list[str]:
        pairs = self.meta.get("pairs")
        if isinstance(pairs, list) and len(pairs) == self.n_pairs:
            return [str(p.get("id", i)) if isinstance(p, dict) else str(p) for i, p in enumerate(pairs)]
        return [f"#{i}" for i in range(self.n_pairs)]

    @property
    def partial(self) -> bool:
        return self.meta.get("partial", False) is True


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows, else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would: 0o666 (0o777 for a folder) less the umask.

    ``tempfile.mkstemp`` and ``mkdtemp`` create 0600/0700 for privacy; files that are renamed
    into place as results must look like any other file the user writes.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the umask's mode (not mkstemp's 0600). On any failure (a full or read-only
    disk) the temporary file is removed and whatever was at ``path`` before is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: The value types a capture file's ``a`` and ``b`` may be handed in as. float32 is the format;
#: float64 is accepted explicitly and rounded to float32 (numpy analyses produce it); bool, integer
#: and half-precision arrays are refused, as they are not unit values measured by a capture.
WRITABLE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def write_capture(
    path: str | os.PathLike,
    a: np.ndarray,
    b: np.ndarray,
    meta: dict[str, Any],
    extra: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a capture file atomically. ``meta`` must hold ``blocks``; ``format`` is set here.

    ``extra``: optional tensors named in `EXTRA_TENSORS` (float32, pairs on their declared axis).

    ``a`` and ``b`` must be float32 (float64 is rounded to float32; any other dtype is a ValueError).
    """
    from safetensors.numpy import save

    path = Path(path)
    for name, x in (("a", a), ("b", b)):
        dtype = np.asarray(x).dtype
        if dtype not in WRITABLE_DTYPES:
            raise ValueError(
                f"capture values {name!r} must be float32 (the capture format), got {dtype}; refusing to cast "
                f"{dtype} silently. Convert them yourself if the values are meaningful as float32."
            )
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be [pairs x units] of one shape, got {a.shape} and {b.shape}")
    meta = {"format": FORMAT, **meta}
    meta["format"] = FORMAT
    layout = Layout.from_metadata(meta)  # raises ValueError on a malformed description
    if layout.n_units != a.shape[1]:
        raise ValueError(f"blocks sum to {layout.n_units} units but the arrays have {a.shape[1]}")
    tensors = {"a": a, "b": b, **_checked_extra(extra or {}, a.shape[0])}
    data = save(tensors, metadata={META_KEY: json.dumps(meta, separators=(",", ":"))})
    atomic_write_bytes(path, data)
    return path


def _checked_extra(extra: Mapping[str, np.ndarray], n_pairs: int) -> dict[str, np.ndarray]:
    """The optional tensors, validated for writing: known names, A/B both present, float32,
    one shape per A/B pair, ``n_pairs`` along the declared axis."""
    out: dict[str, np.ndarray] = {}
    for name, value in extra.items():
        problem = _extra_problem(name, np.asarray(value), extra, n_pairs)
        if problem:
            raise ValueError(f"extra tensor {name!r}: {problem}")
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def _extra_problem(name: str, value: np.ndarray, all_extra: Mapping[str, Any], n_pairs: int) -> str | None:
    stem = name[2:] if name[:2] in ("a_", "b_") else None
    if stem is None or stem not in EXTRA_TENSORS:
        known = ", ".join(f"a_{k}/b_{k}" for k in EXTRA_TENSORS) or "none"
        return f"not a known capture tensor (known: {known})"
    twin = ("b_" if name.startswith("a_") else "a_") + stem
    if twin not in all_extra:
        return f"comes without {twin!r}; condition A and B tensors go together"
    if value.dtype != np.float32:
        return f"dtype {value.dtype}; optional capture tensors are float32"
    if value.shape != np.shape(all_extra[twin]):
        return f"shape {value.shape} differs from {twin!r}'s {np.shape(all_extra[twin])}"
    axis = EXTRA_TENSORS[stem][0]
    if value.ndim <= axis or value.shape[axis] != n_pairs:
        return f"shape {value.shape} must have the {n_pairs} pairs along axis {axis}"
    return None


#: dtypes ``read_capture`` accepts for ``a`` and ``b``: float32 (what capture writes) and float64
#: (read as is, not rounded to float32). Anything else is refused, never cast.
READ_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _fail(path: Path, what: str, fix: str) -> CaptureFileError:
    return CaptureFileError(f"{path}: {what}. {fix}")


def read_capture(path: str | os.PathLike, *, allow_partial: bool = False, check_finite: bool = True) -> Capture:
    """Read and validate a capture file; every problem is a ``CaptureFileError`` naming the file.

    An unfinished capture (``partial``) is refused unless ``allow_partial``: finish it with
    ``dense-plantain capture --resume``.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file", "Check the path, or run `dense-plantain capture` to make one")
    if path.is_dir():
        raise _fail(path, "is a folder, not a capture file", "Pass the .safetensors file itself")
    try:
        with safe_open(str(path), framework="np") as fh:
            header = fh.metadata() or {}
            keys = set(fh.keys())
            missing = {"a", "b"} - keys
            if missing:
                raise _fail(
                    path,
                    f"has no tensor {' or '.join(sorted(missing))!r} (it has {sorted(keys)})",
                    "A capture file holds condition A as 'a' and condition B as 'b', [pairs x units]",
                )
            a = fh.get_tensor("a")
            b = fh.get_tensor("b")
            # Tensors this version does not know (another tool's) are left unread, not refused.
            extra = {k: fh.get_tensor(k) for k in sorted(keys - {"a", "b"}) if k[2:] in EXTRA_TENSORS}
    except CaptureFileError:
        raise
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise _fail(
            path,
            f"is not a readable safetensors file ({err})",
            "It may be truncated or corrupt; capture it again (or --resume an unfinished run)",
        ) from None
    raw = header.get(META_KEY)
    if raw is None:
        raise _fail(
            path,
            f"has no '{META_KEY}' metadata",
            'Add a JSON object with at least {"format": 1, "blocks": [...]} under that key',
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise _fail(path, f"its '{META_KEY}' metadata is not valid JSON ({err})", "Rewrite the metadata") from None
    if not isinstance(meta, dict):
        raise _fail(path, f"its '{META_KEY}' metadata is not a JSON object", "Rewrite the metadata")
    if meta.get("format", FORMAT) != FORMAT:
        raise _fail(
            path,
            f"has capture format {meta.get('format')!r}; this dense-plantain reads format {FORMAT}",
            "Upgrade dense-plantain or capture again",
        )
    for name, arr in (("a", a), ("b", b)):
        if arr.dtype not in READ_DTYPES:
            raise _fail(
                path,
                f"tensor {name!r} has dtype {arr.dtype}; capture values must be float32 (float64 is also read)",
                "Write the unit values as float32 (int, bool and float16 values are refused rather than cast)",
            )
    partial = meta.get("partial", False)
    if not isinstance(partial, bool):
        raise _fail(
            path,
            f"its metadata 'partial' is {partial!r} ({type(partial).__name__}); it must be JSON true or false",
            'Rewrite the metadata with a boolean (a string such as "false" is not read as false)',
        )
    if a.ndim != 2 or b.ndim != 2:
        raise _fail(
            path,
            f"'a' and 'b' must be 2-D [pairs x units], got shapes {a.shape} and {b.shape}",
            "Rewrite the file with one row per pair",
        )
    if a.shape != b.shape:
        raise _fail(
            path,
            f"'a' has shape {a.shape} but 'b' has {b.shape}",
            "Both conditions need one row per pair and the same units",
        )
    try:
        layout = Layout.from_metadata(meta)
    except ValueError as err:
        raise _fail(path, f"its unit layout is malformed: {err}", "Fix 'blocks' in the metadata") from None
    if layout.n_units != a.shape[1]:
        raise _fail(
            path,
            f"'blocks' sum to {layout.n_units} units but 'a' and 'b' have {a.shape[1]} columns",
            "The blocks must list every unit, in column order",
        )
    for name, value in extra.items():
        problem = _extra_problem(name, value, extra, a.shape[0])
        if problem:
            raise _fail(path, f"tensor {name!r}: {problem}", "Capture it again, or remove the tensor")
    cap = Capture(path=path, a=np.asarray(a), b=np.asarray(b), meta=meta, layout=layout, extra=extra)
    if cap.partial and not allow_partial:
        total = meta.get("n_pairs_total", "?")
        raise _fail(
            path,
            f"is an unfinished capture ({cap.n_pairs} of {total} pairs)",
            "Finish it with `dense-plantain capture ... --resume`, which continues from these pairs",
        )
    if check_finite:
        check_values(cap)
    return cap


def check_values(cap: Capture) -> None:
    """Refuse NaN or infinite values, naming the first bad pair, condition and unit."""
    names = None
    for cond in ("a", "b"):
        x = getattr(cap, cond)
        bad = ~np.isfinite(x)
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            names = names or cap.layout.unit_names()
            raise _fail(
                cap.path or Path("<capture>"),
                f"{int(bad.sum())} non-finite value(s); the first is {x[i, j]} at pair {cap.pair_ids[i]!r} "
                f"(row {i}), condition {cond.upper()}, unit {j} ({names[j]})",
                "Capture again (in float32 if bf16/fp16 overflowed: --dtype float32), or drop that pair",
            )
