"""Greedy decoding of an exact number of tokens with transformers' ``generate``: one definition for
every backend, so they all run the same decode loop and differ only in how the model is placed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

if TYPE_CHECKING:
    from pytest_llmperf.measure.token_clock import TokenClock


def greedy_config(model: Any, new_tokens: int) -> GenerationConfig:
    """Greedy, KV cache on, exactly ``new_tokens`` new tokens (``min_new_tokens`` = ``max_new_tokens``)."""
    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else model.config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else model.config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
        eos_token_id=eos, pad_token_id=pad, use_cache=True,
    )


class ClockStreamer(BaseStreamer):
    """Ticks the clock as each decoding step hands its tokens over (already on the host, so the step is done).

    ``generate`` first puts the prompt, which is not a new token."""

    def __init__(self, clock: TokenClock):
        self._clock = clock
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self._clock.tick()
        self._prompt_seen = True

    def end(self) -> None:
        pass


def greedy_generate(model: Any, input_ids: torch.Tensor, new_tokens: int, clock: TokenClock | None = None,
                    **generate_kwargs: Any) -> torch.Tensor:
    """``model.generate`` (a transformers model, or an engine's module) with ``greedy_config``; each new
    token ticks ``clock``."""
    if clock is not None:
        generate_kwargs["streamer"] = ClockStreamer(clock)
    with torch.inference_mode():
        return model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            generation_config=greedy_config(model, new_tokens), **generate_kwargs,
        )
