"""Stimulus sets: paired prompts in TOML, loaded and validated.

A probe file holds one optional ``[probe]`` table (what the probe claims and how its two
conditions are named) and at least three ``[[pairs]]`` tables, each with an ``id`` and the two
prompts ``a`` and ``b``. Extra string fields on a pair (``subject``, ``setting``, ...) name what
the pair holds constant; ``dense-plantain prompts check`` verifies that they appear word for word
in both prompts. The format is documented in ``docs/prompt-format.md``.

``load_probe`` is the only entry point the capture needs; it either returns a complete, valid
`Probe` or raises `PromptFileError` that lists every problem with its file, line and pair id.
`find_problems` returns the same problems as data, for the checker.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dense_plantain._stats import MIN_PAIRS  # the engine's minimum: a paired t needs an sd of differences
from dense_plantain.errors import PromptFileError

__all__ = [
    "MIN_PAIRS",
    "Pair",
    "Probe",
    "Problem",
    "bundled_path",
    "bundled_prompts",
    "find_problems",
    "load_probe",
]


#: Keys the ``[probe]`` table may hold. Anything else is almost always a misspelling.
PROBE_KEYS = ("name", "thesis", "label_a", "label_b", "base_model", "held_constant")

#: Keys every pair must hold.
PAIR_REQUIRED = ("id", "a", "b")

#: Optional pair fields that are always accepted, whatever ``held_constant`` says.
#: ``note`` is free text for the author and is never checked against the prompts.
PAIR_OPTIONAL = ("subject", "setting", "note")

#: The pair key holding factor labels, e.g. ``factors = { body = "slim", clothing = "fitted" }``.
FACTORS_KEY = "factors"

#: A factor needs at least this many levels, each labelling at least `MIN_PAIRS` pairs, so that
#: a per-level paired test (and a between-level contrast) is defined.
MIN_LEVELS = 2

_FACTOR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")

_PAIRS_HEADER = re.compile(r"^\s*\[\[\s*pairs\s*\]\]\s*(#.*)?$")
_PROBE_HEADER = re.compile(r"^\s*\[\s*probe\s*\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")
_TOML_POSITION = re.compile(r"at line (\d+)")


@dataclass(frozen=True)
class Pair:
    """One stimulus pair: the same scene described under condition A and condition B."""

    id: str
    a: str
    b: str
    #: Line (1-based) of this pair's ``[[pairs]]`` header; 0 when the file defines pairs another
    #: way (an inline array), so no header line exists.
    line: int
    #: Optional string fields other than id/a/b, e.g. ``{"subject": ..., "setting": ...}``.
    fields: dict[str, str] = field(default_factory=dict)
    #: Factor labels, factor name -> level, e.g. ``{"body": "slim", "clothing": "fitted"}``.
    factors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every field by its name, in field order (the dicts copied)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Probe:
    """A validated stimulus set: metadata from ``[probe]`` plus the ordered pairs."""

    path: Path
    name: str
    thesis: str | None
    label_a: str
    label_b: str
    base_model: str | None
    #: Names of pair fields that must appear verbatim in both prompts of every pair.
    held_constant: list[str]
    #: The ``[probe]`` table as parsed (empty when the file has none).
    raw: dict[str, Any]
    pairs: list[Pair]
    #: SHA-256 of the file's bytes, so a result can name exactly which stimuli produced it.
    sha256: str

    @property
    def ids(self) -> list[str]:
        return [pair.id for pair in self.pairs]

    @property
    def factor_names(self) -> list[str]:
        """The factors the pairs are labelled with, in order of first appearance."""
        seen: dict[str, None] = {}
        for pair in self.pairs:
            for name in pair.factors:
                seen.setdefault(name, None)
        return list(seen)

    def factor_levels(self, factor: str | None = None) -> dict[str, dict[str, list[str]]]:
        """Factor -> level -> ids of the pairs at that level (file order; levels by first appearance).

        With ``factor``, only that factor (a `KeyError` naming the known factors when it is absent).
        A validated probe labels every pair with every factor, so each factor's lists partition the ids.
        """
        names = self.factor_names
        if factor is not None:
            if factor not in names:
                raise KeyError(
                    f"probe {self.name!r} has no factor {factor!r}; its factors: {', '.join(names) or 'none'}"
                )
            names = [factor]
        out: dict[str, dict[str, list[str]]] = {name: {} for name in names}
        for pair in self.pairs:
            for name in names:
                if name in pair.factors:
                    out[name].setdefault(pair.factors[name], []).append(pair.id)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record of the probe, for the provenance of captures and reports."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "name": self.name,
            "thesis": self.thesis,
            "label_a": self.label_a,
            "label_b": self.label_b,
            "base_model": self.base_model,
            "held_constant": list(self.held_constant),
            "raw": self.raw,
            "n_pairs": len(self.pairs),
            "factors": self.factor_levels(),
            "pairs": [pair.to_dict() for pair in self.pairs],
        }


@dataclass(frozen=True)
class Problem:
    """One reason a prompt file is unusable, located as precisely as the file allows."""

    path: Path
    line: int | None
    pair_id: str | None
    message: str

    def __str__(self) -> str:
        where = str(self.path)
        if self.line:
            where += f":{self.line}"
        if self.pair_id is not None:
            where += f" (pair {self.pair_id!r})"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "line": self.line, "pair_id": self.pair_id, "message": self.message}


# --- loading -------------------------------------------------------------------------------


def load_probe(path: str | Path) -> Probe:
    """Read and validate a probe file; raise `PromptFileError` listing every problem found."""
    probe, problems = find_problems(path)
    if problems:
        head = f"{len(problems)} problem(s) in prompt file {Path(path)}:"
        body = "\n".join(f"  {problem}" for problem in problems)
        raise PromptFileError(f"{head}\n{body}\nRun `dense-plantain prompts check {path}` for the full report.")
    assert probe is not None
    return probe


def find_problems(path: str | Path) -> tuple[Probe | None, list[Problem]]:
    """Parse a probe file and collect every format problem instead of stopping at the first.

    Returns the probe (None when the file cannot be parsed far enough to build one) and the
    problems; the probe is trustworthy only when the list is empty.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(
            f"prompt file {path} does not exist. Bundled sets: {', '.join(sorted(bundled_prompts())) or 'none found'}."
        ) from None
    except OSError as err:
        raise PromptFileError(f"prompt file {path} cannot be read: {err.strerror or err}") from None

    if data.startswith(codecs.BOM_UTF8):
        return None, [
            Problem(
                path,
                1,
                None,
                "the file starts with a UTF-8 byte-order mark (BOM: the bytes EF BB BF), which TOML does not "
                "allow. Save it as plain UTF-8 without a BOM (in most editors: encoding 'UTF-8', not "
                f"'UTF-8 with BOM'), or strip it: sed -i '1s/^\\xEF\\xBB\\xBF//' {path}",
            )
        ]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return None, [Problem(path, line, None, "not valid UTF-8; save the file as UTF-8 (TOML requires it).")]
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = _TOML_POSITION.search(str(err))
        if match:
            line = int(match.group(1))
        else:  # "at end of document": the problem shows where the text stops
            line = max(1, len(text.splitlines()))
        return None, [Problem(path, line, None, f"not valid TOML: {err}")]
    except RecursionError:
        return None, [
            Problem(
                path,
                None,
                None,
                "not readable as TOML: arrays or inline tables are nested inside each other too deeply for the "
                'parser. A prompt file needs no nesting beyond factors = { name = "level" } and a list of '
                "strings; remove the nested brackets.",
            )
        ]

    layout = _Layout.scan(text)
    problems: list[Problem] = []
    sha256 = hashlib.sha256(data).hexdigest()

    for key in doc:
        if key not in ("probe", "pairs"):
            problems.append(
                Problem(
                    path,
                    layout.top_key_line(key),
                    None,
                    f"unknown top-level key {key!r}{_typo_hint(key, ('probe', 'pairs'))}; "
                    "a probe file holds only [probe] and [[pairs]].",
                )
            )

    meta = doc.get("probe", {})
    if not isinstance(meta, dict):
        problems.append(
            Problem(path, layout.top_key_line("probe"), None, "`probe` must be a table: write it as [probe].")
        )
        meta = {}
    probe_fields = _read_probe_table(path, meta, layout, problems)
    held_constant = probe_fields["held_constant"]

    raw_pairs = doc.get("pairs")
    pairs: list[Pair] = []
    if raw_pairs is None:
        problems.append(
            Problem(path, None, None, f"no [[pairs]] tables; add at least {MIN_PAIRS} pairs, each with id, a and b.")
        )
    elif not isinstance(raw_pairs, list) or not all(isinstance(p, dict) for p in raw_pairs):
        problems.append(
            Problem(
                path,
                layout.top_key_line("pairs"),
                None,
                "`pairs` must be an array of tables: start each pair with a [[pairs]] line.",
            )
        )
    else:
        lines = layout.pair_lines if len(layout.pair_lines) == len(raw_pairs) else [0] * len(raw_pairs)
        allowed = set(PAIR_REQUIRED) | set(PAIR_OPTIONAL) | set(held_constant) | {FACTORS_KEY}
        for index, (entry, line) in enumerate(zip(raw_pairs, lines)):
            pair = _read_pair(path, index, entry, line, allowed, layout, problems)
            if pair is not None:
                pairs.append(pair)
        _check_duplicates(path, raw_pairs, lines, problems)
        _check_factors(path, raw_pairs, lines, layout, problems)
        if len(raw_pairs) < MIN_PAIRS:
            problems.append(
                Problem(
                    path,
                    None,
                    None,
                    f"only {len(raw_pairs)} pair(s); a paired test needs at least "
                    f"{MIN_PAIRS} (the published probes use 25).",
                )
            )

    probe = Probe(
        path=path,
        name=probe_fields["name"] or path.stem,
        thesis=probe_fields["thesis"],
        label_a=probe_fields["label_a"] or "A",
        label_b=probe_fields["label_b"] or "B",
        base_model=probe_fields["base_model"],
        held_constant=held_constant,
        raw=dict(meta),
        pairs=pairs,
        sha256=sha256,
    )
    problems.sort(key=lambda p: p.line or 0)
    return probe, problems


def _read_probe_table(path: Path, meta: dict, layout: _Layout, problems: list[Problem]) -> dict[str, Any]:
    out: dict[str, Any] = {key: None for key in PROBE_KEYS}
    out["held_constant"] = []
    for key, value in meta.items():
        line = layout.probe_key_line(key)
        if key not in PROBE_KEYS:
            problems.append(
                Problem(
                    path,
                    line,
                    None,
                    f"unknown key {key!r} in [probe]{_typo_hint(key, PROBE_KEYS)}; "
                    f"known keys: {', '.join(PROBE_KEYS)}.",
                )
            )
        elif key == "held_constant":
            if not (isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)):
                problems.append(
                    Problem(
                        path,
                        line,
                        None,
                        "[probe] held_constant must be a list of pair field names, "
                        'e.g. held_constant = ["subject", "setting"].',
                    )
                )
                continue
            for name in value:
                if name in PAIR_REQUIRED:
                    problems.append(
                        Problem(
                            path,
                            line,
                            None,
                            f"held_constant names {name!r}, but id, a and b "
                            "are what the pair varies; list only extra fields like subject or setting.",
                        )
                    )
            out["held_constant"] = [v for v in value if v not in PAIR_REQUIRED]
        elif not isinstance(value, str):
            problems.append(Problem(path, line, None, f"[probe] {key} must be a string, not {type(value).__name__}."))
        elif not value.strip():
            problems.append(Problem(path, line, None, f"[probe] {key} is empty; fill it in or delete the line."))
        else:
            out[key] = value.strip() if key != "thesis" else " ".join(value.split())
    return out


def _read_pair(
    path: Path, index: int, entry: dict, line: int, allowed: set[str], layout: _Layout, problems: list[Problem]
) -> Pair | None:
    raw_id = entry.get("id")
    pair_id = str(raw_id) if raw_id is not None else f"#{index + 1} (no id)"
    ok = True

    def report(message: str, key: str | None = None) -> None:
        nonlocal ok
        ok = False
        key_line = layout.pair_key_line(index, key) if key else None
        problems.append(Problem(path, key_line or line or None, pair_id, message))

    for key in PAIR_REQUIRED:
        if key not in entry:
            report(f"missing field {key!r}; every pair needs id, a and b.")
    for key, value in entry.items():
        if key not in allowed:
            hint = _typo_hint(key, sorted(allowed))
            report(
                f"unknown key {key!r}{hint}; a pair holds id, a, b, note and the fields named in "
                f"[probe] held_constant (or subject/setting).",
                key,
            )
        elif key == FACTORS_KEY:
            bad = _factor_table_problem(value)
            if bad:
                report(bad, key)
        elif not isinstance(value, str):
            if key == "id" and isinstance(value, int) and not isinstance(value, bool):
                report(f'id must be a string; write id = "{value}".', key)
            else:
                report(f"{key} must be a string, not {type(value).__name__}.", key)
        elif key != "note" and not value.strip():
            what = "prompt" if key in ("a", "b") else "field"
            report(f"empty {what} {key!r}.", key)
    if not ok:
        return None
    a, b = entry["a"], entry["b"]
    if a.strip() == b.strip():
        report("prompts a and b are identical; a pair must differ in the contrasted property.", "b")
        return None
    fields = {k: v for k, v in entry.items() if k not in PAIR_REQUIRED and k != FACTORS_KEY}
    factors = {name: level.strip() for name, level in entry.get(FACTORS_KEY, {}).items()}
    return Pair(id=entry["id"].strip(), a=a.strip(), b=b.strip(), line=line, fields=fields, factors=factors)


_FACTORS_EXAMPLE = 'factors = { body = "slim", clothing = "fitted" }'


def _factor_table_problem(value: Any) -> str | None:
    """Why a pair's ``factors`` value is malformed, or None when it is a table of name -> level."""
    if not isinstance(value, dict):
        return f"factors must be a table of factor name -> level, e.g. {_FACTORS_EXAMPLE}; not {type(value).__name__}."
    if not value:
        return f"factors is empty; delete it or label the pair, e.g. {_FACTORS_EXAMPLE}."
    for name, level in value.items():
        if not _FACTOR_NAME.match(name):
            return (
                f"factor name {name!r} must start with a letter and hold only letters, digits, _ and -, "
                f"e.g. {_FACTORS_EXAMPLE}."
            )
        if not isinstance(level, str) or not level.strip():
            shown = type(level).__name__ if not isinstance(level, str) else "an empty string"
            return f'factor {name!r} must be a non-empty string level (e.g. {name} = "slim"), not {shown}.'
    return None


def _check_factors(path: Path, entries: list[dict], lines: list[int], layout: _Layout, problems: list[Problem]) -> None:
    """Every factor named in any pair labels every pair, with >= MIN_LEVELS levels of >= MIN_PAIRS pairs."""
    labelled: list[tuple[int, dict, dict[str, str]]] = []
    names: dict[str, None] = {}
    for index, entry in enumerate(entries):
        table = entry.get(FACTORS_KEY, {})
        ok = _factor_table_problem(table) is None if FACTORS_KEY in entry else True
        factors = {k: v.strip() for k, v in table.items()} if ok and isinstance(table, dict) else None
        labelled.append((index, entry, factors if factors is not None else {}))
        for name in factors or {}:
            names.setdefault(name, None)
    if not names:
        return

    def pair_name(entry: dict, index: int) -> str:
        raw = entry.get("id")
        return raw.strip() if isinstance(raw, str) and raw.strip() else f"#{index + 1} (no id)"

    for name in names:
        levels: dict[str, list[tuple[int, dict]]] = {}
        for index, entry, factors in labelled:
            if name in factors:
                levels.setdefault(factors[name], []).append((index, entry))
            elif FACTORS_KEY in entry and _factor_table_problem(entry[FACTORS_KEY]) is not None:
                continue  # already reported as malformed
            else:
                line = layout.pair_key_line(index, FACTORS_KEY) or lines[index] or None
                example = ", ".join(f'{n} = "..."' for n in names)
                problems.append(
                    Problem(
                        path,
                        line,
                        pair_name(entry, index),
                        f"no label for factor {name!r}, which other pairs use; a factor must label every pair. "
                        f"Add it: factors = {{ {example} }}.",
                    )
                )
        counts = ", ".join(f"{level!r}: {len(members)}" for level, members in levels.items())
        if len(levels) < MIN_LEVELS:
            problems.append(
                Problem(
                    path,
                    layout.pair_key_line(levels[next(iter(levels))][0][0], FACTORS_KEY) if levels else None,
                    None,
                    f"factor {name!r} has {len(levels)} level ({counts}); a factor needs at least {MIN_LEVELS} "
                    f"levels with at least {MIN_PAIRS} pairs each to compare them. Label the pairs with their "
                    "actual levels, or remove the factor.",
                )
            )
        for level, members in levels.items():
            if len(members) >= MIN_PAIRS:
                continue
            for index, entry in members:
                line = layout.pair_key_line(index, FACTORS_KEY) or lines[index] or None
                problems.append(
                    Problem(
                        path,
                        line,
                        pair_name(entry, index),
                        f"factor {name!r} level {level!r} labels only {len(members)} pair(s) (levels: {counts}); "
                        f"each level needs at least {MIN_PAIRS} pairs for a per-level paired test. Add pairs at "
                        f"this level, or merge it with another level (and say so in a comment).",
                    )
                )


def _check_duplicates(path: Path, entries: list[dict], lines: list[int], problems: list[Problem]) -> None:
    # Looks at every entry with a string id, valid or not, so one broken pair cannot hide a clash.
    first_line: dict[str, int] = {}
    for entry, line in zip(entries, lines):
        pair_id = entry.get("id")
        if not isinstance(pair_id, str) or not pair_id.strip():
            continue
        pair_id = pair_id.strip()
        if pair_id in first_line:
            where = f"line {first_line[pair_id]}" if first_line[pair_id] else "an earlier pair"
            problems.append(
                Problem(
                    path,
                    line or None,
                    pair_id,
                    f"duplicate id; also used at {where}. Ids name pairs in results, so each must be unique.",
                )
            )
        else:
            first_line[pair_id] = line


def _typo_hint(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (probably a typo for {close[0]!r})" if close else " (probably a typo)"


class _Layout:
    """Where headers and keys sit in the raw text; `tomllib` reports no positions itself.

    The scan is line based: it finds ``[probe]`` and ``[[pairs]]`` headers and ``key =`` lines
    below them. A header-like line inside a multi-line string would fool it, which only costs
    the accuracy of a reported line number, never the parse.
    """

    def __init__(self, lines: list[str], probe_line: int | None, pair_lines: list[int]):
        self.lines = lines
        self.probe_line = probe_line
        self.pair_lines = pair_lines

    @classmethod
    def scan(cls, text: str) -> _Layout:
        lines = text.splitlines()
        probe_line = None
        pair_lines = []
        for number, content in enumerate(lines, start=1):
            if _PAIRS_HEADER.match(content):
                pair_lines.append(number)
            elif probe_line is None and _PROBE_HEADER.match(content):
                probe_line = number
        return cls(lines, probe_line, pair_lines)

    def _key_in_section(self, start: int | None, key: str) -> int | None:
        if start is None:
            return None
        pattern = re.compile(rf"^\s*(\"{re.escape(key)}\"|'{re.escape(key)}'|{re.escape(key)})\s*=")
        for number in range(start + 1, len(self.lines) + 1):
            content = self.lines[number - 1]
            if _ANY_HEADER.match(content):
                return None
            if pattern.match(content):
                return number
        return None

    def probe_key_line(self, key: str) -> int | None:
        return self._key_in_section(self.probe_line, key) or self.probe_line

    def pair_key_line(self, index: int, key: str) -> int | None:
        if index >= len(self.pair_lines):
            return None
        return self._key_in_section(self.pair_lines[index], key)

    def top_key_line(self, key: str) -> int | None:
        pattern = re.compile(rf"^\s*(\[+\s*)?{re.escape(key)}\b")
        for number, content in enumerate(self.lines, start=1):
            if pattern.match(content):
                return number
        return None


# --- bundled stimulus sets ------------------------------------------------------------------


def _bundled_dirs() -> list[Path]:
    """Folders that may hold the bundled ``*.toml`` sets, most specific first.

    The repository keeps them in its top-level ``prompts/`` folder. ``dense_plantain/prompt_sets``
    is a symlink to that folder in a checkout (so editable installs see it) and a real folder in
    an installed wheel (the maturin ``include`` rule in pyproject.toml copies the files there).
    The top-level folder is also tried, for checkouts where the symlink did not survive.
    """
    here = Path(__file__).resolve().parent
    return [here / "prompt_sets", here.parent.parent / "prompts"]


def bundled_prompts() -> dict[str, Path]:
    """Map each bundled probe's name (file stem, e.g. ``dense-plantain``) to its file."""
    for folder in _bundled_dirs():
        files = sorted(folder.glob("*.toml")) if folder.is_dir() else []
        if files:
            # Resolved, so a checkout reports prompts/NAME.toml rather than the symlinked path.
            return {f.stem: f.resolve() for f in files}
    return {}


def bundled_path(name: str) -> Path:
    """The file of a bundled probe, by name with or without ``.toml``."""
    stem = name[:-5] if name.endswith(".toml") else name
    found = bundled_prompts()
    if stem not in found:
        known = ", ".join(sorted(found)) or "none (the installation carries no prompts folder)"
        raise PromptFileError(f"no bundled prompt set named {name!r}; bundled sets: {known}.")
    return found[stem]
