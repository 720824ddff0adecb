"""Input-embedding units: how separated A and B already are before the transformer.

The pipeline's prompt embeddings (``encode_prompt``: the text encoder's hidden states of layers
9, 18 and 27 stacked side by side, 3 x 2,560 = 7,680 columns for Klein 4B, 512 tokens) are what
the transformer receives as ``encoder_hidden_states``. One input unit is the root mean square of
one 16-column slice of them over the prompt's real tokens (the tokenizer's attention mask as the
pipeline builds it: the chat-templated prompt, cut to 512 tokens; padding positions left out):

    input[p, g] = sqrt( sum_{t real} sum_{c in slice g} e[p, t, c]^2 / (n_real(p) * 16) )

480 units for Klein 4B, 6 for the tiny pipeline (96 columns). ``InputHook`` reads them from the
transformer's first forward of each batch (a pre-hook; no second text-encoder pass), on the
device, in float32; ``input_units`` is the same formula for tensors the caller has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Columns per input unit (as the plantain layout's 16-column slices).
INPUT_SLICE = 16
#: ``store.EXTRA_TENSORS`` stem of the input units: ``a_input``/``b_input`` [pairs x input units].
INPUT_STEM = "input"


def real_token_mask(tokenizer: Any, prompts: Sequence[str], max_sequence_length: int) -> Any:
    """The attention mask ``[prompts x max_sequence_length]`` (1 = real token) the pipeline's tokenizer call gives."""
    import torch

    rows = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        enc = tokenizer(
            text, return_tensors="pt", padding="max_length", truncation=True, max_length=max_sequence_length
        )
        rows.append(enc["attention_mask"])
    return torch.cat(rows, dim=0)


def input_units(embeds: Any, mask: Any) -> Any:
    """RMS of each 16-column slice of ``embeds`` [n, tokens, columns] over the tokens where ``mask`` is 1.

    Returns a float32 tensor ``[n, columns // 16]`` on ``embeds``' device. Raises ``ValueError`` when the
    column count is not a multiple of 16 or a prompt has no real token.
    """
    import torch

    n, tokens, columns = embeds.shape
    if columns % INPUT_SLICE:
        raise ValueError(f"prompt embeddings have {columns} columns, not a multiple of {INPUT_SLICE}")
    mask = mask.to(device=embeds.device, dtype=torch.float32)
    if tuple(mask.shape) != (n, tokens):
        raise ValueError(f"attention mask {tuple(mask.shape)} does not match prompt embeddings {(n, tokens)}")
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a prompt has no real token in its attention mask")
    x = embeds.to(torch.float32)
    sums = torch.einsum("ntc,nt->nc", x * x, mask)
    groups = sums.unflatten(1, (columns // INPUT_SLICE, INPUT_SLICE)).sum(dim=2)
    return torch.sqrt(groups / (counts[:, None] * INPUT_SLICE))


class InputHook:
    """A pre-hook on the transformer reading its ``encoder_hidden_states`` at each batch's first forward.

    ``begin(prompts)`` before a batch; ``collect()`` after it returns float32 ``[batch x input units]``.
    """

    def __init__(self, pipe: Any, max_sequence_length: int):
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self.handle = None
        self.prompts: list[str] = []
        self.values: Any = None

    def install(self) -> None:
        self.handle = self.pipe.transformer.register_forward_pre_hook(self._hook, with_kwargs=True)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def begin(self, prompts: Sequence[str]) -> None:
        self.prompts = list(prompts)
        self.values = None

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.values is not None:
            return None  # later denoising steps see the same prompt embeddings
        embeds = kwargs.get("encoder_hidden_states")
        if embeds is None and len(args) > 1:
            embeds = args[1]
        if embeds is None:
            raise ValueError("the transformer was called without encoder_hidden_states; cannot read the input units")
        mask = real_token_mask(self.pipe.tokenizer, self.prompts, self.max_sequence_length)
        if embeds.shape[0] != mask.shape[0]:
            raise ValueError(f"the transformer saw {embeds.shape[0]} prompts, the batch has {mask.shape[0]}")
        self.values = input_units(embeds, mask[:, : embeds.shape[1]])
        return None

    def collect(self) -> np.ndarray:
        if self.values is None:
            raise ValueError("no transformer forward ran in this batch; no input units were read")
        return self.values.detach().to("cpu").numpy().astype(np.float32, copy=False)


def input_record(n_columns: int) -> dict[str, Any]:
    """The capture's ``input_units`` metadata record."""
    return {
        "tensors": [f"a_{INPUT_STEM}", f"b_{INPUT_STEM}"],
        "slice": INPUT_SLICE,
        "columns": int(n_columns),
        "n_units": int(n_columns) // INPUT_SLICE,
        "value": "RMS over the prompt's real (non-padding) tokens of one 16-column slice of the prompt embeddings",
        "source": "encoder_hidden_states of the transformer's first forward (the pipeline's encode_prompt output)",
        "tokens": "the tokenizer's attention mask as Flux2KleinPipeline builds it (chat template, cut to 512)",
    }
