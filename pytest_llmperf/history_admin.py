"""History management: merge the histories of several runners, export runs, prune old ones.

CI shards and separate runners each write their own history file, but the regression gate finds its
baselines in one history: :func:`merge_histories` folds other files into it without duplicating runs.
:func:`export_runs` writes runs as JSON that :func:`merge_histories` reads back, and
:func:`pytest_benchmark_document` writes a run's timings the way ``pytest --benchmark-json`` does, so
that pytest-benchmark's ``compare`` and github-action-benchmark's ``pytest`` tool read them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from pytest_llmperf import store as store_mod
from pytest_llmperf.store import FINAL_STATUSES, HistoryError, HistoryStore

#: the ``format`` of a document written by :func:`export_runs`
EXPORT_FORMAT = "pytest-llmperf-history"

Row = dict[str, Any]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_USER_VERSION_OFFSET = 60
_SOURCE_FIX = "pass a history database written by `pytest --llmperf` or a JSON file written by `llmperf export`"

#: columns an export leaves out because its nesting implies them: integer ids are assigned anew on
#: import, and a row's parent is the object that holds it
_IMPLIED: dict[str, tuple[str, ...]] = {
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
_CHILDREN: dict[str, tuple[str, ...]] = {
    "runs": ("environment", "tests", "verdicts", "acceptances"),
    "tests": ("measurements", "budget_checks"),
    "measurements": ("trials", "results"),
}


def _current_version() -> int:
    return len(store_mod.MIGRATIONS)  # looked up at call time, as HistoryStore does


# --------------------------------------------------------------------------------------------------
# reading rows


def _rows(db: sqlite_utils.Database, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    cursor = db.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


def _by(rows: Iterable[Row], key: str) -> dict[Any, list[Row]]:
    grouped: dict[Any, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped


def _strip(table: str, row: Row) -> Row:
    return {k: v for k, v in row.items() if k not in _IMPLIED[table]}


def _own(table: str, obj: Row) -> Row:
    """An exported object's own columns, without its nested rows."""
    return {k: v for k, v in obj.items() if k not in _CHILDREN.get(table, ())}


_TESTS_OF_RUN = "SELECT id FROM tests WHERE run_id = ?"
_MEASUREMENTS_OF_RUN = f"SELECT id FROM measurements WHERE test_row_id IN ({_TESTS_OF_RUN})"


def _run_document(db: sqlite_utils.Database, run: Row, where: str, tables: set[str]) -> Row:
    """One run and every row that hangs off it, nested (a few indexed queries per run, not per row).
    Tables an older schema lacks are left out."""
    run_id = run["id"]
    env = _rows(db, "SELECT * FROM environments WHERE fingerprint = ?", [run["env_fingerprint"]])
    if not env:
        raise HistoryError(f"{where}: run {run_id!r} names environment {run['env_fingerprint']!r}, which is "
                           f"missing; the file is damaged: export the runs you need with `llmperf export --run ID`")
    tests = _rows(db, "SELECT * FROM tests WHERE run_id = ? ORDER BY id", [run_id])
    measurements = _by(_rows(db, f"SELECT * FROM measurements WHERE test_row_id IN ({_TESTS_OF_RUN}) ORDER BY id",
                             [run_id]), "test_row_id")
    trials = _by(_rows(db, f"SELECT * FROM trials WHERE measurement_id IN ({_MEASUREMENTS_OF_RUN}) ORDER BY id",
                       [run_id]), "measurement_id")
    results = _by(_rows(db, f"SELECT * FROM results WHERE measurement_id IN ({_MEASUREMENTS_OF_RUN}) ORDER BY id",
                        [run_id]), "measurement_id")
    checks = _by(_rows(db, f"SELECT * FROM budget_checks WHERE test_row_id IN ({_TESTS_OF_RUN}) ORDER BY id",
                       [run_id]), "test_row_id")

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
                          _rows(db, f"SELECT * FROM {table} WHERE run_id = ? ORDER BY id", [run_id])]
    return doc


def _unknown_run(store: HistoryStore, run_id: str) -> HistoryError:
    newest = [r[0] for r in store.db.execute("SELECT id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 3")]
    known = f"the newest are {', '.join(newest)}" if newest else "it holds no runs"
    return HistoryError(f"there is no run {run_id!r} in {store.path} ({known}); pass the id of a run it holds")


def _run_row(store: HistoryStore, run_id: str) -> Row:
    found = _rows(store.db, "SELECT * FROM runs WHERE id = ?", [run_id])
    if not found:
        raise _unknown_run(store, run_id)
    return found[0]


def _iter_run_documents(store: HistoryStore, run_ids: Sequence[str] | None = None) -> Iterator[Row]:
    if run_ids is None:
        runs: Iterable[Row] = _rows(store.db, "SELECT * FROM runs ORDER BY started_at, rowid")
    else:
        runs = [_run_row(store, run_id) for run_id in dict.fromkeys(run_ids)]  # every id checked before any yield
    tables = set(store.db.table_names())
    for run in runs:
        yield _run_document(store.db, run, store.path, tables)


# --------------------------------------------------------------------------------------------------
# export


def export_runs(store: HistoryStore, run_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs (all of them, oldest first, by default) as a JSON-serialisable document that
    :func:`merge_histories` imports back: each run row with its environment, its tests (each with its
    measurements, each with their trials and results, and its budget checks), verdicts and acceptances.
    """
    return {"format": EXPORT_FORMAT, "schema_version": store.schema_version(),
            "runs": list(_iter_run_documents(store, run_ids))}


def newest_run_id(store: HistoryStore) -> str:
    row = store.db.execute("SELECT id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1").fetchone()
    if row is None:
        raise HistoryError(f"{store.path} holds no runs; run `pytest --llmperf` first")
    return str(row[0])


def resolve_run_id(store: HistoryStore, text: str) -> str:
    """A run id from its full text or a prefix that only one run has (ids are long uuids)."""
    if store.db.execute("SELECT 1 FROM runs WHERE id = ?", [text]).fetchone() is not None:
        return text
    matches = [r[0] for r in store.db.execute(
        "SELECT id FROM runs WHERE substr(id, 1, ?) = ? ORDER BY started_at DESC LIMIT 6", [len(text), text])]
    if len(matches) == 1:
        return str(matches[0])
    if matches:
        raise HistoryError(f"run id {text!r} is ambiguous in {store.path}: it starts {', '.join(matches[:5])}"
                           f"{', ...' if len(matches) > 5 else ''}; give more of the id")
    raise _unknown_run(store, text)


# --------------------------------------------------------------------------------------------------
# merge


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
                        f"up to {_current_version()}; upgrade pytest-llmperf to merge it")


def _source_kind(path: Path) -> str:
    """'sqlite' or 'json', from the first bytes: the file is only read."""
    try:
        if path.is_dir():
            raise _not_history(path, "it is a directory")
        with path.open("rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        raise HistoryError(f"{path} does not exist; {_SOURCE_FIX}") from None
    except OSError as exc:
        raise HistoryError(f"cannot read {path} ({exc.strerror or exc}); check the path and its permissions") from exc
    if head.startswith(_SQLITE_MAGIC):
        if len(head) == 100:  # the version may also sit in the WAL: checked again on the copy
            found = int.from_bytes(head[_USER_VERSION_OFFSET:_USER_VERSION_OFFSET + 4], "big")
            if found > _current_version():
                raise _newer_error(path, found)
        return "sqlite"
    if head.lstrip()[:1] == b"{":
        return "json"
    raise _not_history(path, "neither a SQLite database nor JSON" if head else "the file is empty")


def _copy_sqlite(path: Path, workdir: Path) -> Path:
    """Copy the database (and its write-ahead log, which may hold committed rows) byte for byte:
    opening the source itself, even read-only, would leave -wal and -shm files beside it."""
    copy = workdir / "source.db"
    shutil.copyfile(path, copy)
    wal = path.with_name(path.name + "-wal")
    if wal.is_file():
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
    return copy


def _check_copy(copy: Path, source: Path) -> None:
    conn = sqlite3.connect(copy)
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise _not_history(source, f"unreadable SQLite: {exc}") from exc
    finally:
        conn.close()
    if found > _current_version():
        raise _newer_error(source, found)
    if found < 1 or "runs" not in tables:
        raise _not_history(source, "a SQLite database without pytest-llmperf's tables")


def _open_copy(copy: Path, source: Path) -> HistoryStore:
    try:
        return HistoryStore.open(copy)  # migrates the copy to this version's schema
    except HistoryError as exc:
        raise HistoryError(f"{source}: cannot read it as a history ({exc})") from exc


def _load_json(path: Path) -> Row:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_history(path, f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise _not_history(path, f"JSON whose format is {found!r}, not {EXPORT_FORMAT!r}")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1 or not isinstance(doc.get("runs"), list):
        raise _not_history(path, "an export without a schema_version >= 1 and a list of runs")
    if version > _current_version():
        raise _newer_error(path, version)
    return doc


class _Columns:
    """The columns of a database's tables, to name a source's unknown columns instead of failing in SQL."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._known = {t: set(db[t].columns_dict) for t in _IMPLIED if db[t].exists()}

    def check(self, table: str, row: Row, where: str) -> Row:
        unknown = set(row) - self._known.get(table, set())
        if unknown:
            raise HistoryError(f"{where}: {table} rows have columns this pytest-llmperf does not know "
                               f"({', '.join(sorted(unknown))}); upgrade pytest-llmperf to merge it")
        return row


def _insert_run(db: sqlite_utils.Database, doc: Row, columns: _Columns, where: str) -> None:
    """Insert one exported run; its integer ids are assigned here, its parent links follow the nesting."""
    run = columns.check("runs", _own("runs", doc), where)
    run_id = run["id"]
    db["environments"].insert(columns.check("environments", doc["environment"], where), ignore=True)
    db["runs"].insert(run)
    for test in doc["tests"]:
        test_row = columns.check("tests", _own("tests", test), where)
        test_row_id = db["tests"].insert({**test_row, "run_id": run_id}).last_pk
        for m in test["measurements"]:
            m_row = columns.check("measurements", _own("measurements", m), where)
            measurement_id = db["measurements"].insert({**m_row, "test_row_id": test_row_id, "run_id": run_id}).last_pk
            db["trials"].insert_all({**columns.check("trials", t, where), "measurement_id": measurement_id}
                                    for t in m["trials"])
            db["results"].insert_all({**columns.check("results", r, where), "measurement_id": measurement_id,
                                      "run_id": run_id} for r in m["results"])
        db["budget_checks"].insert_all({**columns.check("budget_checks", c, where), "test_row_id": test_row_id,
                                        "run_id": run_id} for c in test["budget_checks"])
    for table in ("verdicts", "acceptances"):  # absent from exports of schemas before they existed
        db[table].insert_all({**columns.check(table, r, where), "run_id": run_id} for r in doc.get(table, ()))


def _store_from_old_export(doc: Row, path: Path, workdir: Path) -> HistoryStore:
    """An export of an older schema, written into a database of that version and then migrated, so that
    its rows go through the same migrations as an old database would."""
    copy = workdir / "export.db"
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        db = sqlite_utils.Database(conn, execute_plugins=False)
        for migration in store_mod.MIGRATIONS[:doc["schema_version"]]:
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
    return _open_copy(copy, path)


def _malformed(path: Path, exc: BaseException) -> HistoryError:
    return HistoryError(f"{path}: malformed export ({type(exc).__name__}: {exc}); export it again with "
                        f"`llmperf export --db HISTORY --out FILE`")


@contextmanager
def _open_source(path: Path, workdir: Path) -> Iterator[Iterable[Row]]:
    """The run documents of one source, read from a private copy or from its JSON."""
    if _source_kind(path) == "json":
        doc = _load_json(path)
        if doc["schema_version"] == _current_version():
            yield doc["runs"]
            return
        with _store_from_old_export(doc, path, workdir) as s:
            yield _iter_run_documents(s)
        return
    copy = _copy_sqlite(path, workdir)
    _check_copy(copy, path)
    with _open_copy(copy, path) as s:
        yield _iter_run_documents(s)


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


def merge_histories(dest: HistoryStore, sources: Sequence[Path]) -> MergeReport:
    """Import every run of other histories (databases or :func:`export_runs` JSON) into ``dest``.

    A run whose id ``dest`` holds is skipped, unless ``dest`` holds it as 'running' and the source has
    it finished: then the source's copy replaces it. Sources are never written: each database is
    copied and the copy migrated. Every source is read and checked before ``dest`` is written, and
    everything is written in one transaction.
    """
    paths = [Path(s) for s in sources]
    for path in paths:
        _source_kind(path)  # a missing or foreign file is reported before any copying
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmperf-merge-")))
        opened: list[tuple[Path, Iterable[Row]]] = []
        for i, path in enumerate(paths):
            workdir = tmp / str(i)
            workdir.mkdir()
            opened.append((path, stack.enter_context(_open_source(path, workdir))))
        with dest.transaction() as db:
            columns = _Columns(db)
            counts = [_merge_runs(db, path, runs, columns) for path, runs in opened]
    return MergeReport.of(counts)


# --------------------------------------------------------------------------------------------------
# pytest-benchmark


def _benchmark_stats(data: Sequence[float]) -> Row:
    """The ``stats`` of one benchmark, computed by pytest-benchmark's own class so that every field
    (quartile method, outlier counts, ops) is what its readers expect."""
    from pytest_benchmark.stats import Stats

    stats = Stats()
    for value in data:
        stats.update(float(value))
    return {**stats.as_dict(), "data": [float(v) for v in data], "iterations": 1}


def _node_name(test_id: str) -> str:
    """pytest's ``node.name`` of a node id: the last ``::`` part, parameters included."""
    base, bracket, params = test_id.partition("[")
    return base.rsplit("::", 1)[-1] + bracket + params


def _options(min_rounds: int | None, warmups: int | None) -> Row:
    return {"disable_gc": False, "timer": "perf_counter", "min_rounds": min_rounds, "max_time": None,
            "min_time": None, "warmup": bool(warmups)}


def _benchmark(test: Row, suffix: str, group: str, params: Row | None, data: Sequence[float], extra_info: Row,
               options: Row) -> Row:
    return {
        "group": group,
        "name": f"{_node_name(test['test_id'])}::{suffix}",
        "fullname": f"{test['test_id']}::{suffix}",
        "params": params,
        "param": None if params is None else "-".join(str(v) for v in params.values()),
        "extra_info": extra_info,
        "options": options,
        "stats": _benchmark_stats(data),
    }


def _describe(run: Row, test: Row) -> Row:
    return {"run_id": run["id"], "model_id": test["model_id"], "backend": test["backend"], "variant": test["variant"],
            "dtype": test["dtype"], "world_size": test["world_size"], "test_outcome": test["outcome"]}


def _value(results: dict[str, Row], metric: str) -> float | None:
    return results[metric]["value"] if metric in results else None


def _series_key(results: dict[str, Row], metric: str) -> str | None:
    return results[metric]["series_key"] if metric in results else None


def _generate_benchmarks(run: Row, test: Row, m: Row, trials: list[Row], results: dict[str, Row],
                         label: str) -> list[Row]:
    params = {"batch_size": m["batch_size"], "prompt_tokens": m["prompt_tokens"], "new_tokens": m["new_tokens"]}
    shared = {**_describe(run, test), **params, "streams": m["streams"],
              "tokens_per_s": _value(results, "tokens_per_s"), "tpot_ms": _value(results, "tpot_ms")}
    options = _options(m["trials_requested"], m["warmups"])
    # each series key names the glossary metric its values come from: ttft's is ttft_ms, in ms
    return [
        _benchmark(test, f"e2e_s[{label}]", "e2e_s", params, [t["e2e_s"] for t in trials],
                   {**shared, "unit": "s", "series_metric": "e2e_s", "series_key": _series_key(results, "e2e_s")},
                   options),
        _benchmark(test, f"ttft_s[{label}]", "ttft_s", params, [t["ttft_s"] for t in trials],
                   {**shared, "unit": "s", "series_metric": "ttft_ms", "series_key": _series_key(results, "ttft_ms")},
                   options),
    ]


def _config_label(m: Row, ambiguous: bool) -> str:
    label = f"batch_size={m['batch_size']}"
    if ambiguous:  # several configurations of one batch size in a test
        label += f",prompt_tokens={m['prompt_tokens']},new_tokens={m['new_tokens']},streams={m['streams']}"
    return label


def _test_benchmarks(db: sqlite_utils.Database, run: Row, test: Row) -> list[Row]:
    measurements = _rows(db, "SELECT * FROM measurements WHERE test_row_id = ? ORDER BY id", [test["id"]])
    per_batch = defaultdict(int)
    for m in measurements:
        per_batch[m["batch_size"]] += m["kind"] == "generate"
    out: list[Row] = []
    for m in measurements:
        results = {r["metric"]: r for r in _rows(db, "SELECT * FROM results WHERE measurement_id = ?", [m["id"]])}
        if m["kind"] == "load" and "load_s" in results:
            out.append(_benchmark(test, "load_s", "load_s", None, [results["load_s"]["value"]],
                                  {**_describe(run, test), "unit": "s", "series_metric": "load_s",
                                   "series_key": _series_key(results, "load_s")}, _options(1, 0)))
        elif m["kind"] == "generate" and m["outcome"] == "ok":
            trials = _rows(db, "SELECT ttft_s, e2e_s FROM trials WHERE measurement_id = ? ORDER BY idx", [m["id"]])
            if trials:
                label = _config_label(m, per_batch[m["batch_size"]] > 1)
                out.extend(_generate_benchmarks(run, test, m, trials, results, label))
    return out


def _benchmark_version() -> str:
    from pytest_llmperf.environment import package_version

    return package_version("pytest-benchmark") or "4.0.0"


def _machine_info(run: Row, env: Row) -> Row:
    """pytest-benchmark's machine_info keys (None where the history did not record it), then the device."""
    return {
        "node": run["host"], "processor": run["cpu_model"], "machine": None, "python_compiler": None,
        "python_implementation": None, "python_implementation_version": None, "python_version": env["python"],
        "python_build": None, "release": None, "system": None,
        "cpu": {"brand_raw": run["cpu_model"], "count": run["cpu_count"]},
        "platform": run["platform"], **env,
    }


def _commit_info(run: Row) -> Row:
    root = run["project_root"]
    return {"id": run["git_commit"] or "unknown", "time": None, "author_time": None,
            "dirty": bool(run["git_dirty"]), "project": Path(root).name if root else None,
            "branch": run["git_branch"] or "(unknown)"}


def pytest_benchmark_document(store: HistoryStore, run_id: str) -> dict[str, Any]:
    """A run's timings in the format of ``pytest --benchmark-json``.

    Per test and generate configuration: one benchmark of the end-to-end seconds of each trial and one
    of the time to first token; per test: its load seconds as a one-round benchmark. ``extra_info``
    carries tokens_per_s, tpot_ms (medians) and the series key.
    """
    run = _run_row(store, run_id)
    env = _rows(store.db, "SELECT * FROM environments WHERE fingerprint = ?", [run["env_fingerprint"]])
    tests = _rows(store.db, "SELECT * FROM tests WHERE run_id = ? ORDER BY id", [run_id])
    return {
        "machine_info": _machine_info(run, env[0] if env else {}),
        "commit_info": _commit_info(run),
        "benchmarks": [b for test in tests for b in _test_benchmarks(store.db, run, test)],
        "datetime": run["started_at"],
        "version": _benchmark_version(),
    }


# --------------------------------------------------------------------------------------------------
# prune


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
