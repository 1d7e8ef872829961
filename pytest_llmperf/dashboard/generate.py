"""A generated history for the dashboard's scale benchmark and browser tests: many runs, written in bulk.

Runs, tests, measurements and results go straight into a history file of the current schema (one
transaction, no trials): the dashboard reads results only. Each series is a level with noise, and
optionally a step at a given run, so that what the dashboard should find is known.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from pytest_llmperf.environment import Environment
from pytest_llmperf.measure.metrics import METRICS
from pytest_llmperf.series import SeriesKey
from pytest_llmperf.store import HistoryStore

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
    fingerprint = ENV.fingerprint()
    with HistoryStore.open(path) as store:
        values = {}
        for t in tests:
            for batch in t.batch_sizes:
                for name in GENERATE_METRICS:
                    step = t.step if name in ("tokens_per_s", "tpot_ms") else None
                    values[(t.test_id, batch, name)] = _levels(
                        rng, runs, LEVELS[name] * (batch if name == "tokens_per_s" else 1), noise, step,
                        METRICS[name].better.value == "higher")
            values[(t.test_id, None, "load_s")] = _levels(rng, runs, LEVELS["load_s"], noise, None, False)
        with store.transaction() as db:
            db["environments"].insert({"fingerprint": fingerprint, **asdict(ENV)}, ignore=True)
            conn = db.conn
            run_rows, test_rows, measurement_rows, result_rows = [], [], [], []
            test_row_id = measurement_id = 0
            for i in range(runs):
                run_id = f"run{i:06d}"
                when = (start + timedelta(hours=6 * i)).isoformat(timespec="seconds")
                run_rows.append((run_id, when, when, "complete", fingerprint, generated_commit(i), branch,
                                 '["--llmperf", "suites/"]'))
                for t in tests:
                    test_row_id += 1
                    test_rows.append((test_row_id, run_id, t.test_id, "passed", when, model_id, "cafe", "llama",
                                      "bfloat16", t.backend, "default", 1, 0))
                    for batch in (None, *t.batch_sizes):
                        measurement_id += 1
                        measurement_rows.append((measurement_id, test_row_id, run_id,
                                                 "load" if batch is None else "generate", batch, "ok"))
                        for name in ("load_s",) if batch is None else GENERATE_METRICS:
                            key = SeriesKey(t.test_id, model_id, "cafe", t.backend, "default", "bfloat16", 1, batch,
                                            None if batch is None else 32, None if batch is None else 100, name,
                                            fingerprint).digest()
                            v = float(values[(t.test_id, batch, name)][i])
                            spread = None if batch is None or name == "peak_mem_bytes" else v * noise
                            budget = (LEVELS[name] * batch * t.budget_fraction
                                      if t.budget_fraction and name == "tokens_per_s" else None)
                            result_rows.append((measurement_id, run_id, key, t.test_id, model_id, "cafe", t.backend,
                                                "default", "bfloat16", 1, batch, name, fingerprint,
                                                METRICS[name].unit, v, None if spread is None else v - spread,
                                                None if spread is None else v + spread, budget,
                                                None if budget is None else "min",
                                                None if budget is None else ("pass" if v >= budget else "miss")))
            conn.executemany("INSERT INTO runs (id, started_at, finished_at, status, env_fingerprint, git_commit, "
                             "git_branch, argv) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", run_rows)
            conn.executemany("INSERT INTO tests (id, run_id, test_id, outcome, recorded_at, model_id, "
                             "model_config_hash, model_type, dtype, backend, variant, world_size, seed) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", test_rows)
            conn.executemany("INSERT INTO measurements (id, test_row_id, run_id, kind, batch_size, outcome) "
                             "VALUES (?, ?, ?, ?, ?, ?)", measurement_rows)
            conn.executemany("INSERT INTO results (measurement_id, run_id, series_key, test_id, model_id, "
                             "model_config_hash, backend, variant, dtype, world_size, batch_size, metric, "
                             "env_fingerprint, unit, value, q1, q3, budget_limit, budget_bound, budget_outcome) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", result_rows)
