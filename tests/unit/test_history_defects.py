"""Defects found at the history's edges, each pinned by a test that failed before its fix."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from pytest_llmperf.dashboard.site import build_dashboard
from pytest_llmperf.history.errors import HistoryError
from pytest_llmperf.history.merge import merge_into
from pytest_llmperf.history.schema import SCHEMA_VERSION
from pytest_llmperf.history.store import HistoryStore
from tests.factories import GPU_ENV, make_generate, make_record, run_context

OLD = "2025-03-01T10:00:00+00:00"
NEW = "2025-03-02T10:00:00+00:00"


def _history(path: Path) -> Path:
    """Two complete runs of one test: 'old' and 'new'."""
    with HistoryStore.open(path) as store:
        for run_id, started in (("old", OLD), ("new", NEW)):
            store.start_run(run_id, GPU_ENV, run_context(), started_at=started)
            store.record_test(run_id, make_record(make_generate(1, 0.5), make_generate(8, 1.0)), test_outcome="passed")
            store.finish_run(run_id, "complete")
    return path


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a folder: its bytes and mtime."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def _age(folder: Path) -> None:
    for p in folder.iterdir():
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


def _newer_version_only_in_the_wal(tmp_path: Path) -> Path:
    """A history whose newer schema version a writer committed to the log but never checkpointed: the files of
    a live (or killed) newer pytest-llmperf, copied while it held them."""
    live = _history(tmp_path / "live" / "history.db")
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    for name in ("history.db", "history.db-wal", "history.db-shm"):
        shutil.copyfile(live.parent / name, frozen / name)
    conn.close()
    path = frozen / "history.db"
    assert int.from_bytes(path.read_bytes()[60:64], "big") == SCHEMA_VERSION  # the file's header: still ours
    _age(frozen)
    return path


# ---- D4: a newer schema whose version is only in the WAL is refused without a byte changing ------------------


@pytest.mark.parametrize("opening", ["open", "open_read_only"])
def test_a_newer_schema_only_in_the_wal_is_refused_and_its_files_stay_as_they_were(tmp_path: Path,
                                                                                    opening: str) -> None:
    path = _newer_version_only_in_the_wal(tmp_path)
    before = _files(path.parent)
    with pytest.raises(HistoryError, match=f"schema version {SCHEMA_VERSION + 1}"):
        getattr(HistoryStore, opening)(path)
    assert _files(path.parent) == before  # the file, its -wal and its -shm: bytes, mtimes, none added or removed


# ---- D8b: the fix an error suggests names the caller's option ------------------------------------------------


def test_errors_name_the_option_the_caller_says_names_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "history.db"
    garbage.write_text("not a database\n" * 20)
    with pytest.raises(HistoryError) as default:
        HistoryStore.open(garbage)
    assert "use --llmperf-db PATH" in str(default.value)
    for opening in (HistoryStore.open, HistoryStore.open_read_only):
        with pytest.raises(HistoryError) as err:
            opening(garbage, flag="--db")
        assert "use --db PATH" in str(err.value) and "--llmperf-db" not in str(err.value)
    with pytest.raises(HistoryError, match="use --db PATH"):
        HistoryStore.open(tmp_path, flag="--db")  # a directory
    newer = _history(tmp_path / "newer.db")
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(HistoryError, match="or use --db to point at another file"):
        HistoryStore.open(newer, flag="--db")


# ---- D7: accepting a pattern that matches no test of the run -------------------------------------------------


def test_an_acceptance_that_matches_no_test_of_the_run_is_refused_and_not_stored(tmp_path: Path) -> None:
    path = _history(tmp_path / "history.db")
    with HistoryStore.open(path) as store:
        with pytest.raises(HistoryError) as err:
            store.accept("new", "suites/*::test_nosuch", "slower by design")
        message = str(err.value)
        assert "'suites/*::test_nosuch'" in message and "'new'" in message and "t.py::test_x" in message
        assert store.db.execute("SELECT count(*) FROM acceptances").fetchone()[0] == 0
        store.accept("new", "t.py::*", "slower by design")  # a pattern that matches is stored
        assert store.db.execute("SELECT count(*) FROM acceptances").fetchone()[0] == 1


# ---- D8a: a merge that refuses a source creates nothing ------------------------------------------------------


def test_a_merge_that_refuses_a_source_does_not_create_the_destination(tmp_path: Path) -> None:
    good = _history(tmp_path / "good.db")
    bad = tmp_path / "notes.txt"
    bad.write_text("run_id,metric,value\n")
    dest = tmp_path / "out" / "merged.db"
    with pytest.raises(HistoryError, match="is not a pytest-llmperf history"):
        merge_into(dest, [good, bad])
    assert not dest.parent.exists()
    broken = tmp_path / "broken.json"  # passes the checks of the file, fails on its rows
    broken.write_text(f'{{"format": "pytest-llmperf-history", "schema_version": {SCHEMA_VERSION}, '
                      '"runs": [{"id": "x"}]}')
    with pytest.raises(HistoryError, match="malformed export"):
        merge_into(tmp_path / "merged.db", [good, broken])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("merged")) == []
    report = merge_into(tmp_path / "merged.db", [good])
    assert report.runs_added == 2


# ---- D8e: the last N runs, not the last N rows ---------------------------------------------------------------


def test_recent_results_are_every_result_of_the_newest_runs(tmp_path: Path) -> None:
    with HistoryStore.open(_history(tmp_path / "history.db")) as store:
        everything = store.recent_results(last=100)
        newest = store.recent_results(last=1)
        assert {r.run_id for r in newest} == {"new"}
        assert len(newest) == len([r for r in everything if r.run_id == "new"]) > 1
        assert {(r.run_id, r.batch_size) for r in store.recent_results(metric="tokens_per_s", last=1)} == {
            ("new", 1), ("new", 8)}


# ---- D3: the dashboard reads through the history's checks and leaves the file as it was ----------------------


def test_reading_a_history_leaves_its_folder_as_it_was(tmp_path: Path) -> None:
    path = _history(tmp_path / "db" / "history.db")
    _age(path.parent)
    before = _files(path.parent)
    with HistoryStore.open_read_only(path) as store:
        assert len(store.recent_results(last=100)) > 0
        with pytest.raises(HistoryError, match="read-only"):
            store.finish_run("new", "failed")
    counts = build_dashboard(path, tmp_path / "site")
    assert counts["runs"] == 2
    assert _files(path.parent) == before  # no -wal or -shm beside it, the file unchanged


def test_reading_a_history_a_writer_holds_open_sees_its_committed_rows(tmp_path: Path) -> None:
    path = _history(tmp_path / "history.db")
    with HistoryStore.open(path) as writer:
        writer.start_run("live", GPU_ENV, run_context(), started_at="2025-03-03T10:00:00+00:00")
        with HistoryStore.open_read_only(path) as reader:
            assert reader.run("live") is not None


def test_reading_an_older_history_upgrades_a_copy_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llmperf.history import schema

    path = tmp_path / "history.db"
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])
    _history(path)
    monkeypatch.undo()
    before = _files(tmp_path)
    with HistoryStore.open_read_only(path) as store:
        assert (store.found_version, store.schema_version()) == (3, SCHEMA_VERSION)
        assert store.run("new")["conditions"] is None  # a v4 column, read from the upgraded copy
    assert _files(tmp_path) == before


@pytest.mark.parametrize("kind", ["garbage", "newer", "missing"])
def test_the_dashboard_refuses_a_file_the_history_cannot_use(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "history.db"
    if kind == "garbage":
        path.write_text("run_id,metric,value\n" * 20)
    elif kind == "newer":
        _history(path)
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
    before = _files(tmp_path)
    expected = {"garbage": "is not a readable SQLite database", "newer": f"schema version {SCHEMA_VERSION + 1}",
                "missing": "no history database at"}[kind]
    with pytest.raises(HistoryError, match=expected):
        build_dashboard(path, tmp_path / "site", flag="--db")
    assert not (tmp_path / "site").exists()
    assert _files(tmp_path) == before
