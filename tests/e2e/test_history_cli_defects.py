"""The ``llmperf`` commands at the history's edges: each refuses with one line, and leaves files as they were."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pytest_llmperf.cli import main
from pytest_llmperf.history.schema import SCHEMA_VERSION
from pytest_llmperf.history.store import HistoryStore
from tests.factories import GPU_ENV, make_generate, make_record, run_context


def _history(path: Path) -> Path:
    """Two complete runs of one test, a day apart."""
    with HistoryStore.open(path) as store:
        for run_id, day in (("old", "2025-03-01"), ("new", "2025-03-02")):
            store.start_run(run_id, GPU_ENV, run_context(), started_at=f"{day}T10:00:00+00:00")
            store.record_test(run_id, make_record(make_generate(1, 0.5), make_generate(8, 1.0)), test_outcome="passed")
            store.finish_run(run_id, "complete")
    return path


def _folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.mark.parametrize("kind", ["garbage", "newer"])
def test_dashboard_refuses_a_file_the_history_cannot_use_in_one_line(tmp_path: Path, capsys, kind: str) -> None:
    db = tmp_path / "db" / "history.db"
    if kind == "garbage":
        db.parent.mkdir()
        db.write_text("run_id,metric,value\n" * 20)
    else:
        _history(db)
        conn = sqlite3.connect(db)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
    before = _folder(db.parent)
    assert main(["dashboard", "--db", str(db), "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("llmperf: ")
    assert str(db) in err
    assert ("is not a readable SQLite database" if kind == "garbage" else f"schema version {SCHEMA_VERSION + 1}") in err
    assert not (tmp_path / "site").exists()
    assert _folder(db.parent) == before


def test_dashboard_leaves_no_wal_or_shm_beside_the_file_it_reads(tmp_path: Path, capsys) -> None:
    db = _history(tmp_path / "db" / "history.db")
    before = _folder(db.parent)
    assert main(["dashboard", "--db", str(db), "--out", str(tmp_path / "site"), "--branch", "main"]) == 0
    assert (tmp_path / "site" / "index.html").is_file()
    assert _folder(db.parent) == before


def test_accept_of_a_pattern_that_matches_no_test_stores_nothing_and_fails(tmp_path: Path, capsys) -> None:
    db = _history(tmp_path / "history.db")
    code = main(["accept", "--db", str(db), "--test", "suites/*::test_nosuch", "--reason", "slower by design"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'suites/*::test_nosuch' matches no test of run 'new'" in err and "t.py::test_x" in err
    with HistoryStore.open(db) as store:
        assert store.db.execute("SELECT count(*) FROM acceptances").fetchone()[0] == 0


def test_merge_that_refuses_a_source_creates_no_destination(tmp_path: Path, capsys) -> None:
    good = _history(tmp_path / "good.db")
    bad = tmp_path / "results.csv"
    bad.write_text("run_id,metric,value\n")
    dest = tmp_path / "merged.db"
    assert main(["merge", "--db", str(dest), str(good), str(bad)]) == 2
    assert "is not a pytest-llmperf history" in capsys.readouterr().err
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.db", "results.csv"]


def test_history_last_counts_runs_not_rows(tmp_path: Path, capsys) -> None:
    db = _history(tmp_path / "history.db")
    with HistoryStore.open(db) as store:
        newest = len(store.recent_results(last=1))
    assert main(["history", "--db", str(db), "--last", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("2025-03-02 10:00:00") == newest > 1  # every result of the newest run
    assert "2025-03-01" not in out
