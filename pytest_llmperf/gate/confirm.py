"""The confirmation rerun (on by default; ``--llmperf-no-confirm`` turns it off): a regression fails the run
only if a second run of the regressed tests, in a fresh process, finds it too; otherwise it is inconclusive
and says so. One run's value has heavy tails (a process that lands in a slow state), which no test on a
single value can tell from a regression; a false alarm that must happen twice is rare.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

from pytest_llmperf.gate.verdict import Outcome, Verdict

#: options of the first run that the rerun must not repeat (it only measures: no gate, no report files)
_DROPPED_FLAGS = ("--llmperf-compare", "--llmperf-confirm", "--llmperf-no-confirm")
_DROPPED_WITH_VALUE = ("--llmperf-report-dir", "--junitxml", "--junit-xml", "--llmperf-label")


def confirmation_label(run_id: str) -> str:
    return f"confirmation of {run_id}"


def confirmation_command(invocation_args: Sequence[str], positional_args: Sequence[str], test_ids: Sequence[str],
                         run_id: str, rootdir: str) -> list[str]:
    """The first run's options, its test paths replaced by the regressed tests' ids, labelled as its rerun."""
    positional = set(positional_args)
    options: list[str] = []
    skip_value = False
    for arg in invocation_args:
        if skip_value:
            skip_value = False
            continue
        if arg in _DROPPED_FLAGS or arg in positional:
            continue
        if arg in _DROPPED_WITH_VALUE:
            skip_value = True
            continue
        if arg.startswith(tuple(f"{flag}=" for flag in _DROPPED_WITH_VALUE)):
            continue
        options.append(arg)
    return [sys.executable, "-m", "pytest", *options, f"--rootdir={rootdir}",
            f"--llmperf-label={confirmation_label(run_id)}", *dict.fromkeys(test_ids)]


def reconcile(verdicts: Sequence[Verdict], rerun: Sequence[Verdict], rerun_id: str | None) -> list[Verdict]:
    """Regressions the rerun also finds stand; the others become inconclusive, with what the rerun found."""
    found = {v.subject.digest(): v for v in rerun}
    out = []
    for v in verdicts:
        if not v.fails:
            out.append(v)
            continue
        again = found.get(v.subject.digest())
        if rerun_id is None:
            out.append(replace(v, notes=(*v.notes, "the confirmation rerun recorded nothing: not confirmed")))
        elif again is not None and again.outcome is Outcome.REGRESSED:
            out.append(replace(v, notes=(*v.notes, f"confirmed by a rerun (run {rerun_id})")))
        else:
            seen = again.outcome.value if again is not None else "not measured"
            out.append(replace(v, outcome=Outcome.INCONCLUSIVE, notes=(
                *v.notes, f"a rerun (run {rerun_id}) did not reproduce it ({seen}): not confirmed")))
    return out
