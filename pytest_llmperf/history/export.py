"""The export format: runs as JSON documents, each run with every row that hangs off it, nested.

:func:`export_runs` writes them; ``merge`` reads them back (and reads other databases through the same
documents). Integer ids are left out and a row's parent is the object that holds it, so a document means
the same in any file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlite_utils

from pytest_llmperf.history.errors import HistoryError
from pytest_llmperf.history.ordering import OLDEST_FIRST
from pytest_llmperf.history.runs import unknown_run_error
from pytest_llmperf.history.store import HistoryStore

#: the ``format`` of a document written by :func:`export_runs`
EXPORT_FORMAT = "pytest-llmperf-history"

Row = dict[str, Any]

#: columns an export leaves out because its nesting implies them: integer ids are assigned anew on
#: import, and a row's parent is the object that holds it
IMPLIED_COLUMNS: dict[str, tuple[str, ...]] = {
    "environments": (),
    "runs": (),
    "tests": ("id", "run_id"),
    "measurements": ("id", "test_row_id", "run_id"),
    "trials": ("id", "measurement_id"),
    "results": ("id", "measurement_id", "run_id"),
    "budget_checks": ("id", "test_row_id", "run_id"),
    "verdicts": ("id", "run_id"),
    "acceptances": ("id", "run_id"),
}
#: the keys of an exported object that hold nested rows, not columns
NESTED_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("environment", "tests", "verdicts", "acceptances"),
    "tests": ("measurements", "budget_checks"),
    "measurements": ("trials", "results"),
}


def table_rows(db: sqlite_utils.Database, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    """The rows of a query as column -> value mappings."""
    cursor = db.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


def _by(rows: Iterable[Row], key: str) -> dict[Any, list[Row]]:
    grouped: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped


def _strip(table: str, row: Row) -> Row:
    return {k: v for k, v in row.items() if k not in IMPLIED_COLUMNS[table]}


def own_columns(table: str, obj: Row) -> Row:
    """An exported object's own columns, without its nested rows."""
    return {k: v for k, v in obj.items() if k not in NESTED_KEYS.get(table, ())}


_TESTS_OF_RUN = "SELECT id FROM tests WHERE run_id = ?"
_MEASUREMENTS_OF_RUN = f"SELECT id FROM measurements WHERE test_row_id IN ({_TESTS_OF_RUN})"


def _run_document(db: sqlite_utils.Database, run: Row, where: str, tables: set[str]) -> Row:
    """One run and every row that hangs off it, nested (a few indexed queries per run, not per row).
    Tables an older schema lacks are left out."""
    run_id = run["id"]
    env = table_rows(db, "SELECT * FROM environments WHERE fingerprint = ?", [run["env_fingerprint"]])
    if not env:
        raise HistoryError(f"{where}: run {run_id!r} names environment {run['env_fingerprint']!r}, which is "
                           f"missing; the file is damaged: export the runs you need with `llmperf export --run ID`")
    tests = table_rows(db, "SELECT * FROM tests WHERE run_id = ? ORDER BY id", [run_id])
    measurements = _by(table_rows(
        db, f"SELECT * FROM measurements WHERE test_row_id IN ({_TESTS_OF_RUN}) ORDER BY id", [run_id]), "test_row_id")
    trials = _by(table_rows(
        db, f"SELECT * FROM trials WHERE measurement_id IN ({_MEASUREMENTS_OF_RUN}) ORDER BY id", [run_id]),
        "measurement_id")
    results = _by(table_rows(
        db, f"SELECT * FROM results WHERE measurement_id IN ({_MEASUREMENTS_OF_RUN}) ORDER BY id", [run_id]),
        "measurement_id")
    checks = _by(table_rows(
        db, f"SELECT * FROM budget_checks WHERE test_row_id IN ({_TESTS_OF_RUN}) ORDER BY id", [run_id]),
        "test_row_id")

    def measurement(m: Row) -> Row:
        return {**_strip("measurements", m), "trials": [_strip("trials", t) for t in trials[m["id"]]],
                "results": [_strip("results", r) for r in results[m["id"]]]}

    doc = {
        **run,
        "environment": env[0],
        "tests": [{**_strip("tests", t), "measurements": [measurement(m) for m in measurements[t["id"]]],
                   "budget_checks": [_strip("budget_checks", c) for c in checks[t["id"]]]} for t in tests],
    }
    for table in ("verdicts", "acceptances"):
        if table in tables:
            doc[table] = [_strip(table, r) for r in
                          table_rows(db, f"SELECT * FROM {table} WHERE run_id = ? ORDER BY id", [run_id])]
    return doc


def run_row(store: HistoryStore, run_id: str) -> Row:
    """The runs row of a run, as stored; HistoryError naming the newest runs when there is none."""
    found = table_rows(store.db, "SELECT * FROM runs WHERE id = ?", [run_id])
    if not found:
        raise unknown_run_error(store, run_id)
    return found[0]


def iter_run_documents(store: HistoryStore, run_ids: Sequence[str] | None = None) -> Iterator[Row]:
    """The documents of these runs (every run, oldest first, by default); every id is checked first."""
    if run_ids is None:
        runs: Iterable[Row] = table_rows(store.db, f"SELECT * FROM runs {OLDEST_FIRST}")
    else:
        runs = [run_row(store, run_id) for run_id in dict.fromkeys(run_ids)]  # every id checked before any yield
    tables = set(store.db.table_names())
    for run in runs:
        yield _run_document(store.db, run, store.path, tables)


def export_runs(store: HistoryStore, run_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs (all of them, oldest first, by default) as a JSON-serialisable document that ``merge``
    imports back: each run row with its environment, its tests (each with its measurements, each with their
    trials and results, and its budget checks), verdicts and acceptances.
    """
    return {"format": EXPORT_FORMAT, "schema_version": store.schema_version(),
            "runs": list(iter_run_documents(store, run_ids))}
