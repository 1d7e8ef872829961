"""The GGUF writer: llama.cpp's layout and metadata from a transformers Llama checkpoint, cached once per content."""

import threading

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from pytest_llmperf.models.gguf_writer import (
    UnsupportedModel,
    ensure_gguf,
    gguf_path,
    permute_for_rope,
    unsupported_reason,
)
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic


@pytest.fixture(scope="module")
def llama_tiny(synthetic_cache):
    return ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)


def _field(reader, name):
    return reader.fields[name].contents()


def test_rope_permutation_interleaves_the_two_halves_of_each_head():
    heads, head_dim = 2, 8
    rows = np.arange(heads * head_dim, dtype=np.float32)[:, None]  # row r holds r
    permuted = permute_for_rope(rows, heads)[:, 0]
    # head 0: halves [0..3] and [4..7] become pairs (0, 4), (1, 5), ...; head 1 likewise from 8
    assert permuted.tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_metadata_and_tensors_describe_the_checkpoint(llama_tiny, tmp_path):
    from safetensors.numpy import load_file

    path, written = ensure_gguf(llama_tiny, "f32", tmp_path)
    assert written
    reader = GGUFReader(path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.attention.head_count") == 4 and _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "llama.rope.dimension_count") == 16 and _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert _field(reader, "llama.rope.freq_base") == 10000.0
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 1024 and tokens[7] == "t7" and tokens[2] == "</s>"
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 2 * 9  # untied head: output.weight is written
    weights = load_file(llama_tiny / "model.safetensors")
    k = weights["model.layers.1.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_k.weight"].data), permute_for_rope(k, 2))
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_v.weight"].data),
                                  weights["model.layers.1.self_attn.v_proj.weight"])


@pytest.mark.parametrize(("gguf_type", "matrix_type"), [
    ("f16", GGMLQuantizationType.F16), ("q8_0", GGMLQuantizationType.Q8_0), ("q4_0", GGMLQuantizationType.Q4_0),
])
def test_types_apply_to_matrices_and_norms_stay_float32(llama_tiny, tmp_path, gguf_type, matrix_type):
    reader = GGUFReader(ensure_gguf(llama_tiny, gguf_type, tmp_path)[0])
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == matrix_type and types["token_embd.weight"] == matrix_type
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32


def test_tied_embeddings_write_no_output_head(synthetic_cache, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", vocab_size=1024, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    checkpoint = ensure_synthetic(config, "float32", synthetic_cache)
    names = {t.name for t in GGUFReader(ensure_gguf(checkpoint, "f32", tmp_path)[0]).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names


def test_a_file_is_written_once_per_content_and_type(llama_tiny, tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_gguf(llama_tiny, "q8_0", tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({path for path, _ in results}) == 1 and sum(written for _, written in results) == 1
    assert ensure_gguf(llama_tiny, "q8_0", tmp_path) == (results[0][0], False)
    assert gguf_path(llama_tiny, "q4_0", tmp_path) != results[0][0]
    leftovers = [p for p in (tmp_path / "gguf").iterdir() if not p.name.endswith((".gguf", ".lock"))]
    assert leftovers == []


def test_unsupported_architectures_are_named(synthetic_cache, tmp_path):
    gpt2 = ensure_synthetic(parse_model_spec("synthetic:gpt2-tiny"), "float32", synthetic_cache)
    reason = unsupported_reason(gpt2)
    assert reason is not None and "'gpt2'" in reason and "llama" in reason
    with pytest.raises(UnsupportedModel, match="'gpt2'"):
        ensure_gguf(gpt2, "f32", tmp_path)
    with pytest.raises(ValueError, match="q3_k"):
        gguf_path(gpt2, "q3_k", tmp_path)
