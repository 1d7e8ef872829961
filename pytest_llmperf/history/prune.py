"""Pruning: the runs older than some days deleted with every row of theirs, and their space freed."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

from pytest_llmperf.history.errors import HistoryError
from pytest_llmperf.history.store import HistoryStore


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _started(text: str | None) -> datetime | None:
    try:
        return _aware(datetime.fromisoformat(text)) if text else None
    except ValueError:
        return None


def _free_space(store: HistoryStore, removed: int) -> None:
    """VACUUM rewrites the file without the freed pages; in WAL mode the rewrite lands in the log,
    so a truncating checkpoint follows."""
    try:
        store.db.execute("VACUUM")
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise HistoryError(f"{store.path}: removed {removed} runs but could not free their space ({exc}); run "
                           f"`llmperf prune` again when no other process is using the file") from exc


def prune_history(store: HistoryStore, keep_days: int, now: datetime | None = None) -> int:
    """Delete the runs that started more than ``keep_days`` days before ``now`` (with all their rows,
    and environments no run uses any more), then free the space. Returns the number of runs removed.

    Runs whose start time cannot be read are kept. Naive datetimes are taken as UTC.
    """
    if isinstance(keep_days, bool) or not isinstance(keep_days, int) or keep_days < 0:
        raise ValueError(f"keep_days must be a whole number of days >= 0 (0 removes every run started before now), "
                         f"not {keep_days!r}")
    cutoff = _aware(now or datetime.now(UTC)) - timedelta(days=keep_days)
    with store.transaction() as db:
        old = [run_id for run_id, started in db.execute("SELECT id, started_at FROM runs").fetchall()
               if (moment := _started(started)) is not None and moment < cutoff]
        for i in range(0, len(old), 500):  # under SQLite's limit on bound parameters
            chunk = old[i:i + 500]
            db.execute(f"DELETE FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        if old:
            db.execute("DELETE FROM environments WHERE fingerprint NOT IN (SELECT env_fingerprint FROM runs)")
    if old:
        _free_space(store, len(old))
    return len(old)
