"""Pre-hooks that keep a unit set's columns of one run and write them into another run.

A unit reads a group of columns of an attention output projection's input over a token region
(``units.Readout``). Patching unit set U in run A with run B's values means: at each hooked
module, on U's token region, the columns of U take B's values at the same positions; every
other column and token keeps A's. Only those columns are kept between the runs:

* ``ColumnPlan(layout, units)`` groups the units' columns by (module, token region) into one
  sorted column index per group, on the device;
* ``Keep`` (a pre-hook set) copies a plan's columns out of a run as it passes: one
  ``index_select`` per group, so the extra memory is the kept columns, never a whole input;
* ``Write`` (a pre-hook set) writes kept columns, or a sub-plan of them, into a later run in
  place: one ``index_copy_`` per group before the module reads its input.

Token regions: joint-block projections see one stream (``to_out.0`` image tokens,
``to_add_out`` text tokens); single-block ``to_out`` sees ``[text | image]``, split at the text
length, which a pre-hook on the transformer reads from ``encoder_hidden_states``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dense_plantain.capture.hooks import module_stream
from dense_plantain.units import Layout, Region


@dataclass
class Group:
    """The columns of one (module, token region) that a plan touches."""

    module: str
    region: str
    columns: np.ndarray  # sorted int64 column indices of the module's input


def unit_columns(layout: Layout) -> list[tuple[str, Region, int, int]]:
    """Per unit (layout order): (module, region, first column, width)."""
    out = []
    for r in layout.readouts:
        for g in range(r.n_groups):
            out.append((r.module, r.region, r.col_start + g * r.group_width, r.group_width))
    return out


class ColumnPlan:
    """The columns of a unit set, grouped by (module, token region), in a fixed group order."""

    def __init__(self, layout: Layout, units: np.ndarray, device: Any = None):
        import torch

        if not layout.has_labels():
            raise ValueError("this layout has no readouts (it was read from a foreign capture file)")
        per_unit = unit_columns(layout)
        cols: dict[tuple[str, str], list[np.ndarray]] = {}
        for u in np.unique(np.asarray(units, dtype=np.int64)):
            module, region, start, width = per_unit[int(u)]
            cols.setdefault((module, region), []).append(np.arange(start, start + width))
        self.groups = [Group(m, r, np.sort(np.concatenate(c))) for (m, r), c in sorted(cols.items())]
        self.index = {(g.module, g.region): torch.as_tensor(g.columns, device=device) for g in self.groups}
        for g in self.groups:
            module_stream(g.module)  # a clear error for a module that is not an output projection

    @property
    def n_columns(self) -> int:
        return int(sum(len(g.columns) for g in self.groups))

    def modules(self) -> set[str]:
        return {g.module for g in self.groups}

    def positions_in(self, other: ColumnPlan) -> dict[tuple[str, str], Any]:
        """Where this plan's columns sit among ``other``'s (a superset), per group, on the device."""
        import torch

        out = {}
        for g in self.groups:
            key = (g.module, g.region)
            theirs = next((h.columns for h in other.groups if (h.module, h.region) == key), None)
            if theirs is None:
                raise ValueError(f"plan is not a subset of the kept columns: nothing kept at {key}")
            pos = np.searchsorted(theirs, g.columns)
            if np.any(pos >= len(theirs)) or np.any(theirs[np.minimum(pos, len(theirs) - 1)] != g.columns):
                raise ValueError(f"plan is not a subset of the kept columns at {key}")
            dev = other.index[key].device
            out[key] = None if len(pos) == len(theirs) else torch.as_tensor(pos, device=dev)
        return out


def region_tokens(stream: str, region: str, n_image: int, n_text: int) -> int:
    """How many tokens a module of ``stream`` has in ``region`` (as ``_tokens`` cuts them)."""
    if stream == "joint":
        return {"text": n_text, "image": n_image}.get(region, n_text + n_image)
    return n_text if stream == "text" else n_image


def unit_bytes(layout: Layout, n_image: int, n_text: int, element_size: int) -> np.ndarray:
    """Per unit (layout order), the bytes its kept columns take for one prompt: width x tokens x element."""
    return np.array(
        [
            width * region_tokens(module_stream(module), region, n_image, n_text) * element_size
            for module, region, _, width in unit_columns(layout)
        ],
        dtype=np.int64,
    )


def kept_bytes(*kept: dict[tuple[str, str], Any]) -> int:
    """Bytes held by kept column tensors (``Keep.kept`` dicts)."""
    return int(sum(v.numel() * v.element_size() for k in kept for v in k.values()))


def _tokens(x, stream: str, region: str, n_text: int):
    """The view of ``x`` [B, S, C] over a region's tokens."""
    if stream == "joint" and region == "text":
        return x[:, :n_text]
    if stream == "joint" and region == "image":
        return x[:, n_text:]
    return x


class _HookSet:
    """Pre-hooks on every module of ``plan``; per (module, region) group, ``_apply`` gets the input's view."""

    def __init__(self, transformer: Any, plan: ColumnPlan):
        named = dict(transformer.named_modules())
        missing = sorted(m for m in plan.modules() if m not in named)
        if missing:
            raise ValueError(f"the transformer has no module {missing[0]}: the layout was built for another config")
        self.transformer = transformer
        self.plan = plan
        self._targets = {m: named[m] for m in plan.modules()}
        self._handles: list[Any] = []
        self.n_text = 0

    def __enter__(self):
        self._handles.append(self.transformer.register_forward_pre_hook(self._on_transformer, with_kwargs=True))
        for path, module in self._targets.items():
            self._handles.append(module.register_forward_pre_hook(self._make(path, module_stream(path))))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_transformer(self, module, args, kwargs) -> None:
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        self.n_text = int(text.shape[1])

    def _make(self, path: str, stream: str):
        keys = [(g.module, g.region) for g in self.plan.groups if g.module == path]

        def hook(module, args):
            for key in keys:
                self._apply(path, key, _tokens(args[0], stream, key[1], self.n_text))
            return None

        return hook

    def _apply(self, path: str, key: tuple[str, str], view: Any) -> None:
        raise NotImplementedError


class Keep(_HookSet):
    """Keep a plan's columns of the next forward: ``kept[(module, region)]`` = [B, tokens, columns]."""

    def __init__(self, transformer: Any, plan: ColumnPlan):
        super().__init__(transformer, plan)
        self.kept: dict[tuple[str, str], Any] = {}

    def _apply(self, path: str, key: tuple[str, str], view: Any) -> None:
        self.kept[key] = view.index_select(-1, self.plan.index[key])


class Write(_HookSet):
    """Write kept columns into the next forwards, in place, before each module reads its input.

    ``source[(module, region)]`` holds ``[B, tokens, columns of kept_plan]``; ``plan`` (a subset of
    ``kept_plan``) says which of them to write. With ``other`` (a second source of the same shape)
    the written values are the mean of the two, formed per module as it runs (float32 sum, halved,
    cast back), so no third copy is kept.
    """

    def __init__(
        self,
        transformer: Any,
        plan: ColumnPlan,
        kept_plan: ColumnPlan,
        source: dict[tuple[str, str], Any],
        other: dict[tuple[str, str], Any] | None = None,
        positions: dict[tuple[str, str], Any] | None = None,
    ):
        super().__init__(transformer, plan)
        self.source = source
        self.other = other
        self.positions = positions if positions is not None else plan.positions_in(kept_plan)

    def _apply(self, path: str, key: tuple[str, str], view: Any) -> None:
        src = self.source[key]
        pos = self.positions[key]
        if pos is not None:
            src = src.index_select(-1, pos)
        if self.other is not None:
            oth = self.other[key] if pos is None else self.other[key].index_select(-1, pos)
            src = (src.float() + oth.float()).mul_(0.5).to(src.dtype)
        if view.shape[:2] != src.shape[:2]:
            raise RuntimeError(
                f"patching {path} ({key[1]} tokens): the kept values are {tuple(src.shape[:2])} "
                f"(batch, tokens) but this run has {tuple(view.shape[:2])}"
            )
        view.index_copy_(-1, self.plan.index[key], src.to(view.dtype))
