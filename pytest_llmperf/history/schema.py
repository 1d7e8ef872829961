"""The history's tables, and the migrations that bring a file of any earlier version to this one.

The schema version is SQLite's ``PRAGMA user_version``. ``MIGRATIONS[i]`` upgrades a file from version ``i``
to ``i + 1``; a file of a newer version than ``len(MIGRATIONS)`` is refused, never written.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

RUN_STATUSES = ("running", "complete", "failed", "interrupted")
FINAL_STATUSES = frozenset(RUN_STATUSES[1:])


_SCHEMA_V1 = """
CREATE TABLE environments (
    fingerprint TEXT PRIMARY KEY,
    device_kind TEXT NOT NULL,
    device_model TEXT NOT NULL,
    device_count INTEGER NOT NULL,
    driver TEXT,
    cuda TEXT,
    python TEXT NOT NULL,
    torch TEXT,
    transformers TEXT,
    accelerate TEXT,
    deepspeed TEXT
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'complete', 'failed', 'interrupted')),
    env_fingerprint TEXT NOT NULL REFERENCES environments(fingerprint),
    host TEXT,
    cpu_model TEXT,
    cpu_count INTEGER,
    platform TEXT,
    git_commit TEXT,
    git_branch TEXT,
    git_dirty INTEGER,
    project_root TEXT,
    argv TEXT,
    plugin_version TEXT,
    pytest_version TEXT,
    ab_group TEXT,
    ab_side TEXT,
    label TEXT
);
CREATE INDEX runs_started_at ON runs (started_at);
CREATE INDEX runs_ab_group ON runs (ab_group);

CREATE TABLE tests (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    test_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_s REAL,
    recorded_at TEXT NOT NULL,
    model_id TEXT NOT NULL,
    model_config_hash TEXT NOT NULL,
    model_type TEXT,
    dtype TEXT NOT NULL,
    num_parameters INTEGER,
    backend TEXT NOT NULL,
    variant TEXT NOT NULL,
    world_size INTEGER NOT NULL,
    seed INTEGER,
    UNIQUE (run_id, test_id)
);

CREATE TABLE measurements (
    id INTEGER PRIMARY KEY,
    test_row_id INTEGER NOT NULL REFERENCES tests(id) ON DELETE CASCADE,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('load', 'generate')),
    batch_size INTEGER,
    prompt_tokens INTEGER,
    new_tokens INTEGER,
    streams INTEGER,
    trials_requested INTEGER,
    warmups INTEGER,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'oom')),
    error TEXT,
    devices TEXT,
    memory_method TEXT,
    page_cache_state TEXT,
    page_cache_resident_fraction REAL,
    phases TEXT
);
CREATE INDEX measurements_test_row_id ON measurements (test_row_id);

CREATE TABLE results (
    id INTEGER PRIMARY KEY,
    measurement_id INTEGER NOT NULL REFERENCES measurements(id) ON DELETE CASCADE,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    series_key TEXT NOT NULL,
    test_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    model_config_hash TEXT NOT NULL,
    backend TEXT NOT NULL,
    variant TEXT NOT NULL,
    dtype TEXT NOT NULL,
    world_size INTEGER NOT NULL,
    batch_size INTEGER,
    prompt_tokens INTEGER,
    new_tokens INTEGER,
    metric TEXT NOT NULL,
    env_fingerprint TEXT NOT NULL,
    unit TEXT NOT NULL,
    value REAL NOT NULL,
    q1 REAL,
    q3 REAL,
    cv REAL,
    n INTEGER,
    min REAL,
    max REAL,
    budget_limit REAL,
    budget_bound TEXT CHECK (budget_bound IN ('max', 'min')),
    budget_outcome TEXT CHECK (budget_outcome IN ('pass', 'miss', 'unmeasured'))
);
CREATE INDEX results_series_key ON results (series_key);
CREATE INDEX results_test_id_metric ON results (test_id, metric);
CREATE INDEX results_run_id ON results (run_id);
CREATE INDEX results_measurement_id ON results (measurement_id);

CREATE TABLE trials (
    id INTEGER PRIMARY KEY,
    measurement_id INTEGER NOT NULL REFERENCES measurements(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    ttft_s REAL NOT NULL,
    e2e_s REAL NOT NULL,
    batch_size INTEGER NOT NULL,
    new_tokens INTEGER NOT NULL,
    streams INTEGER NOT NULL,
    UNIQUE (measurement_id, idx)
);

-- "limit" is an SQL keyword: quote it in hand-written SQL
CREATE TABLE budget_checks (
    id INTEGER PRIMARY KEY,
    test_row_id INTEGER NOT NULL REFERENCES tests(id) ON DELETE CASCADE,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    bound TEXT NOT NULL CHECK (bound IN ('max', 'min')),
    "limit" REAL NOT NULL,
    batch_size INTEGER,
    measured REAL,
    outcome TEXT NOT NULL CHECK (outcome IN ('pass', 'miss', 'unmeasured'))
);
CREATE INDEX budget_checks_test_row_id ON budget_checks (test_row_id);

CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    series_key TEXT NOT NULL,
    baseline_kind TEXT NOT NULL CHECK (baseline_kind IN ('history', 'ab')),
    baseline_run_ids TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('regressed', 'improved', 'unchanged', 'inconclusive')),
    ratio REAL,
    ci_low REAL,
    ci_high REAL,
    statistic REAL,
    p_value REAL,
    n_base INTEGER,
    n_head INTEGER,
    min_effect REAL,
    created_at TEXT NOT NULL
);
CREATE INDEX verdicts_run_id ON verdicts (run_id);
CREATE INDEX verdicts_series_key ON verdicts (series_key);
"""


def _migrate_to_v1(db: sqlite_utils.Database) -> None:
    db.executescript(_SCHEMA_V1)


def _migrate_to_v2(db: sqlite_utils.Database) -> None:
    """Parallel backends: where a device map put each module, and whether the tokens matched hf's."""
    db.executescript("""
ALTER TABLE measurements ADD COLUMN device_map TEXT;
ALTER TABLE tests ADD COLUMN correctness_outcome TEXT CHECK (correctness_outcome IN ('match', 'mismatch'));
ALTER TABLE tests ADD COLUMN correctness TEXT;
""")


def _migrate_to_v3(db: sqlite_utils.Database) -> None:
    """The regression gate: each test's gate settings, what each verdict compared, accepted regressions."""
    db.executescript("""
ALTER TABLE tests ADD COLUMN gate TEXT;
ALTER TABLE verdicts ADD COLUMN test_id TEXT;
ALTER TABLE verdicts ADD COLUMN metric TEXT;
ALTER TABLE verdicts ADD COLUMN batch_size INTEGER;
ALTER TABLE verdicts ADD COLUMN subject TEXT;
ALTER TABLE verdicts ADD COLUMN method TEXT;
ALTER TABLE verdicts ADD COLUMN abs_change REAL;
ALTER TABLE verdicts ADD COLUMN base_value REAL;
ALTER TABLE verdicts ADD COLUMN head_value REAL;
ALTER TABLE verdicts ADD COLUMN p_better REAL;
ALTER TABLE verdicts ADD COLUMN baseline TEXT;
ALTER TABLE verdicts ADD COLUMN notes TEXT;
ALTER TABLE verdicts ADD COLUMN accepted TEXT;
CREATE TABLE acceptances (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    test_pattern TEXT NOT NULL,
    metric TEXT,
    reason TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX acceptances_run_id ON acceptances (run_id);
""")


def _migrate_to_v4(db: sqlite_utils.Database) -> None:
    """What drives the spread between processes: each run's machine conditions (GPU clocks, power and
    temperature, CPU governors and load, as JSON), and whether its environment's GPU clocks were locked."""
    db.executescript("""
ALTER TABLE runs ADD COLUMN conditions TEXT;
ALTER TABLE environments ADD COLUMN gpu_clocks_locked INTEGER;
""")


def _migrate_to_v5(db: sqlite_utils.Database) -> None:
    """Tokens timestamped as they are produced: each trial's inter-token latency percentiles; the prompt set of
    a series (NULL: seeded random token ids)."""
    db.executescript("""
ALTER TABLE results ADD COLUMN prompts TEXT;
ALTER TABLE trials ADD COLUMN itl_p50_s REAL;
ALTER TABLE trials ADD COLUMN itl_p90_s REAL;
ALTER TABLE trials ADD COLUMN itl_p99_s REAL;
""")


def _migrate_to_v6(db: sqlite_utils.Database) -> None:
    """Serving mode: a serving load point is a measurement of kind 'generate' with a request rate or a
    concurrency and a workload instead of a batch, and what its load generator did (JSON: requests sent and
    asked, achieved rate, worst send lag, errors, SLOs); its series carry the same coordinates, and a budget
    check the load point it checked."""
    db.executescript("""
ALTER TABLE measurements ADD COLUMN request_rate REAL;
ALTER TABLE measurements ADD COLUMN concurrency INTEGER;
ALTER TABLE measurements ADD COLUMN workload TEXT;
ALTER TABLE measurements ADD COLUMN serving TEXT;
ALTER TABLE results ADD COLUMN request_rate REAL;
ALTER TABLE results ADD COLUMN concurrency INTEGER;
ALTER TABLE results ADD COLUMN workload TEXT;
ALTER TABLE budget_checks ADD COLUMN point TEXT;
""")


Migration = Callable[[sqlite_utils.Database], None]

#: ``MIGRATIONS[i]`` upgrades a database from schema version ``i`` to ``i + 1``. Append, never edit:
#: files in the wild are at every version. Looked up at open time, so tests can extend it.
MIGRATIONS: list[Migration] = [_migrate_to_v1, _migrate_to_v2, _migrate_to_v3, _migrate_to_v4, _migrate_to_v5,
                               _migrate_to_v6]

SCHEMA_VERSION: int = len(MIGRATIONS)


def current_version() -> int:
    """The version this code writes: looked up at call time, so that tests can extend ``MIGRATIONS``."""
    return len(MIGRATIONS)
