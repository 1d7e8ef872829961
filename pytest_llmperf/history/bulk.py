"""Writing many runs of results at once, without trials: for generated histories (the dashboard's scale
benchmark and browser tests), which only need what the dashboard reads.

Each result's series key is derived from its test and load point here, as ``HistoryStore.record_test``
derives it, so a generated history reads back like a recorded one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.environment import Environment
from pytest_llmperf.history.series_columns import series_columns
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.metrics import METRICS
from pytest_llmperf.results import ModelIdentity
from pytest_llmperf.series import LoadPoint, SeriesKey


@dataclass(frozen=True)
class BulkResult:
    metric: str
    value: float
    q1: float | None = None
    q3: float | None = None
    budget_limit: float | None = None
    budget_bound: str | None = None
    budget_outcome: str | None = None


@dataclass(frozen=True)
class BulkMeasurement:
    """A load (no load point) or a generate configuration, and its results."""

    point: LoadPoint
    results: tuple[BulkResult, ...]


@dataclass(frozen=True)
class BulkTest:
    test_id: str
    model: ModelIdentity
    backend: str
    variant: str
    world_size: int
    measurements: tuple[BulkMeasurement, ...]


@dataclass(frozen=True)
class BulkRun:
    """A complete run."""

    run_id: str
    started_at: str
    git_commit: str | None
    git_branch: str | None
    argv: tuple[str, ...]
    tests: tuple[BulkTest, ...]


def write_results_only(store: HistoryStore, env: Environment, runs: Iterable[BulkRun]) -> None:
    """Write complete runs in one environment, with their tests, measurements and results, in one transaction."""
    fingerprint = env.fingerprint()
    digests: dict[SeriesKey, dict[str, Any]] = {}
    run_rows: list[tuple[Any, ...]] = []
    test_rows: list[tuple[Any, ...]] = []
    measurement_rows: list[tuple[Any, ...]] = []
    result_rows: list[dict[str, Any]] = []
    with store.transaction() as db:
        db.table("environments").insert({"fingerprint": fingerprint, **env.canonical()}, ignore=True)
        test_row_id = db.execute("SELECT coalesce(max(id), 0) FROM tests").fetchone()[0]
        measurement_id = db.execute("SELECT coalesce(max(id), 0) FROM measurements").fetchone()[0]
        for run in runs:
            run_rows.append((run.run_id, run.started_at, run.started_at, "complete", fingerprint, run.git_commit,
                             run.git_branch, json.dumps(list(run.argv))))
            for t in run.tests:
                test_row_id += 1
                test_rows.append((test_row_id, run.run_id, t.test_id, "passed", run.started_at, t.model.model_id,
                                  t.model.config_hash, t.model.model_type, t.model.dtype, t.model.num_parameters,
                                  t.backend, t.variant, t.world_size))
                for m in t.measurements:
                    measurement_id += 1
                    measurement_rows.append((measurement_id, test_row_id, run.run_id,
                                             "load" if m.point.batch_size is None else "generate",
                                             m.point.batch_size, m.point.prompt_tokens, m.point.new_tokens, "ok"))
                    for r in m.results:
                        key = SeriesKey(test_id=t.test_id, model_id=t.model.model_id,
                                        model_config_hash=t.model.config_hash, backend=t.backend, variant=t.variant,
                                        dtype=t.model.dtype, world_size=t.world_size, point=m.point, metric=r.metric,
                                        env_fingerprint=fingerprint)
                        columns = digests.get(key)
                        if columns is None:
                            columns = digests[key] = series_columns(key)
                        result_rows.append({**columns, "measurement_id": measurement_id, "run_id": run.run_id,
                                            "unit": METRICS[r.metric].unit, "value": r.value, "q1": r.q1,
                                            "q3": r.q3, "budget_limit": r.budget_limit,
                                            "budget_bound": r.budget_bound, "budget_outcome": r.budget_outcome})
        db.conn.executemany("INSERT INTO runs (id, started_at, finished_at, status, env_fingerprint, git_commit, "
                            "git_branch, argv) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", run_rows)
        db.conn.executemany("INSERT INTO tests (id, run_id, test_id, outcome, recorded_at, model_id, "
                            "model_config_hash, model_type, dtype, num_parameters, backend, variant, world_size) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", test_rows)
        db.conn.executemany("INSERT INTO measurements (id, test_row_id, run_id, kind, batch_size, prompt_tokens, "
                            "new_tokens, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", measurement_rows)
        if result_rows:
            names = list(result_rows[0])
            db.conn.executemany(f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                [tuple(r[n] for n in names) for r in result_rows])
