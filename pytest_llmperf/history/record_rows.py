"""The rows a write puts in the history, shaped from typed results before the write lock is taken."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pytest_llmperf.history.series_columns import series_columns
from pytest_llmperf.measure.metrics import METRICS, TRIAL_METRICS
from pytest_llmperf.results import RANDOM_PROMPTS, BenchRecord, BudgetCheck, GenerateResult, ServingResult
from pytest_llmperf.series import LoadPoint, SeriesKey

if TYPE_CHECKING:
    from pytest_llmperf.gate.verdict import Verdict


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ResultValues:
    """One metric of one measurement: where it was measured and what, before the run's environment is known."""

    point: LoadPoint
    metric: str
    #: unit, value, the spread of trial metrics and the budget that applied
    columns: dict[str, Any]
    #: the prompt set of a generate other than random token ids (see ``SeriesKey.prompts``)
    prompts: str | None = None
    #: a serving load point's workload (see ``SeriesKey.workload``)
    workload: str | None = None


@dataclass(frozen=True)
class MeasurementRows:
    """One measurements row with the rows that hang off it, before ids are known."""

    row: dict[str, Any]
    trials: list[dict[str, Any]]
    results: list[ResultValues]


def series_key(record: BenchRecord, point: LoadPoint, metric: str, env_fingerprint: str,
               prompts: str | None = None, workload: str | None = None) -> SeriesKey:
    """The series a metric of this record at this load point belongs to, in the run's environment."""
    return SeriesKey(test_id=record.test_id, model_id=record.model.model_id,
                     model_config_hash=record.model.config_hash, backend=record.backend, variant=record.variant,
                     dtype=record.model.dtype, world_size=record.world_size, point=point, metric=metric,
                     env_fingerprint=env_fingerprint, prompts=prompts, workload=workload)


def result_row(record: BenchRecord, result: ResultValues, env_fingerprint: str) -> dict[str, Any]:
    """A results row without its measurement and run ids."""
    key = series_key(record, result.point, result.metric, env_fingerprint, result.prompts, result.workload)
    return {**series_columns(key), **result.columns}


def _budget_for(checks: tuple[BudgetCheck, ...], name: str, batch_size: int | None) -> BudgetCheck | None:
    matching = [c for c in checks if c.metric == name and c.batch_size == batch_size]
    if not matching:
        return None
    # a miss is the one to show when a metric has several budgets
    return next((c for c in matching if c.outcome == "miss"), matching[0])


def _result_values(record: BenchRecord, name: str, value: float, *, generate: GenerateResult | None) -> ResultValues:
    config = generate.config if generate is not None else None
    point = LoadPoint() if config is None else LoadPoint.of(
        batch_size=config.batch_size, prompt_tokens=config.prompt_tokens, new_tokens=config.new_tokens)
    budget = _budget_for(record.budget_checks, name, point.batch_size)
    columns: dict[str, Any] = {
        "unit": METRICS[name].unit,
        "value": value,
        "q1": None, "q3": None, "cv": None, "n": None, "min": None, "max": None,
        "budget_limit": budget.limit if budget else None,
        "budget_bound": budget.bound if budget else None,
        "budget_outcome": budget.outcome if budget else None,
    }
    if generate is not None and name in TRIAL_METRICS and generate.trials:
        s = generate.stats(name)
        columns.update(value=s.median, q1=s.q1, q3=s.q3, cv=s.cv, n=s.n, min=s.min, max=s.max)
    prompts = None if config is None or config.prompts == RANDOM_PROMPTS else config.prompts
    return ResultValues(point=point, metric=name, columns=columns, prompts=prompts)


def _serving_values(record: BenchRecord, name: str, value: float, serving: ServingResult) -> ResultValues:
    config = serving.config
    budget = next((c for c in record.budget_checks if c.metric == name and c.point == config.label), None)
    columns: dict[str, Any] = {
        "unit": METRICS[name].unit, "value": value,
        "q1": None, "q3": None, "cv": None, "n": serving.summary.completed, "min": None, "max": None,
        "budget_limit": budget.limit if budget else None,
        "budget_bound": budget.bound if budget else None,
        "budget_outcome": budget.outcome if budget else None,
    }
    return ResultValues(point=config.point, metric=name, columns=columns, workload=config.workload)


def _serving_rows(record: BenchRecord, serving: ServingResult, devices: str | None) -> MeasurementRows:
    c, client = serving.config, serving.client
    detail = {"requests": c.requests, "warmup_requests": c.warmup_requests, "burstiness": c.burstiness,
              "seed": c.seed, "slo": dict(c.slo), "asked": client.asked, "sent": client.sent,
              "completed": serving.summary.completed, "duration_s": serving.summary.duration_s,
              "achieved_rate_rps": client.achieved_rate_rps, "planned_rate_rps": client.planned_rate_rps,
              "max_send_lag_s": client.max_send_lag_s,
              "max_in_flight": client.max_in_flight, "errors": list(serving.errors)}
    return MeasurementRows(
        row={"kind": "generate", "request_rate": c.request_rate, "concurrency": c.concurrency,
             "workload": c.workload, "outcome": "ok", "devices": devices, "serving": json.dumps(detail)},
        trials=[],
        results=[_serving_values(record, n, v, serving) for n, v in serving.metric_values().items()],
    )


def measurement_rows(record: BenchRecord) -> list[MeasurementRows]:
    """Every row of a record, computed before the write lock is taken."""
    devices = json.dumps(list(record.load.devices)) if record.load is not None else None
    out: list[MeasurementRows] = []
    load_values = record.load_metric_values()
    if record.load is not None or load_values:
        load = record.load
        out.append(MeasurementRows(
            row={
                "kind": "load",
                "outcome": "ok",
                "devices": devices,
                "memory_method": load.memory.method if load else None,
                "page_cache_state": load.page_cache.state if load else None,
                "page_cache_resident_fraction": load.page_cache.resident_fraction if load else None,
                "phases": json.dumps([[n, s] for n, s in load.phases]) if load else None,
                "device_map": json.dumps(dict(load.device_map)) if load and load.device_map else None,
            },
            trials=[],
            results=[_result_values(record, n, v, generate=None) for n, v in load_values.items()],
        ))
    for g in record.generates:
        out.append(MeasurementRows(
            row={
                "kind": "generate",
                "batch_size": g.config.batch_size,
                "prompt_tokens": g.config.prompt_tokens,
                "new_tokens": g.config.new_tokens,
                "streams": g.streams,
                "trials_requested": g.config.trials,
                "warmups": g.config.warmups,
                "outcome": g.outcome,
                "error": g.error,
                "devices": devices,
                "memory_method": g.memory.method if g.memory else None,
            },
            # a column not measured is left out (NULL), not written as None
            trials=[{"idx": i, **{k: v for k, v in asdict(t).items() if v is not None}}
                    for i, t in enumerate(g.trials)],
            results=[_result_values(record, n, v, generate=g) for n, v in g.metric_values().items()],
        ))
    out.extend(_serving_rows(record, s, devices) for s in record.servings)
    return out


def verdict_row(run_id: str, v: Verdict, baseline_kind: str) -> dict[str, Any]:
    e, s = v.evidence, v.subject
    return {
        "run_id": run_id, "series_key": s.digest(), "baseline_kind": baseline_kind,
        "baseline_run_ids": json.dumps(list(v.comparison.baseline_run_ids)), "baseline": v.comparison.baseline,
        "outcome": v.outcome.value, "test_id": s.test_id, "metric": s.metric, "batch_size": s.point.batch_size,
        "subject": json.dumps({"series_key": s.digest(), **s.canonical()}), "method": e.method if e else None,
        "ratio": e.ratio if e else None, "base_value": e.base if e else None, "head_value": e.head if e else None,
        "ci_low": e.ci_low if e else None, "ci_high": e.ci_high if e else None,
        "abs_change": e.abs_change if e else None, "statistic": e.statistic if e else None,
        "p_value": v.p_worse, "p_better": v.p_better, "n_base": e.n_base if e else None,
        "n_head": e.n_head if e else None, "min_effect": v.comparison.min_effect,
        "notes": json.dumps(list(v.notes)), "accepted": v.comparison.accepted, "created_at": now(),
    }
