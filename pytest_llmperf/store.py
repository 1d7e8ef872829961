"""The SQLite history: every run, test, measurement, result, trial and budget check, kept across runs.

One file is shared by every process of a session (the pytest-xdist controller and its workers) and
by later sessions, so:

* every write runs in its own ``BEGIN IMMEDIATE`` transaction (:meth:`HistoryStore.transaction`),
  which takes the write lock up front; sqlite-utils calls inside it nest as savepoints;
* files use WAL journaling and a long busy timeout, so writers queue instead of failing;
* the schema is versioned in ``PRAGMA user_version`` and upgraded by :data:`MIGRATIONS`;
* a file this version cannot use (newer schema, not SQLite) is reported and left untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from pytest_llmperf.environment import Environment, RunContext
from pytest_llmperf.measure.conditions import Conditions
from pytest_llmperf.measure.metrics import METRICS, TRIAL_METRICS
from pytest_llmperf.results import BenchRecord, BudgetCheck, GenerateResult
from pytest_llmperf.series import SeriesKey

if TYPE_CHECKING:
    from pytest_llmperf.gate.verdict import Verdict

RUN_STATUSES = ("running", "complete", "failed", "interrupted")
FINAL_STATUSES = frozenset(RUN_STATUSES[1:])
BUSY_TIMEOUT_S = 60.0

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: byte offset of the 4-byte big-endian ``user_version`` in the database header
_USER_VERSION_OFFSET = 60
_DB_FLAG = "use --llmperf-db PATH"


class HistoryError(Exception):
    """The history database cannot be used; the message names the file, the problem and the fix."""


# --------------------------------------------------------------------------------------------------
# schema


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


Migration = Callable[[sqlite_utils.Database], None]

#: ``MIGRATIONS[i]`` upgrades a database from schema version ``i`` to ``i + 1``. Append, never edit:
#: files in the wild are at every version. Looked up at open time, so tests can extend it.
MIGRATIONS: list[Migration] = [_migrate_to_v1, _migrate_to_v2, _migrate_to_v3, _migrate_to_v4]

SCHEMA_VERSION: int = len(MIGRATIONS)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# errors


def _newer_schema_error(path: str, found: int, supported: int) -> HistoryError:
    return HistoryError(
        f"{path}: the history database has schema version {found}, but this pytest-llmperf only "
        f"understands versions up to {supported}; upgrade pytest-llmperf, or use --llmperf-db to "
        f"point at another file"
    )


def _unreadable_error(path: str, problem: str) -> HistoryError:
    return HistoryError(
        f"{path} is not a readable SQLite database ({problem}); move it aside or {_DB_FLAG} "
        f"to keep the history in another file"
    )


def _unwritable_error(path: str, problem: str) -> HistoryError:
    return HistoryError(
        f"cannot write the history database {path} ({problem}); {_DB_FLAG} to keep the history "
        f"in a writable location"
    )


def _sqlite_error(path: str, exc: sqlite3.Error) -> HistoryError | None:
    """The user-facing error for what the environment did wrong; None for programming errors."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return _unreadable_error(path, str(exc))
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_FULL")):
        return _unwritable_error(path, str(exc))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return HistoryError(
            f"{path}: the history database stayed locked by another process for more than "
            f"{BUSY_TIMEOUT_S:.0f} s ({exc}); wait for it to finish, or {_DB_FLAG} to use another file"
        )
    return None


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite or has a newer schema, reading bytes only (no SQLite open,
    so the file, its mtime and its neighbours are left exactly as they are)."""
    try:
        if path.is_dir():
            raise _unwritable_error(str(path), "it is a directory")
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise _unwritable_error(str(path), exc.strerror or str(exc)) from exc
    if not os.access(path, os.W_OK):
        raise _unwritable_error(str(path), "the file is read-only")
    if not header:
        return  # an empty file is an empty database
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise _unreadable_error(str(path), "no SQLite header")
    found = int.from_bytes(header[_USER_VERSION_OFFSET:_USER_VERSION_OFFSET + 4], "big")
    if found > len(MIGRATIONS):
        raise _newer_schema_error(str(path), found, len(MIGRATIONS))


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch a file to WAL, retrying while others hold it: changing the journal mode of a file
    that another process is opening or switching fails with SQLITE_BUSY at once, without waiting
    on the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorname", "") or "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# --------------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class ResultRow:
    """One result for ``llmperf history``: a metric of one configuration in one run."""

    run_id: str
    started_at: str
    run_status: str
    git_commit: str | None
    git_branch: str | None
    test_id: str
    model_id: str
    backend: str
    variant: str
    dtype: str
    world_size: int
    #: None for metrics measured once per load
    batch_size: int | None
    metric: str
    unit: str
    #: the median for trial metrics, the value for single-valued ones
    value: float
    q1: float | None
    q3: float | None
    cv: float | None
    n: int | None
    #: the measurement's outcome: "ok" or "oom"
    outcome: str
    budget_outcome: str | None


_RESULT_ROW_SQL = """
SELECT r.id AS run_id, r.started_at, r.status AS run_status, r.git_commit, r.git_branch,
       res.test_id, res.model_id, res.backend, res.variant, res.dtype, res.world_size,
       res.batch_size, res.metric, res.unit, res.value, res.q1, res.q3, res.cv, res.n,
       m.outcome, res.budget_outcome
FROM results res
JOIN measurements m ON m.id = res.measurement_id
JOIN runs r ON r.id = res.run_id
"""


@dataclass
class _Measurement:
    """One measurements row with the rows that hang off it, before ids are known."""

    row: dict[str, Any]
    trials: list[dict[str, Any]]
    #: results rows without measurement_id, run_id, env_fingerprint and series_key
    results: list[dict[str, Any]]


def _budget_for(checks: tuple[BudgetCheck, ...], name: str, batch_size: int | None) -> BudgetCheck | None:
    matching = [c for c in checks if c.metric == name and c.batch_size == batch_size]
    if not matching:
        return None
    # a miss is the one to show when a metric has several budgets
    return next((c for c in matching if c.outcome == "miss"), matching[0])


def _result_row(record: BenchRecord, name: str, value: float, *, generate: GenerateResult | None) -> dict[str, Any]:
    config = generate.config if generate is not None else None
    batch_size = config.batch_size if config is not None else None
    budget = _budget_for(record.budget_checks, name, batch_size)
    row: dict[str, Any] = {
        "test_id": record.test_id,
        "model_id": record.model.model_id,
        "model_config_hash": record.model.config_hash,
        "backend": record.backend,
        "variant": record.variant,
        "dtype": record.model.dtype,
        "world_size": record.world_size,
        "batch_size": batch_size,
        "prompt_tokens": config.prompt_tokens if config is not None else None,
        "new_tokens": config.new_tokens if config is not None else None,
        "metric": name,
        "unit": METRICS[name].unit,
        "value": value,
        "q1": None, "q3": None, "cv": None, "n": None, "min": None, "max": None,
        "budget_limit": budget.limit if budget else None,
        "budget_bound": budget.bound if budget else None,
        "budget_outcome": budget.outcome if budget else None,
    }
    if generate is not None and name in TRIAL_METRICS and generate.trials:
        s = generate.stats(name)
        row.update(value=s.median, q1=s.q1, q3=s.q3, cv=s.cv, n=s.n, min=s.min, max=s.max)
    return row


def _prepare(record: BenchRecord) -> list[_Measurement]:
    """Every row of a record, computed before the write lock is taken."""
    devices = json.dumps(list(record.load.devices)) if record.load is not None else None
    out: list[_Measurement] = []
    load_values = record.load_metric_values()
    if record.load is not None or load_values:
        load = record.load
        out.append(_Measurement(
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
            results=[_result_row(record, n, v, generate=None) for n, v in load_values.items()],
        ))
    for g in record.generates:
        out.append(_Measurement(
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
            trials=[{"idx": i, **asdict(t)} for i, t in enumerate(g.trials)],
            results=[_result_row(record, n, v, generate=g) for n, v in g.metric_values().items()],
        ))
    return out


def _verdict_row(run_id: str, v: Verdict, baseline_kind: str) -> dict[str, Any]:
    e, s = v.evidence, v.subject
    return {
        "run_id": run_id, "series_key": s.series_key, "baseline_kind": baseline_kind,
        "baseline_run_ids": json.dumps(list(v.comparison.baseline_run_ids)), "baseline": v.comparison.baseline,
        "outcome": v.outcome.value, "test_id": s.test_id, "metric": s.metric, "batch_size": s.batch_size,
        "subject": json.dumps(asdict(s)), "method": e.method if e else None,
        "ratio": e.ratio if e else None, "base_value": e.base if e else None, "head_value": e.head if e else None, "ci_low": e.ci_low if e else None, "ci_high": e.ci_high if e else None,
        "abs_change": e.abs_change if e else None, "statistic": e.statistic if e else None,
        "p_value": v.p_worse, "p_better": v.p_better, "n_base": e.n_base if e else None,
        "n_head": e.n_head if e else None, "min_effect": v.comparison.min_effect,
        "notes": json.dumps(list(v.notes)), "accepted": v.comparison.accepted, "created_at": _now(),
    }


# --------------------------------------------------------------------------------------------------
# the store


class HistoryStore:
    """The history database. Open with :meth:`open`; one instance per process."""

    def __init__(self, db: sqlite_utils.Database, path: str) -> None:
        self.db = db
        self.path = path

    # ---- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> HistoryStore:
        """Open (creating it and its parent directories if needed) and migrate a history file.

        ``":memory:"`` gives a private in-memory database, for tests.
        """
        if str(path) == ":memory:":
            memory = sqlite3.connect(":memory:", isolation_level=None)
            memory.execute("PRAGMA foreign_keys = ON")
            store = cls(sqlite_utils.Database(memory, execute_plugins=False), ":memory:")
            store._migrate()
            return store

        p = Path(path).expanduser()
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable_error(str(p), f"cannot create directory {p.parent}: {exc.strerror or exc}") from exc
        if p.exists():
            _check_header(p)

        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit BEGINs, every transaction is one we open ourselves
            conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # read before anything writes: a corrupt file fails here, untouched
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if found > len(MIGRATIONS):  # the header check missed it: the version is in the WAL
                raise _newer_schema_error(str(p), found, len(MIGRATIONS))
            _enable_wal(conn)
            conn.execute("PRAGMA foreign_keys = ON")
            store = cls(sqlite_utils.Database(conn, execute_plugins=False), str(p))
            store._migrate()
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise _sqlite_error(str(p), exc) or HistoryError(
                f"{p}: cannot open the history database ({exc}); move it aside or {_DB_FLAG}"
            ) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return store

    def _migrate(self) -> None:
        target = len(MIGRATIONS)
        if self.schema_version() == target:
            return
        with self.transaction():
            # re-read under the write lock: another process may have migrated since
            found = self.schema_version()
            if found > target:
                raise _newer_schema_error(self.path, found, target)
            for migration in MIGRATIONS[found:]:
                migration(self.db)
            self.db.execute(f"PRAGMA user_version = {target}")

    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    # ---- transactions ----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """A ``BEGIN IMMEDIATE`` transaction: all of it is written, or none of it.

        Taking the write lock at BEGIN means concurrent writers wait (busy timeout) instead of
        failing when a read transaction would need upgrading.
        """
        conn = self.db.conn
        if conn.in_transaction:
            raise RuntimeError("HistoryStore transactions do not nest")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, exc) or exc
        try:
            yield self.db
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and (mapped := _sqlite_error(self.path, exc)) is not None:
                raise mapped from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _sqlite_error(self.path, exc) or exc

    # ---- writing ---------------------------------------------------------------------------------

    def start_run(self, run_id: str, env: Environment, ctx: RunContext, *, started_at: str | None = None,
                  ab_group: str | None = None, ab_side: str | None = None, label: str | None = None,
                  conditions: Conditions | None = None) -> None:
        """Record a run as 'running'. Idempotent: every xdist worker and the controller may call it
        with the same ``run_id``; the first call's values are kept. ``conditions``: the machine state
        the run starts under."""
        fingerprint = env.fingerprint()
        # columns left unset stay NULL: the canonical form and an absent ``conditions`` name no column
        # newer than the fields a run sets, so files of older schemas take these rows too
        extra = {} if conditions is None else {"conditions": conditions.to_json()}
        with self.transaction() as db:
            db["environments"].insert({"fingerprint": fingerprint, **env.canonical()}, ignore=True)
            db["runs"].insert({
                "id": run_id,
                "started_at": started_at or _now(),
                "finished_at": None,
                "status": "running",
                "env_fingerprint": fingerprint,
                "host": ctx.host,
                "cpu_model": ctx.cpu_model,
                "cpu_count": ctx.cpu_count,
                "platform": ctx.platform,
                "git_commit": ctx.git.commit,
                "git_branch": ctx.git.branch,
                "git_dirty": ctx.git.dirty,
                "project_root": ctx.project_root,
                "argv": json.dumps(list(ctx.argv)),
                "plugin_version": ctx.plugin_version,
                "pytest_version": ctx.pytest_version,
                "ab_group": ab_group,
                "ab_side": ab_side,
                "label": label,
                **extra,
            }, ignore=True)

    def record_test(self, run_id: str, record: BenchRecord, *, test_outcome: str,
                    duration_s: float | None = None) -> None:
        """Write everything one test measured, in one transaction.

        Recording the same ``test_id`` again in a run (a rerun) replaces the earlier record.
        """
        measurements = _prepare(record)
        with self.transaction() as db:
            row = db.execute("SELECT env_fingerprint FROM runs WHERE id = ?", [run_id]).fetchone()
            if row is None:
                raise HistoryError(f"{self.path}: run {run_id!r} was never started; call start_run first")
            fingerprint = row[0]
            db.execute("DELETE FROM tests WHERE run_id = ? AND test_id = ?", [run_id, record.test_id])
            test_row_id = db["tests"].insert({
                "run_id": run_id,
                "test_id": record.test_id,
                "outcome": test_outcome,
                "duration_s": duration_s,
                "recorded_at": _now(),
                "model_id": record.model.model_id,
                "model_config_hash": record.model.config_hash,
                "model_type": record.model.model_type,
                "dtype": record.model.dtype,
                "num_parameters": record.model.num_parameters,
                "backend": record.backend,
                "variant": record.variant,
                "world_size": record.world_size,
                "seed": record.seed,
                "correctness_outcome": record.correctness.outcome if record.correctness else None,
                "correctness": json.dumps(asdict(record.correctness)) if record.correctness else None,
                "gate": json.dumps(record.gate.to_json()),
            }).last_pk
            if record.gate.accept:  # the marker's acknowledgement: this run's level of this test is the new one
                db.execute("DELETE FROM acceptances WHERE run_id = ? AND test_pattern = ? AND metric IS NULL",
                           [run_id, record.test_id])
                db["acceptances"].insert({"run_id": run_id, "test_pattern": record.test_id, "metric": None,
                                          "reason": record.gate.accept, "created_at": _now()})
            results: list[dict[str, Any]] = []
            for m in measurements:
                measurement_id = db["measurements"].insert(
                    {"test_row_id": test_row_id, "run_id": run_id, **m.row}
                ).last_pk
                db["trials"].insert_all({"measurement_id": measurement_id, **t} for t in m.trials)
                for r in m.results:
                    key = SeriesKey(
                        test_id=r["test_id"], model_id=r["model_id"], model_config_hash=r["model_config_hash"],
                        backend=r["backend"], variant=r["variant"], dtype=r["dtype"],
                        world_size=r["world_size"], batch_size=r["batch_size"],
                        prompt_tokens=r["prompt_tokens"], new_tokens=r["new_tokens"], metric=r["metric"],
                        env_fingerprint=fingerprint,
                    )
                    results.append({"measurement_id": measurement_id, "run_id": run_id,
                                    "series_key": key.digest(), "env_fingerprint": fingerprint, **r})
            db["results"].insert_all(results)
            db["budget_checks"].insert_all(
                {"test_row_id": test_row_id, "run_id": run_id, **asdict(c)} for c in record.budget_checks
            )

    def record_verdicts(self, run_id: str, verdicts: Sequence[Verdict], *, baseline_kind: str) -> None:
        """Store a run's verdicts ('history' or 'ab' baseline), replacing any it had of that kind."""
        with self.transaction() as db:
            db.execute("DELETE FROM verdicts WHERE run_id = ? AND baseline_kind = ?", [run_id, baseline_kind])
            db["verdicts"].insert_all(_verdict_row(run_id, v, baseline_kind) for v in verdicts)

    def accept(self, run_id: str, test_pattern: str, reason: str, *, metric: str | None = None) -> None:
        """Acknowledge the regressions of matching tests in this run: its level becomes the baseline."""
        from pytest_llmperf.gate.spec import matches_test_id

        if not reason.strip():
            raise ValueError("an acceptance needs a reason: say why the regression is intended")
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone() is None:
                raise HistoryError(f"{self.path}: there is no run {run_id!r} to accept a regression of")
            db["acceptances"].insert({"run_id": run_id, "test_pattern": test_pattern, "metric": metric,
                                      "reason": reason.strip(), "created_at": _now()})
            for row_id, test_id, verdict_metric in db.execute(
                    "SELECT id, test_id, metric FROM verdicts WHERE run_id = ? AND outcome = 'regressed'", [run_id]
            ).fetchall():
                if matches_test_id(test_pattern, test_id or "") and metric in (None, verdict_metric):
                    db.execute("UPDATE verdicts SET accepted = ? WHERE id = ?", [reason.strip(), row_id])

    def finish_run(self, run_id: str, status: str) -> None:
        """Mark a run complete, failed or interrupted (a run left 'running' crashed)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"run status must be one of {sorted(FINAL_STATUSES)}, not {status!r}")
        with self.transaction() as db:
            cursor = db.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                                [status, _now(), run_id])
            if cursor.rowcount == 0:
                raise HistoryError(f"{self.path}: there is no run {run_id!r} to finish")

    # ---- reading ---------------------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The runs row, with ``argv`` and ``conditions`` decoded from JSON and ``git_dirty`` to a bool;
        None if unknown."""
        cursor = self.db.execute("SELECT * FROM runs WHERE id = ?", [run_id])
        values = cursor.fetchone()
        if values is None:
            return None
        row = dict(zip([d[0] for d in cursor.description], values))
        row["argv"] = json.loads(row["argv"]) if row["argv"] is not None else None
        if row.get("conditions") is not None:
            row["conditions"] = json.loads(row["conditions"])
        row["git_dirty"] = None if row["git_dirty"] is None else bool(row["git_dirty"])
        return row

    def recent_results(self, *, test: str | None = None, model: str | None = None, backend: str | None = None,
                       metric: str | None = None, last: int = 20) -> list[ResultRow]:
        """Results, newest run first; ``test`` and ``model`` match substrings (case-insensitive),
        ``backend`` and ``metric`` exactly; at most ``last`` rows."""
        if last < 0:
            raise ValueError(f"last must be >= 0, not {last}")
        where: list[str] = []
        params: list[Any] = []
        if test is not None:
            where.append("instr(lower(res.test_id), lower(?)) > 0")
            params.append(test)
        if model is not None:
            where.append("instr(lower(res.model_id), lower(?)) > 0")
            params.append(model)
        if backend is not None:
            where.append("res.backend = ?")
            params.append(backend)
        if metric is not None:
            where.append("res.metric = ?")
            params.append(metric)
        sql = _RESULT_ROW_SQL
        if where:
            sql += "WHERE " + " AND ".join(where) + "\n"
        sql += "ORDER BY r.started_at DESC, r.rowid DESC, res.id DESC LIMIT ?"
        params.append(last)
        return [ResultRow(*values) for values in self.db.execute(sql, params).fetchall()]

    # ---- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
