"""Reading a history's tables directly, for tests that check what the history package wrote."""

from __future__ import annotations

from typing import Any

from pytest_llmperf.history.store import HistoryStore


def rows(s: HistoryStore, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    cursor = s.db.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def count(s: HistoryStore, table: str, where: str = "1", params: Any = ()) -> int:
    return s.db.execute(f"SELECT count(*) FROM {table} WHERE {where}", list(params)).fetchone()[0]
