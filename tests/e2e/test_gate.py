"""The gate end to end: pytest --llmperf --llmperf-compare against a real history, with a real slowdown."""

import json
import os
import sqlite3
import subprocess
import xml.etree.ElementTree as ET

import pytest
import torch

#: the hf backend with a controlled time per generate: the model's own few milliseconds (one thread) are slept
#: up to 30 ms a call plus 10 ms a generated token, and an environment variable multiplies that time (a real
#: regression, on demand). What a loaded machine does to the tiny model's time (2-3x, and far worse with
#: threads that spin for a busy core) then stays inside the slept time, and a run measures the same on a busy
#: machine as on an idle one; load is held at a fixed time the same way.
SLOW_BACKEND = '''
import os
import time

import torch

from pytest_llmperf.backends.hf import HfBackend

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
        factor = 1.0
        if os.environ.get("SLOW_HF_ONLY_IN_PID", str(os.getpid())) == str(os.getpid()):
            factor = float(os.environ.get("SLOW_HF_FACTOR", "1"))
        sleep_until(start, factor * (SECONDS_PER_CALL + SECONDS_PER_TOKEN * new_tokens))
        return out
'''

PERF_TEST = '''
import pytest


@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="slow_backend:SlowHf", world_size=1)
def test_generate(llm):
    llm.sweep()
'''


#: a warm-up and three trials (the median of three outlasts one late wake-up), and the default minimum effect
#: (5 %) but for peak memory: on the CPU that is the peak RSS of the process that holds the model, here this
#: pytest process, which grows by some 20 MiB with every in-process run while the history is written
STEADY = ("--llmperf-warmups=1", "--llmperf-trials=3", "--llmperf-min-effect=0.05 peak_mem_bytes=0.5")


def git(path, *args):
    subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)


@pytest.fixture
def project(pytester):
    pytester.makepyfile(slow_backend=SLOW_BACKEND, test_perf=PERF_TEST)
    pytester.syspathinsert()
    git(pytester.path, "init", "-q", "-b", "main")
    git(pytester.path, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "start")
    threads = torch.get_num_threads()  # the backend runs the model on one thread in this process: put it back
    yield pytester
    torch.set_num_threads(threads)


def test_a_slower_branch_fails_the_gate_with_its_reports_and_an_unchanged_one_passes(
        project, run_llmperf, monkeypatch, tmp_path):
    db = f"--llmperf-db={tmp_path / 'history.db'}"
    for _ in range(3):  # the default branch's history: the fewest runs a history comparison takes
        first = run_llmperf(db, "--llmperf-compare", *STEADY)
        assert first.ret == 0
        first.stdout.fnmatch_lines(["*llmperf gate: pass (*)*"])

    git(project.path, "checkout", "-q", "-b", "feature")
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("SLOW_HF_FACTOR", "2")  # every generate takes twice as long: half the throughput
    reports = tmp_path / "reports"
    slow = run_llmperf(db, "--llmperf-compare", *STEADY, f"--llmperf-report-dir={reports}",
                       f"--junitxml={tmp_path / 'junit.xml'}", "-o", "junit_family=xunit1")
    assert slow.ret == 1, slow.stdout.str()
    slow.assert_outcomes(passed=1)  # the test itself passed: the gate failed the run
    # the gated throughput fails the run; decode time per token, the same measurement seen per step, is reported
    slow.stdout.fnmatch_lines(["*= llmperf gate =*", "*llmperf gate: FAIL: a regression*"])
    slow.stdout.fnmatch_lines(["*regressed*test_perf.py::test_generate*tokens_per_s*main: 3 runs*"])
    slow.stdout.fnmatch_lines(["*test_perf.py::test_generate*tpot_ms*main: 3 runs*reported, not gated*"])
    markdown = (reports / "verdicts.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| regressed | test_perf.py::test_generate") and "| tokens_per_s |" in line
               for line in rows), markdown
    assert any("| tpot_ms |" in line and "reported, not gated" in line for line in rows), markdown
    assert "Reproduce:" in markdown
    assert "--llmperf-compare" in markdown and " 'test_perf.py::test_generate[llama-tiny-slow_backend:SlowHf]'`" \
        in markdown
    assert summary.read_text() == markdown  # the job summary gets the same
    run = json.loads((reports / "run.json").read_text())
    assert len(run["runs"]) == 1
    benchmark = json.loads((reports / "benchmark.json").read_text())
    assert benchmark["benchmarks"], "pytest-benchmark's format with this run's timings"
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "junit.xml").iter("property")}
    assert float(props["llmperf.tokens_per_s[b1]"]) > 0 and props["llmperf.backend"] == "slow_backend:SlowHf"

    monkeypatch.delenv("SLOW_HF_FACTOR")
    same = run_llmperf(db, "--llmperf-compare", *STEADY)
    assert same.ret == 0, same.stdout.str()
    assert "regressed" not in same.stdout.str().split("llmperf gate =")[1]


def test_without_compare_there_is_no_gate_and_the_reports_are_still_written(project, run_llmperf, tmp_path):
    result = run_llmperf(f"--llmperf-db={tmp_path / 'h.db'}", f"--llmperf-report-dir={tmp_path / 'r'}")
    assert result.ret == 0
    assert "llmperf gate" not in result.stdout.str()
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["benchmark.json", "run.json"]


@pytest.mark.parametrize("transient", [False, True], ids=["lasting", "transient"])
def test_a_confirmation_rerun_keeps_a_lasting_regression_and_drops_a_transient_one(
        project, run_llmperf, monkeypatch, tmp_path, transient):
    db = f"--llmperf-db={tmp_path / 'history.db'}"
    for _ in range(3):
        assert run_llmperf(db, *STEADY).ret == 0
    git(project.path, "checkout", "-q", "-b", "feature")
    monkeypatch.setenv("SLOW_HF_FACTOR", "2")
    if transient:  # slow in this process only: the rerun, a new process, is not
        monkeypatch.setenv("SLOW_HF_ONLY_IN_PID", str(os.getpid()))
    result = run_llmperf(db, "--llmperf-compare", "--llmperf-confirm", *STEADY)
    output = result.stdout.str()
    assert "llmperf: confirming 1 regressed test(s) in a new process" in output
    if transient:
        assert result.ret == 0, output
        assert "did not reproduce it (" in output and "not confirmed" in output
    else:
        assert result.ret == 1, output
        assert "confirmed by a rerun" in output
    with sqlite3.connect(tmp_path / "history.db") as conn:
        labels = [r[0] for r in conn.execute("SELECT label FROM runs WHERE label IS NOT NULL")]
    assert len(labels) == 1 and labels[0].startswith("confirmation of ")
