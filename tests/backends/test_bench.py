"""Bench, the object a test body drives, on a real synthetic model."""

from pathlib import Path

import pytest

from pytest_llmperf.bench import Bench
from pytest_llmperf.case import cases_from_marker
from pytest_llmperf.models.plan import kv_cache_bytes
from pytest_llmperf.settings import Settings


@pytest.fixture
def bench(synthetic_cache, cpu_pool):
    settings = Settings.from_sources(
        enabled=True, cli={"model_cache": str(synthetic_cache)},
        ini={"trials": "2", "warmups": "0", "new_tokens": "5", "prompt_tokens": "8", "batch_sizes": "1,3"},
        rootdir=Path("/unused"))
    (case,) = cases_from_marker((), {"model": "synthetic:llama-tiny", "backend": "hf"}, settings)
    with cpu_pool.lease(1, timeout_s=1, owner="t::x") as lease:
        bench = Bench.open(test_id="t::x", case=case, settings=settings, lease=lease)
        yield bench
        bench.close()


def test_sweep_measures_each_batch_size_with_predicted_kv_cache(bench):
    results = bench.sweep()
    assert [r.batch_size for r in results] == [1, 3]
    for r in results:
        assert r.kv_cache_bytes == kv_cache_bytes(bench.model.config, r.batch_size, 8 + 5, "float32")
        # llama-tiny: 2 layers * 2 kv heads * head dim 16 * 4 bytes * 2 (K and V) per token
        assert r.kv_cache_bytes == 2 * 2 * 2 * 16 * 4 * 13 * r.batch_size
        assert r.decode_bw_util is None  # no known bandwidth for a CPU
    assert bench.first_generate_s is not None and bench.first_generate_s > 0


def test_record_holds_everything_measured(bench):
    bench.generate(batch_size=2, trials=1)
    record = bench.record()
    assert record.model.model_id == "synthetic:llama-tiny" and record.model.dtype == "float32"
    assert record.backend == "hf" and record.world_size == 1 and record.seed == 0
    assert [len(g.trials) for g in record.generates] == [1]
    assert set(record.load_metric_values()) == {"load_s", "first_generate_s", "weights_bytes", "load_peak_mem_bytes"}


def test_generate_arguments_are_checked(bench):
    from pytest_llmperf.bench import GenerateArgumentError

    with pytest.raises(GenerateArgumentError, match=r"llm\.generate\(batch_size=2\.5\): expected an int"):
        bench.generate(batch_size=2.5)
    with pytest.raises(GenerateArgumentError, match=r"llm\.generate\(new_tokens=1\): .*at least 2 new tokens"):
        bench.generate(batch_size=1, new_tokens=1)
