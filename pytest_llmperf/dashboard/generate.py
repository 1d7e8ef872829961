"""A generated history for the dashboard's scale benchmark and browser tests: many runs, written in bulk.

Runs, tests, measurements and results go into a history file in bulk (``history.bulk``: one transaction,
no trials): the dashboard reads results only. Each series is a level with noise, and
optionally a step at a given run, so that what the dashboard should find is known.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from pytest_llmperf.environment import Environment
from pytest_llmperf.history.bulk import BulkMeasurement, BulkResult, BulkRun, BulkTest, write_results_only
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.metrics import METRICS
from pytest_llmperf.results import ModelIdentity
from pytest_llmperf.series import LoadPoint

GENERATE_METRICS = ("tokens_per_s", "tpot_ms", "ttft_ms", "peak_mem_bytes")
LEVELS = {"tokens_per_s": 900.0, "tpot_ms": 8.0, "ttft_ms": 40.0, "peak_mem_bytes": 3.2e9, "load_s": 12.0}
ENV = Environment(device_kind="cuda", device_model="NVIDIA H100 80GB HBM3", device_count=1, driver="550.54.15",
                  cuda="12.4", python="3.11.9", torch="2.4.0", transformers="4.44.2", accelerate="0.33.0",
                  deepspeed="0.15.1")


@dataclass(frozen=True)
class GeneratedTest:
    test_id: str
    backend: str
    batch_sizes: tuple[int, ...]
    #: (run index, relative step of throughput) applied from that run on; None: no step
    step: tuple[int, float] | None = None
    #: a lower bound on tokens_per_s at every batch size, as a fraction of the level (a budget line)
    budget_fraction: float | None = None

    def series_count(self) -> int:
        return len(self.batch_sizes) * len(GENERATE_METRICS) + 1  # + load_s


def _levels(rng: np.random.Generator, runs: int, base: float, noise: float, step: tuple[int, float] | None,
            better_higher: bool) -> np.ndarray:
    values = base * (1 + rng.normal(0, noise, runs))
    if step is not None:
        at, size = step
        values[at:] *= (1 + size) if better_higher else 1 / (1 + size)
    return values


def generated_commit(run: int) -> str:
    """The commit of the ``run``-th generated run: a 40-digit hex, distinct in its first 12 (as shown)."""
    return hashlib.sha1(f"run {run}".encode()).hexdigest()


def generate_history(path: Path, tests: list[GeneratedTest], *, runs: int, noise: float = 0.03,
                     branch: str = "main", seed: int = 0, model_id: str = "synthetic:llama-1b") -> None:
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    model = ModelIdentity(model_id=model_id, config_hash="cafe", model_type="llama", dtype="bfloat16",
                          num_parameters=1_235_814_400)
    values: dict[tuple[str, int | None, str], np.ndarray] = {}
    for t in tests:
        for batch in t.batch_sizes:
            for name in GENERATE_METRICS:
                step = t.step if name in ("tokens_per_s", "tpot_ms") else None
                values[(t.test_id, batch, name)] = _levels(
                    rng, runs, LEVELS[name] * (batch if name == "tokens_per_s" else 1), noise, step,
                    METRICS[name].better.value == "higher")
        values[(t.test_id, None, "load_s")] = _levels(rng, runs, LEVELS["load_s"], noise, None, False)

    def result(t: GeneratedTest, batch: int | None, name: str, i: int) -> BulkResult:
        v = float(values[(t.test_id, batch, name)][i])
        spread = None if batch is None or name == "peak_mem_bytes" else v * noise
        budget = LEVELS[name] * batch * t.budget_fraction \
            if t.budget_fraction and name == "tokens_per_s" and batch is not None else None
        return BulkResult(metric=name, value=v, q1=None if spread is None else v - spread,
                          q3=None if spread is None else v + spread, budget_limit=budget,
                          budget_bound=None if budget is None else "min",
                          budget_outcome=None if budget is None else ("pass" if v >= budget else "miss"))

    def measurement(t: GeneratedTest, batch: int | None, i: int) -> BulkMeasurement:
        point = LoadPoint() if batch is None else LoadPoint.of(batch_size=batch, prompt_tokens=32, new_tokens=100)
        names = ("load_s",) if batch is None else GENERATE_METRICS
        return BulkMeasurement(point=point, results=tuple(result(t, batch, name, i) for name in names))

    def started(i: int) -> str:
        return (start + timedelta(hours=6 * i)).isoformat(timespec="seconds")

    generated = (BulkRun(run_id=f"run{i:06d}", started_at=started(i),
                         git_commit=generated_commit(i), git_branch=branch, argv=("--llmperf", "suites/"),
                         tests=tuple(BulkTest(test_id=t.test_id, model=model, backend=t.backend, variant="default",
                                              world_size=1,
                                              measurements=tuple(measurement(t, batch, i)
                                                                 for batch in (None, *t.batch_sizes)))
                                     for t in tests))
                 for i in range(runs))
    with HistoryStore.open(path) as store:
        write_results_only(store, ENV, generated)
