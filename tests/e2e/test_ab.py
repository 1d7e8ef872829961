"""``llmperf ab`` and ``llmperf calibrate`` on a real git repository: worktrees, alternating processes, verdicts."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import FAST

LLMPERF = str(Path(sys.executable).with_name("llmperf"))

#: the hf backend with a controlled time per generate, the model's own few milliseconds (one thread) slept up
#: to 30 ms a call plus 10 ms a generated token, times the revision's factor: what a loaded machine does to
#: the tiny model's time stays inside the slept time, and a slower revision is slower by that factor alone
BACKEND = '''
import time

import torch

from pytest_llmperf.backends.hf import HfBackend

FACTOR = {factor}
SECONDS_PER_CALL, SECONDS_PER_TOKEN, LOAD_SECONDS = 0.03, 0.01, 0.2


def sleep_until(start, seconds):
    time.sleep(max(0.0, seconds - (time.perf_counter() - start)))


class SlowHf(HfBackend):
    id = "slow-hf"

    def load(self, request, span):
        start = time.perf_counter()
        torch.set_num_threads(1)  # threads that wait for each other on a busy core take 100x longer
        super().load(request, span)
        sleep_until(start, LOAD_SECONDS)

    def generate(self, input_ids, new_tokens, clock=None):
        start = time.perf_counter()
        out = super().generate(input_ids, new_tokens, clock)
        sleep_until(start, FACTOR * (SECONDS_PER_CALL + SECONDS_PER_TOKEN * new_tokens))
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
    """Two commits: the second makes every generate take twice as long."""
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "test_perf.py").write_text(PERF_TEST)
    for factor, message in ((1, "fast"), (2, "slow")):
        (path / "slow_backend.py").write_text(BACKEND.format(factor=factor))
        git(path, "add", ".")
        git(path, "commit", "-q", "-m", message)
    return path


def pytest_args(tmp_path: Path, model_cache: str) -> list[str]:
    fast = [a for a in FAST if a != "--llmperf"]  # llmperf ab adds it
    return [*fast, "--llmperf-trials=3", "--llmperf-warmups=1", f"--llmperf-model-cache={model_cache}",
            f"--llmperf-pool-dir={tmp_path / 'pool'}", "-q"]


def test_ab_finds_the_slower_head_and_keeps_both_sides_in_the_history(repo, tmp_path, model_cache):
    db, reports = tmp_path / "history.db", tmp_path / "reports"
    done = subprocess.run(
        [LLMPERF, "ab", "--base", "HEAD~1", "--head", "HEAD", "--repo", str(repo), "--db", str(db), "--rounds", "2",
         "--max-rounds", "4", "--report-dir", str(reports), "--", *pytest_args(tmp_path, model_cache)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "llmperf gate: FAIL: a regression" in done.stdout
    with sqlite3.connect(db) as conn:
        sides = conn.execute("SELECT ab_side, git_commit FROM runs ORDER BY started_at, rowid").fetchall()
        verdicts = dict(conn.execute("SELECT metric, outcome FROM verdicts WHERE baseline_kind = 'ab'").fetchall())
    base, head = git(repo, "rev-parse", "HEAD~1"), git(repo, "rev-parse", "HEAD")
    # alternating processes, the order of each pair alternating too; the regression ends the run at the first
    # look that finds it (after 2 rounds unless a busy machine blurs the trials: then by the 4th at the latest)
    pairs = [("base", base), ("head", head), ("head", head), ("base", base)] * 2
    assert len(sides) in (4, 6, 8) and sides == pairs[:len(sides)], sides
    assert f"after {len(sides) // 2} round(s)" in done.stdout
    # the gated throughput fails the run; decode time per token is compared and shown, not gated: with two
    # processes a side at an early look it may still be open
    assert verdicts["tokens_per_s"] == "regressed" and verdicts["tpot_ms"] in ("regressed", "inconclusive")
    tpot = [line for line in done.stdout.splitlines() if "test_perf.py::test_generate" in line and " tpot_ms " in line]
    assert len(tpot) == 1 and "reported, not gated" in tpot[0], done.stdout
    markdown = (reports / "verdicts.md").read_text()
    assert f"{base[:12]} (base) vs {head[:12]} (head)" in markdown
    assert f"llmperf ab --base {base} --head {head} --" in markdown  # the reproduction command, by commit
    assert git(repo, "worktree", "list").count("\n") == 0  # the worktrees are gone, only the main one is left


def test_calibrate_runs_one_revision_against_itself_and_reports_its_noise(repo, tmp_path, model_cache):
    done = subprocess.run(
        [LLMPERF, "calibrate", "--rev", "HEAD~1", "--repo", str(repo), "--db", str(tmp_path / "h.db"),
         "--rounds", "2", "--", *pytest_args(tmp_path, model_cache)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for column in ("within-process CV", "between-process CV", "process SD (df)", "detectable, 2 rounds",
                   "rounds for 10%", "A/A verdict"):
        assert column in done.stdout, column
    assert "tokens_per_s" in done.stdout
    assert "llmperf calibrate: " in done.stdout and "round(s) of HEAD~1" in done.stdout
    assert "0 false alarm(s) in this A/A run" in done.stdout
    assert "\ntrials per process: " in done.stdout and "set them with --llmperf-trials" in done.stdout


def test_a_revision_that_does_not_exist_is_named_with_the_fix(repo, tmp_path):
    done = subprocess.run([LLMPERF, "ab", "--base", "nope", "--repo", str(repo), "--db", str(tmp_path / "h.db")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "revision 'nope' is not a commit of" in done.stderr and "git rev-parse" in done.stderr
