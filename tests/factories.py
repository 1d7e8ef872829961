"""Realistic results, environments and series built directly from the dataclasses, for tests of the logic that
consumes them."""

from pytest_llmperf.environment import Environment, GitState, RunContext
from pytest_llmperf.results import (
    BenchRecord,
    GenerateConfig,
    GenerateResult,
    LoadGeneratorReport,
    LoadResult,
    MemoryPeak,
    ModelIdentity,
    PageCache,
    ServingConfig,
    ServingResult,
    Trial,
)
from pytest_llmperf.series import LoadPoint, SeriesKey
from pytest_llmperf.serving.request_metrics import RequestRecord, ServingSummary


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


def make_serving(request_rate: float | None = 4.0, *, ttft_s: float = 0.05, gap_s: float = 0.01,
                 requests: int = 20, output_tokens: int = 8, failed: int = 0, workload: str = "p32o32",
                 concurrency: int | None = None, slo: tuple[tuple[str, float], ...] = ()) -> ServingResult:
    """A serving load point of ``requests`` requests sent 1/rate apart, each streaming one token per chunk
    ``gap_s`` apart after ``ttft_s``; the last ``failed`` of them failed."""
    spacing = 1.0 / (request_rate or 4.0)
    records = [RequestRecord(send_s=i * spacing,
                             chunk_s=tuple(i * spacing + ttft_s + k * gap_s for k in range(output_tokens)),
                             output_tokens=output_tokens, prompt_tokens=32)
               if i < requests - failed else
               RequestRecord(send_s=i * spacing, chunk_s=(), output_tokens=0, prompt_tokens=32, error="HTTP 500: boom")
               for i in range(requests)]
    duration = (requests - 1) * spacing + ttft_s + (output_tokens - 1) * gap_s
    config = ServingConfig(workload=workload, requests=requests, warmup_requests=2,
                           request_rate=None if concurrency is not None else request_rate, concurrency=concurrency,
                           slo=slo)
    return ServingResult(config=config, summary=ServingSummary.of(records, duration, dict(slo) or None),
                         client=LoadGeneratorReport(asked=requests, sent=requests, achieved_rate_rps=request_rate,
                                                    max_send_lag_s=0.001, max_in_flight=3),
                         errors=("HTTP 500: boom",) if failed else ())


def make_server_record(*servings: ServingResult, backend: str = "llama-cpp") -> BenchRecord:
    load = LoadResult(load_s=3.0, phases=(("process start", 1.0), ("weights", 1.5), ("ready", 0.5)),
                      weights_bytes=10**6, memory=MemoryPeak(10**8, None, "vmhwm"), page_cache=PageCache(None),
                      devices=("cpu#0",))
    return BenchRecord(test_id="t.py::test_serve", model=ModelIdentity("synthetic:llama-tiny", "abc", "llama",
                                                                      "float32", 1000),
                       backend=backend, variant="auto", world_size=1, seed=0, load=load, servings=servings)


GPU_ENV = Environment(
    device_kind="cuda", device_model="NVIDIA H100 80GB HBM3", device_count=1, driver="550.54.15",
    cuda="12.4", python="3.11.9", torch="2.4.1", transformers="4.56.0", accelerate="1.0.1", deepspeed=None,
)
CPU_ENV = Environment(
    device_kind="cpu", device_model="AMD EPYC 7763 64-Core Processor", device_count=16, driver=None,
    cuda=None, python="3.11.9", torch="2.4.1", transformers="4.56.0", accelerate="1.0.1", deepspeed=None,
)
QWEN = ModelIdentity(model_id="Qwen/Qwen2.5-0.5B-Instruct", config_hash="3f2a9c41d07be655",
                     model_type="qwen2", dtype="bfloat16", num_parameters=494_032_768)
LLAMA = ModelIdentity(model_id="meta-llama/Llama-3.2-1B", config_hash="b81e04d2aa97c310",
                      model_type="llama", dtype="float16", num_parameters=1_235_814_400)


def run_context(argv: tuple[str, ...] = ("pytest", "tests/perf")) -> RunContext:
    """A CI runner's context: a clean checkout of main."""
    return RunContext(
        host="bench-01", cpu_model="AMD EPYC 7763 64-Core Processor", cpu_count=16,
        platform="Linux-5.15.0-x86_64-with-glibc2.35",
        git=GitState(commit="9f1c2ab4e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3", branch="main", dirty=False),
        project_root="/home/ci/llm-suite", argv=argv, plugin_version="0.1.0", pytest_version="8.3.3",
    )


def series_key(metric: str = "tokens_per_s", test_id: str = "t", *, batch_size: int | None = 1,
               dtype: str = "float32") -> SeriesKey:
    """A series of a one-rank hf test at a batch size."""
    return SeriesKey(test_id=test_id, model_id="m", model_config_hash="cafe", backend="hf", variant="default",
                     dtype=dtype, world_size=1, point=LoadPoint.of(batch_size=batch_size), metric=metric,
                     env_fingerprint="env")

#: the nightly runner of the gate's and the history browser's tests
NIGHTLY_H100 = Environment(device_kind="cuda", device_model="NVIDIA H100 80GB HBM3", device_count=1, driver="550.54",
                           cuda="12.4", python="3.11.9", torch="2.4.0", transformers="4.44.0", accelerate="0.33.0",
                           deepspeed="0.15.1")
LLAMA_TINY = ModelIdentity(model_id="synthetic:llama-tiny", config_hash="d4b03f1efd6651e9", model_type="llama",
                           dtype="bfloat16", num_parameters=205120)
