import json
from dataclasses import FrozenInstanceError

import pytest
import torch
from transformers import AutoModelForCausalLM

from pytest_llmperf.models.plan import num_parameters
from pytest_llmperf.models.shapes import SHAPES, Shape, shape_config
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.models.tokenizer import special_token_ids

TINY = ("bloom-tiny", "llama-tiny", "gpt2-tiny")

# parameter counts of the published checkpoints: a check of every hyper-parameter that matters
PUBLISHED_PARAMETERS = {
    "bloom-560m": 559_214_592,
    "bloom-1b7": 1_722_408_960,
    "bloom-7b1": 7_069_016_064,
    "bloom-176b": 176_247_271_424,
    "llama-1b": 1_100_048_384,
    "llama-2-7b": 6_738_415_616,
    "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248,
    "gpt2": 124_439_808,
    "gpt2-xl": 1_557_611_200,
}


def test_registry_holds_tiny_and_real_shapes():
    assert set(SHAPES) == {*TINY, "llama-tiny-hd32", *PUBLISHED_PARAMETERS}
    assert all(isinstance(shape, Shape) and name == shape.name for name, shape in SHAPES.items())


def test_shape_is_frozen_and_hashable():
    shape = SHAPES["llama-tiny"]
    with pytest.raises(FrozenInstanceError):
        shape.name = "x"  # type: ignore[misc]
    assert hash(shape) == hash(SHAPES["llama-tiny"])


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_real_shape_matches_published_parameter_count(name):
    config = shape_config(name)
    assert config.model_type == SHAPES[name].model_type
    assert num_parameters(config) == PUBLISHED_PARAMETERS[name]


def test_llama_1b_is_the_tinyllama_shape():
    c = shape_config("llama-1b")
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (2048, 5632, 22)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (32, 4, 32000)


@pytest.mark.parametrize("name", TINY)
def test_tiny_shapes_are_tiny(name):
    c = shape_config(name)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.vocab_size) == (64, 2, 4, 1024)
    assert 100_000 <= num_parameters(c) <= 300_000
    if name != "bloom-tiny":  # BLOOM's ALiBi has no position limit
        assert (getattr(c, "max_position_embeddings", None) or c.n_positions) >= 512


def test_llama_tiny_hd32_has_the_head_size_vllm_cpu_needs():
    c = shape_config("llama-tiny-hd32")
    assert c.hidden_size // c.num_attention_heads == 32 and c.num_key_value_heads == 2
    assert num_parameters(c) < 1_000_000


def test_llama_tiny_uses_grouped_query_attention():
    assert shape_config("llama-tiny").num_key_value_heads == 2


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_special_tokens_lie_inside_the_vocabulary(name):
    config = shape_config(name)
    ids = special_token_ids(config)
    assert ids == {"bos": 1, "eos": 2, "pad": 3, "unk": 0}
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 3)
    assert max(ids.values()) < config.vocab_size


def test_shape_config_reads_a_config_json_file_or_its_directory(tmp_path):
    data = {"model_type": "mistral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 100}
    (tmp_path / "mistral-mini.json").write_text(json.dumps(data))
    (tmp_path / "config.json").write_text(json.dumps(data))
    for source in (tmp_path / "mistral-mini.json", str(tmp_path), tmp_path / "config.json"):
        config = shape_config(source)
        assert config.model_type == "mistral"
        assert (config.hidden_size, config.num_key_value_heads, config.vocab_size) == (32, 1, 100)


def test_shape_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="known shapes: bloom-tiny"):
        shape_config("llama-huge")
    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="model_type"):
        shape_config(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json"):
        shape_config(tmp_path / "broken.json")


@pytest.mark.parametrize("name", TINY)
def test_tiny_shape_greedy_decoding_is_varied(name, tmp_path):
    """A token-by-token comparison of backends must be able to fail: greedy decoding of a tiny
    model with the default seed must not collapse onto one repeated token."""
    path = ensure_synthetic(shape_config(name), "float32", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for prompt_seed in range(3):
        seeded = torch.Generator().manual_seed(prompt_seed)
        prompt = torch.randint(4, model.config.vocab_size, (1, 32), generator=seeded)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False)
        new = out[0, 32:].tolist()
        assert len(new) == 32, f"{name} stopped early (eos) for prompt seed {prompt_seed}"
        assert len(set(new)) >= 8, f"{name} greedy decoding repeats itself: {new}"
