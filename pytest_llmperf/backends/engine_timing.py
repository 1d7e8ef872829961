"""A request's latencies as the engine itself accounts for them, on its own clock.

An engine that times its requests (llama.cpp's server, vLLM) can be asked for that account of the
last generate (``backend.engine_timing()``, optional, batch 1): an independent reading of the same
request to set beside the plugin's token clock (``benchmarks/engine_timing.py``). Only the
conversion from each engine's own fields lives here; this module imports nothing heavy, as the vLLM
engine process uses it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class EngineTimingError(ValueError):
    """An engine's timing fields are missing or do not describe a finished request."""


@dataclass(frozen=True)
class EngineTiming:
    """TTFT, TPOT and end-to-end time of one single-row request, in the engine's own account."""

    ttft_ms: float
    #: None with fewer than two new tokens (no gap to divide by)
    tpot_ms: float | None
    e2e_ms: float
    new_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.e2e_ms * 1000.0


def _tpot_ms(decode_ms: float, new_tokens: int) -> float | None:
    return decode_ms / (new_tokens - 1) if new_tokens > 1 else None


def from_llama_cpp(timings: Mapping[str, Any]) -> EngineTiming:
    """From the ``timings`` of a llama.cpp server response (its last streamed chunk).

    ``prompt_ms`` runs from the slot starting the prompt to the first token being sampled;
    ``predicted_ms`` from that first token to the last one sampled (``predicted_n`` tokens, so
    ``predicted_n - 1`` decode steps).
    """
    try:
        prompt_ms, predicted_ms = float(timings["prompt_ms"]), float(timings["predicted_ms"])
        predicted_n = int(timings["predicted_n"])
    except (KeyError, TypeError, ValueError) as e:
        raise EngineTimingError(f"llama.cpp's timings lack prompt_ms, predicted_ms or predicted_n: {dict(timings)!r}"
                                ) from e
    if predicted_n < 1:
        raise EngineTimingError(f"llama.cpp's timings are of a request that produced no token: {dict(timings)!r}")
    return EngineTiming(ttft_ms=prompt_ms, tpot_ms=_tpot_ms(predicted_ms, predicted_n),
                        e2e_ms=prompt_ms + predicted_ms, new_tokens=predicted_n)


def from_vllm(*, first_token_latency_s: float, first_token_ts: float, last_token_ts: float,
              num_generation_tokens: int) -> EngineTiming:
    """From vLLM's per-request stats (``RequestOutput.metrics``, a ``RequestStateStats``) of a finished request.

    ``first_token_latency`` is vLLM's TTFT: from the request's arrival (``add_request``) to the
    output of the step that made its first token. ``first_token_ts`` and ``last_token_ts`` are the
    engine core's (monotonic) stamps of the steps that made the first and the last token; vLLM's
    TPOT is their difference over ``num_generation_tokens - 1``.
    """
    if num_generation_tokens < 1 or first_token_latency_s <= 0.0 or last_token_ts < first_token_ts:
        raise EngineTimingError(
            f"vLLM's request stats do not describe a finished request (first_token_latency={first_token_latency_s}, "
            f"first_token_ts={first_token_ts}, last_token_ts={last_token_ts}, "
            f"num_generation_tokens={num_generation_tokens}): was the engine built with disable_log_stats=False?"
        )
    ttft_ms = first_token_latency_s * 1000.0
    decode_ms = (last_token_ts - first_token_ts) * 1000.0
    return EngineTiming(ttft_ms=ttft_ms, tpot_ms=_tpot_ms(decode_ms, num_generation_tokens),
                        e2e_ms=ttft_ms + decode_ms, new_tokens=num_generation_tokens)
