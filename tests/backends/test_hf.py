"""The hf backend for real: a synthetic model saved to disk, loaded back, generating greedily."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.backends.hf import HfBackend
from pytest_llmperf.measure import page_cache
from pytest_llmperf.measure.rank import RankRunner
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.prompts import prompt_token_ids
from pytest_llmperf.results import GenerateConfig


@pytest.fixture(scope="module", params=["llama-tiny", "bloom-tiny", "gpt2-tiny"])
def checkpoint(request, synthetic_cache):
    return ensure_synthetic(parse_model_spec(f"synthetic:{request.param}"), "float32", synthetic_cache)


def _loaded(checkpoint):
    runner = RankRunner(HfBackend(), "cpu")
    return runner, runner.load(LoadRequest(checkpoint, "float32", "cpu"))


def test_load_phases_add_up_to_the_load_time(checkpoint):
    runner, load = _loaded(checkpoint)
    assert [name for name, _ in load.phases] == ["read", "place"]
    assert sum(s for _, s in load.phases) == pytest.approx(load.load_s, rel=0.05)
    reference = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert load.weights_bytes == sum(p.numel() * 4 for p in reference.parameters())
    assert load.devices == ("cpu",) and load.memory.peak_bytes > load.weights_bytes
    runner.close()


def test_greedy_output_is_exactly_what_plain_transformers_generates(checkpoint):
    runner, _ = _loaded(checkpoint)
    ids = prompt_token_ids(vocab_size=1024, batch_size=2, prompt_tokens=8, seed=0, special_ids=[0, 1, 2, 3])
    inputs = torch.as_tensor(ids)
    ours = runner.backend.generate(inputs, 32)
    reference = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        expected = reference.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=32,
                                      min_new_tokens=32, do_sample=False, pad_token_id=3)
    assert torch.equal(ours, expected)
    assert len(set(ours[0, 8:].tolist())) >= 8  # varied enough for token-by-token comparisons to mean something
    runner.close()


def test_trials_measure_every_configuration(checkpoint):
    runner, _ = _loaded(checkpoint)
    ids = prompt_token_ids(vocab_size=1024, batch_size=4, prompt_tokens=8, seed=0)
    result = runner.generate(GenerateConfig(batch_size=4, prompt_tokens=8, new_tokens=6, trials=3, warmups=1), ids)
    assert result.outcome == "ok" and len(result.trials) == 3
    for trial in result.trials:  # no order between the two: on a busy machine one hiccup can swap them
        assert trial.ttft_s > 0 and trial.e2e_s > 0 and (trial.batch_size, trial.new_tokens) == (4, 6)
    assert result.stats("tokens_per_s").median == pytest.approx(4 * 6 / result.stats("e2e_s").median, rel=1e-9)
    runner.close()


def test_page_cache_state_is_recorded_before_the_load(checkpoint):
    page_cache.evict(page_cache.weight_files(checkpoint))
    runner, cold = _loaded(checkpoint)
    runner.close()
    runner, warm = _loaded(checkpoint)
    runner.close()
    if cold.page_cache.resident_fraction is None:
        pytest.skip("mincore is not available here")
    assert cold.page_cache.state == "cold" and warm.page_cache.state == "warm"


def test_prompts_are_the_same_for_every_backend_and_run():
    a = prompt_token_ids(vocab_size=1024, batch_size=3, prompt_tokens=5, seed=11)
    b = prompt_token_ids(vocab_size=1024, batch_size=3, prompt_tokens=5, seed=11)
    np.testing.assert_array_equal(a, b)
