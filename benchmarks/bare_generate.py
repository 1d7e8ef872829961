"""A bare transformers ``model.generate``, timed with its own ``time.perf_counter``: the independent
reference the plugin's numbers are checked against (``plugin_accuracy.py``, ``engine_timing.py``).
It shares no code with the plugin's timers."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer


@dataclass(frozen=True)
class BareRun:
    #: seconds from the call to each new token reaching the host (empty when not stamped)
    token_s: tuple[float, ...]
    #: seconds from the call until it returned
    e2e_s: float


class _Stamps(BaseStreamer):
    """``generate`` puts the prompt first, then each step's tokens (already on the host)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def bare_generate(model, batch_size: int, prompt_tokens: int, new_tokens: int, device: str, *,
                  stamped: bool = False) -> BareRun:
    """Greedy decoding of exactly ``new_tokens`` tokens from random prompts; with ``stamped``, each
    new token is timestamped through a streamer as the plugin's hf backend does."""
    ids = torch.randint(4, model.config.vocab_size, (batch_size, prompt_tokens), device=device)
    mask = torch.ones_like(ids)
    stamps = _Stamps() if stamped else None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=model.config.pad_token_id, streamer=stamps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape[1] == prompt_tokens + new_tokens
    token_s = () if stamps is None else tuple(t - start for t in stamps.times[1:])
    assert stamps is None or len(token_s) == new_tokens
    return BareRun(token_s=token_s, e2e_s=elapsed)
