"""The metric glossary: the one definition of every metric the plugin measures.

Budgets, the store, the terminal summary and the CLI all look metrics up here; nothing else
decides a metric's unit or which direction is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Better(StrEnum):
    HIGHER = "higher"
    LOWER = "lower"


class Sampling(StrEnum):
    """How a metric's noise is sampled, which decides how the regression gate compares it."""

    #: one value per trial: compared by their distributions
    TRIALS = "trials"
    #: one value per process (a load): compared across process rounds
    PROCESS = "process"
    #: the same every time for the same code (bytes, a largest batch): compared against a tolerance
    FIXED = "fixed"


class Scope(StrEnum):
    """How often a metric is measured: once per model load, once per generate configuration, or once per
    serving load point (a request rate or a concurrency, with a workload)."""

    LOAD = "load"
    GENERATE = "generate"
    SERVING = "serving"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    better: Better
    scope: Scope
    definition: str
    sampling: Sampling

    @property
    def bound(self) -> Literal["max", "min"]:
        """The kind of budget this metric takes: an upper bound ("max") or a lower bound ("min")."""
        return "max" if self.better is Better.LOWER else "min"


_ALL: tuple[Metric, ...] = (
    Metric("load_s", "s", Better.LOWER, Scope.LOAD,
           "from the backend's load call to ready-to-generate on every rank (max over ranks)", Sampling.PROCESS),
    Metric("first_generate_s", "s", Better.LOWER, Scope.LOAD,
           "the first generate after load (warm-up, JIT, compile); never mixed into trials", Sampling.PROCESS),
    Metric("weights_bytes", "bytes", Better.LOWER, Scope.LOAD,
           "bytes of the loaded parameters held by all ranks together (tied parameters once per rank; "
           "what tensor parallelism replicates counts on every rank)", Sampling.FIXED),
    Metric("load_peak_mem_bytes", "bytes", Better.LOWER, Scope.LOAD,
           "peak memory while loading (CUDA max allocated; host peak RSS on CPU)", Sampling.FIXED),
    Metric("max_batch", "sequences", Better.HIGHER, Scope.LOAD,
           "largest batch per stream whose generate fits in memory (--llmperf-max-batch search)", Sampling.FIXED),
    Metric("token_agreement", "ratio", Better.HIGHER, Scope.LOAD,
           "quantized variants: top-1 agreement with hf's full-precision greedy tokens under teacher forcing "
           "(fed the reference's prompt and first k new tokens, the next token is compared), over fixed positions",
           Sampling.FIXED),
    Metric("first_divergence_tokens", "tokens", Better.HIGHER, Scope.LOAD,
           "quantized variants: new tokens of free greedy generation before the first that differs from hf's "
           "full-precision tokens (earliest row; the number compared when none differs)", Sampling.FIXED),
    Metric("ttft_ms", "ms", Better.LOWER, Scope.GENERATE,
           "time to first token: from the generate call to the first new token of every row being ready",
           Sampling.TRIALS),
    Metric("tpot_ms", "ms", Better.LOWER, Scope.GENERATE,
           "time per output token after the first, of the same request = (e2e - ttft) / (new_tokens - 1)",
           Sampling.TRIALS),
    Metric("itl_ms", "ms", Better.LOWER, Scope.GENERATE,
           "inter-token latency: the median gap between consecutive new tokens of one request", Sampling.TRIALS),
    Metric("itl_p90_ms", "ms", Better.LOWER, Scope.GENERATE,
           "the 90th percentile of the gaps between consecutive new tokens of one request", Sampling.TRIALS),
    Metric("itl_p99_ms", "ms", Better.LOWER, Scope.GENERATE,
           "the 99th percentile of the gaps between consecutive new tokens of one request", Sampling.TRIALS),
    Metric("e2e_s", "s", Better.LOWER, Scope.GENERATE,
           "one generate of new_tokens tokens, from the call until it returned", Sampling.TRIALS),
    Metric("tokens_per_s", "tokens/s", Better.HIGHER, Scope.GENERATE,
           "generated tokens per second of the deployment = streams * batch * new_tokens / e2e", Sampling.TRIALS),
    Metric("ms_per_token", "ms", Better.LOWER, Scope.GENERATE,
           "the BLOOM study's throughput = e2e / (streams * batch * new_tokens) = 1000 / tokens_per_s",
           Sampling.TRIALS),
    Metric("peak_mem_bytes", "bytes", Better.LOWER, Scope.GENERATE,
           "peak memory during the trials of one configuration (CUDA max allocated; host peak RSS on CPU)",
           Sampling.FIXED),
    Metric("peak_mem_reserved_bytes", "bytes", Better.LOWER, Scope.GENERATE,
           "CUDA only: peak memory reserved by the caching allocator during the trials", Sampling.FIXED),
    Metric("kv_cache_bytes", "bytes", Better.LOWER, Scope.GENERATE,
           "predicted KV cache = 2 * layers * kv_heads * head_dim * (prompt + new) * batch * dtype bytes",
           Sampling.FIXED),
    Metric("decode_bw_util", "ratio", Better.HIGHER, Scope.GENERATE,
           "bytes one decode step must read (weights + KV cache) / tpot / device memory bandwidth", Sampling.PROCESS),
    Metric("energy_j_per_token", "J/token", Better.LOWER, Scope.GENERATE,
           "CUDA only: NVML total-energy counter delta over the trials / tokens generated", Sampling.PROCESS),
)

#: the per-request latencies of serving, by vLLM ``bench serve``'s names, and what each is of one request
SERVING_LATENCIES = {
    "ttft": "time to first token: from the request's send to the arrival of its first streamed token",
    "tpot": "time per output token after the first = (e2el - ttft) / (output tokens - 1)",
    "itl": "inter-token latency: each gap between consecutive streamed chunks, pooled over the requests",
    "e2el": "end-to-end latency: from the request's send to the arrival of its last token",
}
#: the statistics of each over the completed requests of one load point, as vLLM names them
SERVING_STATISTICS = {"mean": "the mean", "median": "the median", "p90": "the 90th percentile",
                      "p99": "the 99th percentile"}


def serving_latency_name(statistic: str, latency: str) -> str:
    """``serving_latency_name("p99", "ttft")`` -> ``"p99_ttft_ms"``."""
    return f"{statistic}_{latency}_ms"


_SERVING = (
    *(Metric(serving_latency_name(stat, latency), "ms", Better.LOWER, Scope.SERVING,
             f"serving: {stat_text} over the requests of a load point of the {text}", Sampling.PROCESS)
      for latency, text in SERVING_LATENCIES.items() for stat, stat_text in SERVING_STATISTICS.items()),
    Metric("request_throughput", "req/s", Better.HIGHER, Scope.SERVING,
           "serving: completed requests / the run's duration (first send to last response)", Sampling.PROCESS),
    Metric("output_throughput", "tokens/s", Better.HIGHER, Scope.SERVING,
           "serving: output tokens of the completed requests (the server's usage count) / the run's duration",
           Sampling.PROCESS),
    Metric("total_token_throughput", "tokens/s", Better.HIGHER, Scope.SERVING,
           "serving: prompt + output tokens of the completed requests / the run's duration", Sampling.PROCESS),
    Metric("goodput", "req/s", Better.HIGHER, Scope.SERVING,
           "serving: completed requests that met every SLO (--llmperf-slo) / the run's duration", Sampling.PROCESS),
    Metric("error_rate", "ratio", Better.LOWER, Scope.SERVING,
           "serving: requests that failed (an HTTP error, a broken stream, fewer tokens than asked) / requests sent",
           Sampling.PROCESS),
    Metric("max_rate_rps", "req/s", Better.HIGHER, Scope.LOAD,
           "serving: the largest request rate whose p99 TTFT and p99 TPOT meet the SLO (--llmperf-max-rate search)",
           Sampling.PROCESS),
)
_ALL = (*_ALL, *_SERVING)

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

#: Metrics computed from every trial; their statistics (median, IQR, CV) come from the trials.
TRIAL_METRICS = tuple(m.name for m in _ALL if m.sampling is Sampling.TRIALS)

#: Trial metrics that are one monotonic function of ``e2e_s`` (a number of tokens over it, or it over them):
#: their statistics are that function of ``e2e_s``'s, so they always agree with each other.
E2E_DERIVED = ("tokens_per_s", "ms_per_token")

#: The metrics the regression gate compares and reports.
COMPARED_METRICS = ("tokens_per_s", "tpot_ms", "ttft_ms", "load_s", "peak_mem_bytes",
                    "median_ttft_ms", "median_tpot_ms", "p99_ttft_ms", "p99_tpot_ms", "output_throughput", "goodput")

#: The primary metrics among them, which can fail a run: one per thing measured (throughput of a decode,
#: prefill latency, load time, memory). ``tpot_ms`` is nearly the same measurement as ``tokens_per_s`` of
#: the same batch, so it is reported only: gating both would spend the run's error rate twice on one effect.
#: A serving load point gates its medians of TTFT and TPOT, one value per run: its p99 is reported only (the
#: tail of one run's requests moves too much between runs to gate on), and its throughput at a fixed request
#: rate is the rate itself while the server keeps up.
GATED_METRICS = ("tokens_per_s", "ttft_ms", "load_s", "peak_mem_bytes", "median_ttft_ms", "median_tpot_ms")


def metric(name: str) -> Metric:
    """Look a metric up by name; the error lists the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(
            f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}"
        ) from None
