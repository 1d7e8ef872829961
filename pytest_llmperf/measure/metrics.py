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
    """How often a metric is measured: once per model load, or once per generate configuration."""

    LOAD = "load"
    GENERATE = "generate"


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


_ALL = (
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

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

#: Metrics computed from every trial; their statistics (median, IQR, CV) come from the trials.
TRIAL_METRICS = tuple(m.name for m in _ALL if m.sampling is Sampling.TRIALS)

#: Trial metrics that are one monotonic function of ``e2e_s`` (a number of tokens over it, or it over them):
#: their statistics are that function of ``e2e_s``'s, so they always agree with each other.
E2E_DERIVED = ("tokens_per_s", "ms_per_token")

#: The metrics the regression gate compares and reports.
COMPARED_METRICS = ("tokens_per_s", "tpot_ms", "ttft_ms", "load_s", "peak_mem_bytes")

#: The primary metrics among them, which can fail a run: one per thing measured (throughput of a decode,
#: prefill latency, load time, memory). ``tpot_ms`` is nearly the same measurement as ``tokens_per_s`` of
#: the same batch, so it is reported only: gating both would spend the run's error rate twice on one effect.
GATED_METRICS = ("tokens_per_s", "ttft_ms", "load_s", "peak_mem_bytes")


def metric(name: str) -> Metric:
    """Look a metric up by name; the error lists the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(
            f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}"
        ) from None
