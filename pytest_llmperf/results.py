"""Typed, immutable results of one performance test: the load, each generate configuration, budgets.

Everything here is plain data that round-trips through JSON (``to_dict`` / ``from_dict``), because
results travel from pytest-xdist workers to the controller inside test reports and into the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pytest_llmperf.gate.spec import GateSpec
from pytest_llmperf.measure.metrics import E2E_DERIVED, TRIAL_METRICS, metric
from pytest_llmperf.measure.stats import Stats
from pytest_llmperf.measure.token_clock import TokenTimeline
from pytest_llmperf.series import LoadPoint
from pytest_llmperf.serving.request_metrics import Distribution, ServingSummary

Outcome = Literal["ok", "oom"]
BudgetOutcome = Literal["pass", "miss", "unmeasured"]
CorrectnessOutcome = Literal["match", "mismatch"]


@dataclass(frozen=True)
class MemoryPeak:
    """Peak memory of one measured span, per rank."""

    #: CUDA max allocated bytes, or the host's peak resident set size on CPU
    peak_bytes: int
    #: CUDA max reserved bytes (None on CPU)
    reserved_bytes: int | None
    #: how it was measured: "cuda" (allocator counters), "vmhwm" (kernel high-water mark, reset
    #: before the span) or "sampled" (RSS polled every few milliseconds)
    method: str


@dataclass(frozen=True)
class Trial:
    """One trial: one generate, its tokens timestamped as they were produced (``TokenTimeline``).

    TTFT, the inter-token latencies and TPOT all come from this one request. Trials recorded before
    tokens were timestamped have no ITL percentiles (None)."""

    ttft_s: float
    e2e_s: float
    batch_size: int
    new_tokens: int
    streams: int = 1
    #: percentiles of this request's inter-token latencies
    itl_p50_s: float | None = None
    itl_p90_s: float | None = None
    itl_p99_s: float | None = None

    @classmethod
    def from_timeline(cls, timeline: TokenTimeline, *, batch_size: int, streams: int = 1) -> Trial:
        import numpy as np  # here, not at import: the plugin module loads in every pytest session

        itl = timeline.itl_s
        p50 = p90 = p99 = None
        if itl:
            p50, p90, p99 = (float(v) for v in np.percentile(itl, [50, 90, 99]))
        return cls(ttft_s=timeline.ttft_s, e2e_s=timeline.end_s, batch_size=batch_size,
                   new_tokens=len(timeline.token_s), streams=streams, itl_p50_s=p50, itl_p90_s=p90, itl_p99_s=p99)

    @property
    def tokens(self) -> int:
        return self.streams * self.batch_size * self.new_tokens

    def value(self, name: str) -> float | None:
        """This trial's value of a trial metric (see ``TRIAL_METRICS``); None where it was not measured."""
        if name == "ttft_ms":
            return self.ttft_s * 1000.0
        if name == "tpot_ms":
            return None if self.new_tokens < 2 else (self.e2e_s - self.ttft_s) / (self.new_tokens - 1) * 1000.0
        if name in ("itl_ms", "itl_p90_ms", "itl_p99_ms"):
            seconds = {"itl_ms": self.itl_p50_s, "itl_p90_ms": self.itl_p90_s, "itl_p99_ms": self.itl_p99_s}[name]
            return None if seconds is None else seconds * 1000.0
        if name == "e2e_s":
            return self.e2e_s
        if name == "tokens_per_s":
            return self.tokens / self.e2e_s
        if name == "ms_per_token":
            return self.e2e_s * 1000.0 / self.tokens
        raise KeyError(f"{name!r} is not a per-trial metric; per-trial metrics: {', '.join(TRIAL_METRICS)}")


#: the default prompt set: seeded random token ids (``pytest_llmperf.prompts``)
RANDOM_PROMPTS = "random"


@dataclass(frozen=True)
class GenerateConfig:
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    trials: int
    warmups: int
    #: "random" (seeded token ids) or "text" (the shipped prompt set through the model's tokenizer)
    prompts: str = RANDOM_PROMPTS


@dataclass(frozen=True)
class GenerateResult:
    """Every trial of one generate configuration, and what was measured around them."""

    config: GenerateConfig
    outcome: Outcome
    trials: tuple[Trial, ...] = ()
    streams: int = 1
    memory: MemoryPeak | None = None
    #: predicted from the model config: 2 * layers * kv_heads * head_dim * seq * batch * dtype bytes
    kv_cache_bytes: int | None = None
    decode_bw_util: float | None = None
    energy_j_per_token: float | None = None
    #: the allocator's message when ``outcome == "oom"``
    error: str | None = None

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    def stats(self, name: str) -> Stats:
        """The statistics of a trial metric over the trials. A throughput is one function of ``e2e_s``
        (``tokens / e2e_s``), so its statistics are that function of ``e2e_s``'s: the median of
        ``ms_per_token`` is exactly ``1000 / tokens_per_s``'s, whatever the number of trials."""
        per_trial = [t.value(name) for t in self.trials]
        if name in E2E_DERIVED and self.trials and len({t.tokens for t in self.trials}) == 1:
            tokens = self.trials[0].tokens
            to = (lambda e2e: tokens / e2e) if name == "tokens_per_s" else (lambda e2e: e2e * 1000.0 / tokens)
            return Stats.of([t.e2e_s for t in self.trials]).mapped(to, [v for v in per_trial if v is not None])
        return Stats.of([v for v in per_trial if v is not None])

    def measured_trial_metrics(self) -> tuple[str, ...]:
        """The trial metrics every trial has a value of."""
        return tuple(name for name in TRIAL_METRICS
                     if self.trials and all(t.value(name) is not None for t in self.trials))

    def metric_values(self) -> dict[str, float]:
        """The median of every trial metric, plus every single-valued metric measured."""
        values: dict[str, float] = {}
        values.update({name: self.stats(name).median for name in self.measured_trial_metrics()})
        if self.memory is not None:
            values["peak_mem_bytes"] = float(self.memory.peak_bytes)
            if self.memory.reserved_bytes is not None:
                values["peak_mem_reserved_bytes"] = float(self.memory.reserved_bytes)
        for name in ("kv_cache_bytes", "decode_bw_util", "energy_j_per_token"):
            if getattr(self, name) is not None:
                values[name] = float(getattr(self, name))
        return values

    def median(self, name: str) -> float:
        """The median (or the single value) of a metric; KeyError if it was not measured."""
        values = self.metric_values()
        if name not in values:
            metric(name)  # unknown names get the list of known ones
            raise KeyError(f"{name} was not measured for batch size {self.batch_size} (outcome {self.outcome})")
        return values[name]


@dataclass(frozen=True)
class ServingConfig:
    """One serving load point: the requests (a workload), and how they arrive (a rate or a concurrency)."""

    #: ``Workload.label``: "p32o32", "sharegpt", ...
    workload: str
    requests: int
    #: requests sent one at a time before the measured ones, excluded from every metric
    warmup_requests: int
    #: open loop: requests per second on average (None for a closed loop)
    request_rate: float | None = None
    #: closed loop: requests in flight at all times (None for an open loop)
    concurrency: int | None = None
    #: the gamma shape of an open loop's gaps (1: Poisson)
    burstiness: float = 1.0
    seed: int = 0
    #: the SLOs goodput counted against, (metric, milliseconds)
    slo: tuple[tuple[str, float], ...] = ()

    @property
    def point(self) -> LoadPoint:
        return LoadPoint.of(request_rate=self.request_rate, concurrency=self.concurrency)

    @property
    def label(self) -> str:
        """"request_rate=4 p32o32": how reports and budget messages name the load point."""
        return f"{self.point.label} {self.workload}"


@dataclass(frozen=True)
class LoadGeneratorReport:
    """What the load generator did against what it was asked: its own accuracy at this load point."""

    asked: int
    sent: int
    #: requests per second actually sent (None for fewer than two sends)
    achieved_rate_rps: float | None
    #: the worst lateness of a send against its schedule (0 for a closed loop)
    max_send_lag_s: float
    max_in_flight: int
    #: the rate of the schedule itself, (requests - 1) / its span: a seeded Poisson schedule of a few dozen
    #: requests is itself some way off the asked rate, and the sends are to be judged against it (None for a
    #: closed loop)
    planned_rate_rps: float | None = None


@dataclass(frozen=True)
class ServingResult:
    """The measured requests of one serving load point, summarized as vLLM's ``bench serve`` does."""

    config: ServingConfig
    summary: ServingSummary
    client: LoadGeneratorReport
    #: the distinct errors of failed requests (at most a few), for the report
    errors: tuple[str, ...] = ()

    def metric_values(self) -> dict[str, float]:
        """Every serving metric this load point measured (a latency nothing completed is left out)."""
        from pytest_llmperf.measure.metrics import SERVING_LATENCIES, SERVING_STATISTICS, serving_latency_name

        s = self.summary
        values: dict[str, float] = {}
        for latency in SERVING_LATENCIES:
            distribution: Distribution = getattr(s, f"{latency}_ms")
            for statistic in SERVING_STATISTICS:
                value = getattr(distribution, statistic)
                if value is not None:
                    values[serving_latency_name(statistic, latency)] = value
        values.update(request_throughput=s.request_throughput, output_throughput=s.output_throughput,
                      total_token_throughput=s.total_token_throughput, error_rate=s.error_rate)
        if s.goodput is not None:
            values["goodput"] = s.goodput
        return values


@dataclass(frozen=True)
class PageCache:
    """How much of the checkpoint was in the OS page cache just before loading."""

    resident_fraction: float | None

    @property
    def state(self) -> str:
        f = self.resident_fraction
        if f is None:
            return "unknown"
        return "warm" if f >= 0.9 else "cold" if f <= 0.1 else "partial"


@dataclass(frozen=True)
class LoadResult:
    load_s: float
    #: (phase name, seconds) in the order they ran; they add up to ``load_s``
    phases: tuple[tuple[str, float], ...]
    weights_bytes: int
    memory: MemoryPeak
    page_cache: PageCache
    #: devices the model was placed on, e.g. ("cpu#0",) or ("cuda:0", "cuda:1"), "disk" when offloaded
    devices: tuple[str, ...]
    #: (module, device) pairs where the backend placed modules by a map (accelerate)
    device_map: tuple[tuple[str, str], ...] | None = None

    def metric_values(self) -> dict[str, float]:
        return {
            "load_s": self.load_s,
            "weights_bytes": float(self.weights_bytes),
            "load_peak_mem_bytes": float(self.memory.peak_bytes),
        }


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a model across runs and machines (never a local path)."""

    model_id: str
    config_hash: str
    model_type: str
    dtype: str
    num_parameters: int


@dataclass(frozen=True)
class BudgetCheck:
    metric: str
    bound: Literal["max", "min"]
    limit: float
    batch_size: int | None
    measured: float | None
    outcome: BudgetOutcome
    #: the serving load point checked (``ServingConfig.label``); None for load and generate metrics
    point: str | None = None


@dataclass(frozen=True)
class CorrectnessCheck:
    """Greedy tokens of this backend compared with the reference backend's, on the same model and prompts."""

    reference: str
    batch_size: int
    new_tokens: int
    #: new tokens compared, over every row and every rank that generated them
    compared_tokens: int
    matched_tokens: int
    #: distinct token ids among the reference's new tokens (few: the comparison proves little)
    distinct_reference_tokens: int
    #: (rank, row, position among the new tokens) of the first difference
    first_mismatch: tuple[int, int, int] | None
    #: True where the tokens must match exactly (float32 on CPU); elsewhere a prefix must
    exact: bool
    outcome: CorrectnessOutcome
    detail: str


@dataclass(frozen=True)
class FidelityCheck:
    """How closely a backend that changes the arithmetic on purpose (quantization) follows the reference:
    measured, not required (a ``token_agreement`` budget sets what is enough)."""

    reference: str
    #: rows of the reference's prompts
    batch_size: int
    #: teacher-forced positions per row: fed the prompt and the reference's first k new tokens, k < positions
    positions: int
    #: teacher-forced predictions compared, over every row and every rank that answered
    compared_tokens: int
    agreed_tokens: int
    #: new tokens of free greedy generation compared per row
    new_tokens: int
    #: per rank and row (rank-major): new tokens before the first that differs (``new_tokens`` when none does)
    first_divergence: tuple[int, ...]
    distinct_reference_tokens: int
    detail: str

    @property
    def token_agreement(self) -> float:
        return self.agreed_tokens / self.compared_tokens if self.compared_tokens else 0.0

    @property
    def first_divergence_tokens(self) -> int:
        return min(self.first_divergence, default=self.new_tokens)

    def metric_values(self) -> dict[str, float]:
        return {"token_agreement": self.token_agreement,
                "first_divergence_tokens": float(self.first_divergence_tokens)}


@dataclass(frozen=True)
class BenchRecord:
    """Everything one performance test measured: the unit the store writes in one transaction."""

    test_id: str
    model: ModelIdentity
    backend: str
    variant: str
    world_size: int
    seed: int
    load: LoadResult | None = None
    first_generate_s: float | None = None
    generates: tuple[GenerateResult, ...] = ()
    budget_checks: tuple[BudgetCheck, ...] = field(default=())
    correctness: CorrectnessCheck | None = None
    #: agreement with the reference, for backends that do not reproduce it (quantized variants)
    fidelity: FidelityCheck | None = None
    #: the largest batch that fitted, when searched (``--llmperf-max-batch``)
    max_batch: int | None = None
    #: the test's regression-gate settings
    gate: GateSpec = field(default_factory=GateSpec)
    #: serving load points measured against a server (the ``llm_server`` fixture)
    servings: tuple[ServingResult, ...] = ()
    #: the largest request rate that met the SLO, when searched (``--llmperf-max-rate``)
    max_rate_rps: float | None = None

    def load_metric_values(self) -> dict[str, float]:
        values = self.load.metric_values() if self.load else {}
        if self.first_generate_s is not None:
            values["first_generate_s"] = self.first_generate_s
        if self.max_batch is not None:
            values["max_batch"] = float(self.max_batch)
        if self.max_rate_rps is not None:
            values["max_rate_rps"] = self.max_rate_rps
        if self.fidelity is not None:
            values.update(self.fidelity.metric_values())
        return values

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchRecord:
        load = d.get("load")
        return cls(
            test_id=d["test_id"],
            model=ModelIdentity(**d["model"]),
            backend=d["backend"],
            variant=d["variant"],
            world_size=d["world_size"],
            seed=d["seed"],
            load=None if load is None else LoadResult(
                load_s=load["load_s"],
                phases=tuple((str(n), float(s)) for n, s in load["phases"]),
                weights_bytes=load["weights_bytes"],
                memory=MemoryPeak(**load["memory"]),
                page_cache=PageCache(**load["page_cache"]),
                devices=tuple(load["devices"]),
                device_map=None if load.get("device_map") is None
                else tuple((str(m), str(d)) for m, d in load["device_map"]),
            ),
            first_generate_s=d.get("first_generate_s"),
            generates=tuple(_generate_from_dict(g) for g in d.get("generates", ())),
            budget_checks=tuple(BudgetCheck(**b) for b in d.get("budget_checks", ())),
            correctness=_correctness_from_dict(d.get("correctness")),
            fidelity=_fidelity_from_dict(d.get("fidelity")),
            max_batch=d.get("max_batch"),
            gate=GateSpec.from_dict(d["gate"]) if d.get("gate") else GateSpec(),
            servings=tuple(_serving_from_dict(s) for s in d.get("servings", ())),
            max_rate_rps=d.get("max_rate_rps"),
        )


def _serving_from_dict(s: dict[str, Any]) -> ServingResult:
    c, summary = s["config"], s["summary"]
    latencies = {name: Distribution(**summary[name]) for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")}
    return ServingResult(
        config=ServingConfig(**{**c, "slo": tuple((str(n), float(v)) for n, v in c.get("slo", ()))}),
        summary=ServingSummary(**{**summary, **latencies}),
        client=LoadGeneratorReport(**s["client"]),
        errors=tuple(s.get("errors", ())),
    )


def _correctness_from_dict(c: dict[str, Any] | None) -> CorrectnessCheck | None:
    if c is None:
        return None
    mismatch = c.get("first_mismatch")
    return CorrectnessCheck(**{**c, "first_mismatch": None if mismatch is None else tuple(mismatch)})


def _fidelity_from_dict(f: dict[str, Any] | None) -> FidelityCheck | None:
    if f is None:
        return None
    return FidelityCheck(**{**f, "first_divergence": tuple(int(n) for n in f["first_divergence"])})


def _generate_from_dict(g: dict[str, Any]) -> GenerateResult:
    memory = g.get("memory")
    return GenerateResult(
        config=GenerateConfig(**g["config"]),
        outcome=g["outcome"],
        trials=tuple(Trial(**t) for t in g.get("trials", ())),
        streams=g.get("streams", 1),
        memory=None if memory is None else MemoryPeak(**memory),
        kv_cache_bytes=g.get("kv_cache_bytes"),
        decode_bw_util=g.get("decode_bw_util"),
        energy_j_per_token=g.get("energy_j_per_token"),
        error=g.get("error"),
    )
