"""How ``llmperf ab`` starts a process: pinned to one core with one thread unless told otherwise."""

import os
from pathlib import Path

from pytest_llmperf.gate.ab import AbConfig, Side, default_cpus, process_env


def side(tmp_path: Path) -> Side:
    return Side("base", "main", "c" * 40, tmp_path, "python")


def config(tmp_path: Path) -> AbConfig:
    return AbConfig(repo=tmp_path, base="main", head="HEAD", db=tmp_path / "h.db", pytest_args=())


def test_by_default_a_process_gets_one_core_it_may_use_and_one_thread(tmp_path, monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    [core] = default_cpus()
    assert core in os.sched_getaffinity(0)
    env = process_env(side(tmp_path), config(tmp_path), (core,))
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / ".")


def test_a_thread_count_the_caller_set_is_kept_and_no_pinning_sets_none(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert process_env(side(tmp_path), config(tmp_path), (0, 1))["OMP_NUM_THREADS"] == "4"
    assert "MKL_NUM_THREADS" not in process_env(side(tmp_path), config(tmp_path), ())
