"""``llmperf ab`` and ``llmperf calibrate`` on a real git repository: worktrees, alternating processes, verdicts."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import FAST

LLMPERF = str(Path(sys.executable).with_name("llmperf"))

BACKEND = '''
import time

from pytest_llmperf.backends.hf import HfBackend

SECONDS_PER_TOKEN = {delay}


class SlowHf(HfBackend):
    id = "slow-hf"

    def generate(self, input_ids, new_tokens):
        out = super().generate(input_ids, new_tokens)
        time.sleep(SECONDS_PER_TOKEN * new_tokens)
        return out
'''

PERF_TEST = '''
import pytest


@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="slow_backend:SlowHf", world_size=1)
def test_generate(llm):
    llm.sweep()
'''


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e", *args],
                          check=True, capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """Two commits: the second makes every generated token 20 ms slower."""
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "test_perf.py").write_text(PERF_TEST)
    for delay, message in ((0.0, "fast"), (0.02, "slow")):
        (path / "slow_backend.py").write_text(BACKEND.format(delay=delay))
        git(path, "add", ".")
        git(path, "commit", "-q", "-m", message)
    return path


def pytest_args(tmp_path: Path, model_cache: str) -> list[str]:
    fast = [a for a in FAST if a != "--llmperf"]  # llmperf ab adds it
    return [*fast, "--llmperf-trials=5", "--llmperf-warmups=1", f"--llmperf-model-cache={model_cache}",
            f"--llmperf-pool-dir={tmp_path / 'pool'}", "-q"]


def test_ab_finds_the_slower_head_and_keeps_both_sides_in_the_history(repo, tmp_path, model_cache):
    db, reports = tmp_path / "history.db", tmp_path / "reports"
    done = subprocess.run(
        [LLMPERF, "ab", "--base", "HEAD~1", "--head", "HEAD", "--repo", str(repo), "--db", str(db), "--rounds", "2",
         "--max-rounds", "2", "--report-dir", str(reports), "--", *pytest_args(tmp_path, model_cache)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "llmperf gate: FAIL: a regression" in done.stdout
    with sqlite3.connect(db) as conn:
        sides = conn.execute("SELECT ab_side, git_commit FROM runs ORDER BY started_at, rowid").fetchall()
        verdicts = dict(conn.execute("SELECT metric, outcome FROM verdicts WHERE baseline_kind = 'ab'").fetchall())
    base, head = git(repo, "rev-parse", "HEAD~1"), git(repo, "rev-parse", "HEAD")
    # alternating processes, the order of each pair alternating too
    assert sides == [("base", base), ("head", head), ("head", head), ("base", base)]
    assert verdicts["tokens_per_s"] == "regressed" and verdicts["tpot_ms"] == "regressed"
    markdown = (reports / "verdicts.md").read_text()
    assert f"{base[:12]} (base) vs {head[:12]} (head)" in markdown
    assert f"llmperf ab --base {base} --head {head} --" in markdown  # the reproduction command, by commit
    assert git(repo, "worktree", "list").count("\n") == 0  # the worktrees are gone, only the main one is left


def test_calibrate_runs_one_revision_against_itself_and_reports_its_noise(repo, tmp_path, model_cache):
    done = subprocess.run(
        [LLMPERF, "calibrate", "--rev", "HEAD~1", "--repo", str(repo), "--db", str(tmp_path / "h.db"),
         "--rounds", "2", "--", *pytest_args(tmp_path, model_cache)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "within-process CV" in done.stdout and "detectable change" in done.stdout
    assert "tokens_per_s" in done.stdout
    assert "llmperf calibrate: " in done.stdout and "round(s) of HEAD~1" in done.stdout


def test_a_revision_that_does_not_exist_is_named_with_the_fix(repo, tmp_path):
    done = subprocess.run([LLMPERF, "ab", "--base", "nope", "--repo", str(repo), "--db", str(tmp_path / "h.db")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "revision 'nope' is not a commit of" in done.stderr and "git rev-parse" in done.stderr
