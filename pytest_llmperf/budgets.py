"""Budgets: limits on metrics, parsed from the marker, the ini file or the command line, and checked.

A budget is an upper bound for metrics where lower is better (times, memory) and a lower bound for
metrics where higher is better (throughput); the metric glossary decides which. A budget holds for
every batch size unless it names one. The median of the trials is what is checked. A budget on a serving
metric (``"p99_ttft_ms": 500``, ``goodput``) holds at every serving load point of the test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pytest_llmperf.measure.metrics import METRICS, Scope
from pytest_llmperf.results import BenchRecord, BudgetCheck, BudgetOutcome, GenerateResult, ServingResult
from pytest_llmperf.units import format_value, parse_bytes

ALL_BATCHES = "*"


class BudgetError(ValueError):
    """A budget that cannot be understood; the message names the metric, the value and what is allowed."""


@dataclass(frozen=True)
class Budget:
    metric: str
    limit: float
    #: None: every batch size (and the load metrics, which have none)
    batch_size: int | None = None

    @property
    def bound(self) -> Literal["max", "min"]:
        return METRICS[self.metric].bound

    def admits(self, value: float) -> bool:
        return value <= self.limit if self.bound == "max" else value >= self.limit

    def describe(self) -> str:
        sign = "<=" if self.bound == "max" else ">="
        return f"{sign} {format_value(self.metric, self.limit)}"


def _limit(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BudgetError(f"budget for {name} must be a number, got {value!r} ({type(value).__name__})")
    if isinstance(value, str):
        if METRICS[name].unit != "bytes":
            raise BudgetError(f"budget for {name} must be a number in {METRICS[name].unit}, got the string {value!r}")
        try:
            limit = parse_bytes(value)
        except ValueError as e:
            raise BudgetError(f"budget for {name}: {e}") from None
    else:
        limit = float(value)
    if not limit >= 0 or limit == float("inf"):
        raise BudgetError(f"budget for {name} must be a finite number >= 0, got {value!r}")
    return limit


def _batch_key(name: str, key: object) -> int | None:
    if key == ALL_BATCHES:
        return None
    if isinstance(key, bool) or not isinstance(key, int) or key < 1:
        raise BudgetError(
            f"budget for {name}: batch size keys must be positive integers or {ALL_BATCHES!r}, got {key!r}"
        )
    return key


def _metric_name(name: object) -> str:
    if not isinstance(name, str) or name not in METRICS:
        raise BudgetError(f"unknown metric {name!r}; metrics with budgets: {', '.join(METRICS)}")
    return name


def _per_batch_allowed(name: str, value: object) -> None:
    if METRICS[name].scope is Scope.LOAD:
        raise BudgetError(f"{name} is measured once per load, not per batch size: give one number, got {value!r}")
    if METRICS[name].scope is Scope.SERVING:
        raise BudgetError(f"{name} is measured per serving load point, not per batch size: give one number, which "
                          f"holds at every load point of the test, got {value!r}")


def parse_budgets(spec: Mapping[object, object]) -> tuple[Budget, ...]:
    """``{"load_s": 30, "tokens_per_s": {"*": 10, 8: 60}, "peak_mem_bytes": "2GiB"}`` -> budgets."""
    if not isinstance(spec, Mapping):
        raise BudgetError(f"budgets must be a dict of metric name to limit, got {spec!r}")
    budgets: list[Budget] = []
    for raw_name, value in spec.items():
        name = _metric_name(raw_name)
        if isinstance(value, Mapping):
            _per_batch_allowed(name, value)
            if not value:
                raise BudgetError(f"budget for {name} is an empty dict; give a number or {{batch_size: number}}")
            budgets.extend(Budget(name, _limit(name, v), _batch_key(name, k)) for k, v in value.items())
        else:
            budgets.append(Budget(name, _limit(name, value)))
    return tuple(budgets)


_ITEM_RE = re.compile(r"^(?P<metric>[a-z0-9_]+)(?:\[(?P<batch>[1-9][0-9]*)\])?=(?P<value>.+)$")


def parse_budget_text(text: str) -> tuple[Budget, ...]:
    """The ini / command-line form: ``"load_s=30 tokens_per_s=10 tokens_per_s[8]=60 peak_mem_bytes=2GiB"``.

    Items are separated by commas or whitespace; ``[N]`` limits an item to batch size N.
    """
    budgets: list[Budget] = []
    for item in (i for i in re.split(r"[,\s]+", text.strip()) if i):
        m = _ITEM_RE.match(item)
        if not m:
            raise BudgetError(
                f"cannot read budget {item!r}; write METRIC=LIMIT or METRIC[BATCH]=LIMIT, "
                "e.g. 'tokens_per_s=10 tokens_per_s[8]=60 load_s=30'"
            )
        name, raw = _metric_name(m["metric"]), m["value"]
        try:
            value: object = float(raw)
        except ValueError:
            value = raw
        if m["batch"] is not None:
            _per_batch_allowed(name, item)
        budgets.append(Budget(name, _limit(name, value), None if m["batch"] is None else int(m["batch"])))
    return tuple(budgets)


def merge_budgets(*layers: Iterable[Budget]) -> tuple[Budget, ...]:
    """Later layers win per (metric, batch size): pass them lowest precedence first."""
    merged: dict[tuple[str, int | None], Budget] = {}
    for layer in layers:
        for budget in layer:
            merged[(budget.metric, budget.batch_size)] = budget
    return tuple(merged.values())


def _applicable(budgets: tuple[Budget, ...], metric_name: str, batch_size: int) -> Budget | None:
    specific = [b for b in budgets if b.metric == metric_name and b.batch_size == batch_size]
    general = [b for b in budgets if b.metric == metric_name and b.batch_size is None]
    return next(iter(specific or general), None)


def _check_generate(budget: Budget, result: GenerateResult) -> BudgetCheck:
    measured = result.metric_values().get(budget.metric)
    if result.outcome != "ok" or measured is None:
        outcome: BudgetOutcome = "miss" if result.outcome == "oom" else "unmeasured"
        return BudgetCheck(budget.metric, budget.bound, budget.limit, result.batch_size, None, outcome)
    outcome = "pass" if budget.admits(measured) else "miss"
    return BudgetCheck(budget.metric, budget.bound, budget.limit, result.batch_size, measured, outcome)


def check_budgets(budgets: tuple[Budget, ...], record: BenchRecord) -> tuple[BudgetCheck, ...]:
    """Check every budget against what the test measured; a budget nothing measured is "unmeasured"."""
    checks: list[BudgetCheck] = []
    load_values = record.load_metric_values()
    for budget in (b for b in budgets if METRICS[b.metric].scope is Scope.LOAD):
        measured = load_values.get(budget.metric)
        load_outcome: BudgetOutcome = (
            "unmeasured" if measured is None else "pass" if budget.admits(measured) else "miss"
        )
        checks.append(BudgetCheck(budget.metric, budget.bound, budget.limit, None, measured, load_outcome))
    generate_metrics = {b.metric for b in budgets if METRICS[b.metric].scope is Scope.GENERATE}
    checked: set[tuple[str, int | None]] = set()
    for result in record.generates:
        for name in sorted(generate_metrics):
            applicable = _applicable(budgets, name, result.batch_size)
            if applicable is not None:
                checks.append(_check_generate(applicable, result))
                checked.add((name, applicable.batch_size))
    for budget in budgets:
        if METRICS[budget.metric].scope is Scope.GENERATE and (budget.metric, budget.batch_size) not in checked:
            checks.append(BudgetCheck(budget.metric, budget.bound, budget.limit, budget.batch_size, None, "unmeasured"))
    for budget in (b for b in budgets if METRICS[b.metric].scope is Scope.SERVING):
        checks.extend(_check_serving(budget, result) for result in record.servings)
        if not record.servings:
            checks.append(BudgetCheck(budget.metric, budget.bound, budget.limit, None, None, "unmeasured"))
    return tuple(checks)


def _check_serving(budget: Budget, result: ServingResult) -> BudgetCheck:
    measured = result.metric_values().get(budget.metric)
    outcome: BudgetOutcome = "unmeasured" if measured is None else "pass" if budget.admits(measured) else "miss"
    return BudgetCheck(budget.metric, budget.bound, budget.limit, None, measured, outcome, point=result.config.label)


def describe_miss(check: BudgetCheck, record: BenchRecord) -> str:
    """One line per miss: the metric, the measured value, the budget, model, backend and batch size."""
    budget = Budget(check.metric, check.limit, check.batch_size)
    where = f"model {record.model.model_id}, backend {record.backend}"
    if check.batch_size is not None:
        where += f", batch {check.batch_size}"
    if check.point is not None:
        where += f", load point {check.point}"
    if check.outcome == "unmeasured":
        what = "was not measured" if check.batch_size is None else f"was not measured at batch {check.batch_size}"
        return f"{check.metric} {what}; budget {budget.describe()} ({where})"
    if check.measured is None:
        return f"{check.metric}: out of memory; budget {budget.describe()} ({where})"
    return f"{check.metric} = {format_value(check.metric, check.measured)}, budget {budget.describe()} ({where})"
