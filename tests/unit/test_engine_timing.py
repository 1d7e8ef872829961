"""The engines' own timing fields turned into TTFT, TPOT and e2e (pure arithmetic, no engine)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from pytest_llmperf.backends.engine_timing import EngineTiming, EngineTimingError, from_llama_cpp, from_vllm
from pytest_llmperf.backends.llama_cpp_stream import RowStreams
from pytest_llmperf.backends.vllm_engine import engine_timing
from pytest_llmperf.backends.vllm_protocol import Generated


def test_llama_cpp_ttft_is_the_prompt_and_tpot_divides_generation_by_the_steps_after_the_first_token():
    timing = from_llama_cpp({"prompt_n": 32, "prompt_ms": 4.0, "predicted_n": 65, "predicted_ms": 32.0,
                             "predicted_per_token_ms": 0.5})
    assert timing == EngineTiming(ttft_ms=4.0, tpot_ms=0.5, e2e_ms=36.0, new_tokens=65)
    assert timing.tokens_per_s == pytest.approx(65 / 0.036)


def test_one_token_has_no_tpot():
    timing = from_llama_cpp({"prompt_ms": 3.0, "predicted_n": 1, "predicted_ms": 0.001})
    assert timing.tpot_ms is None and timing.e2e_ms == pytest.approx(3.001)


@pytest.mark.parametrize("timings", [{}, {"prompt_ms": 1.0, "predicted_ms": 2.0},
                                     {"prompt_ms": 1.0, "predicted_ms": 2.0, "predicted_n": 0},
                                     {"prompt_ms": None, "predicted_ms": 2.0, "predicted_n": 3}])
def test_incomplete_llama_cpp_timings_are_refused_and_quoted(timings):
    with pytest.raises(EngineTimingError, match=r"llama\.cpp's timings"):
        from_llama_cpp(timings)


def test_vllm_ttft_is_first_token_latency_and_tpot_is_decode_over_tokens_after_the_first():
    timing = from_vllm(first_token_latency_s=0.005, first_token_ts=100.0, last_token_ts=100.063,
                       num_generation_tokens=64)
    assert timing.ttft_ms == pytest.approx(5.0)
    assert timing.tpot_ms == pytest.approx(1.0)
    assert timing.e2e_ms == pytest.approx(68.0)
    assert timing.new_tokens == 64


def test_vllm_stats_left_empty_name_the_log_stats_setting():
    with pytest.raises(EngineTimingError, match="disable_log_stats=False"):
        from_vllm(first_token_latency_s=0.0, first_token_ts=0.0, last_token_ts=0.0, num_generation_tokens=0)


def test_the_vllm_engine_converts_request_stats_and_none_when_kept_none():
    stats = SimpleNamespace(first_token_latency=0.002, first_token_ts=5.0, last_token_ts=5.003,
                            num_generation_tokens=4)
    assert engine_timing(stats) == from_vllm(first_token_latency_s=0.002, first_token_ts=5.0, last_token_ts=5.003,
                                             num_generation_tokens=4)
    assert engine_timing(None) is None


def test_generated_carries_the_timing_across_the_connection():
    timing = EngineTiming(ttft_ms=1.0, tpot_ms=0.5, e2e_ms=2.0, new_tokens=3)
    message = Generated(tokens=((1, 2, 3),), stamps=((0.1, 0.2, 0.3),), engine_timing=timing)
    assert pickle.loads(pickle.dumps(message)) == message
    assert Generated(tokens=(), stamps=()).engine_timing is None


def test_row_streams_keep_each_rows_final_timings():
    streams = RowStreams(2)

    def chunk(row, token, produced, ms, finish=None):
        return {"choices": [{"index": row, "logprobs": {"content": [{"id": token}]}, "finish_reason": finish}],
                "timings": {"prompt_ms": 1.0 + row, "predicted_n": produced, "predicted_ms": ms}}

    for c in (chunk(0, 5, 1, 0.001), chunk(1, 6, 1, 0.001), chunk(0, 7, 2, 0.5, "length"),
              {"choices": [{"index": 1, "logprobs": {"content": [{"id": 8}]}, "finish_reason": None}]},
              chunk(1, 9, 3, 0.9, "length")):
        streams(c)
    assert streams.timings == [{"prompt_ms": 1.0, "predicted_n": 2, "predicted_ms": 0.5},
                               {"prompt_ms": 2.0, "predicted_n": 3, "predicted_ms": 0.9}]
    assert from_llama_cpp(streams.timings[1]).tpot_ms == pytest.approx(0.45)
