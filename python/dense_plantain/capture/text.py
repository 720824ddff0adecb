"""Prompt lengths under the pipeline's own tokenizer and chat template, checked before any forward.

``Flux2KleinPipeline._get_qwen3_prompt_embeds`` wraps each prompt as a one-message chat
(``apply_chat_template(..., add_generation_prompt=True, enable_thinking=False)``), then pads or
cuts it to ``max_sequence_length`` tokens (512). A prompt longer than that loses its end without
a word; a pair whose A and B differ only after the cut is captured as two identical prompts.
``count_tokens`` counts the real tokens the same way, uncut; ``check_pairs`` refuses such pairs
and lists the prompts that are cut, so the run can warn and record every count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dense_plantain.errors import CaptureError


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The token ids of ``prompt`` as the pipeline builds them, before padding or truncation."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    return list(tokenizer(text, truncation=False, padding=False)["input_ids"])


@dataclass
class PairTokens:
    """Real token counts of one pair's prompts (chat template included) and whether the cut made them equal."""

    pair_id: str
    tokens_a: int
    tokens_b: int
    same_after_cut: bool


def check_pairs(tokenizer: Any, pairs: list[Any], max_sequence_length: int) -> list[PairTokens]:
    """Count every pair's tokens; raise ``CaptureError`` naming every pair whose A and B are identical
    once cut to ``max_sequence_length`` tokens (the pair would measure nothing)."""
    out = []
    for pair in pairs:
        ids_a, ids_b = chat_ids(tokenizer, pair.a), chat_ids(tokenizer, pair.b)
        same = ids_a[:max_sequence_length] == ids_b[:max_sequence_length] and pair.a != pair.b
        out.append(PairTokens(str(pair.id), len(ids_a), len(ids_b), same))
    bad = [p for p in out if p.same_after_cut]
    if bad:
        listed = "; ".join(f"pair {p.pair_id!r} (A {p.tokens_a} tokens, B {p.tokens_b} tokens)" for p in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise CaptureError(
            f"{len(bad)} pair(s) differ only after the text limit of {max_sequence_length} tokens (chat template "
            f"included), so the pipeline would see A and B as the same prompt: {listed}{more}. Shorten these "
            "prompts so that A and B differ within the limit (`dense-plantain prompts check` counts tokens)."
        )
    return out


def truncation_warning(counts: list[PairTokens], max_sequence_length: int) -> str | None:
    """One sentence naming the prompts longer than the limit (their ends are cut), or None."""
    cut = [(p.pair_id, cond, n) for p in counts for cond, n in (("A", p.tokens_a), ("B", p.tokens_b))]
    cut = [c for c in cut if c[2] > max_sequence_length]
    if not cut:
        return None
    listed = ", ".join(f"{pid} {cond} ({n} tokens)" for pid, cond, n in cut[:10])
    more = f" and {len(cut) - 10} more" if len(cut) > 10 else ""
    return (
        f"{len(cut)} prompt(s) are longer than the text limit of {max_sequence_length} tokens and lose their end: "
        f"{listed}{more}. The capture sees only their first {max_sequence_length} tokens."
    )
