"""History management: merging histories, exporting runs, pytest-benchmark documents and pruning."""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from pytest_llmperf.cli import main
from pytest_llmperf.environment import Environment
from pytest_llmperf.history import merge as merge_mod
from pytest_llmperf.history import schema as schema_mod
from pytest_llmperf.history.benchmark_json import pytest_benchmark_document
from pytest_llmperf.history.errors import HistoryError
from pytest_llmperf.history.export import EXPORT_FORMAT, export_runs
from pytest_llmperf.history.merge import MergeReport, merge_histories
from pytest_llmperf.history.prune import prune_history
from pytest_llmperf.history.schema import SCHEMA_VERSION
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.conditions import Conditions, CpuConditions
from pytest_llmperf.measure.nvml import GpuState
from pytest_llmperf.results import (
    BenchRecord,
    BudgetCheck,
    GenerateConfig,
    GenerateResult,
    LoadResult,
    MemoryPeak,
    PageCache,
    Trial,
)
from tests.factories import CPU_ENV as CPU
from tests.factories import GPU_ENV as GPU
from tests.factories import QWEN, run_context
from tests.history_rows import count, rows

CTX = run_context()
TABLES = ("environments", "runs", "tests", "measurements", "trials", "results", "budget_checks", "verdicts",
          "acceptances")
#: the integer foreign keys, and the table each points into
PARENTS = {"measurements": ("test_row_id", "tests"), "trials": ("measurement_id", "measurements"),
           "results": ("measurement_id", "measurements"), "budget_checks": ("test_row_id", "tests")}


def _generate(batch: int, ttft: float, tpot: float, *, outcome: str = "ok") -> GenerateResult:
    config = GenerateConfig(batch_size=batch, prompt_tokens=128, new_tokens=64, trials=5, warmups=1)
    if outcome == "oom":
        return GenerateResult(config=config, outcome="oom", error="CUDA out of memory. Tried to allocate 2.00 GiB")
    trials = tuple(Trial(ttft_s=ttft * j, e2e_s=(ttft + tpot * 63) * j, batch_size=batch, new_tokens=64)
                   for j in (1.00, 1.03, 0.98, 1.01, 0.99))
    return GenerateResult(config=config, outcome="ok", trials=trials,
                          memory=MemoryPeak(peak_bytes=1_071_644_672, reserved_bytes=None, method="cuda"),
                          kv_cache_bytes=2_359_296 * batch)


def make_record(test_id: str = "tests/perf/test_qwen.py::test_generate[eager]", *, speed: float = 1.0) -> BenchRecord:
    """A load, two generate configurations that ran, one that ran out of memory, and three budgets."""
    return BenchRecord(
        test_id=test_id, model=QWEN, backend="hf", variant="eager", world_size=1, seed=1234,
        load=LoadResult(load_s=3.42 * speed, phases=(("read", 2.9 * speed), ("to_device", 0.52 * speed)),
                        weights_bytes=988_065_536,
                        memory=MemoryPeak(peak_bytes=1_050_673_152, reserved_bytes=None, method="cuda"),
                        page_cache=PageCache(resident_fraction=0.97), devices=("cuda:0",)),
        first_generate_s=1.84,
        generates=(_generate(1, 0.0213 * speed, 0.0198 * speed), _generate(8, 0.0542 * speed, 0.0231 * speed),
                   _generate(512, 0, 0, outcome="oom")),
        budget_checks=(
            BudgetCheck(metric="load_s", bound="max", limit=10.0, batch_size=None, measured=3.42, outcome="pass"),
            BudgetCheck(metric="tokens_per_s", bound="min", limit=300.0, batch_size=8, measured=310.0,
                        outcome="pass"),
            BudgetCheck(metric="ttft_ms", bound="max", limit=50.0, batch_size=512, measured=None,
                        outcome="unmeasured"),
        ),
    )


def add_run(s: HistoryStore, run_id: str, *, started_at: str = "2025-03-01T10:00:00+00:00", env: Environment = GPU,
            tests: tuple[str, ...] = ("tests/perf/test_qwen.py::test_generate[eager]",),
            status: str | None = "complete", speed: float = 1.0) -> None:
    s.start_run(run_id, env, CTX, started_at=started_at, label=f"label-{run_id}")
    for test_id in tests:
        s.record_test(run_id, make_record(test_id, speed=speed), test_outcome="passed", duration_s=41.7)
    if status is not None:
        s.finish_run(run_id, status)


def add_verdict(s: HistoryStore, run_id: str, baseline: str) -> None:
    with s.transaction() as db:
        db["verdicts"].insert({"run_id": run_id, "series_key": "09dcb9fa25c06580", "baseline_kind": "history",
                               "baseline_run_ids": json.dumps([baseline]), "outcome": "regressed", "ratio": 0.91,
                               "ci_low": 0.88, "ci_high": 0.94, "p_value": 0.001, "n_base": 15, "n_head": 5,
                               "min_effect": 0.03, "created_at": "2025-03-01T11:00:00+00:00",
                               "test_id": "tests/perf/test_qwen.py::test_generate[eager]", "metric": "tokens_per_s",
                               "batch_size": 8, "method": "mann-whitney"})


def canonical(s: HistoryStore) -> dict[str, list[tuple]]:
    """Every table's rows, integer ids left out and each integer link replaced by the row it points to:
    equal for two files that hold the same data under different ids."""
    by_id: dict[str, dict[int, tuple]] = {}
    out: dict[str, list[tuple]] = {}
    for table in TABLES:
        by_id[table] = {}
        canon = []
        for r in rows(s, f"SELECT * FROM {table}"):
            c = dict(r)
            if table in PARENTS:
                column, parent = PARENTS[table]
                c[column] = by_id[parent][r[column]]
            if table not in ("runs", "environments"):
                del c["id"]
                by_id[table][r["id"]] = tuple(sorted(c.items()))
            canon.append(tuple(sorted(c.items())))
        out[table] = sorted(canon, key=repr)
    return out


def snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    """Two CI shards: each ran its own run, and both hold a copy of the run 'shared'."""
    a, b = tmp_path / "shard-a.db", tmp_path / "shard-b.db"
    with HistoryStore.open(a) as s:
        add_run(s, "a1", started_at="2025-03-01T10:00:00+00:00",
                tests=("tests/perf/test_qwen.py::test_generate[eager]", "tests/perf/test_qwen.py::test_load"))
        add_run(s, "shared", started_at="2025-03-02T10:00:00+00:00")
        add_verdict(s, "shared", baseline="a1")
        s.accept("shared", "tests/perf/*", "new attention kernel, slower at batch 8")
    with HistoryStore.open(b) as s:
        add_run(s, "b1", started_at="2025-03-01T11:00:00+00:00", env=CPU)
        add_run(s, "shared", started_at="2025-03-02T10:00:00+00:00")
    return a, b


# ---- merge -----------------------------------------------------------------------------------------


def test_merge_of_two_shards_with_an_overlapping_run_has_no_duplicates(tmp_path: Path, shards) -> None:
    a, b = shards
    with HistoryStore.open(a) as s:
        shard_a = canonical(s)
    with HistoryStore.open(tmp_path / "merged.db") as dest:
        report = merge_histories(dest, [a, b])
        assert isinstance(report, MergeReport)
        assert (report.runs_added, report.runs_replaced, report.runs_skipped) == (3, 0, 1)
        assert [(c.source, c.runs_added, c.runs_skipped) for c in report.sources] == [(str(a), 2, 0), (str(b), 1, 1)]
        assert sorted(r["id"] for r in rows(dest, "SELECT id FROM runs")) == ["a1", "b1", "shared"]
        assert count(dest, "tests") == 4  # a1: 2 tests, shared: 1 (once), b1: 1
        assert count(dest, "environments") == 2
        assert count(dest, "measurements") == 4 * 4 and count(dest, "trials") == 4 * 10
        assert count(dest, "budget_checks") == 4 * 3
        # the first copy of 'shared' came in, with its verdict and acceptance
        assert count(dest, "verdicts", "run_id = 'shared'") == 1 and count(dest, "acceptances") == 1
        merged = canonical(dest)
        for table in TABLES:
            assert set(shard_a[table]) <= set(merged[table]), table  # every row of shard a, ids aside

        again = merge_histories(dest, [a, b])
        assert (again.runs_added, again.runs_replaced, again.runs_skipped) == (0, 0, 4)
        assert canonical(dest) == merged


@pytest.mark.parametrize(("held", "incoming", "replaced"), [
    ("running", "complete", True), ("running", "interrupted", True), ("complete", "failed", False),
    ("running", "running", False), ("failed", "running", False),
])
def test_a_run_held_as_running_is_replaced_only_by_a_finished_copy(tmp_path: Path, held: str, incoming: str,
                                                                   replaced: bool) -> None:
    source = tmp_path / "source.db"
    with HistoryStore.open(source) as s:
        add_run(s, "r", tests=("t.py::test_a", "t.py::test_b", "t.py::test_c"),
                status=None if incoming == "running" else incoming)
    with HistoryStore.open(tmp_path / "dest.db") as dest:
        add_run(dest, "r", tests=("t.py::test_a",), status=None if held == "running" else held)
        report = merge_histories(dest, [source])
        assert (report.runs_added, report.runs_replaced, report.runs_skipped) == (0, int(replaced), int(not replaced))
        assert dest.run("r")["status"] == (incoming if replaced else held)
        n_tests = 3 if replaced else 1
        assert count(dest, "tests") == n_tests
        # the replaced copy's rows went with it: nothing is left pointing nowhere
        assert count(dest, "measurements") == 4 * n_tests and count(dest, "results", "run_id = 'r'") == \
            count(dest, "results")
        assert dest.db.execute("PRAGMA foreign_key_check").fetchall() == []


def test_merging_an_older_schema_source_leaves_it_byte_identical(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "old" / "history.db"
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:2])
    with HistoryStore.open(old) as s:
        assert s.schema_version() == 2
        s.start_run("v2run", GPU, CTX, started_at="2024-11-01T10:00:00+00:00")
        with s.transaction() as db:  # a v2 test row: no gate column yet
            db["tests"].insert({"run_id": "v2run", "test_id": "t.py::test_old", "outcome": "passed",
                                "recorded_at": "2024-11-01T10:01:00+00:00", "model_id": QWEN.model_id,
                                "model_config_hash": QWEN.config_hash, "dtype": "bfloat16", "backend": "hf",
                                "variant": "eager", "world_size": 1, "correctness_outcome": "match"})
        s.finish_run("v2run", "complete")
    monkeypatch.undo()
    os.utime(old, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = snapshot(old)

    with HistoryStore.open(tmp_path / "dest.db") as dest:
        report = merge_histories(dest, [old])
        assert report.runs_added == 1
        assert dest.schema_version() == SCHEMA_VERSION
        (test,) = rows(dest, "SELECT * FROM tests")
        assert (test["test_id"], test["correctness_outcome"], test["gate"]) == ("t.py::test_old", "match", None)
        assert dest.run("v2run")["status"] == "complete"
    assert snapshot(old) == before  # bytes, mtime, and no -wal / -shm beside it
    assert int.from_bytes(old.read_bytes()[60:64], "big") == 2


def test_a_newer_schema_source_is_refused_and_nothing_is_merged(tmp_path: Path, shards) -> None:
    a, _ = shards
    newer = tmp_path / "newer.db"
    with HistoryStore.open(newer) as s:
        add_run(s, "future")
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with HistoryStore.open(tmp_path / "dest.db") as dest:
        with pytest.raises(HistoryError) as err:
            merge_histories(dest, [a, newer])
        message = str(err.value)
        assert str(newer) in message and f"schema version {SCHEMA_VERSION + 1}" in message
        assert "upgrade pytest-llmperf" in message
        assert count(dest, "runs") == 0  # the good first source was not merged either


def _bad_sources(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    tmp_path = tmp_path / "bad"
    tmp_path.mkdir()
    text = tmp_path / "results.csv"
    text.write_text("run_id,metric,value\nr1,load_s,3.4\n")
    other_json = tmp_path / "benchmark.json"
    other_json.write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"format": "pytest-llmperf-history", "runs": [')
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    return {
        "text": (text, "neither a SQLite database nor JSON"),
        "other json": (other_json, "JSON whose format is None, not 'pytest-llmperf-history'"),
        "broken json": (broken_json, "invalid JSON"),
        "empty": (empty, "the file is empty"),
        "foreign sqlite": (foreign, "a SQLite database without pytest-llmperf's tables"),
        "directory": (tmp_path, "it is a directory"),
        "missing": (tmp_path / "missing.db", "does not exist"),
    }


@pytest.mark.parametrize("kind", ["text", "other json", "broken json", "empty", "foreign sqlite", "directory",
                                  "missing"])
def test_a_source_that_is_not_a_history_is_refused_clearly(tmp_path: Path, shards, kind: str) -> None:
    a, _ = shards
    bad, problem = _bad_sources(tmp_path)[kind]
    before = snapshot(bad) if bad.is_file() else None
    with HistoryStore.open(tmp_path / "dest.db") as dest:
        with pytest.raises(HistoryError) as err:
            merge_histories(dest, [a, bad])
        message = str(err.value)
        assert str(bad) in message and problem in message
        if kind != "missing":
            assert "is not a pytest-llmperf history" in message
        assert "`llmperf export`" in message  # the fix: what a source may be
        assert count(dest, "runs") == 0
    if before is not None:
        assert snapshot(bad) == before


def test_the_merge_is_one_transaction(tmp_path: Path, shards, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = shards
    dest_path = tmp_path / "dest.db"
    with HistoryStore.open(dest_path) as dest:
        add_run(dest, "mine")
        before = canonical(dest)
        real_insert_run = merge_mod._insert_run
        inserted: list[str] = []

        def interrupted(db: sqlite_utils.Database, doc: dict, *args: Any) -> None:
            if len(inserted) == 2:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the second source
            inserted.append(doc["id"])
            real_insert_run(db, doc, *args)

        monkeypatch.setattr(merge_mod, "_insert_run", interrupted)
        with pytest.raises(KeyboardInterrupt):
            merge_histories(dest, [a, b])
        assert inserted == ["a1", "shared"]
        assert canonical(dest) == before
    with HistoryStore.open(dest_path) as dest:
        assert canonical(dest) == before


# ---- export ----------------------------------------------------------------------------------------


def _history_with_gaps(path: Path) -> None:
    """Runs whose rows have non-contiguous ids (reruns replace records), verdicts and acceptances."""
    with HistoryStore.open(path) as s:
        add_run(s, "old", started_at="2025-03-01T10:00:00+00:00", status=None)
        add_run(s, "new", started_at="2025-03-02T10:00:00+00:00", env=CPU, status=None, speed=1.2,
                tests=("tests/perf/test_qwen.py::test_generate[eager]", "tests/perf/test_qwen.py::test_b"))
        s.record_test("old", make_record(speed=0.9), test_outcome="failed")  # a rerun: ids move on
        s.finish_run("old", "complete")
        s.finish_run("new", "failed")
        add_verdict(s, "new", baseline="old")
        s.accept("new", "tests/perf/test_qwen.py::*", "bigger batch buffers", metric="tokens_per_s")


def test_export_then_merge_gives_back_the_same_rows(tmp_path: Path) -> None:
    original = tmp_path / "original.db"
    _history_with_gaps(original)
    with HistoryStore.open(original) as s:
        document = export_runs(s)
        expected = canonical(s)
    assert document["format"] == EXPORT_FORMAT and document["schema_version"] == SCHEMA_VERSION
    assert [r["id"] for r in document["runs"]] == ["old", "new"]  # oldest first
    new = document["runs"][1]
    assert new["environment"]["fingerprint"] == CPU.fingerprint() == new["env_fingerprint"]
    assert [t["test_id"] for t in new["tests"]] == ["tests/perf/test_qwen.py::test_generate[eager]",
                                                    "tests/perf/test_qwen.py::test_b"]
    measurement = new["tests"][0]["measurements"][1]
    assert (measurement["kind"], measurement["batch_size"], len(measurement["trials"])) == ("generate", 1, 5)
    assert "id" not in measurement and "test_row_id" not in measurement
    assert len(new["verdicts"]) == 1 and new["acceptances"][0]["reason"] == "bigger batch buffers"

    exported = tmp_path / "history.json"
    exported.write_text(json.dumps(document))
    with HistoryStore.open(tmp_path / "restored.db") as dest:
        report = merge_histories(dest, [exported])
        assert report.runs_added == 2
        assert canonical(dest) == expected
        assert export_runs(dest) == document


def test_run_conditions_and_the_clock_lock_survive_a_merge_and_an_export(tmp_path: Path) -> None:
    locked = replace(GPU, gpu_clocks_locked=True)
    gpu = GpuState(index=0, uuid="GPU-5f3c", name=GPU.device_model, sm_clock_mhz=1410, memory_clock_mhz=2619,
                   max_sm_clock_mhz=1980, max_memory_clock_mhz=2619, clocks_locked=True, persistence_mode=True,
                   clock_event_reasons=("applications_clocks_setting",), temperature_c=38, power_limit_w=700.0)
    cpu = CpuConditions(affinity=(0, 1), governors=("performance",), frequency_mhz={0: 3100.0, 1: 3050.0},
                        thread_variables={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": None},
                        load_average_1m=0.3)
    shard = tmp_path / "shard.db"
    with HistoryStore.open(shard) as s:
        s.start_run("locked", locked, CTX, started_at="2025-03-01T10:00:00+00:00",
                    conditions=Conditions("cuda", (gpu,), cpu))
        s.finish_run("locked", "complete")
        add_run(s, "plain", started_at="2025-03-02T10:00:00+00:00")
        expected = s.run("locked")["conditions"]
        document = export_runs(s)
    assert json.loads(document["runs"][0]["conditions"]) == expected
    assert document["runs"][0]["environment"]["gpu_clocks_locked"] == 1
    exported = tmp_path / "shard.json"
    exported.write_text(json.dumps(document))
    for source in (shard, exported):
        with HistoryStore.open(tmp_path / f"dest-{source.suffix[1:]}.db") as dest:
            assert merge_histories(dest, [source]).runs_added == 2
            assert dest.run("locked")["conditions"] == expected
            assert dest.run("plain")["conditions"] is None
            assert {r["fingerprint"]: r["gpu_clocks_locked"] for r in rows(dest, "SELECT * FROM environments")} == {
                locked.fingerprint(): 1, GPU.fingerprint(): None}


def test_export_of_chosen_runs_and_of_an_unknown_run(tmp_path: Path) -> None:
    _history_with_gaps(tmp_path / "h.db")
    with HistoryStore.open(tmp_path / "h.db") as s:
        assert [r["id"] for r in export_runs(s, ["new"])["runs"]] == ["new"]
        assert [r["id"] for r in export_runs(s, ["new", "old", "new"])["runs"]] == ["new", "old"]
        with pytest.raises(HistoryError, match="there is no run 'nope'"):
            export_runs(s, ["old", "nope"])


def test_an_export_of_an_older_schema_goes_through_the_migrations(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:2])
    with HistoryStore.open(tmp_path / "v2.db") as s:
        s.start_run("v2run", GPU, CTX, started_at="2024-11-01T10:00:00+00:00")
        s.finish_run("v2run", "interrupted")
        document = export_runs(s)
    monkeypatch.undo()
    assert document["schema_version"] == 2
    exported = tmp_path / "v2.json"
    exported.write_text(json.dumps(document))
    with HistoryStore.open(tmp_path / "dest.db") as dest:
        assert merge_histories(dest, [exported]).runs_added == 1
        assert dest.run("v2run")["status"] == "interrupted"

    document["schema_version"] = SCHEMA_VERSION + 1
    exported.write_text(json.dumps(document))
    with HistoryStore.open(tmp_path / "dest2.db") as dest, pytest.raises(HistoryError, match="upgrade pytest-llmperf"):
        merge_histories(dest, [exported])


def test_an_export_with_unknown_columns_is_refused(tmp_path: Path) -> None:
    _history_with_gaps(tmp_path / "h.db")
    with HistoryStore.open(tmp_path / "h.db") as s:
        document = export_runs(s, ["old"])
    document["runs"][0]["tests"][0]["shiny_new_column"] = 1
    exported = tmp_path / "h.json"
    exported.write_text(json.dumps(document))
    with HistoryStore.open(tmp_path / "dest.db") as dest:
        with pytest.raises(HistoryError, match=r"tests rows have columns .*\(shiny_new_column\).*upgrade"):
            merge_histories(dest, [exported])
        assert count(dest, "runs") == 0


# ---- pytest-benchmark ------------------------------------------------------------------------------


def test_pytest_benchmark_document_has_one_benchmark_per_test_and_batch(tmp_path: Path) -> None:
    with HistoryStore.open(tmp_path / "h.db") as s:
        add_run(s, "r1", tests=("tests/perf/test_qwen.py::test_generate[eager]", "tests/perf/test_qwen.py::test_b"))
        doc = pytest_benchmark_document(s, "r1")
        results = {(r["test_id"], r["batch_size"], r["metric"]): r for r in rows(s, "SELECT * FROM results")}
    json.dumps(doc)  # serialisable as it is
    assert set(doc) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert doc["commit_info"]["id"] == CTX.git.commit and doc["commit_info"]["branch"] == "main"
    assert doc["machine_info"]["node"] == "bench-01" and doc["machine_info"]["device_model"] == GPU.device_model
    assert doc["datetime"] == "2025-03-01T10:00:00+00:00"

    benchmarks = {b["fullname"]: b for b in doc["benchmarks"]}
    test_id = "tests/perf/test_qwen.py::test_generate[eager]"
    # two tests: a load, and e2e and ttft at batch 1 and 8 (512 ran out of memory: nothing to time)
    assert len(benchmarks) == len(doc["benchmarks"]) == 2 * 5
    assert {f.removeprefix(f"{test_id}::") for f in benchmarks if f.startswith(test_id)} == {
        "load_s", "e2e_s[batch_size=1]", "ttft_s[batch_size=1]", "e2e_s[batch_size=8]", "ttft_s[batch_size=8]"}

    e2e = benchmarks[f"{test_id}::e2e_s[batch_size=8]"]
    expected = [t.e2e_s for t in make_record().generates[1].trials]
    assert e2e["name"] == "test_generate[eager]::e2e_s[batch_size=8]" and e2e["group"] == "e2e_s"
    assert e2e["params"] == {"batch_size": 8, "prompt_tokens": 128, "new_tokens": 64}
    stats = e2e["stats"]
    assert stats["data"] == expected and stats["rounds"] == 5 and stats["iterations"] == 1
    assert stats["median"] == pytest.approx(statistics.median(expected))
    assert stats["mean"] == pytest.approx(statistics.mean(expected))
    assert stats["stddev"] == pytest.approx(statistics.stdev(expected))
    assert (stats["min"], stats["max"]) == (min(expected), max(expected))
    assert stats["ops"] == pytest.approx(5 / sum(expected))  # github-action-benchmark charts ops
    assert stats["q1"] <= stats["median"] <= stats["q3"] and stats["iqr"] == pytest.approx(stats["q3"] - stats["q1"])
    assert set(stats) >= {"iqr_outliers", "stddev_outliers", "outliers", "ld15iqr", "hd15iqr", "total"}
    extra = e2e["extra_info"]
    assert extra["tokens_per_s"] == results[(test_id, 8, "tokens_per_s")]["value"]
    assert extra["tpot_ms"] == results[(test_id, 8, "tpot_ms")]["value"]
    assert extra["series_key"] == results[(test_id, 8, "e2e_s")]["series_key"]

    ttft = benchmarks[f"{test_id}::ttft_s[batch_size=1]"]
    assert ttft["stats"]["data"] == [t.ttft_s for t in make_record().generates[0].trials]
    assert ttft["extra_info"]["series_key"] == results[(test_id, 1, "ttft_ms")]["series_key"]

    load = benchmarks[f"{test_id}::load_s"]
    assert load["stats"]["data"] == [3.42] and load["stats"]["rounds"] == 1 and load["stats"]["stddev"] == 0
    assert load["params"] is None and load["group"] == "load_s"


def test_pytest_benchmark_document_of_an_unknown_run(tmp_path: Path) -> None:
    with HistoryStore.open(tmp_path / "h.db") as s, pytest.raises(HistoryError, match="there is no run 'nope'"):
        pytest_benchmark_document(s, "nope")


# ---- prune -----------------------------------------------------------------------------------------

NOW = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)


def test_prune_removes_old_runs_with_their_rows_and_keeps_recent_ones(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with HistoryStore.open(path) as s:
        add_run(s, "ancient", started_at="2024-01-01T00:00:00+00:00", env=CPU)  # the only run on CPU
        add_run(s, "old", started_at="2025-02-01T00:00:00+00:00", status=None)  # crashed, left running
        add_verdict(s, "old", baseline="ancient")
        s.accept("old", "*", "intended")
        add_run(s, "recent", started_at="2025-03-20T00:00:00+00:00")
        add_verdict(s, "recent", baseline="old")
        kept = {t: count(s, t, "run_id = 'recent'") for t in ("tests", "results", "measurements", "verdicts")}
        s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file itself, to measure it
        size_before = path.stat().st_size

        assert prune_history(s, keep_days=30, now=NOW) == 2
        assert [r["id"] for r in rows(s, "SELECT id FROM runs")] == ["recent"]
        for table in ("tests", "measurements", "results", "budget_checks", "verdicts", "acceptances"):
            assert count(s, table, "run_id != 'recent'") == 0, table
        assert count(s, "trials") == 10  # one test's trials
        assert {t: count(s, t, "run_id = 'recent'") for t in kept} == kept
        assert [r["fingerprint"] for r in rows(s, "SELECT fingerprint FROM environments")] == [GPU.fingerprint()]
        assert s.db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert prune_history(s, keep_days=30, now=NOW) == 0
    assert path.stat().st_size < size_before  # the space was given back


def test_prune_with_zero_days_keeps_nothing_older_than_now(tmp_path: Path) -> None:
    with HistoryStore.open(tmp_path / "h.db") as s:
        add_run(s, "a", started_at="2025-03-31T11:59:59+00:00")
        add_run(s, "b", started_at="2025-03-31T12:00:01+00:00")
        assert prune_history(s, 0, now=datetime(2025, 3, 31, 12, 0)) == 1  # a naive now is UTC
        assert [r["id"] for r in rows(s, "SELECT id FROM runs")] == ["b"]


@pytest.mark.parametrize("keep_days", [-1, 1.5, "30", True])
def test_prune_refuses_a_bad_number_of_days(keep_days: Any) -> None:
    with HistoryStore.open(":memory:") as s:
        add_run(s, "a", started_at="2020-01-01T00:00:00+00:00")
        with pytest.raises(ValueError, match=r"keep_days must be a whole number of days >= 0"):
            prune_history(s, keep_days, now=NOW)
        assert count(s, "runs") == 1


# ---- the llmperf commands ----------------------------------------------------------------------------


def test_merge_command_prints_what_it_added_and_skipped(tmp_path: Path, shards, capsys) -> None:
    a, b = shards
    dest = tmp_path / "merged" / "history.db"
    assert main(["merge", "--db", str(dest), str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"{a}: 2 runs added, 0 replaced" in out and f"{b}: 1 run added, 0 replaced" in out
    assert "1 skipped (already in" in out and "merged 2 sources" in out and "3 runs added" in out
    assert main(["merge", "--db", str(dest), str(tmp_path / "nope.db")]) == 2
    err = capsys.readouterr().err
    assert "nope.db does not exist" in err and "`llmperf export`" in err


def test_export_command_writes_json_and_pytest_benchmark(tmp_path: Path, capsys) -> None:
    db = tmp_path / "h.db"
    _history_with_gaps(db)
    assert main(["export", "--db", str(db), "--run", "old"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["old"]

    out = tmp_path / "bench.json"
    assert main(["export", "--db", str(db), "--format", "pytest-benchmark", "--out", str(out)]) == 0
    newest = json.loads(out.read_text())
    assert {b["extra_info"]["run_id"] for b in newest["benchmarks"]} == {"new"}  # the newest run by default
    assert main(["export", "--db", str(db), "--format", "pytest-benchmark", "--run", "ol"]) == 0  # a prefix
    assert {b["extra_info"]["run_id"] for b in json.loads(capsys.readouterr().out)["benchmarks"]} == {"old"}

    assert main(["export", "--db", str(db), "--format", "pytest-benchmark", "--run", "old", "--run", "new"]) == 2
    assert "pass one --run ID" in capsys.readouterr().err
    assert main(["export", "--db", str(db), "--run", "zzz"]) == 2
    err = capsys.readouterr().err
    assert "there is no run 'zzz'" in err and "the newest are new, old" in err
    assert main(["export", "--db", str(tmp_path / "none.db")]) == 2
    assert "no history database at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_prune_command(tmp_path: Path, capsys) -> None:
    db = tmp_path / "h.db"
    with HistoryStore.open(db) as s:
        add_run(s, "ancient", started_at="2000-01-01T00:00:00+00:00")
        add_run(s, "now", started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    assert main(["prune", "--db", str(db), "--keep-days", "30"]) == 0
    assert "removed 1 run started more than 30 days ago" in capsys.readouterr().out
    with HistoryStore.open(db) as s:
        assert [r["id"] for r in rows(s, "SELECT id FROM runs")] == ["now"]
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--db", str(db), "--keep-days", "-3"])
    assert exit_.value.code == 2
    assert "--keep-days" in capsys.readouterr().err
