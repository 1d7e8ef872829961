"""The gate end to end: pytest --llmperf --llmperf-compare against a real history, with a real slowdown."""

import json
import os
import sqlite3
import subprocess
import xml.etree.ElementTree as ET

import pytest

#: the hf backend, made slower per generated token by an environment variable: a real regression, on demand
SLOW_BACKEND = '''
import os
import time

from pytest_llmperf.backends.hf import HfBackend


class SlowHf(HfBackend):
    id = "slow-hf"

    def generate(self, input_ids, new_tokens):
        out = super().generate(input_ids, new_tokens)
        if os.environ.get("SLOW_HF_ONLY_IN_PID", str(os.getpid())) == str(os.getpid()):
            time.sleep(float(os.environ.get("SLOW_HF_S_PER_TOKEN", "0")) * new_tokens)
        return out
'''

PERF_TEST = '''
import pytest


@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="slow_backend:SlowHf", world_size=1)
def test_generate(llm):
    llm.sweep()
'''


#: warm-up and five trials; and only changes of 4x count: the tiny model's ~1 ms per token moves by 2-3x
#: with whatever else this machine runs, while the slow backend's 20 ms per token makes it about 20x slower
STEADY = ("--llmperf-warmups=1", "--llmperf-trials=5", "--llmperf-min-effect=3 tokens_per_s=0.75")


def git(path, *args):
    subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)


@pytest.fixture
def project(pytester):
    pytester.makepyfile(slow_backend=SLOW_BACKEND, test_perf=PERF_TEST)
    pytester.syspathinsert()
    git(pytester.path, "init", "-q", "-b", "main")
    git(pytester.path, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "start")
    return pytester


def test_a_slower_branch_fails_the_gate_with_its_reports_and_an_unchanged_one_passes(
        project, run_llmperf, monkeypatch, tmp_path):
    db = f"--llmperf-db={tmp_path / 'history.db'}"
    monkeypatch.setenv("SLOW_HF_S_PER_TOKEN", "0")
    for _ in range(4):  # the default branch's history
        first = run_llmperf(db, "--llmperf-compare", *STEADY)
        assert first.ret == 0
        first.stdout.fnmatch_lines(["*llmperf gate: pass (*)*"])

    git(project.path, "checkout", "-q", "-b", "feature")
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("SLOW_HF_S_PER_TOKEN", "0.02")  # several times the tiny model's own time per token
    reports = tmp_path / "reports"
    slow = run_llmperf(db, "--llmperf-compare", *STEADY, f"--llmperf-report-dir={reports}",
                       f"--junitxml={tmp_path / 'junit.xml'}", "-o", "junit_family=xunit1")
    assert slow.ret == 1, slow.stdout.str()
    slow.assert_outcomes(passed=1)  # the test itself passed: the gate failed the run
    # decode time per token is what the delay adds to most directly; a spread history may leave others inconclusive
    slow.stdout.fnmatch_lines(["*= llmperf gate =*", "*regressed*test_perf.py::test_generate*tpot_ms*main: 4 runs*",
                               "*llmperf gate: FAIL: a regression*"])
    markdown = (reports / "verdicts.md").read_text()
    assert any(line.startswith("| regressed | test_perf.py::test_generate") and "| tpot_ms |" in line
               for line in markdown.splitlines()), markdown
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

    monkeypatch.setenv("SLOW_HF_S_PER_TOKEN", "0")
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
    monkeypatch.setenv("SLOW_HF_S_PER_TOKEN", "0.02")
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
