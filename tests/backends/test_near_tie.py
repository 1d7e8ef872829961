"""Exact engines on the same weights may part from hf only where hf itself nearly chose the other token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_llmperf.bench import Bench
from pytest_llmperf.case import cases_from_marker
from pytest_llmperf.correctness import Parting, reference_margins
from pytest_llmperf.models.sources import resolve_model
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.settings import Settings


def test_the_margin_is_hf_s_logit_gap_between_its_token_and_the_other(synthetic_cache) -> None:
    from transformers import AutoModelForCausalLM

    model = resolve_model(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32)
    prompt = torch.tensor([[5, 17, 300, 42]])
    with torch.inference_mode():
        logits = hf(input_ids=prompt).logits[0, -1]
    first, second = (int(i) for i in torch.topk(logits, 2).indices)
    reference = np.array([[5, 17, 300, 42, first]])
    parting = Parting(rank=0, row=0, position=0, token=second)
    margins = reference_margins(model, reference, [parting], prompt_tokens=4)
    top = float(logits[first])
    assert margins[parting] == pytest.approx(float(logits[first] - logits[second]) / max(1.0, abs(top)), rel=1e-5)
    assert margins[parting] >= 0
    third = int(torch.topk(logits, 3).indices[2])
    other = Parting(rank=0, row=0, position=0, token=third)  # not hf's runner-up: never a near-tie
    assert reference_margins(model, reference, [other], prompt_tokens=4)[other] == float("inf")


def test_llama_cpp_parting_at_a_near_tie_is_a_match_with_its_reason(synthetic_cache, cpu_pool) -> None:
    pytest.importorskip("xllamacpp", reason="llama.cpp runs through xllamacpp: pip install 'pytest-llmperf[llama-cpp]'")
    settings = Settings.from_sources(enabled=True, cli={"model_cache": str(synthetic_cache)},
                                     ini={"prompt_tokens": "32", "seed": "2"}, rootdir=Path("/unused"))
    # with seed 2's prompts, llama.cpp's float32 sums part from transformers' at a near-tie of this model
    (case,) = cases_from_marker((), {"model": "synthetic:llama-tiny-hd32", "backend": "llama-cpp", "variant": "f32"},
                                settings)
    with cpu_pool.lease(1, timeout_s=1, owner="t::x") as lease:
        bench = Bench.open(test_id="t::x", case=case, settings=settings, lease=lease)
        bench.close()
    check = bench.correctness
    assert check is not None and check.outcome == "match", check.detail if check else None
    assert check.matched_tokens < check.compared_tokens  # the engines' sums part here, as measured when written
    assert "parted at a near-tie (to hf's runner-up" in check.detail
