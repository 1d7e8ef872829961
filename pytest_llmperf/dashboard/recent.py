"""The recent-shift flag: did the newest runs of a series move? The gate's history test on the dashboard's values.

A change point (``changepoints``) is placed once about 20 runs lie on either side of it, so it comes late
for a shift in the newest runs. Here each series is tested as the gate tests a run against its history
(``gate.history.recent_windows``): the newest run alone and the means of the newest 3 and 5, each against
the runs before it; and all series of one build are judged together by the gate's rule
(``gate.verdict.judge``), so that a build of series that did not move shows a flag in at most 1 % of
builds, however many series it has.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_llmperf.dashboard.history import Series
from pytest_llmperf.gate.evidence import Evidence
from pytest_llmperf.gate.history import (
    HISTORY_ALPHA,
    MIN_BASELINE_RUNS,
    NOISE_RUNS_FACTOR,
    RECENT_WINDOWS,
    HistoryBaseline,
    recent_windows,
)
from pytest_llmperf.gate.verdict import Comparison, Outcome, judge
from pytest_llmperf.measure.metrics import Better, metric

#: the runs before a window that form its baseline: the gate's default
BASELINE_RUNS = HistoryBaseline.runs


@dataclass(frozen=True)
class RecentShift:
    """A series whose newest runs moved, by the gate's rule."""

    outcome: Outcome
    #: the window the shift was seen in, against the runs before it
    evidence: Evidence
    #: the window's runs, oldest first
    run_ids: tuple[str, ...]
    #: the p-value of the window, adjusted for every test of the build (Bonferroni)
    p_value: float

    @property
    def window(self) -> int:
        """How many of the newest runs the window holds: 1, 3 or 5."""
        return len(self.run_ids)

    @property
    def change(self) -> float:
        """The window's level against its baseline's, as a fraction: -0.1 is 10 % lower."""
        return self.evidence.ratio - 1


def recent_comparisons(series: Series, runs: int = BASELINE_RUNS) -> tuple[Comparison, Comparison] | None:
    """The gate's windows of the newest runs of ``series`` as two comparisons: the gate's own, whose evidence is
    the window most against the newest runs (the one a regression is judged on), and its mirror image, the
    window most in their favour (without it, a gain would be judged on its weakest window and hardly ever
    flagged). Both count their windows in the build's level, six tests a series, so that the 1 % per build
    holds for a flag in either direction.

    None while fewer than ``MIN_BASELINE_RUNS`` runs precede the newest, or where a value the test would read
    is not a positive number (it is on logs)."""
    values = series.values
    if len(values) < 1 + MIN_BASELINE_RUNS:
        return None
    # recent_windows reads at most the newest max(RECENT_WINDOWS) - 1 + NOISE_RUNS_FACTOR * runs earlier runs
    earlier = values[-2:-2 - (max(RECENT_WINDOWS) - 1 + NOISE_RUNS_FACTOR * runs):-1]  # newest first
    if not all(math.isfinite(v) and v > 0 for v in (values[-1], *earlier)):
        return None
    better = metric(series.subject.metric).better
    against, windows = recent_windows(earlier, values[-1], runs, better)
    favour, _ = recent_windows(earlier, values[-1], runs, Better.LOWER if better is Better.HIGHER else Better.HIGHER)
    where = f"{series.branch}: the {runs} runs before each window"
    return (Comparison(series.subject, against, where, windows=windows),
            Comparison(series.subject, favour, where, windows=windows))


def recent_shifts(series: Iterable[Series], *, alpha: float = HISTORY_ALPHA, runs: int = BASELINE_RUNS,
                  ) -> dict[tuple[str, str], RecentShift]:
    """(series key, branch) -> its recent shift, for the series whose newest runs moved; a regression first
    where both are found. All series are judged together: ``alpha`` is the chance that a build of series
    that did not move flags any."""
    pairs = [(s, c) for s in series if (c := recent_comparisons(s, runs)) is not None]
    verdicts = {id(v.comparison): v for v in judge([c for _, pair in pairs for c in pair], alpha=alpha)}
    shifts = {}
    for s, (against, favour) in pairs:
        found = [(v, outcome) for outcome in (Outcome.REGRESSED, Outcome.IMPROVED)
                 for v in (verdicts[id(against)], verdicts[id(favour)]) if v.outcome is outcome]
        if not found:
            continue
        v, outcome = found[0]
        p = v.p_worse if outcome is Outcome.REGRESSED else v.p_better
        assert v.evidence is not None and p is not None
        shifts[(s.subject.digest(), s.branch)] = RecentShift(outcome, v.evidence,
                                                               tuple(s.run_ids[-v.evidence.n_head:]), p)
    return shifts
