"""Merging histories: the runs of other history files (CI shards, other runners) folded into one.

A source is a history database or a JSON document written by ``export``. Every source is read and checked
before the destination is created or written, the destination is written in one transaction, and sources
are never written: a database is read through a private copy (``HistoryStore.open_read_only``), and an
export of an older schema goes through the same migrations an old database would.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from pytest_llmperf.history import schema
from pytest_llmperf.history.disk import is_sqlite, read_header, schema_version, shm_path, wal_path
from pytest_llmperf.history.errors import DEFAULT_FLAG, HistoryError
from pytest_llmperf.history.export import (
    EXPORT_FORMAT,
    IMPLIED_COLUMNS,
    Row,
    iter_run_documents,
    own_columns,
)
from pytest_llmperf.history.schema import FINAL_STATUSES, current_version
from pytest_llmperf.history.store import HistoryStore

_SOURCE_FIX = "pass a history database written by `pytest --llmperf` or a JSON file written by `llmperf export`"


@dataclass(frozen=True)
class SourceCounts:
    """What one source contributed to a merge."""

    source: str
    runs_added: int
    #: runs the destination held as 'running' (cut off there) that this source had finished
    runs_replaced: int
    runs_skipped: int


@dataclass(frozen=True)
class MergeReport:
    runs_added: int
    runs_replaced: int
    runs_skipped: int
    sources: tuple[SourceCounts, ...]

    @classmethod
    def of(cls, sources: Sequence[SourceCounts]) -> MergeReport:
        return cls(runs_added=sum(s.runs_added for s in sources), runs_replaced=sum(s.runs_replaced for s in sources),
                   runs_skipped=sum(s.runs_skipped for s in sources), sources=tuple(sources))


def _not_history(path: Path, problem: str) -> HistoryError:
    return HistoryError(f"{path} is not a pytest-llmperf history ({problem}); {_SOURCE_FIX}")


def _newer_error(path: Path, found: int) -> HistoryError:
    return HistoryError(f"{path} has history schema version {found}, but this pytest-llmperf understands versions "
                        f"up to {current_version()}; upgrade pytest-llmperf to merge it")


def _source_kind(path: Path) -> str:
    """'sqlite' or 'json', from the first bytes: the file is only read."""
    try:
        if path.is_dir():
            raise _not_history(path, "it is a directory")
        head = read_header(path)
    except FileNotFoundError:
        raise HistoryError(f"{path} does not exist; {_SOURCE_FIX}") from None
    except OSError as exc:
        raise HistoryError(f"cannot read {path} ({exc.strerror or exc}); check the path and its permissions") from exc
    if is_sqlite(head):
        found = schema_version(path, head)
        if found > current_version():
            raise _newer_error(path, found)
        return "sqlite"
    if head.lstrip()[:1] == b"{":
        return "json"
    raise _not_history(path, "neither a SQLite database nor JSON" if head else "the file is empty")


def _open_database(path: Path) -> HistoryStore:
    try:
        store = HistoryStore.open_read_only(path)  # upgraded to this version's schema in its private copy
    except HistoryError as exc:
        raise _not_history(path, f"unreadable SQLite: {exc}") from exc
    if store.found_version < 1:
        store.close()
        raise _not_history(path, "a SQLite database without pytest-llmperf's tables")
    return store


def _load_json(path: Path) -> Row:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_history(path, f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise _not_history(path, f"JSON whose format is {found!r}, not {EXPORT_FORMAT!r}")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1 \
            or not isinstance(doc.get("runs"), list):
        raise _not_history(path, "an export without a schema_version >= 1 and a list of runs")
    if version > current_version():
        raise _newer_error(path, version)
    return doc


class _Columns:
    """The columns of a database's tables, to name a source's unknown columns instead of failing in SQL."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._known = {t: set(db[t].columns_dict) for t in IMPLIED_COLUMNS if db[t].exists()}

    def check(self, table: str, row: Row, where: str) -> Row:
        unknown = set(row) - self._known.get(table, set())
        if unknown:
            raise HistoryError(f"{where}: {table} rows have columns this pytest-llmperf does not know "
                               f"({', '.join(sorted(unknown))}); upgrade pytest-llmperf to merge it")
        return row


def _insert_run(db: sqlite_utils.Database, doc: Row, columns: _Columns, where: str) -> None:
    """Insert one exported run; its integer ids are assigned here, its parent links follow the nesting."""
    run = columns.check("runs", own_columns("runs", doc), where)
    run_id = run["id"]
    db.table("environments").insert(columns.check("environments", doc["environment"], where), ignore=True)
    db.table("runs").insert(run)
    for test in doc["tests"]:
        test_row = columns.check("tests", own_columns("tests", test), where)
        test_row_id = db.table("tests").insert({**test_row, "run_id": run_id}).last_pk
        for m in test["measurements"]:
            m_row = columns.check("measurements", own_columns("measurements", m), where)
            measurement_id = db.table("measurements").insert(
                {**m_row, "test_row_id": test_row_id, "run_id": run_id}).last_pk
            db.table("trials").insert_all(
                {**columns.check("trials", t, where), "measurement_id": measurement_id} for t in m["trials"])
            db.table("results").insert_all(
                {**columns.check("results", r, where), "measurement_id": measurement_id, "run_id": run_id}
                for r in m["results"])
        db.table("budget_checks").insert_all(
            {**columns.check("budget_checks", c, where), "test_row_id": test_row_id, "run_id": run_id}
            for c in test["budget_checks"])
    for table in ("verdicts", "acceptances"):  # absent from exports of schemas before they existed
        db.table(table).insert_all({**columns.check(table, r, where), "run_id": run_id} for r in doc.get(table, ()))


def _malformed(path: Path, exc: BaseException) -> HistoryError:
    return HistoryError(f"{path}: malformed export ({type(exc).__name__}: {exc}); export it again with "
                        f"`llmperf export --db HISTORY --out FILE`")


def _store_from_old_export(doc: Row, path: Path, workdir: Path) -> HistoryStore:
    """An export of an older schema, written into a database of that version and then migrated, so that
    its rows go through the same migrations as an old database would."""
    copy = workdir / "export.db"
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        db = sqlite_utils.Database(conn, execute_plugins=False)
        for migration in schema.MIGRATIONS[:doc["schema_version"]]:
            migration(db)
        conn.execute(f"PRAGMA user_version = {int(doc['schema_version'])}")
        conn.execute("PRAGMA foreign_keys = ON")
        columns = _Columns(db)
        conn.execute("BEGIN")
        for run in doc["runs"]:
            _insert_run(db, run, columns, str(path))
        conn.execute("COMMIT")
    except (KeyError, TypeError, AttributeError, sqlite3.IntegrityError) as exc:
        raise _malformed(path, exc) from exc
    finally:
        conn.close()
    try:
        return HistoryStore.open(copy)  # migrates the copy to this version's schema
    except HistoryError as exc:
        raise HistoryError(f"{path}: cannot read it as a history ({exc})") from exc


@contextmanager
def _open_source(path: Path, workdir: Path) -> Iterator[Iterable[Row]]:
    """The run documents of one source, read from a private copy or from its JSON."""
    if _source_kind(path) == "json":
        doc = _load_json(path)
        if doc["schema_version"] == current_version():
            yield doc["runs"]
            return
        with _store_from_old_export(doc, path, workdir) as s:
            yield iter_run_documents(s)
        return
    with _open_database(path) as s:
        yield iter_run_documents(s)


def _merge_runs(db: sqlite_utils.Database, path: Path, runs: Iterable[Row], columns: _Columns) -> SourceCounts:
    added = replaced = skipped = 0
    try:
        for doc in runs:
            held = db.execute("SELECT status FROM runs WHERE id = ?", [doc["id"]]).fetchone()
            if held is None:
                added += 1
            elif held[0] == "running" and doc["status"] in FINAL_STATUSES:
                db.execute("DELETE FROM runs WHERE id = ?", [doc["id"]])  # its rows go too (ON DELETE CASCADE)
                replaced += 1
            else:
                skipped += 1
                continue
            _insert_run(db, doc, columns, str(path))
    except (KeyError, TypeError, AttributeError, sqlite3.IntegrityError) as exc:
        raise _malformed(path, exc) from exc
    return SourceCounts(source=str(path), runs_added=added, runs_replaced=replaced, runs_skipped=skipped)


@contextmanager
def _opened_sources(sources: Sequence[Path]) -> Iterator[list[tuple[Path, Iterable[Row]]]]:
    """Every source checked and opened, in order; a missing or foreign file is reported before any copying."""
    paths = [Path(s) for s in sources]
    for path in paths:
        _source_kind(path)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmperf-merge-")))
        opened: list[tuple[Path, Iterable[Row]]] = []
        for i, path in enumerate(paths):
            workdir = tmp / str(i)
            workdir.mkdir()
            opened.append((path, stack.enter_context(_open_source(path, workdir))))
        yield opened


def _merge_opened(dest: HistoryStore, opened: list[tuple[Path, Iterable[Row]]]) -> MergeReport:
    with dest.transaction() as db:
        columns = _Columns(db)
        counts = [_merge_runs(db, path, runs, columns) for path, runs in opened]
    return MergeReport.of(counts)


def merge_histories(dest: HistoryStore, sources: Sequence[Path]) -> MergeReport:
    """Import every run of other histories (databases or ``export`` JSON) into ``dest``.

    A run whose id ``dest`` holds is skipped, unless ``dest`` holds it as 'running' and the source has
    it finished: then the source's copy replaces it. Every source is read and checked before ``dest`` is
    written, and everything is written in one transaction.
    """
    with _opened_sources(sources) as opened:
        return _merge_opened(dest, opened)


def merge_into(dest: Path, sources: Sequence[Path], *, flag: str = DEFAULT_FLAG) -> MergeReport:
    """:func:`merge_histories` into the history file ``dest``, created if missing: but only once every source
    has been checked, and removed again if the merge then fails. ``flag`` names the file in error messages."""
    dest = Path(dest)
    with _opened_sources(sources) as opened:
        created = not dest.exists()
        try:
            with HistoryStore.open(dest, flag=flag) as store:
                return _merge_opened(store, opened)
        except BaseException:
            if created:
                for path in (dest, wal_path(dest), shm_path(dest)):
                    path.unlink(missing_ok=True)
            raise
