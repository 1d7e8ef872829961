"""Rank failures through the plugin: a faulty rank fails its test clearly, the session goes on, nothing is left.

The inner tests use the ``llm`` fixture with a fault-injecting test double of a multi-process backend
(``tests/launch/faulty_backend.py``, copied next to the inner test file so the ranks can import it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

import psutil

FAULTY_BACKEND = Path(__file__).resolve().parents[1] / "launch" / "faulty_backend.py"
MARK_ENV = "LLMPERF_E2E_RANK_FAULTS_RUN"

INNER = """
import json
import os

import psutil
import pytest

from faulty_backend import FAULT_ENV

# rank 1 fails in the second backend.generate of its group (the first is the correctness check at
# set-up): that is the first generate of the test body
FAULTS = {
    "test_healthy": "",
    "test_raises": "raise:generate:1:1",
    "test_hangs": "hang:generate:1:1",
    "test_dies": "kill:generate:1:1",
}

pytestmark = pytest.mark.llmperf(model="synthetic:llama-tiny", backend="faulty_backend:FaultyBackend", world_size=2)


@pytest.fixture(autouse=True)
def fault(request, monkeypatch):
    # autouse: set before the llm fixture starts the group, whose agents inherit the environment
    monkeypatch.setenv(FAULT_ENV, FAULTS[request.node.originalname])


def _note_processes(llm, name):
    pids = [[p.pid, p.create_time()] for p in psutil.Process().children(recursive=True)]
    assert len(pids) >= 3, pids  # an agent and two ranks
    assert llm.correctness is not None and llm.correctness.outcome == "match", llm.correctness
    with open("group-processes.jsonl", "a") as f:
        f.write(json.dumps({"test": name, "pids": pids}) + "\\n")


def test_healthy(llm):
    _note_processes(llm, "test_healthy")
    assert llm.generate(batch_size=1).outcome == "ok"


def test_raises(llm):
    _note_processes(llm, "test_raises")
    llm.generate(batch_size=1)


def test_hangs(llm):
    _note_processes(llm, "test_hangs")
    llm.generate(batch_size=1)


def test_dies(llm):
    _note_processes(llm, "test_dies")
    llm.generate(batch_size=1)
"""


def _failure_section(out: str, test: str) -> str:
    """The report of one failed test: from its ``____ test[...] ____`` header to the next header."""
    match = re.search(rf"^_+ {test}\[.*?\] _+$(.*?)(?=^_+ test_\w+\[.*?\] _+$|^=+ )", out, re.M | re.S)
    assert match, f"no failure report for {test}:\n{out}"
    return match.group(1)


def _processes_of_run(mark: str) -> list[str]:
    """Processes anywhere on this machine that inherited the inner run's marker environment variable."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get(MARK_ENV) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:160]}")
        except psutil.Error:
            continue
    return found


def _alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == create_time and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_faulty_ranks_fail_their_tests_clearly_and_leave_nothing_behind(pytester, run_llmperf, monkeypatch):
    pytester.makepyfile(faulty_backend=FAULTY_BACKEND.read_text())
    pytester.makepyfile(test_faults=INNER)
    mark = secrets.token_hex(8)
    monkeypatch.setenv(MARK_ENV, mark)
    (pytester.path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(pytester.path / "tmp"))  # the inner tests' scratch folders: kept logs land here
    paths = (str(pytester.path), os.environ.get("PYTHONPATH"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))

    result = run_llmperf("--llmperf-cpu-slots=2", "--llmperf-rank-timeout=30",
                         f"--llmperf-pool-dir={pytester.path / 'pool'}", "-rA", subprocess=True)

    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=3)
    # the session completes: every test ran, was recorded, and the summary was printed
    result.stdout.fnmatch_lines(["*llmperf summary*", "*history: run * in *history.db"])
    result.stdout.fnmatch_lines(["PASSED test_faults.py::test_healthy*"])
    sections = {name: _failure_section(out, name) for name in ("test_raises", "test_hangs", "test_dies")}
    assert "rank 1 failed during 'first_generate': RuntimeError: injected fault: rank 1 raises " \
           "in generate" in sections["test_raises"], sections["test_raises"]
    assert "FAULTY-BACKEND-LAST-WORDS: rank 1 will raise in generate" in sections["test_raises"]
    assert "did not finish 'first_generate' within 30 s (--llmperf-rank-timeout)" in sections["test_hangs"]
    assert "rank 0, 1 did not finish" in sections["test_hangs"] or \
        "rank 1 did not finish" in sections["test_hangs"], sections["test_hangs"]
    assert "FAULTY-BACKEND-LAST-WORDS: rank 1 will hang in generate" in sections["test_hangs"]
    assert "rank 1 died during 'first_generate'" in sections["test_dies"] or \
        "rank 0, 1 died during 'first_generate'" in sections["test_dies"], sections["test_dies"]
    assert "FAULTY-BACKEND-LAST-WORDS: rank 1 will kill in generate" in sections["test_dies"]
    # the logs a failure quotes are still there for whoever reads the report after the session
    for name, section in sections.items():
        cited = re.findall(r"^--- last lines of \S+ \((.+)\) ---$", section, re.M)
        assert cited, f"{name} cites no log:\n{section}"
        missing = [path for path in cited if not Path(path).is_file()]
        assert not missing, f"{name} cites logs that were removed: {missing}"

    # every process the inner tests saw in their groups is gone, and nothing else of that run is running
    noted = [json.loads(line) for line in (pytester.path / "group-processes.jsonl").read_text().splitlines()]
    assert [n["test"] for n in noted] == ["test_healthy", "test_raises", "test_hangs", "test_dies"]
    deadline = time.monotonic() + 5
    while True:
        alive = [pid for n in noted for pid, created in n["pids"] if _alive(pid, created)]
        left = _processes_of_run(mark)
        if not (alive or left) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive and not left, f"left running after the session: {alive} {left}"
