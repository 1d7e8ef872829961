"""The SQLite history store: schema, migrations, transactions, concurrency and refusing bad files."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from pytest_llmperf.history import errors as errors_mod
from pytest_llmperf.history import schema as schema_mod
from pytest_llmperf.history.errors import HistoryError
from pytest_llmperf.history.recent import ResultRow
from pytest_llmperf.history.schema import SCHEMA_VERSION
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.conditions import Conditions, CpuConditions
from pytest_llmperf.measure.metrics import METRICS, TRIAL_METRICS
from pytest_llmperf.measure.nvml import GpuState
from pytest_llmperf.results import (
    BenchRecord,
    BudgetCheck,
    GenerateConfig,
    GenerateResult,
    LoadResult,
    MemoryPeak,
    ModelIdentity,
    PageCache,
    Trial,
)
from pytest_llmperf.series import LoadPoint, SeriesKey
from tests.factories import CPU_ENV, LLAMA, QWEN, run_context
from tests.factories import GPU_ENV as ENV
from tests.history_rows import count, results_snapshot, rows

CTX = run_context(argv=("pytest", "tests/perf", "-n", "4"))


def _trials(batch: int, new_tokens: int, ttft: float, tpot: float) -> tuple[Trial, ...]:
    jitter = (1.00, 1.03, 0.98, 1.01, 0.99)
    return tuple(
        Trial(ttft_s=ttft * j, e2e_s=(ttft + tpot * (new_tokens - 1)) * j, batch_size=batch, new_tokens=new_tokens,
              itl_p50_s=tpot * j, itl_p90_s=tpot * 1.1 * j, itl_p99_s=tpot * 1.5 * j)
        for j in jitter
    )


def make_record(test_id: str = "tests/perf/test_qwen.py::test_generate[eager]", *, model: ModelIdentity = QWEN,
                backend: str = "hf", variant: str = "eager", tokens_per_s_min: float = 300.0) -> BenchRecord:
    """A realistic record: a load, two generate configurations that ran and one that ran out of memory."""
    b1 = GenerateResult(
        config=GenerateConfig(batch_size=1, prompt_tokens=128, new_tokens=64, trials=5, warmups=1),
        outcome="ok", trials=_trials(1, 64, ttft=0.0213, tpot=0.0198),
        memory=MemoryPeak(peak_bytes=1_071_644_672, reserved_bytes=1_178_599_424, method="cuda"),
        kv_cache_bytes=2_359_296, decode_bw_util=0.41,
    )
    b8 = GenerateResult(
        config=GenerateConfig(batch_size=8, prompt_tokens=128, new_tokens=64, trials=5, warmups=1),
        outcome="ok", trials=_trials(8, 64, ttft=0.0542, tpot=0.0231),
        memory=MemoryPeak(peak_bytes=1_293_942_784, reserved_bytes=1_409_286_144, method="cuda"),
        kv_cache_bytes=18_874_368, decode_bw_util=0.37,
    )
    b512 = GenerateResult(
        config=GenerateConfig(batch_size=512, prompt_tokens=128, new_tokens=64, trials=5, warmups=1),
        outcome="oom", error="CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)",
    )
    tokens_per_s_b8 = b8.median("tokens_per_s")
    return BenchRecord(
        test_id=test_id, model=model, backend=backend, variant=variant, world_size=1, seed=1234,
        load=LoadResult(
            load_s=3.42,
            phases=(("read_config", 0.02), ("init_empty", 0.31), ("load_state_dict", 2.89), ("to_device", 0.2)),
            weights_bytes=988_065_536,
            memory=MemoryPeak(peak_bytes=1_050_673_152, reserved_bytes=1_069_547_520, method="cuda"),
            page_cache=PageCache(resident_fraction=0.97),
            devices=("cuda:0",),
        ),
        first_generate_s=1.84,
        generates=(b1, b8, b512),
        budget_checks=(
            BudgetCheck(metric="load_s", bound="max", limit=10.0, batch_size=None, measured=3.42, outcome="pass"),
            BudgetCheck(metric="tokens_per_s", bound="min", limit=tokens_per_s_min, batch_size=8,
                        measured=tokens_per_s_b8, outcome="pass" if tokens_per_s_b8 >= tokens_per_s_min else "miss"),
            BudgetCheck(metric="ttft_ms", bound="max", limit=50.0, batch_size=512, measured=None,
                        outcome="unmeasured"),
        ),
    )


#: rows one make_record() writes to each table
LOAD_METRICS = 4  # load_s, weights_bytes, load_peak_mem_bytes, first_generate_s
GENERATE_METRICS = len(TRIAL_METRICS) + 4  # + peak_mem, peak_mem_reserved, kv_cache, decode_bw_util
EXPECTED_COUNTS = {"tests": 1, "measurements": 4, "results": LOAD_METRICS + 2 * GENERATE_METRICS,
                   "trials": 10, "budget_checks": 3}
TABLES = ("environments", "runs", "tests", "measurements", "results", "trials", "budget_checks", "verdicts")


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    s = HistoryStore.open(tmp_path / "history.db" if request.param == "file" else ":memory:")
    yield s
    s.close()


# ---- opening, schema -----------------------------------------------------------------------------


def test_file_is_created_with_schema_wal_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "history.db"
    with HistoryStore.open(path) as s:
        assert path.is_file()
        assert s.schema_version() == SCHEMA_VERSION == len(schema_mod.MIGRATIONS)
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000
        assert s.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert set(TABLES) <= set(s.db.table_names())
        indexed = {tuple(i.columns) for i in s.db["results"].indexes}
        assert {("series_key",), ("test_id", "metric")} <= indexed
    # reopening an up-to-date file is a no-op
    with HistoryStore.open(str(path)) as s:
        assert s.schema_version() == SCHEMA_VERSION


def test_memory_store_has_schema_and_foreign_keys() -> None:
    with HistoryStore.open(":memory:") as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert set(TABLES) <= set(s.db.table_names())
        with pytest.raises(sqlite3.IntegrityError), s.transaction() as db:  # foreign keys are enforced
            db["tests"].insert({"run_id": "nope", "test_id": "t", "outcome": "passed", "recorded_at": "x",
                                "model_id": "m", "model_config_hash": "h", "dtype": "bfloat16",
                                "backend": "hf", "variant": "eager", "world_size": 1})


def test_context_manager_closes() -> None:
    with HistoryStore.open(":memory:") as s:
        pass
    with pytest.raises(sqlite3.ProgrammingError):
        s.db.execute("SELECT 1")


# ---- runs ----------------------------------------------------------------------------------------


def test_start_run_is_idempotent_first_insert_wins(store: HistoryStore) -> None:
    store.start_run("r1", ENV, CTX, started_at="2025-03-01T10:00:00+00:00", ab_group="g1", ab_side="base",
                    label="nightly")
    store.start_run("r1", CPU_ENV, CTX, started_at="2025-03-01T10:00:05+00:00", label="worker")
    assert count(store, "runs") == 1
    assert count(store, "environments") == 2  # each environment seen is kept; the run keeps the first
    run = store.run("r1")
    assert run is not None
    assert run["env_fingerprint"] == ENV.fingerprint()
    assert run["started_at"] == "2025-03-01T10:00:00+00:00"
    assert (run["status"], run["finished_at"], run["label"]) == ("running", None, "nightly")
    assert (run["ab_group"], run["ab_side"]) == ("g1", "base")
    assert run["argv"] == ["pytest", "tests/perf", "-n", "4"]
    assert run["git_dirty"] is False
    assert (run["git_commit"], run["git_branch"], run["host"]) == (CTX.git.commit, "main", "bench-01")
    env_row = rows(store, "SELECT * FROM environments WHERE fingerprint = ?", [ENV.fingerprint()])[0]
    assert env_row["device_model"] == "NVIDIA H100 80GB HBM3" and env_row["deepspeed"] is None
    assert store.run("unknown") is None


def test_fingerprints_recorded_before_the_clock_lock_field_do_not_change() -> None:
    # the values the code gave before Environment had gpu_clocks_locked: their series must go on
    assert CPU_ENV.fingerprint() == "ee73bcb357f4c2a4"
    assert ENV.fingerprint() == "0b13c6002c203e59"  # a CUDA environment whose lock is unknown
    locked, unlocked = replace(ENV, gpu_clocks_locked=True), replace(ENV, gpu_clocks_locked=False)
    assert len({ENV.fingerprint(), locked.fingerprint(), unlocked.fingerprint()}) == 3


def test_start_run_stores_the_conditions_and_the_clock_lock(store: HistoryStore) -> None:
    gpu = GpuState(index=0, uuid="GPU-5f3c", name="NVIDIA H100 80GB HBM3", sm_clock_mhz=1410,
                   memory_clock_mhz=2619, max_sm_clock_mhz=1980, max_memory_clock_mhz=2619, clocks_locked=True,
                   persistence_mode=True, clock_event_reasons=("applications_clocks_setting",), temperature_c=38,
                   power_limit_w=700.0)
    cpu = CpuConditions(affinity=(0, 1, 2, 3), governors=("performance",), frequency_mhz={c: 3100.0 for c in range(4)},
                        thread_variables={"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": None},
                        load_average_1m=0.42)
    env = replace(ENV, gpu_clocks_locked=True)
    store.start_run("r1", env, CTX, conditions=Conditions("cuda", (gpu,), cpu))
    store.start_run("r0", ENV, CTX)
    conditions = store.run("r1")["conditions"]
    assert conditions["gpus"][0]["clocks_locked"] is True and conditions["gpus"][0]["sm_clock_mhz"] == 1410
    assert conditions["cpu"]["governors"] == ["performance"] and conditions["cpu"]["load_average_1m"] == 0.42
    assert store.run("r0")["conditions"] is None
    by_fingerprint = {r["fingerprint"]: r["gpu_clocks_locked"] for r in rows(store, "SELECT * FROM environments")}
    assert by_fingerprint == {env.fingerprint(): 1, ENV.fingerprint(): None}


def test_start_run_defaults_started_at(store: HistoryStore) -> None:
    store.start_run("r1", ENV, CTX)
    assert store.run("r1")["started_at"].startswith("20")


def test_finish_run_sets_status_and_finished_at(store: HistoryStore) -> None:
    store.start_run("r1", ENV, CTX)
    store.finish_run("r1", "complete")
    run = store.run("r1")
    assert run["status"] == "complete" and run["finished_at"] is not None
    with pytest.raises(ValueError, match="run status"):
        store.finish_run("r1", "running")
    with pytest.raises(HistoryError, match="no run 'r2'"):
        store.finish_run("r2", "failed")


# ---- recording a test ----------------------------------------------------------------------------


def test_record_test_writes_every_table(store: HistoryStore) -> None:
    store.start_run("r1", ENV, CTX)
    record = make_record()
    store.record_test("r1", record, test_outcome="passed", duration_s=41.7)

    for table, n in EXPECTED_COUNTS.items():
        assert count(store, table) == n, table
    test = rows(store, "SELECT * FROM tests")[0]
    assert (test["test_id"], test["outcome"], test["duration_s"]) == (record.test_id, "passed", 41.7)
    assert (test["model_id"], test["backend"], test["variant"], test["world_size"], test["seed"]) == (
        QWEN.model_id, "hf", "eager", 1, 1234)
    assert test["num_parameters"] == QWEN.num_parameters

    load = rows(store, "SELECT * FROM measurements WHERE kind = 'load'")[0]
    assert json.loads(load["devices"]) == ["cuda:0"]
    assert json.loads(load["phases"]) == [[n, s] for n, s in record.load.phases]
    assert (load["page_cache_state"], load["page_cache_resident_fraction"]) == ("warm", 0.97)
    assert (load["memory_method"], load["outcome"], load["batch_size"]) == ("cuda", "ok", None)

    gens = rows(store, "SELECT * FROM measurements WHERE kind = 'generate' ORDER BY batch_size")
    assert [(g["batch_size"], g["outcome"]) for g in gens] == [(1, "ok"), (8, "ok"), (512, "oom")]
    assert gens[2]["error"].startswith("CUDA out of memory")
    assert (gens[0]["prompt_tokens"], gens[0]["new_tokens"], gens[0]["trials_requested"], gens[0]["warmups"],
            gens[0]["streams"]) == (128, 64, 5, 1, 1)

    trials = rows(store, "SELECT * FROM trials WHERE measurement_id = ? ORDER BY idx", [gens[1]["id"]])
    assert [t["e2e_s"] for t in trials] == [t.e2e_s for t in record.generates[1].trials]
    assert [t["idx"] for t in trials] == [0, 1, 2, 3, 4]

    fp = ENV.fingerprint()
    for r in rows(store, "SELECT * FROM results"):
        key = SeriesKey(test_id=r["test_id"], model_id=QWEN.model_id, model_config_hash=QWEN.config_hash,
                        backend="hf", variant="eager", dtype="bfloat16", world_size=1,
                        point=LoadPoint.of(batch_size=r["batch_size"], prompt_tokens=r["prompt_tokens"],
                                           new_tokens=r["new_tokens"]),
                        metric=r["metric"], env_fingerprint=fp)
        assert r["series_key"] == key.digest()
        assert r["unit"] == METRICS[r["metric"]].unit
        assert r["env_fingerprint"] == fp and r["run_id"] == "r1"

    load_results = rows(store, "SELECT * FROM results WHERE batch_size IS NULL")
    assert {r["metric"]: r["value"] for r in load_results} == record.load_metric_values()
    assert all(r["prompt_tokens"] is None and r["n"] is None for r in load_results)
    load_s = next(r for r in load_results if r["metric"] == "load_s")
    assert (load_s["budget_bound"], load_s["budget_limit"], load_s["budget_outcome"]) == ("max", 10.0, "pass")

    b8 = record.generates[1]
    tps = rows(store, "SELECT * FROM results WHERE batch_size = 8 AND metric = 'tokens_per_s'")[0]
    s = b8.stats("tokens_per_s")
    assert (tps["value"], tps["q1"], tps["q3"], tps["cv"], tps["n"], tps["min"], tps["max"]) == (
        s.median, s.q1, s.q3, s.cv, 5, s.min, s.max)
    assert (tps["budget_bound"], tps["budget_limit"], tps["budget_outcome"]) == ("min", 300.0, "pass")
    kv = rows(store, "SELECT * FROM results WHERE batch_size = 8 AND metric = 'kv_cache_bytes'")[0]
    assert (kv["value"], kv["n"], kv["q1"], kv["budget_outcome"]) == (18_874_368, None, None, None)
    assert count(store, "results", "batch_size = 1 AND budget_outcome IS NOT NULL") == 0

    checks = rows(store, 'SELECT metric, bound, "limit", batch_size, measured, outcome FROM budget_checks '
                         "ORDER BY id")
    assert checks[2] == {"metric": "ttft_ms", "bound": "max", "limit": 50.0, "batch_size": 512,
                         "measured": None, "outcome": "unmeasured"}


def test_series_key_depends_on_the_runs_environment(store: HistoryStore) -> None:
    store.start_run("gpu", ENV, CTX)
    store.start_run("cpu", CPU_ENV, CTX)
    store.record_test("gpu", make_record(), test_outcome="passed")
    store.record_test("cpu", make_record(), test_outcome="passed")
    keys = {run: {r["series_key"] for r in rows(store, "SELECT series_key FROM results WHERE run_id = ?", [run])}
            for run in ("gpu", "cpu")}
    assert len(keys["gpu"]) == EXPECTED_COUNTS["results"]
    assert keys["gpu"].isdisjoint(keys["cpu"])


def test_record_test_again_replaces_the_earlier_record(store: HistoryStore) -> None:
    store.start_run("r1", ENV, CTX)
    store.record_test("r1", make_record(), test_outcome="failed")
    store.record_test("r1", make_record(), test_outcome="passed")
    for table, n in EXPECTED_COUNTS.items():
        assert count(store, table) == n, table
    assert rows(store, "SELECT outcome FROM tests") == [{"outcome": "passed"}]


def test_record_test_needs_a_started_run(store: HistoryStore) -> None:
    with pytest.raises(HistoryError, match="never started"):
        store.record_test("missing", make_record(), test_outcome="passed")
    assert count(store, "tests") == 0


def _assert_only_first_test(s: HistoryStore, first: BenchRecord) -> None:
    assert [r["test_id"] for r in rows(s, "SELECT test_id FROM tests")] == [first.test_id]
    for table, n in EXPECTED_COUNTS.items():
        assert count(s, table) == n, table
    assert count(s, "results", "test_id != ?", [first.test_id]) == 0


def test_failed_insert_rolls_back_the_whole_test(store: HistoryStore) -> None:
    store.start_run("r1", ENV, CTX)
    first = make_record("tests/perf/test_a.py::test_ok")
    store.record_test("r1", first, test_outcome="passed")
    bad = make_record("tests/perf/test_b.py::test_bad")
    # the budget checks are written last; a CHECK constraint violation there undoes everything before
    bad = BenchRecord(**{**bad.__dict__, "budget_checks": (
        BudgetCheck(metric="load_s", bound="max", limit=1.0, batch_size=None, measured=3.4, outcome="bogus"),)})
    with pytest.raises(sqlite3.IntegrityError):
        store.record_test("r1", bad, test_outcome="passed")
    _assert_only_first_test(store, first)
    assert not store.db.conn.in_transaction
    # the store is still usable
    store.record_test("r1", make_record("tests/perf/test_c.py::test_after"), test_outcome="passed")
    assert count(store, "tests") == 2


def test_exception_in_the_middle_rolls_back_including_a_replaced_record(
        store: HistoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.start_run("r1", ENV, CTX)
    first = make_record()
    store.record_test("r1", first, test_outcome="passed")
    real_insert_all = sqlite_utils.db.Table.insert_all

    def failing_insert_all(self, records, *args, **kwargs):
        if self.name == "results":
            raise OSError("disk went away")
        return real_insert_all(self, records, *args, **kwargs)

    monkeypatch.setattr(sqlite_utils.db.Table, "insert_all", failing_insert_all)
    with pytest.raises(OSError, match="disk went away"):
        store.record_test("r1", make_record(), test_outcome="failed")  # a rerun: would replace the first
    monkeypatch.undo()
    _assert_only_first_test(store, first)
    assert rows(store, "SELECT outcome FROM tests") == [{"outcome": "passed"}]


# ---- crash and concurrency -------------------------------------------------------------------------


def _crash_worker(path: str) -> None:
    """Start a run, record one test, then die (os._exit) in the middle of recording a second one."""
    with HistoryStore.open(path) as s:
        s.start_run("crashed", ENV, CTX)
        s.record_test("crashed", make_record("tests/perf/test_a.py::test_done"), test_outcome="passed")
        real_insert_all = sqlite_utils.db.Table.insert_all

        def dying_insert_all(self, records, *args, **kwargs):
            if self.name == "results":
                os._exit(3)
            return real_insert_all(self, records, *args, **kwargs)

        sqlite_utils.db.Table.insert_all = dying_insert_all
        s.record_test("crashed", make_record("tests/perf/test_b.py::test_cut"), test_outcome="passed")


def _record_worker(path: str, worker: int, barrier: Any) -> None:
    barrier.wait()  # open a fresh file all at once: the schema must be created exactly once
    with HistoryStore.open(path) as s:
        s.start_run("shared", ENV, CTX, label=f"worker{worker}")
        for i in range(10):
            s.record_test("shared", make_record(f"tests/perf/test_w{worker}.py::test_{i}"), test_outcome="passed")


def test_crashed_run_stays_running_until_marked_interrupted(tmp_path: Path) -> None:
    path = str(tmp_path / "history.db")
    proc = multiprocessing.get_context("spawn").Process(target=_crash_worker, args=(path,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    with HistoryStore.open(path) as s:
        run = s.run("crashed")
        assert (run["status"], run["finished_at"]) == ("running", None)
        assert [r["test_id"] for r in rows(s, "SELECT test_id FROM tests")] == ["tests/perf/test_a.py::test_done"]
        assert count(s, "measurements") == EXPECTED_COUNTS["measurements"]
        s.finish_run("crashed", "interrupted")
        run = s.run("crashed")
        assert run["status"] == "interrupted" and run["finished_at"] is not None


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shared" / "history.db")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_record_worker, args=(path, w, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with HistoryStore.open(path) as s:
        assert count(s, "runs") == 1
        assert count(s, "tests", "run_id = 'shared'") == 40
        assert count(s, "results") == 40 * EXPECTED_COUNTS["results"]
        assert count(s, "trials") == 40 * EXPECTED_COUNTS["trials"]
        assert s.schema_version() == SCHEMA_VERSION


# ---- files it cannot use -------------------------------------------------------------------------


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _age(path: Path) -> None:
    """Backdate the mtime, so that any write would show even within the clock's resolution."""
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with HistoryStore.open(path) as s:
        s.start_run("r1", ENV, CTX)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    _age(path)
    before = _snapshot(path)
    siblings = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(HistoryError) as err:
        HistoryStore.open(path)
    message = str(err.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message and f"up to {SCHEMA_VERSION}" in message
    assert "upgrade pytest-llmperf, or use --llmperf-db to point at another file" in message
    assert _snapshot(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # no -wal / -shm either


@pytest.mark.parametrize("damage", ["text", "truncated", "overwritten_page"])
def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "history.db"
    if damage == "text":
        path.write_text("run_id,metric,value\nr1,load_s,3.4\n" * 20)
    else:
        with HistoryStore.open(path) as s:
            s.start_run("r1", ENV, CTX)
            s.record_test("r1", make_record(), test_outcome="passed")
        data = path.read_bytes()
        if damage == "truncated":
            path.write_bytes(data[:100])
        else:  # the b-tree header of page 1 (the schema table) overwritten
            path.write_bytes(data[:100] + b"\xff" * 100 + data[200:])
    _age(path)
    before = _snapshot(path)

    with pytest.raises(HistoryError) as err:
        HistoryStore.open(path)
    message = str(err.value)
    assert f"{path} is not a readable SQLite database" in message
    assert "move it aside or use --llmperf-db" in message
    assert _snapshot(path) == before


def test_parent_that_is_a_file_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    path = blocker / "history.db"
    with pytest.raises(HistoryError) as err:
        HistoryStore.open(path)
    assert str(path) in str(err.value) and "--llmperf-db PATH" in str(err.value)
    assert blocker.read_text() == "not a directory"


def test_directory_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="--llmperf-db PATH"):
        HistoryStore.open(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_reported(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(HistoryError) as err:
            HistoryStore.open(ro / "history.db")
        assert str(ro / "history.db") in str(err.value) and "--llmperf-db PATH" in str(err.value)
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    HistoryStore.open(path).close()
    path.chmod(0o444)
    with pytest.raises(HistoryError, match=r"read-only.*--llmperf-db PATH"):
        HistoryStore.open(path)


def test_lock_held_past_the_busy_timeout_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "history.db"
    monkeypatch.setattr(errors_mod, "BUSY_TIMEOUT_S", 0.2)
    with HistoryStore.open(path) as s:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(HistoryError, match="locked by another process"):
                s.start_run("r1", ENV, CTX)
        finally:
            other.execute("ROLLBACK")
            other.close()
        s.start_run("r1", ENV, CTX)
        assert s.run("r1") is not None


# ---- migrations ----------------------------------------------------------------------------------


def test_extra_migration_upgrades_a_v1_file_and_keeps_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "history.db"
    with HistoryStore.open(path) as s:
        s.start_run("r1", ENV, CTX)
        s.record_test("r1", make_record(), test_outcome="passed")
        before = results_snapshot(s)

    calls: list[int] = []

    def add_note(db: sqlite_utils.Database) -> None:
        calls.append(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")
        db.execute("UPDATE runs SET note = 'migrated'")

    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS, add_note])
    with HistoryStore.open(path) as s:
        assert s.schema_version() == SCHEMA_VERSION + 1
        assert s.run("r1")["note"] == "migrated"
        assert results_snapshot(s) == before
        for table, n in EXPECTED_COUNTS.items():
            assert count(s, table) == n, table
    with HistoryStore.open(path):
        pass
    assert calls == [SCHEMA_VERSION]  # applied once, to the v1 file

    monkeypatch.undo()  # the older code now sees a newer file
    with pytest.raises(HistoryError, match="upgrade pytest-llmperf"):
        HistoryStore.open(path)


def test_v3_file_upgrades_to_v4_with_run_conditions_and_the_clock_lock(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "history.db"
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:3])
    with HistoryStore.open(path) as s:
        assert s.schema_version() == 3
        s.start_run("v3run", ENV, CTX)  # an environment without the new field writes to a v3 file as before
        s.record_test("v3run", _without_itl(make_record()), test_outcome="passed")
        s.finish_run("v3run", "complete")
        before = results_snapshot(s)
    monkeypatch.undo()
    with HistoryStore.open(path) as s:
        assert s.schema_version() == SCHEMA_VERSION == 6
        assert "conditions" in s.db["runs"].columns_dict and "gpu_clocks_locked" in s.db["environments"].columns_dict
        old = s.run("v3run")
        assert (old["status"], old["conditions"], old["env_fingerprint"]) == ("complete", None, ENV.fingerprint())
        assert results_snapshot(s) == before
        unlocked = replace(ENV, gpu_clocks_locked=False)
        cpu = CpuConditions(affinity=(0,), governors=None, frequency_mhz=None,
                            thread_variables=dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                            "OPENBLAS_NUM_THREADS")), load_average_1m=None)
        s.start_run("v4run", unlocked, CTX, conditions=Conditions("cuda", (), cpu))
        assert s.run("v4run")["conditions"]["cpu"]["affinity"] == [0]
        assert rows(s, "SELECT gpu_clocks_locked FROM environments WHERE fingerprint = ?",
                    [unlocked.fingerprint()]) == [{"gpu_clocks_locked": 0}]
        assert rows(s, "SELECT gpu_clocks_locked FROM environments WHERE fingerprint = ?",
                    [ENV.fingerprint()]) == [{"gpu_clocks_locked": None}]


def _without_itl(record: BenchRecord) -> BenchRecord:
    """The record as code from before tokens were timestamped measured it."""
    return replace(record, generates=tuple(
        replace(g, trials=tuple(replace(t, itl_p50_s=None, itl_p90_s=None, itl_p99_s=None) for t in g.trials))
        for g in record.generates))


def test_v4_file_upgrades_to_v5_and_keeps_trials_without_inter_token_latencies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "history.db"
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:4])
    with HistoryStore.open(path) as s:
        s.start_run("v4run", ENV, CTX)
        s.record_test("v4run", _without_itl(make_record()), test_outcome="passed")
        s.finish_run("v4run", "complete")
        before = results_snapshot(s)
    monkeypatch.undo()
    with HistoryStore.open(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert results_snapshot(s) == before
        assert {r["itl_p50_s"] for r in rows(s, "SELECT itl_p50_s FROM trials")} == {None}
        s.start_run("v5run", ENV, CTX)
        s.record_test("v5run", make_record(), test_outcome="passed")
        itl = rows(s, "SELECT t.itl_p99_s FROM trials t JOIN measurements m ON m.id = t.measurement_id "
                      "WHERE m.run_id = 'v5run'")
        assert itl and all(r["itl_p99_s"] > 0 for r in itl)


def test_failing_migration_leaves_the_file_at_its_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "history.db"
    with HistoryStore.open(path) as s:
        s.start_run("r1", ENV, CTX)

    def broken(db: sqlite_utils.Database) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        HistoryStore.open(path)
    monkeypatch.undo()
    with HistoryStore.open(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert "note" not in s.db["runs"].columns_dict
        assert s.run("r1") is not None


# ---- reading -------------------------------------------------------------------------------------


def test_recent_results_filters_orders_and_limits(store: HistoryStore) -> None:
    store.start_run("old", ENV, CTX, started_at="2025-03-01T10:00:00+00:00")
    store.record_test("old", make_record("tests/perf/test_qwen.py::test_generate[eager]"), test_outcome="passed")
    store.finish_run("old", "complete")
    store.start_run("new", ENV, CTX, started_at="2025-03-02T10:00:00+00:00")
    store.record_test("new", make_record("tests/perf/test_qwen.py::test_generate[eager]", tokens_per_s_min=1e6),
                      test_outcome="failed")
    store.record_test("new", make_record("tests/perf/test_llama.py::test_generate[accelerate]", model=LLAMA,
                                         backend="accelerate", variant="device_map_auto"), test_outcome="passed")

    everything = store.recent_results(last=10_000)
    assert len(everything) == 3 * EXPECTED_COUNTS["results"]
    assert all(isinstance(r, ResultRow) for r in everything)
    assert [r.run_id for r in everything] == sorted((r.run_id for r in everything), key=["new", "old"].index)
    assert len(store.recent_results()) == len(everything)  # by default the newest 20 runs: both
    assert {r.run_id for r in store.recent_results(last=1)} == {"new"}  # ``last`` counts runs, not rows
    assert len(store.recent_results(last=1)) == 2 * EXPECTED_COUNTS["results"]
    assert store.recent_results(last=0) == []

    tps = store.recent_results(test="test_qwen", metric="tokens_per_s", last=10)
    assert [(r.run_id, r.batch_size) for r in tps] == [("new", 8), ("new", 1), ("old", 8), ("old", 1)]
    new8, old8 = tps[0], tps[2]
    assert (new8.run_status, new8.budget_outcome, old8.run_status, old8.budget_outcome) == (
        "running", "miss", "complete", "pass")
    assert new8.value == make_record().generates[1].median("tokens_per_s")
    assert (new8.unit, new8.n, new8.outcome, new8.model_id, new8.dtype) == (
        "tokens/s", 5, "ok", QWEN.model_id, "bfloat16")
    assert new8.q1 <= new8.value <= new8.q3 and new8.cv > 0
    assert (new8.git_commit, new8.git_branch, new8.started_at) == (
        CTX.git.commit, "main", "2025-03-02T10:00:00+00:00")

    assert store.recent_results(metric="tokens", last=100) == []  # metric is exact
    llama = store.recent_results(model="LLAMA-3.2", last=100)  # model is a case-insensitive substring
    assert llama and {r.model_id for r in llama} == {LLAMA.model_id}
    acc = store.recent_results(backend="accelerate", last=100)
    assert len(acc) == EXPECTED_COUNTS["results"] and {r.variant for r in acc} == {"device_map_auto"}
    assert store.recent_results(backend="acc", last=100) == []  # backend is exact

    load = store.recent_results(test="qwen", metric="load_s", last=100)
    assert [(r.run_id, r.batch_size, r.budget_outcome, r.n, r.q1) for r in load] == [
        ("new", None, "pass", None, None), ("old", None, "pass", None, None)]
    with pytest.raises(ValueError):
        store.recent_results(last=-1)


def test_v1_file_upgrades_to_v2_with_device_maps_and_correctness(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from pytest_llmperf.results import CorrectnessCheck

    path = tmp_path / "history.db"
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:1])
    with HistoryStore.open(path) as s:
        assert s.schema_version() == 1
        s.start_run("r1", ENV, CTX)
    monkeypatch.undo()
    check = CorrectnessCheck(reference="hf", batch_size=2, new_tokens=32, compared_tokens=128, matched_tokens=127,
                             distinct_reference_tokens=20, first_mismatch=(1, 0, 30), exact=True,
                             outcome="mismatch", detail="1 of 128 new tokens differ")
    record = make_record()
    record = replace(record, test_id="t2", correctness=check,
                     load=replace(record.load, device_map=(("model.layers.0", "cpu"), ("model.layers.1", "disk"))))
    with HistoryStore.open(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        s.record_test("r1", record, test_outcome="failed")
        tests = {r["test_id"]: r for r in rows(s, "SELECT * FROM tests")}
        assert tests["t2"]["correctness_outcome"] == "mismatch"
        assert json.loads(tests["t2"]["correctness"])["first_mismatch"] == [1, 0, 30]
        assert s.run("r1")["status"] == "running"  # the v1 run survived the upgrade
        (load,) = rows(s, "SELECT m.device_map FROM measurements m JOIN tests t ON t.id = m.test_row_id "
                          "WHERE t.test_id = 't2' AND m.kind = 'load'")
        assert json.loads(load["device_map"]) == {"model.layers.0": "cpu", "model.layers.1": "disk"}
