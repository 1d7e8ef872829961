"""Reading a history's tables directly, for tests that check what the history package wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from pytest_llmperf.history.store import HistoryStore


def rows(s: HistoryStore, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    cursor = s.db.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def count(s: HistoryStore, table: str, where: str = "1", params: Any = ()) -> int:
    return s.db.execute(f"SELECT count(*) FROM {table} WHERE {where}", list(params)).fetchone()[0]


def file_rows(path: str | Path, sql: str) -> list[dict[str, Any]]:
    """Rows of a query on a history file, read with plain sqlite3 (as any other reader of the file would)."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def results_snapshot(store: HistoryStore) -> list[dict[str, Any]]:
    """Every result's identity and values, by columns every schema version has (older files are read before they
    are upgraded)."""
    return rows(store, "SELECT run_id, series_key, test_id, metric, value, q1, q3, cv, n, budget_outcome "
                       "FROM results ORDER BY id")
