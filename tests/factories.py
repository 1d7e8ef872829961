"""Realistic results built directly from the dataclasses, for tests of the logic that consumes them."""

from pytest_llmperf.results import (
    BenchRecord,
    GenerateConfig,
    GenerateResult,
    LoadResult,
    MemoryPeak,
    ModelIdentity,
    PageCache,
    Trial,
)


def make_generate(batch: int, e2e_s: float, ttft_s: float = 0.01, outcome: str = "ok") -> GenerateResult:
    config = GenerateConfig(batch_size=batch, prompt_tokens=32, new_tokens=100, trials=3, warmups=1)
    if outcome == "oom":
        return GenerateResult(config=config, outcome="oom", error="out of memory on cpu")
    trials = tuple(Trial(ttft_s=ttft_s, e2e_s=e2e_s * f, batch_size=batch, new_tokens=100) for f in (0.9, 1.0, 1.1))
    return GenerateResult(config=config, outcome="ok", trials=trials,
                          memory=MemoryPeak(peak_bytes=3 * 2**30, reserved_bytes=None, method="vmhwm"))


def make_record(*generates: GenerateResult, load_s: float = 2.0) -> BenchRecord:
    load = LoadResult(load_s=load_s, phases=(("read", load_s * 0.8), ("place", load_s * 0.2)), weights_bytes=10**6,
                      memory=MemoryPeak(10**8, None, "vmhwm"), page_cache=PageCache(1.0), devices=("cpu",))
    return BenchRecord(test_id="t.py::test_x", model=ModelIdentity("synthetic:llama-tiny", "abc", "llama",
                                                                  "float32", 1000),
                       backend="hf", variant="default", world_size=1, seed=0, load=load, generates=generates)
