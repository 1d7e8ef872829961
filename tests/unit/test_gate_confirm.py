"""The confirmation rerun: which command reruns what, and what becomes of a regression it does not find."""

import sys

from pytest_llmperf.gate.confirm import confirmation_command, reconcile
from pytest_llmperf.gate.evidence import compare_fixed
from pytest_llmperf.gate.verdict import Comparison, Outcome, Verdict
from tests.factories import series_key


def test_the_rerun_keeps_the_options_drops_the_gate_and_the_report_files_and_runs_only_the_regressed_tests():
    args = ["--llmperf", "suites/", "--llmperf-compare", "--llmperf-confirm", "--llmperf-report-dir", "out",
            "--junitxml=junit.xml", "--llmperf-trials=5", "-n", "2", "--llmperf-label=nightly"]
    command = confirmation_command(args, ["suites/"], ["suites/t.py::a[x]", "suites/t.py::a[x]", "suites/t.py::b"],
                                   "r1", "/repo")
    assert command == [sys.executable, "-m", "pytest", "--llmperf", "--llmperf-trials=5", "-n", "2",
                       "--rootdir=/repo", "--llmperf-label=confirmation of r1", "suites/t.py::a[x]", "suites/t.py::b"]


def verdict(key: str, outcome: Outcome) -> Verdict:
    subject = series_key("tokens_per_s", f"t::{key}")
    return Verdict(Comparison(subject, compare_fixed([1.0], [1.0]), "main: 3 runs"), outcome)


def test_only_regressions_the_rerun_also_finds_stand():
    first = [verdict("a", Outcome.REGRESSED), verdict("b", Outcome.REGRESSED), verdict("c", Outcome.UNCHANGED)]
    rerun = [verdict("a", Outcome.REGRESSED), verdict("b", Outcome.UNCHANGED)]
    a, b, c = reconcile(first, rerun, "r2")
    assert a.outcome is Outcome.REGRESSED and "confirmed by a rerun (run r2)" in a.notes
    assert b.outcome is Outcome.INCONCLUSIVE and "did not reproduce it (unchanged): not confirmed" in b.notes[-1]
    assert c == first[2]
    [lost] = reconcile(first[:1], [], None)
    assert lost.outcome is Outcome.REGRESSED and "recorded nothing" in lost.notes[-1]
