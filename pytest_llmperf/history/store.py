"""The history database: every run, test, measurement, result, trial, budget check, verdict and acceptance.

One file is shared by every process of a session (the pytest-xdist controller and its workers) and
by later sessions, so:

* every write runs in its own ``BEGIN IMMEDIATE`` transaction (:meth:`HistoryStore.transaction`),
  which takes the write lock up front; sqlite-utils calls inside it nest as savepoints;
* files use WAL journaling and a long busy timeout, so writers queue instead of failing;
* the schema is versioned and upgraded by ``schema.MIGRATIONS``;
* a file this version cannot use (newer schema, not SQLite) is reported and left untouched.

Two general reads are methods (:meth:`HistoryStore.run`, :meth:`HistoryStore.recent_results`); the typed
queries the gate and the dashboard ask are functions of the other modules of this package.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import sqlite_utils

from pytest_llmperf.environment import Environment, RunContext
from pytest_llmperf.gate.spec import matches_test_id
from pytest_llmperf.history import errors, schema
from pytest_llmperf.history.errors import DEFAULT_FLAG, HistoryError
from pytest_llmperf.history.opening import connect_for_reading, connect_for_writing
from pytest_llmperf.history.recent import ResultRow, recent_results
from pytest_llmperf.history.record_rows import measurement_rows, now, result_row, verdict_row
from pytest_llmperf.measure.conditions import Conditions
from pytest_llmperf.results import BenchRecord

if TYPE_CHECKING:
    from pytest_llmperf.gate.verdict import Verdict

#: how many of a run's test ids an error lists
_SHOWN_TESTS = 5


class HistoryStore:
    """The history database. Open with :meth:`open` (to write) or :meth:`open_read_only`; one per process."""

    def __init__(self, db: sqlite_utils.Database, path: str, *, flag: str = DEFAULT_FLAG, read_only: bool = False,
                 found_version: int | None = None, workdir: Path | None = None) -> None:
        #: the connection; only this package's modules run SQL on it
        self.db = db
        self.path = path
        #: the option that names the file, for error messages
        self.flag = flag
        self.read_only = read_only
        #: the schema version the file had when it was opened, before any upgrade
        self.found_version = self.schema_version() if found_version is None else found_version
        self._workdir = workdir

    # ---- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, flag: str = DEFAULT_FLAG) -> HistoryStore:
        """Open (creating it and its parent directories if needed) and migrate a history file.

        ``":memory:"`` gives a private in-memory database, for tests. ``flag``: the option that names the
        file where the caller is, for the fixes error messages suggest.
        """
        if str(path) == ":memory:":
            memory = sqlite3.connect(":memory:", isolation_level=None)
            memory.execute("PRAGMA foreign_keys = ON")
            store = cls(sqlite_utils.Database(memory, execute_plugins=False), ":memory:", flag=flag)
            store._migrate()
            return store
        p = Path(path).expanduser()
        conn = connect_for_writing(p, flag=flag)
        try:
            store = cls(sqlite_utils.Database(conn, execute_plugins=False), str(p), flag=flag)
            store._migrate()
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise errors.sqlite_error(str(p), exc, flag) or HistoryError(
                    f"{p}: cannot open the history database ({exc}); move it aside or use {flag} PATH") from exc
            raise
        return store

    @classmethod
    def open_read_only(cls, path: str | Path, *, flag: str = DEFAULT_FLAG) -> HistoryStore:
        """Open an existing history file to read it, checked as :meth:`open` checks it.

        The store reads a private copy (upgraded there if the file is older), so the file is never changed
        and nothing is left beside it; writing to the store is refused.
        """
        p = Path(path).expanduser()
        workdir = Path(tempfile.mkdtemp(prefix="llmperf-history-"))
        try:
            conn = connect_for_reading(p, workdir, flag=flag)
            try:
                found = int(conn.execute("PRAGMA user_version").fetchone()[0])
                store = cls(sqlite_utils.Database(conn, execute_plugins=False), str(p), flag=flag, read_only=True,
                            found_version=found, workdir=workdir)
                store._migrate()  # the copy only
            except BaseException:
                conn.close()
                raise
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return store

    def _migrate(self) -> None:
        target = schema.current_version()
        if self.schema_version() == target:
            return
        with self._transaction():
            # re-read under the write lock: another process may have migrated since
            found = self.schema_version()
            if found > target:
                raise errors.newer_schema_error(self.path, found, target, self.flag)
            for migration in schema.MIGRATIONS[found:]:
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
        if self.read_only:
            raise HistoryError(f"{self.path} was opened read-only; open it with HistoryStore.open to write it")
        with self._transaction() as db:
            yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite_utils.Database]:
        conn = self.db.conn
        if conn.in_transaction:
            raise RuntimeError("HistoryStore transactions do not nest")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._raise_mapped(exc)
        try:
            yield self.db
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and (mapped := errors.sqlite_error(self.path, exc, self.flag)):
                raise mapped from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._raise_mapped(exc)

    def _raise_mapped(self, exc: sqlite3.Error) -> NoReturn:
        """The HistoryError for what the environment did wrong, else ``exc`` itself (a programming error)."""
        mapped = errors.sqlite_error(self.path, exc, self.flag)
        if mapped is None:
            raise exc
        raise mapped from exc

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
            db.table("environments").insert({"fingerprint": fingerprint, **env.canonical()}, ignore=True)
            db.table("runs").insert({
                "id": run_id,
                "started_at": started_at or now(),
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
        measurements = measurement_rows(record)
        with self.transaction() as db:
            row = db.execute("SELECT env_fingerprint FROM runs WHERE id = ?", [run_id]).fetchone()
            if row is None:
                raise HistoryError(f"{self.path}: run {run_id!r} was never started; call start_run first")
            fingerprint = row[0]
            db.execute("DELETE FROM tests WHERE run_id = ? AND test_id = ?", [run_id, record.test_id])
            test_row_id = db.table("tests").insert({
                "run_id": run_id,
                "test_id": record.test_id,
                "outcome": test_outcome,
                "duration_s": duration_s,
                "recorded_at": now(),
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
                db.table("acceptances").insert({"run_id": run_id, "test_pattern": record.test_id, "metric": None,
                                          "reason": record.gate.accept, "created_at": now()})
            results: list[dict[str, Any]] = []
            for m in measurements:
                measurement_id = db.table("measurements").insert(
                    {"test_row_id": test_row_id, "run_id": run_id, **m.row}
                ).last_pk
                db.table("trials").insert_all({"measurement_id": measurement_id, **t} for t in m.trials)
                results += ({"measurement_id": measurement_id, "run_id": run_id, **result_row(record, r, fingerprint)}
                            for r in m.results)
            db.table("results").insert_all(results)
            db.table("budget_checks").insert_all(
                # a check's serving load point is left out (NULL) for load and generate metrics
                {"test_row_id": test_row_id, "run_id": run_id,
                 **{k: v for k, v in asdict(c).items() if k != "point" or v is not None}}
                for c in record.budget_checks
            )

    def record_verdicts(self, run_id: str, verdicts: Sequence[Verdict], *, baseline_kind: str) -> None:
        """Store a run's verdicts ('history' or 'ab' baseline), replacing any it had of that kind."""
        with self.transaction() as db:
            db.execute("DELETE FROM verdicts WHERE run_id = ? AND baseline_kind = ?", [run_id, baseline_kind])
            db.table("verdicts").insert_all(verdict_row(run_id, v, baseline_kind) for v in verdicts)

    def accept(self, run_id: str, test_pattern: str, reason: str, *, metric: str | None = None) -> None:
        """Acknowledge the regressions of matching tests in this run: its level becomes the baseline.

        A pattern that matches none of the run's tests is refused: it would accept nothing, silently.
        """
        if not reason.strip():
            raise ValueError("an acceptance needs a reason: say why the regression is intended")
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone() is None:
                raise HistoryError(f"{self.path}: there is no run {run_id!r} to accept a regression of")
            test_ids = [r[0] for r in db.execute("SELECT test_id FROM tests WHERE run_id = ? ORDER BY id", [run_id])]
            if not any(matches_test_id(test_pattern, t) for t in test_ids):
                shown = ", ".join(test_ids[:_SHOWN_TESTS]) + (", ..." if len(test_ids) > _SHOWN_TESTS else "")
                held = f"its tests are {shown}" if test_ids else "it recorded no tests"
                raise HistoryError(f"{self.path}: the pattern {test_pattern!r} matches no test of run {run_id!r} "
                                   f"({held}); pass a pattern that matches the regressed tests (* matches any text)")
            db.table("acceptances").insert({"run_id": run_id, "test_pattern": test_pattern, "metric": metric,
                                      "reason": reason.strip(), "created_at": now()})
            for row_id, test_id, verdict_metric in db.execute(
                    "SELECT id, test_id, metric FROM verdicts WHERE run_id = ? AND outcome = 'regressed'", [run_id]
            ).fetchall():
                if matches_test_id(test_pattern, test_id or "") and metric in (None, verdict_metric):
                    db.execute("UPDATE verdicts SET accepted = ? WHERE id = ?", [reason.strip(), row_id])

    def finish_run(self, run_id: str, status: str) -> None:
        """Mark a run complete, failed or interrupted (a run left 'running' crashed)."""
        if status not in schema.FINAL_STATUSES:
            raise ValueError(f"run status must be one of {sorted(schema.FINAL_STATUSES)}, not {status!r}")
        with self.transaction() as db:
            cursor = db.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                                [status, now(), run_id])
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
        """The matching results of the newest ``last`` runs: see ``recent.recent_results``."""
        return recent_results(self, test=test, model=model, backend=backend, metric=metric, last=last)

    # ---- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
