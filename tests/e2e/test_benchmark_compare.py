"""Runs exported in pytest-benchmark's format are read by pytest-benchmark's own ``compare`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmperf.cli import main
from pytest_llmperf.environment import collect_environment, collect_run_context
from pytest_llmperf.history.store import HistoryStore
from tests.factories import make_generate, make_record


def _compare_command() -> list[str]:
    """The console script installed next to this Python, as CI would call it."""
    script = Path(sys.executable).parent / "pytest-benchmark"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pytest_benchmark"]


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path]:
    """A base run and a slower head run, each exported with `llmperf export --format pytest-benchmark`."""
    db = tmp_path / "history.db"
    with HistoryStore.open(db) as store:
        env, ctx = collect_environment("cpu"), collect_run_context(tmp_path, ("pytest",))
        for run_id, started_at, e2e in (("base", "2025-03-01T10:00:00+00:00", 1.0),
                                        ("head", "2025-03-02T10:00:00+00:00", 1.5)):
            store.start_run(run_id, env, ctx, started_at=started_at)
            store.record_test(run_id, make_record(make_generate(1, e2e), make_generate(8, 2 * e2e)),
                              test_outcome="passed")
            store.finish_run(run_id, "complete")
    files = tmp_path / "base.json", tmp_path / "head.json"
    for run_id, out in zip(("base", "head"), files):
        assert main(["export", "--db", str(db), "--run", run_id, "--format", "pytest-benchmark",
                     "--out", str(out)]) == 0
    return files


def _compare(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # its own directory: compare reads a conftest.py and writes .benchmarks/ in the current directory
    return subprocess.run([*_compare_command(), "compare", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_pytest_benchmark_compare_reads_two_exported_runs(exported: tuple[Path, Path], tmp_path: Path) -> None:
    base, head = exported
    work = tmp_path / "compare"
    work.mkdir()
    result = _compare(work, str(base), str(head))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Failed to load" not in out + result.stderr
    for group in ("e2e_s", "ttft_s", "load_s"):
        assert f"benchmark '{group}'" in out
    for name in ("test_x::e2e_s[batch_size=1]", "test_x::e2e_s[batch_size=8]", "test_x::ttft_s[batch_size=1]",
                 "test_x::load_s"):
        rows = [line for line in out.splitlines() if line.startswith(name)]
        assert len(rows) == 2, (name, out)  # one per file
    # batch 1: the head's trials take 1.5 times the base's, and compare scales each row to the best
    base_row, head_row = (next(line for line in out.splitlines()
                               if line.startswith("test_x::e2e_s[batch_size=1] (") and side in line)
                          for side in ("base", "head"))
    assert "(1.0)" in base_row and "(1.50)" not in base_row, out
    assert head_row.count("(1.50)") >= 4, out  # min, max, mean, median
    assert json.loads(head.read_text())["commit_info"]["id"]


def test_pytest_benchmark_compare_between_the_two_runs(exported: tuple[Path, Path], tmp_path: Path) -> None:
    base, head = exported
    work = tmp_path / "compare"
    work.mkdir()
    help_text = _compare(work, "--help").stdout
    if "--between" not in help_text:
        pytest.skip("this pytest-benchmark has no compare --between")
    result = _compare(work, "--between", "mean", str(base), str(head))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout
    row = next(line for line in result.stdout.splitlines() if "test_x::e2e_s[batch_size=1]" in line)
    assert "+50.00%" in row or "+50.0%" in row, result.stdout
