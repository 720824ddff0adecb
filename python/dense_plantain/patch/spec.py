"""Unit-set specs for ``dense-plantain patch``: which units a patched run swaps.

A spec names a set of units of a layout:

``all``, ``none``
    every unit, no unit;
``block:NAME``
    the units of one block, e.g. ``block:single[3]`` or ``block:joint[0]``;
``kind:attention`` / ``kind:mlp``
    every unit of that kind;
``top:K``
    the K units of largest |t|, **cross-fitted**: the pairs are split (seeded) into two halves;
    the units applied to the pairs of one half are the top K by |t| computed on the *other*
    half's per-pair differences (from a capture file), so no pair helps choose the units it is
    measured with. Such a set has one unit list per fold;
``FILE``
    a text file of unit names (one a line; ``#`` starts a comment).

Random sets (the null of a set): the same number of units in every stratum (block, kind, token
region) as the set, drawn uniformly without replacement within the stratum, one draw per fold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dense_plantain.errors import DensePlantainError
from dense_plantain.units import Layout


class PatchError(DensePlantainError):
    """A patch run cannot go on: a bad spec, inputs that do not match, a failed pass."""


_TOP = re.compile(r"^top:(\d+)$")


@dataclass
class UnitSet:
    """A named set of units; ``folds[f]`` is the unit indices applied to pairs of fold ``f``."""

    name: str
    spec: str
    folds: list[np.ndarray]
    cross_fitted: bool = False
    top_k: int | None = None
    #: Random sets matched in composition, ``random[r][f]`` (empty: none drawn, see ``random_note``).
    random: list[list[np.ndarray]] = field(default_factory=list)
    random_note: str | None = None

    @property
    def n_units(self) -> int:
        return int(len(self.folds[0]))

    def units_for(self, fold: int) -> np.ndarray:
        return self.folds[fold if len(self.folds) > 1 else 0]


def strata(layout: Layout) -> np.ndarray:
    """Per unit, the index of its stratum (block, kind, token region) for composition matching."""
    lab = layout.labels()
    keys = [f"{b}|{k}|{r}" for b, k, r in zip(lab["block"], lab["kind"], lab["region"])]
    _, inverse = np.unique(np.array(keys, dtype=object).astype(str), return_inverse=True)
    return inverse.astype(np.int64)


def composition(layout: Layout, units: np.ndarray) -> dict[str, int]:
    """Counts of a unit set per stratum, keyed ``block|kind|region`` (for records and tests)."""
    lab = layout.labels()
    out: dict[str, int] = {}
    for u in np.asarray(units, dtype=np.int64):
        key = f"{lab['block'][u]}|{lab['kind'][u]}|{lab['region'][u]}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def matched_random(layout: Layout, units: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random set with the same count as ``units`` in every stratum (sorted unit indices)."""
    st = strata(layout)
    units = np.asarray(units, dtype=np.int64)
    out = []
    for s, count in zip(*np.unique(st[units], return_counts=True)):
        pool = np.flatnonzero(st == s)
        out.append(rng.choice(pool, size=int(count), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def fills_its_strata(layout: Layout, units: np.ndarray) -> bool:
    """True when every stratum the set touches is taken whole: every matched random set equals it."""
    st = strata(layout)
    units = np.asarray(units, dtype=np.int64)
    touched, counts = np.unique(st[units], return_counts=True)
    sizes = np.bincount(st, minlength=int(st.max()) + 1)
    return bool(np.all(sizes[touched] == counts))


def fold_assignment(n_pairs: int, seed: int) -> np.ndarray:
    """Fold (0 or 1) of every pair: a seeded random split, floor(n/2) pairs in fold 0."""
    rng = np.random.default_rng([int(seed), 0x9A7C])
    order = rng.permutation(n_pairs)
    folds = np.ones(n_pairs, dtype=np.int64)
    folds[order[: n_pairs // 2]] = 0
    return folds


def abs_t(diff: np.ndarray) -> np.ndarray:
    """Per-unit |paired t| of ``diff`` [pairs x units] in float64; NaN (no spread) ranks last."""
    diff = np.asarray(diff, dtype=np.float64)
    n = diff.shape[0]
    if n < 2:
        raise PatchError(f"a half of the pairs has {n} pair(s); choosing top:K units needs at least 2 per half")
    sd = diff.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff.mean(axis=0) / (sd / np.sqrt(n))
    return np.abs(t)


def top_units(abs_t_values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest |t| (ties by unit order; NaN last), sorted."""
    key = np.where(np.isnan(abs_t_values), -np.inf, abs_t_values)
    order = np.lexsort((np.arange(len(key)), -key))
    return np.sort(order[:k])


def parse_specs(
    specs: Sequence[str],
    layout: Layout,
    *,
    diff: np.ndarray | None,
    folds: np.ndarray,
) -> list[UnitSet]:
    """Turn ``--units`` specs into unit sets. ``diff`` ([pairs x units], B - A of a capture of these
    pairs) is needed only for ``top:K``; ``folds`` is the pairs' fold assignment."""
    lab = layout.labels()
    names = {str(n): i for i, n in enumerate(lab["name"])}
    out: list[UnitSet] = []
    seen: set[str] = set()
    for spec in specs:
        spec = spec.strip()
        if spec in seen:
            raise PatchError(f"--units {spec} is given twice; give each set once")
        seen.add(spec)
        m = _TOP.match(spec)
        if spec == "all":
            out.append(UnitSet("all", spec, [np.arange(layout.n_units)]))
        elif spec == "none":
            out.append(UnitSet("none", spec, [np.zeros(0, dtype=np.int64)]))
        elif spec.startswith("block:"):
            block = spec[len("block:") :]
            try:
                b = layout.block(block)
            except KeyError:
                known = ", ".join(x.name for x in layout.blocks[:3])
                raise PatchError(
                    f"--units {spec}: layout {layout.name!r} has no block {block!r}; blocks are named like {known}, ..."
                ) from None
            out.append(UnitSet(spec, spec, [np.arange(b.start, b.stop)]))
        elif spec.startswith("kind:"):
            kind = spec[len("kind:") :]
            if kind not in ("attention", "mlp"):
                raise PatchError(f"--units {spec}: the kind must be attention or mlp")
            out.append(UnitSet(spec, spec, [np.flatnonzero(lab["kind"] == kind)]))
        elif m:
            k = int(m.group(1))
            if not 1 <= k <= layout.n_units:
                raise PatchError(f"--units {spec}: K must be between 1 and the layout's {layout.n_units} units")
            if diff is None:
                raise PatchError(
                    f"--units {spec} chooses units by |t|, cross-fitted over the pairs' differences: pass --results "
                    "(a results folder of `analyze` on a capture of these prompts) or --capture (that capture file)"
                )
            chosen = [top_units(abs_t(diff[folds == 1 - f]), k) for f in (0, 1)]
            out.append(UnitSet(spec, spec, chosen, cross_fitted=True, top_k=k))
        else:
            path = Path(spec)
            if not path.is_file():
                raise PatchError(
                    f"--units {spec!r} is not a spec (all, none, block:NAME, kind:attention|mlp, top:K) nor a file of "
                    "unit names"
                )
            units = []
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                if text not in names:
                    raise PatchError(
                        f"{path}:{lineno}: {text!r} is not a unit of layout {layout.name!r} (names look like "
                        f"{lab['name'][0]}; `dense-plantain units --names` lists them)"
                    )
                units.append(names[text])
            if not units:
                raise PatchError(f"{path}: no unit names in it")
            if len(set(units)) != len(units):
                raise PatchError(f"{path}: a unit is listed twice")
            out.append(UnitSet(path.name, spec, [np.sort(np.array(units, dtype=np.int64))]))
    return out


def draw_random_sets(sets: list[UnitSet], layout: Layout, n_random: int, seed: int) -> None:
    """Fill every set's ``random`` with ``n_random`` composition-matched sets (one per fold)."""
    for i, s in enumerate(sets):
        if n_random == 0:
            s.random_note = "no random sets were asked for (--random-sets 0)"
            continue
        if s.n_units == 0:
            s.random_note = "the set is empty"
            continue
        if all(fills_its_strata(layout, f) for f in s.folds):
            s.random_note = "the set takes whole strata (block, kind, region): every matched random set equals it"
            continue
        rng = np.random.default_rng([int(seed), 0x5E7, i])
        s.random = [[matched_random(layout, f, rng) for f in s.folds] for _ in range(n_random)]


def expand_specs(specs: Sequence[str]) -> tuple[str, ...]:
    """``top:16,64`` stands for ``top:16`` and ``top:64``; other specs pass through."""
    out: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if spec.startswith("top:") and "," in spec:
            out += [f"top:{k.strip()}" for k in spec[len("top:") :].split(",") if k.strip()]
        else:
            out.append(spec)
    return tuple(out)
