"""The rank runner's logic, driven by small fake backends (the real ones are in tests/backends)."""

import time

import numpy as np
import pytest
import torch

from pytest_llmperf.measure.rank import GenerationMismatch, RankRunner
from pytest_llmperf.results import GenerateConfig


class FakeBackend:
    id = "fake"

    def __init__(self, *, stop_after: int | None = None, oom_at_batch: int | None = None, alter_prompt: bool = False):
        self.stop_after = stop_after
        self.oom_at_batch = oom_at_batch
        self.alter_prompt = alter_prompt
        self.calls: list[tuple[int, int]] = []
        #: seconds each step takes (step 0 is the prefill)
        self.step_sleeps_s: list[float] = []

    input_device = "cpu"

    def load(self, request, span):
        with span("read"):
            pass
        with span("place"):
            pass

    def generate(self, input_ids, new_tokens, clock=None):
        self.calls.append((input_ids.shape[0], new_tokens))
        if self.oom_at_batch is not None and input_ids.shape[0] >= self.oom_at_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        generated = new_tokens if self.stop_after is None else min(new_tokens, self.stop_after)
        for step in range(generated):
            if self.step_sleeps_s:
                time.sleep(self.step_sleeps_s[step])
            if clock is not None:
                clock.tick()
        new = torch.full((input_ids.shape[0], generated), 7, dtype=torch.long)
        prompt = input_ids + 1 if self.alter_prompt else input_ids
        return torch.cat([prompt, new], dim=1)

    def synchronize(self):
        pass

    def weights_bytes(self):
        return 123

    def devices(self):
        return ("cpu",)

    def device_map(self):
        return None

    def close(self):
        pass


def _ids(batch: int) -> np.ndarray:
    return np.arange(batch * 4, dtype=np.int64).reshape(batch, 4) + 10


def test_warmups_then_trials_each_one_timestamped_generate():
    backend = FakeBackend()
    result = RankRunner(backend, "cpu").generate(
        GenerateConfig(batch_size=2, prompt_tokens=4, new_tokens=5, trials=3, warmups=2), _ids(2))
    assert backend.calls == [(2, 5)] * 5  # no separate prefill-only generate
    assert result.outcome == "ok" and len(result.trials) == 3
    assert all(t.batch_size == 2 and t.new_tokens == 5 and t.e2e_s > 0 for t in result.trials)
    assert result.memory is not None and result.memory.peak_bytes > 0


def test_a_wrong_number_of_new_tokens_is_an_error_not_a_result():
    runner = RankRunner(FakeBackend(stop_after=3), "cpu")  # e.g. stopped at an EOS
    with pytest.raises(GenerationMismatch, match="3 new tokens per sequence instead of 5"):
        runner.generate(GenerateConfig(1, 4, 5, trials=1, warmups=0), _ids(1))


def test_a_changed_prompt_is_an_error():
    runner = RankRunner(FakeBackend(alter_prompt=True), "cpu")
    with pytest.raises(GenerationMismatch, match="do not start with the prompt"):
        runner.first_generate(_ids(1), 5)


def test_out_of_memory_is_an_outcome_and_the_next_configuration_runs():
    runner = RankRunner(FakeBackend(oom_at_batch=8), "cpu")
    big = runner.generate(GenerateConfig(8, 4, 5, trials=2, warmups=1), _ids(8))
    small = runner.generate(GenerateConfig(4, 4, 5, trials=2, warmups=1), _ids(4))
    assert big.outcome == "oom" and big.trials == () and "Tried to allocate 20.00 GiB" in big.error
    assert small.outcome == "ok" and len(small.trials) == 2
    assert runner.first_generate(_ids(8), 5) is None


def test_other_errors_propagate():
    class Broken(FakeBackend):
        def generate(self, input_ids, new_tokens, clock=None):
            raise RuntimeError("index out of range in self")

    with pytest.raises(RuntimeError, match="index out of range"):
        RankRunner(Broken(), "cpu").generate(GenerateConfig(1, 4, 5, trials=1, warmups=0), _ids(1))


def test_load_phases_are_recorded_in_order(tmp_path):
    from pytest_llmperf.backends.base import LoadRequest

    load = RankRunner(FakeBackend(), "cpu").load(LoadRequest(tmp_path, "float32", "cpu"))
    assert [name for name, _ in load.phases] == ["read", "place"]
    assert load.weights_bytes == 123 and load.devices == ("cpu",)
    assert load.page_cache.state == "unknown"  # no weight files in the directory


def test_out_of_memory_stops_a_sampling_memory_meter(monkeypatch):
    import threading

    from pytest_llmperf.measure import memory

    monkeypatch.setattr(memory, "_reset_vmhwm", lambda: False)  # as where clear_refs is not allowed
    runner = RankRunner(FakeBackend(oom_at_batch=8), "cpu")
    assert runner.generate(GenerateConfig(8, 4, 5, trials=2, warmups=0), _ids(8)).outcome == "oom"
    assert not [t for t in threading.enumerate() if t.name == "llmperf-rss-sampler"]
    assert runner.generate(GenerateConfig(2, 4, 5, trials=2, warmups=0), _ids(2)).memory.method == "sampled"


def test_ttft_itl_and_tpot_come_from_the_timestamps_of_one_request():
    backend = FakeBackend()
    backend.step_sleeps_s = [0.30, 0.02, 0.02, 0.02, 0.12]  # a slow prefill, one slow decode step
    trial = RankRunner(backend, "cpu").generate(GenerateConfig(1, 4, 5, trials=1, warmups=0), _ids(1)).trials[0]
    assert 0.30 <= trial.ttft_s < 0.30 + 0.25
    assert trial.e2e_s >= 0.48 and trial.ttft_s < trial.e2e_s
    tpot_ms = trial.value("tpot_ms")
    assert tpot_ms is not None and tpot_ms == pytest.approx((trial.e2e_s - trial.ttft_s) / 4 * 1000)
    assert tpot_ms >= 0.18 / 4 * 1000  # never negative: TTFT and the end are the same request's
    # three gaps of 20 ms and one of 120 ms: the median is a 20 ms gap, the p99 the 120 ms one
    assert 0.02 <= trial.itl_p50_s < trial.itl_p99_s and trial.itl_p99_s >= 0.11


def test_a_backend_that_does_not_report_its_tokens_is_named():
    class Silent(FakeBackend):
        def generate(self, input_ids, new_tokens, clock=None):
            return super().generate(input_ids, new_tokens)  # never ticks the clock

    with pytest.raises(AssertionError, match=r"backend fake reported 0 token timestamps for a generate of 5"):
        RankRunner(Silent(), "cpu").generate(GenerateConfig(1, 4, 5, trials=1, warmups=0), _ids(1))
