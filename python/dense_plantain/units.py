"""Unit layouts: the one source of truth for what a "unit" is.

A unit is one number per prompt: the root mean square of a group of columns of a hooked
activation, over a region of tokens. The capture computes units, the analysis tests them, and
the report names them; all three ask this module and nothing else.

A layout is a list of *readouts*. A readout says: in this block, at the input of this module,
over these tokens (all / text / image), take the columns ``[col_start, col_start + n_groups *
group_width)`` in groups of ``group_width``, and emit one unit per group. Unit order is readout
order, then column order, so every block's units are contiguous.

Two layouts are built in:

``plantain`` (default, comparable with the published plantain cards)
    Every 16 columns of the input of each attention output projection over all of that input's
    tokens. Joint blocks hook ``transformer_blocks[i].attn.to_out[0]`` (image tokens only, the
    attention output); single blocks hook ``single_transformer_blocks[i].attn.to_out``, whose
    input is ``[attention output | SwiGLU MLP activations]`` over text and image tokens. For
    FLUX.2 [klein] 4B that is 5 x 192 + 20 x 768 = 16,320 units, of which 20 x 576 = 11,520 are
    MLP channels, not attention: the labels say so.

``heads``
    True attention heads (RMS over each head's ``attention_head_dim`` columns), with image and
    text tokens kept apart: joint blocks read image tokens at ``to_out[0]`` and text tokens at
    ``to_add_out``; single blocks split their input at the text length. MLP activations of
    single blocks are reported apart in groups of ``attention_head_dim`` columns. For Klein 4B:
    joint 5 x (24 image + 24 text) = 240; single 20 x (24 + 24 attention + 72 + 72 MLP) = 3,840;
    total 4,080 units.

Unit names read like TransformerLens/nnsight paths: ``single[3].h7.s2`` (head 7, 16-column
slice 2 of it), ``single[3].mlp.c37`` (MLP column group 37), ``joint[1].h5.txt`` (heads layout,
text tokens). With several captured steps, names carry ``@step<k>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

#: The plantain cards' slice width ("head" = 16 columns).
PLANTAIN_SLICE = 16
LAYOUTS = ("plantain", "heads")


class Kind(StrEnum):
    """What a unit reads (str-valued: JSON and label arrays hold the plain words)."""

    ATTENTION = "attention"
    MLP = "mlp"
    UNKNOWN = "unknown"


class Region(StrEnum):
    """Which tokens a unit pools."""

    ALL = "all"
    IMAGE = "image"
    TEXT = "text"


class Stream(StrEnum):
    """Which tokens a hooked module sees: image only, text only, or text then image (joint)."""

    IMAGE = "image"
    TEXT = "text"
    JOINT = "joint"


REGIONS = tuple(r.value for r in Region)
KINDS = tuple(k.value for k in Kind)

#: Display words, for every table, card and figure.
KIND_WORDS = {Kind.ATTENTION: "attention", Kind.MLP: "MLP", Kind.UNKNOWN: "unknown"}
REGION_WORDS = {Region.IMAGE: "image tokens", Region.TEXT: "text tokens", Region.ALL: "text + image tokens pooled"}
#: Shorter region words for the layout table.
REGION_SHORT = {Region.ALL: "text+image pooled", Region.IMAGE: "image", Region.TEXT: "text"}

#: The module paths a layout may hook, by block type: joint blocks keep the streams apart.
_JOINT_IMAGE_MODULE = "attn.to_out.0"
_JOINT_TEXT_MODULE = "attn.to_add_out"
_SINGLE_MODULE = "attn.to_out"
_JOINT_PREFIX = "transformer_blocks."
_SINGLE_PREFIX = "single_transformer_blocks."


def kind_word(kind: str) -> str:
    return KIND_WORDS.get(Kind(kind), kind) if kind in KINDS else kind


def region_word(region: str) -> str:
    return REGION_WORDS.get(Region(region), region) if region in REGIONS else region


def module_stream(module: str) -> Stream:
    """The stream a hooked module path sees; ``ValueError`` for a path no layout builds."""
    for prefix, suffixes in (
        (_JOINT_PREFIX, {_JOINT_IMAGE_MODULE: Stream.IMAGE, _JOINT_TEXT_MODULE: Stream.TEXT}),
        (_SINGLE_PREFIX, {_SINGLE_MODULE: Stream.JOINT}),
    ):
        if module.startswith(prefix):
            index, _, rest = module[len(prefix) :].partition(".")
            if index.isdigit() and rest in suffixes:
                return suffixes[rest]
    raise ValueError(
        f"module {module!r} is not an attention output projection of a Flux2 transformer; readouts can hook "
        f"{_JOINT_PREFIX}<i>.{_JOINT_IMAGE_MODULE}, {_JOINT_PREFIX}<i>.{_JOINT_TEXT_MODULE} and "
        f"{_SINGLE_PREFIX}<i>.{_SINGLE_MODULE}"
    )


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a Flux2 transformer config that fix the layout."""

    n_joint: int
    n_single: int
    n_heads: int
    head_dim: int
    mlp_hidden: int

    @property
    def inner(self) -> int:
        return self.n_heads * self.head_dim

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a ``Flux2Transformer2DModel`` config (a dict or the model's ``.config``)."""
        get: Callable[..., Any] = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
        n_heads = int(get("num_attention_heads"))
        head_dim = int(get("attention_head_dim"))
        inner = n_heads * head_dim
        # diffusers: Flux2ParallelSelfAttention.mlp_hidden_dim = int(query_dim * mlp_ratio)
        mlp_hidden = int(inner * float(get("mlp_ratio", 3.0)))
        return cls(
            n_joint=int(get("num_layers")),
            n_single=int(get("num_single_layers")),
            n_heads=n_heads,
            head_dim=head_dim,
            mlp_hidden=mlp_hidden,
        )


#: FLUX.2 [klein] base 4B (black-forest-labs/FLUX.2-klein-base-4B), as in PROTOCOL.md.
KLEIN_4B = ModelShape(n_joint=5, n_single=20, n_heads=24, head_dim=128, mlp_hidden=9216)


@dataclass(frozen=True)
class Readout:
    """One hooked tensor region, cut into equal column groups; one unit per group."""

    block: str  # "joint[3]" / "single[0]" (with "@step<k>" when several steps)
    module: str  # dotted path inside the transformer, e.g. "transformer_blocks.3.attn.to_out.0"
    region: Region  # which tokens of the hooked input are pooled (a plain string is converted)
    kind: Kind  # attention | mlp
    col_start: int
    group_width: int
    n_groups: int
    head_width: int = 0  # columns per real attention head (0 for MLP): labels heads and slices
    step: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "region", Region(self.region))
        object.__setattr__(self, "kind", Kind(self.kind))

    @property
    def col_stop(self) -> int:
        return self.col_start + self.n_groups * self.group_width

    @property
    def block_type(self) -> str:
        """``joint`` or ``single``: the block's name before its index."""
        return self.block.split("[", 1)[0]

    @property
    def stream(self) -> Stream:
        return module_stream(self.module)


@dataclass
class KindRow:
    """The layout of one block type (joint / single) at one step; its blocks are alike, so the
    counts are per block, taken from the first."""

    block_type: str
    step: int
    blocks: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)  # hooked modules, the part after ".attn."
    attention: int = 0
    mlp: int = 0
    regions: list[Region] = field(default_factory=list)

    @property
    def units(self) -> int:
        return self.attention + self.mlp


@dataclass(frozen=True)
class Block:
    name: str
    start: int
    n_units: int

    @property
    def stop(self) -> int:
        return self.start + self.n_units

    @property
    def units(self) -> slice:
        return slice(self.start, self.stop)


@dataclass
class Layout:
    """An ordered list of units with their labels; see the module docstring."""

    name: str
    readouts: tuple[Readout, ...] = ()
    #: Blocks in unit order. Derived from readouts, or given alone for a foreign capture file.
    blocks: tuple[Block, ...] = ()
    steps: tuple[int, ...] = (0,)
    _labels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.readouts:
            blocks: list[Block] = []
            start = 0
            for r in self.readouts:
                if blocks and blocks[-1].name == r.block:
                    last = blocks[-1]
                    blocks[-1] = Block(last.name, last.start, last.n_units + r.n_groups)
                else:
                    if any(b.name == r.block for b in blocks):
                        raise ValueError(f"layout {self.name!r}: block {r.block} is not contiguous")
                    blocks.append(Block(r.block, start, r.n_groups))
                start += r.n_groups
            self.blocks = tuple(blocks)
        if not self.blocks:
            raise ValueError(f"layout {self.name!r} has no units")

    # --- sizes -------------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return self.blocks[-1].stop

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    # --- per-unit labels ---------------------------------------------------------------------
    def labels(self) -> dict[str, np.ndarray]:
        """Per-unit label arrays, each of length ``n_units``.

        ``block`` (block name), ``block_index``, ``kind`` (attention | mlp | unknown),
        ``head`` (real attention head, -1 for MLP or unknown), ``slice`` (column group within
        its head, or the MLP group index), ``region`` (all | image | text), ``step``,
        ``name`` (readable unit name).
        """
        if self._labels:
            return self._labels
        n = self.n_units
        block = np.empty(n, dtype=object)
        block_index = np.empty(n, dtype=np.int32)
        for i, b in enumerate(self.blocks):
            block[b.units] = b.name
            block_index[b.units] = i
        kind = np.full(n, "unknown", dtype=object)
        head = np.full(n, -1, dtype=np.int32)
        sl = np.arange(n, dtype=np.int32) - np.repeat(
            np.array([b.start for b in self.blocks]), [b.n_units for b in self.blocks]
        ).astype(np.int32)
        region = np.full(n, "all", dtype=object)
        step = np.zeros(n, dtype=np.int32)
        names = np.empty(n, dtype=object)
        start = 0
        for r in self.readouts:
            idx = slice(start, start + r.n_groups)
            g = np.arange(r.n_groups)
            kind[idx] = r.kind
            region[idx] = r.region
            step[idx] = r.step
            base, _, at = r.block.partition("@")
            suffix = {"all": "", "image": ".img", "text": ".txt"}[r.region] + (f"@{at}" if at else "")
            if r.kind == "attention" and r.head_width:
                col = r.col_start + g * r.group_width
                head[idx] = col // r.head_width
                per_head = max(r.head_width // r.group_width, 1)
                sl[idx] = g % per_head if per_head > 1 else 0
                if per_head > 1:
                    names[idx] = [f"{base}.h{h}.s{s}{suffix}" for h, s in zip(head[idx], sl[idx])]
                else:
                    names[idx] = [f"{base}.h{h}{suffix}" for h in head[idx]]
            else:
                sl[idx] = g
                names[idx] = [f"{base}.mlp.c{c}{suffix}" for c in g]
            start += r.n_groups
        if not self.readouts:
            for b in self.blocks:
                names[b.units] = [f"{b.name}.u{i}" for i in range(b.n_units)]
        self._labels = {
            "block": block,
            "block_index": block_index,
            "kind": kind,
            "head": head,
            "slice": sl,
            "region": region,
            "step": step,
            "name": names,
        }
        return self._labels

    def unit_names(self) -> list[str]:
        return list(self.labels()["name"])

    def has_labels(self) -> bool:
        """False for a layout read from a foreign capture file that gave only ``blocks``."""
        return bool(self.readouts)

    # --- summary -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Unit counts by kind and by region (for the ``units`` command and the report)."""
        lab = self.labels()
        out = {"total": self.n_units}
        for k in KINDS:
            c = int((lab["kind"] == k).sum())
            if c:
                out[k] = c
        for reg in REGIONS:
            c = int((lab["region"] == reg).sum())
            if c and reg != "all":
                out[f"region:{reg}"] = c
        return out

    # --- metadata (capture files) ------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        """Compact JSON-able description: blocks in unit order plus the readouts."""
        return {
            "layout": self.name,
            "steps": list(self.steps),
            "blocks": [{"name": b.name, "n_units": b.n_units} for b in self.blocks],
            "readouts": [asdict(r) for r in self.readouts],
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Layout:
        """Rebuild from capture-file metadata. Only ``blocks`` is required.

        Raises ``ValueError`` (with what is wrong) on a malformed description; the caller turns
        it into a ``CaptureFileError`` naming the file.
        """
        blocks_meta = meta.get("blocks")
        if not isinstance(blocks_meta, list) or not blocks_meta:
            raise ValueError("'blocks' must be a non-empty list of {name, n_units}")
        readouts_meta = meta.get("readouts") or []
        name = str(meta.get("layout", "custom"))
        steps = tuple(int(s) for s in meta.get("steps", [0]))
        if readouts_meta:
            try:
                readouts = tuple(Readout(**r) for r in readouts_meta)
            except TypeError as err:
                raise ValueError(f"malformed 'readouts' entry: {err}") from None
            layout = cls(name=name, readouts=readouts, steps=steps)
            given = [(str(b.get("name")), int(b.get("n_units", -1))) for b in blocks_meta]
            derived = [(b.name, b.n_units) for b in layout.blocks]
            if given != derived:
                raise ValueError("'blocks' disagrees with 'readouts'")
            return layout
        blocks = []
        start = 0
        for i, b in enumerate(blocks_meta):
            try:
                bname, n = str(b["name"]), int(b["n_units"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"blocks[{i}] must be {{'name': str, 'n_units': int}}, got {b!r}") from None
            if n <= 0:
                raise ValueError(f"blocks[{i}] ({bname}) has n_units = {n}; it must be positive")
            blocks.append(Block(bname, start, n))
            start += n
        return cls(name=name, blocks=tuple(blocks), steps=steps)

    def kind_rows(self) -> list[KindRow]:
        """One row per block type and step, with per-block unit counts (blocks of a type are alike)."""
        rows: dict[tuple[str, int], KindRow] = {}
        for r in self.readouts:
            row = rows.setdefault((r.block_type, r.step), KindRow(r.block_type, r.step))
            if r.block not in row.blocks:
                row.blocks.append(r.block)
            if row.blocks[0] != r.block:
                continue  # count the first block of each type; the others repeat it
            module = r.module.split(".attn.", 1)[-1]  # the block column already says which blocks
            if module not in row.modules:
                row.modules.append(module)
            if r.kind == Kind.MLP:
                row.mlp += r.n_groups
            else:
                row.attention += r.n_groups
            if r.region not in row.regions:
                row.regions.append(r.region)
        return list(rows.values())

    def caveats(self) -> list[str]:
        """Plain statements of what the units are (and are not), computed from the layout."""
        lines: list[str] = []
        if self.name != "plantain":
            return lines
        for r in self.readouts:
            if r.kind == Kind.ATTENTION and r.head_width and r.group_width < r.head_width:
                lines.append(
                    f'A plantain "head" is a {r.group_width}-column slice, not an attention head: each real '
                    f"{r.head_width}-dim head is {r.head_width // r.group_width} slices."
                )
                break
        rows = self.kind_rows()
        single = [row for row in rows if row.block_type == "single"]
        if single and single[0].mlp:
            row = single[0]
            lines.append(
                f"In single blocks {row.mlp} of the {row.units} slices per block are SwiGLU MLP activations, not "
                f"attention ({row.mlp * len(row.blocks):,} of the {self.n_units:,} units in all), and every "
                "single-block value pools text and image tokens, so wording differences between A and B prompts "
                "leak into them."
            )
        joint = [row for row in rows if row.block_type == "joint"]
        if joint and joint[0].regions == [Region.IMAGE]:
            lines.append("Joint blocks are read on image tokens only (their text tokens leave through to_add_out).")
        lines.append("`--layout heads` gives true attention heads with image and text tokens apart, and MLP apart.")
        return lines

    def summary(self) -> dict[str, Any]:
        """Per block: units, how many are attention / MLP, which token regions; plus the totals."""
        labels = self.labels()
        blocks = []
        for b in self.blocks:
            kinds = labels["kind"][b.units]
            blocks.append(
                {
                    "name": b.name,
                    "n_units": b.n_units,
                    "n_attention": int((kinds == "attention").sum()),
                    "n_mlp": int((kinds == "mlp").sum()),
                    "regions": sorted(set(labels["region"][b.units].tolist())) if self.has_labels() else [],
                }
            )
        per_head = {r.head_width // r.group_width for r in self.readouts if r.kind == "attention" and r.head_width}
        return {
            "name": self.name,
            "labelled": self.has_labels(),
            "counts": self.counts(),
            "units_per_head": per_head.pop() if len(per_head) == 1 else None,
            "group_widths": sorted({r.group_width for r in self.readouts}),
            "blocks": blocks,
        }

    def same_units(self, other: Layout) -> bool:
        return [(b.name, b.n_units) for b in self.blocks] == [(b.name, b.n_units) for b in other.blocks]


# --- building layouts from a model shape ------------------------------------------------------


def _joint_module(i: int, text: bool = False) -> str:
    return f"{_JOINT_PREFIX}{i}." + (_JOINT_TEXT_MODULE if text else _JOINT_IMAGE_MODULE)


def _single_module(i: int) -> str:
    return f"{_SINGLE_PREFIX}{i}.{_SINGLE_MODULE}"


def _plantain_readouts(shape: ModelShape, width: int = PLANTAIN_SLICE) -> list[Readout]:
    for n in (shape.inner, shape.mlp_hidden):
        if n % width:
            raise ValueError(f"a width of {n} columns does not split into {width}-column slices")
    out = []
    for i in range(shape.n_joint):
        out.append(
            Readout(
                f"joint[{i}]",
                _joint_module(i),
                Region.IMAGE,
                Kind.ATTENTION,
                0,
                width,
                shape.inner // width,
                shape.head_dim,
            )
        )
    for i in range(shape.n_single):
        name, mod = f"single[{i}]", _single_module(i)
        out.append(Readout(name, mod, Region.ALL, Kind.ATTENTION, 0, width, shape.inner // width, shape.head_dim))
        out.append(Readout(name, mod, Region.ALL, Kind.MLP, shape.inner, width, shape.mlp_hidden // width))
    return out


def _heads_readouts(shape: ModelShape) -> list[Readout]:
    hd = shape.head_dim
    if shape.mlp_hidden % hd:
        raise ValueError(f"MLP width {shape.mlp_hidden} does not split into {hd}-column groups")
    out = []
    for i in range(shape.n_joint):
        name = f"joint[{i}]"
        out.append(Readout(name, _joint_module(i), Region.IMAGE, Kind.ATTENTION, 0, hd, shape.n_heads, hd))
        out.append(Readout(name, _joint_module(i, text=True), Region.TEXT, Kind.ATTENTION, 0, hd, shape.n_heads, hd))
    for i in range(shape.n_single):
        name, mod = f"single[{i}]", _single_module(i)
        for region in (Region.IMAGE, Region.TEXT):
            out.append(Readout(name, mod, region, Kind.ATTENTION, 0, hd, shape.n_heads, hd))
        for region in (Region.IMAGE, Region.TEXT):
            out.append(Readout(name, mod, region, Kind.MLP, shape.inner, hd, shape.mlp_hidden // hd))
    return out


def build_layout(
    shape_or_config: ModelShape | Mapping[str, Any], name: str = "plantain", steps: Iterable[int] = (0,)
) -> Layout:
    """The layout ``name`` (plantain | heads) for a model shape or a Flux2 transformer config.

    With several ``steps``, the whole unit list repeats once per step (step-major), and block
    names carry ``@step<k>``.
    """
    shape = shape_or_config if isinstance(shape_or_config, ModelShape) else ModelShape.from_config(shape_or_config)
    if name == "plantain":
        base = _plantain_readouts(shape)
    elif name == "heads":
        base = _heads_readouts(shape)
    else:
        raise ValueError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")
    steps = tuple(int(s) for s in steps)
    if not steps or len(set(steps)) != len(steps) or min(steps) < 0:
        raise ValueError(f"steps must be distinct non-negative step indices, got {steps}")
    if steps == (0,):
        return Layout(name=name, readouts=tuple(base), steps=steps)
    readouts = []
    for s in steps:
        for r in base:
            readouts.append(Readout(**{**asdict(r), "block": f"{r.block}@step{s}", "step": s}))
    return Layout(name=name, readouts=tuple(readouts), steps=steps)
