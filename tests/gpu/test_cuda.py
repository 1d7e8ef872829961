"""The hf backend on one CUDA device: synchronised timing, allocator peaks, energy."""

import pytest
import torch

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.backends.hf import HfBackend
from pytest_llmperf.measure.rank import RankRunner
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.prompts import prompt_token_ids
from pytest_llmperf.results import GenerateConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_hf_on_cuda_measures_allocator_peaks(synthetic_cache):
    checkpoint = ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "bfloat16", synthetic_cache)
    runner = RankRunner(HfBackend(), "cuda:0")
    load = runner.load(LoadRequest(checkpoint, "bfloat16", "cuda:0"))
    assert load.devices == ("cuda:0",) and load.memory.method == "cuda"
    assert sum(s for _, s in load.phases) == pytest.approx(load.load_s, rel=0.05)
    ids = prompt_token_ids(vocab_size=1024, batch_size=8, prompt_tokens=16, seed=0)
    result = runner.generate(GenerateConfig(8, 16, 20, trials=3, warmups=1), ids)
    assert result.outcome == "ok" and result.memory.method == "cuda"
    assert result.memory.reserved_bytes >= result.memory.peak_bytes >= load.weights_bytes
    runner.close()
