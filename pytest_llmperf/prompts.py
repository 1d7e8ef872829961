"""Prompts: seeded token ids, identical for every backend, run and revision.

Row ``i`` depends only on (seed, i, vocabulary, length), so batch 8 starts with the prompt of
batch 1 and two backends of the same model see exactly the same inputs. Special tokens are never
drawn, so a prompt cannot end early or be mistaken for padding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def prompt_token_ids(*, vocab_size: int, batch_size: int, prompt_tokens: int, seed: int,
                     special_ids: Iterable[int | None] = ()) -> np.ndarray:
    """A ``(batch_size, prompt_tokens)`` int64 array of token ids."""
    excluded = {int(i) for i in special_ids if i is not None and 0 <= int(i) < vocab_size}
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.fromiter(excluded, dtype=np.int64))
    if allowed.size == 0:
        raise ValueError(f"a vocabulary of {vocab_size} tokens has no non-special token to draw prompts from")
    rows = [
        allowed[np.random.default_rng([seed, row]).integers(0, allowed.size, size=prompt_tokens)]
        for row in range(batch_size)
    ]
    return np.stack(rows)
