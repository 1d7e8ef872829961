import time
from pathlib import Path

import pytest
from rich.console import Console

from pytest_llmperf.models import plan as plan_module
from pytest_llmperf.models.plan import (
    ModelPlan,
    capacity_problem,
    kv_cache_bytes,
    plan_model,
    weights_bytes,
)
from pytest_llmperf.models.shapes import shape_config
from pytest_llmperf.report.plan_table import format_plan

GB = 10**9


def test_bloom_176b_weights_in_bf16():
    assert weights_bytes(shape_config("bloom-176b"), "bf16") == 2 * 176_247_271_424  # ~352 GB


def test_llama_1b_weights_in_bf16():
    assert weights_bytes(shape_config("llama-1b"), "bfloat16") == 2 * 1_100_048_384  # ~2.2 GB


def test_weights_scale_with_dtype():
    config = shape_config("gpt2")
    assert weights_bytes(config, "float32") == 2 * weights_bytes(config, "float16")


def test_tied_embeddings_count_once():
    tied = shape_config("gpt2")
    untied = shape_config("gpt2")
    untied.tie_word_embeddings = False
    embedding = 50257 * 768 * 4
    assert weights_bytes(untied, "fp32") - weights_bytes(tied, "fp32") == embedding


def test_planning_a_huge_model_is_fast():
    config = shape_config("bloom-176b")
    weights_bytes(config, "bf16")  # the first call imports the model's module
    start = time.perf_counter()
    weights_bytes(config, "bf16")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("shape", "layers", "kv_heads", "head_dim"),
    [
        ("llama-2-70b", 80, 8, 128),  # grouped-query attention
        ("llama-1b", 22, 4, 64),
        ("llama-2-7b", 32, 32, 128),
        ("bloom-176b", 70, 112, 128),  # n_layer / n_head
        ("gpt2", 12, 12, 64),  # n_layer / n_head / n_embd
    ],
)
def test_kv_cache_formula(shape, layers, kv_heads, head_dim):
    config = shape_config(shape)
    assert kv_cache_bytes(config, 3, 100, "bf16") == 2 * layers * kv_heads * head_dim * 100 * 3 * 2


def test_kv_cache_uses_explicit_head_dim_and_text_config():
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=32, num_hidden_layers=3)
    assert kv_cache_bytes(config, 1, 10, "fp32") == 2 * 3 * 2 * 32 * 10 * 4

    class Composite:  # e.g. a vision-language config whose text part holds the decoder
        def get_text_config(self):
            return config

    assert kv_cache_bytes(Composite(), 1, 10, "fp32") == kv_cache_bytes(config, 1, 10, "fp32")


def test_plan_rows_per_world_size_and_batch_size():
    config = shape_config("llama-2-7b")
    plan = plan_model(config, "bf16", batch_sizes=[1, 8], world_sizes=[1, 4], prompt_tokens=512, new_tokens=128)
    assert isinstance(plan, ModelPlan)
    assert (plan.model_type, plan.dtype, plan.num_parameters) == ("llama", "bfloat16", 6_738_415_616)
    assert [(r.world_size, r.batch_size) for r in plan.rows] == [(1, 1), (1, 8), (4, 1), (4, 8)]
    kv_8 = kv_cache_bytes(config, 8, 640, "bf16")
    row = plan.rows[3]
    assert row.weights_bytes == plan.weights_bytes // 4
    assert row.kv_cache_bytes == kv_8 // 4
    assert row.total_bytes == row.weights_bytes + row.kv_cache_bytes
    assert plan.rows[1].kv_cache_bytes == 8 * plan.rows[0].kv_cache_bytes


def test_plan_refuses_bad_world_size_and_auto_dtype():
    config = shape_config("gpt2-tiny")
    with pytest.raises(ValueError, match="world size"):
        plan_model(config, "fp32", [1], [0], 8, 8)
    with pytest.raises(ValueError, match="auto"):
        plan_model(config, "auto", [1], [1], 8, 8)


def test_format_plan_shows_gigabytes():
    plan = plan_model(shape_config("bloom-176b"), "bf16", [1], [1, 8], 128, 128, name="synthetic:bloom-176b")
    console = Console(width=200, record=True)
    console.print(format_plan(plan))
    text = console.export_text()
    assert "synthetic:bloom-176b" in text and "bfloat16" in text and "176.25 B parameters" in text
    assert "352.49" in text  # weights on one rank
    assert "44.06" in text  # weights on each of 8 ranks
    assert "world size" in text and "KV cache GB" in text


class FakeMemory:
    def __init__(self, available):
        self.available = available


@pytest.fixture
def machine(monkeypatch):
    """A machine with 100 GB free disk and 50 GB available RAM."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: FakeMemory(50 * GB))
    monkeypatch.setattr(plan_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 100 * GB})())


def test_capacity_fits(machine, tmp_path):
    assert capacity_problem(40 * GB, disk_dir=tmp_path, device_kind="cpu", device_memory_bytes=None) is None


def test_capacity_ram_short_on_cpu(machine, tmp_path):
    reason = capacity_problem(46 * GB, disk_dir=tmp_path, device_kind="cpu", device_memory_bytes=None,
                              model="synthetic:llama-2-70b")
    assert reason is not None
    assert "46.00 GB" in reason and "50.00 GB of available host RAM" in reason
    assert "disk" not in reason
    assert "see `llmperf plan synthetic:llama-2-70b`" in reason


def test_capacity_disk_short(machine, tmp_path):
    reason = capacity_problem(95 * GB, disk_dir=tmp_path / "not" / "yet", device_kind="cpu", device_memory_bytes=None)
    assert reason is not None and f"100.00 GB of free disk at {tmp_path / 'not' / 'yet'}" in reason
    assert "llmperf plan <model>" in reason


def test_capacity_device_memory_on_cuda(machine, tmp_path):
    reason = capacity_problem(30 * GB, disk_dir=None, device_kind="cuda", device_memory_bytes=32 * GB)
    assert reason is not None and "32.00 GB of device memory" in reason
    assert "host RAM" not in reason
    assert capacity_problem(28 * GB, disk_dir=None, device_kind="cuda", device_memory_bytes=32 * GB) is None


def test_capacity_already_built_needs_no_disk_and_no_host_ram_on_cuda(machine):
    # 60 GB would not fit in RAM or on disk, but it is built already and loads onto the GPU
    assert capacity_problem(60 * GB, disk_dir=None, device_kind="cuda", device_memory_bytes=80 * GB) is None
    # building it (disk_dir given) happens on the host
    assert "host RAM" in capacity_problem(60 * GB, disk_dir=Path("/"), device_kind="cuda", device_memory_bytes=80 * GB)


def test_capacity_real_machine_cannot_hold_bloom_176b(tmp_path):
    weights = weights_bytes(shape_config("bloom-176b"), "bf16")
    reason = capacity_problem(weights, disk_dir=tmp_path, device_kind="cuda", device_memory_bytes=80 * GB)
    assert reason is not None and "352.49 GB" in reason
