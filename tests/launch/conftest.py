"""Fixtures of the launcher's acceptance tests: real rank processes on the CPU (gloo), tiny synthetic models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pytest_llmperf.correctness import CHECK_BATCH_SIZE, CHECK_NEW_TOKENS
from pytest_llmperf.models.sources import ResolvedModel, resolve_model
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.prompts import prompt_token_ids
from tests.launch.procs import PROMPT_TOKENS


@pytest.fixture(scope="session")
def llama(synthetic_cache) -> ResolvedModel:
    return resolve_model(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)


@pytest.fixture(scope="session")
def deepspeed_cpu_op(llama) -> None:
    """DeepSpeed's CPU all-reduce op built before any group starts, as the plugin does (prepare_host)."""
    from pytest_llmperf.backends.base import LoadRequest
    from pytest_llmperf.backends.deepspeed_ops import prepare_host

    prepare_host(LoadRequest(llama.path, "float32", "cpu"))


@dataclass(frozen=True)
class Reference:
    input_ids: np.ndarray
    tokens: np.ndarray
    weights_bytes: int


@pytest.fixture(scope="session")
def hf_reference(llama) -> Reference:
    """The hf backend, in this process, on the prompts every group here is given (as the plugin's check does)."""
    from pytest_llmperf.backends.base import LoadRequest
    from pytest_llmperf.backends.hf import HfBackend
    from pytest_llmperf.measure.rank import RankRunner

    input_ids = prompt_token_ids(vocab_size=llama.vocab_size, batch_size=CHECK_BATCH_SIZE,
                                 prompt_tokens=PROMPT_TOKENS, seed=0, special_ids=llama.special_token_ids)
    runner = RankRunner(HfBackend(), "cpu")
    try:
        load = runner.load(LoadRequest(llama.path, "float32", "cpu"))
        tokens = runner.tokens(input_ids, CHECK_NEW_TOKENS)
    finally:
        runner.close()
    new = tokens[:, PROMPT_TOKENS:]
    assert new.shape == (CHECK_BATCH_SIZE, CHECK_NEW_TOKENS)
    # a reference that repeats a few tokens would let a broken backend match it by chance
    assert len(np.unique(new)) >= 8, f"the reference has only {len(np.unique(new))} distinct new tokens"
    return Reference(input_ids, tokens, load.weights_bytes)
