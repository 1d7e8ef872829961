"""How the results of a group's ranks add up to one result of the deployment (``launch/merge.py``)."""

import pytest

from pytest_llmperf.launch.merge import merge_generates, merge_loads
from pytest_llmperf.results import (
    GenerateConfig,
    GenerateResult,
    LoadResult,
    MemoryPeak,
    PageCache,
    Trial,
)

CONFIG = GenerateConfig(batch_size=4, prompt_tokens=8, new_tokens=10, trials=2, warmups=0)


def _load(load_s: float, weights: int, peak: int, devices=("cpu",), phases=None) -> LoadResult:
    return LoadResult(load_s=load_s, phases=phases or (("read", load_s),), weights_bytes=weights,
                      memory=MemoryPeak(peak, None, "vmhwm"), page_cache=PageCache(1.0), devices=devices)


def _generate(*trials: tuple[float, float], peak: int = 100, energy: float | None = None) -> GenerateResult:
    return GenerateResult(
        config=CONFIG, outcome="ok",
        trials=tuple(Trial(ttft_s=t, e2e_s=e, batch_size=4, new_tokens=10) for t, e in trials),
        memory=MemoryPeak(peak, None, "vmhwm"), energy_j_per_token=energy,
    )


def _oom(message: str = "out of memory on cpu: DefaultCPUAllocator: can't allocate memory") -> GenerateResult:
    return GenerateResult(config=CONFIG, outcome="oom", error=message)


# ---------------------------------------------------------------------------------------------- loads


def test_a_group_is_loaded_when_its_slowest_rank_is_and_weights_add_up_over_shards():
    fast = _load(1.0, weights=300, peak=1000, phases=(("read", 0.7), ("shard", 0.3)))
    slow = _load(2.5, weights=500, peak=800, phases=(("read", 2.0), ("shard", 0.5)))
    merged = merge_loads([fast, slow], ["cpu", "cpu"], ["cpu#0", "cpu#1"])
    assert merged.load_s == 2.5
    assert merged.phases == (("read", 2.0), ("shard", 0.5))  # the slowest rank's phases, which add up to load_s
    assert merged.weights_bytes == 800
    assert merged.memory.peak_bytes == 1000  # memory is per rank: the largest


def test_device_labels_replace_what_each_rank_saw_as_its_local_device():
    # two CPU ranks both see "cpu"; on CUDA each rank sees its one visible device as "cuda:0"
    merged = merge_loads([_load(1, 1, 1), _load(1, 1, 1)], ["cpu", "cpu"], ["cpu#0", "cpu#1"])
    assert merged.devices == ("cpu#0", "cpu#1")
    cuda = merge_loads([_load(1, 1, 1, devices=("cuda:0", "cpu")), _load(1, 1, 1, devices=("cuda:0", "cpu"))],
                       ["cuda:0", "cuda:0"], ["cuda:2", "cuda:3"])
    assert cuda.devices == ("cuda:2", "cpu", "cuda:3")  # other devices (offload) kept, once


# ------------------------------------------------------------------------------------------ generates


def test_each_trial_ends_when_its_last_rank_does():
    rank0 = _generate((0.10, 1.0), (0.30, 1.2), peak=500)
    rank1 = _generate((0.20, 0.9), (0.25, 1.5), peak=700)
    merged = merge_generates([rank0, rank1], independent_streams=False)
    assert merged.outcome == "ok"
    assert [(t.ttft_s, t.e2e_s) for t in merged.trials] == [(0.20, 1.0), (0.30, 1.5)]
    assert merged.memory.peak_bytes == 700
    assert merged.streams == 1 and all(t.streams == 1 for t in merged.trials)


def test_independent_streams_count_every_rank_so_tokens_per_s_doubles():
    ranks = [_generate((0.1, 1.0), (0.1, 1.0)), _generate((0.1, 1.0), (0.1, 1.0))]
    one_stream = merge_generates(ranks, independent_streams=False)
    streams = merge_generates(ranks, independent_streams=True)
    assert streams.streams == 2 and all(t.streams == 2 for t in streams.trials)
    assert [t.tokens for t in streams.trials] == [2 * 4 * 10] * 2
    assert streams.median("tokens_per_s") == pytest.approx(2 * one_stream.median("tokens_per_s"))
    assert one_stream.median("tokens_per_s") == pytest.approx(4 * 10 / 1.0)
    # the time per token of one sequence does not change with the number of streams
    assert streams.median("tpot_ms") == pytest.approx(one_stream.median("tpot_ms"))


def test_energy_per_token_adds_up_for_one_stream_and_averages_over_independent_streams():
    ranks = [_generate((0.1, 1.0), energy=2.0), _generate((0.1, 1.0), energy=4.0)]
    assert merge_generates(ranks, independent_streams=False).energy_j_per_token == pytest.approx(6.0)
    assert merge_generates(ranks, independent_streams=True).energy_j_per_token == pytest.approx(3.0)
    unknown = [_generate((0.1, 1.0), energy=2.0), _generate((0.1, 1.0))]
    assert merge_generates(unknown, independent_streams=False).energy_j_per_token is None


@pytest.mark.parametrize("independent_streams", [False, True])
def test_one_rank_out_of_memory_makes_the_group_out_of_memory(independent_streams):
    message = "out of memory on cpu: DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"
    merged = merge_generates([_generate((0.1, 1.0)), _oom(message)], independent_streams=independent_streams)
    assert merged.outcome == "oom"
    assert merged.error == message
    assert merged.trials == ()
    assert merged.streams == (2 if independent_streams else 1)
    assert merged.metric_values() == {}  # nothing measured is reported for an oom
