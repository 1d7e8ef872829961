"""``llmperf calibrate``: the same revision against itself (A/A), to see the noise the gate works in.

For every gated series: the spread of trials within a process, the spread of the processes' medians,
the A/A ratio's confidence interval, and from it the smallest effect the gate can tell from noise with
these trials and rounds (the interval's half-width, on the worse side); a verdict other than unchanged
or inconclusive in an A/A run is a false alarm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

import numpy as np

from pytest_llmperf.gate.ab_compare import ab_runs
from pytest_llmperf.gate.samples import load_samples
from pytest_llmperf.gate.verdict import Outcome, Verdict, worse_change
from pytest_llmperf.measure.metrics import GATED_METRICS, Better, Sampling, metric


@dataclass(frozen=True)
class Noise:
    label: str
    metric: str
    #: median over processes of each process's trials' coefficient of variation (None: one value per process)
    within_cv: float | None
    #: coefficient of variation of the processes' medians (None: fewer than 2 processes)
    between_cv: float | None
    #: the smallest worse-direction change this A/A interval rules out, as a fraction
    detectable: float | None
    outcome: str


def _cv(values: Sequence[float]) -> float | None:
    a = np.asarray(values, dtype=float)
    return float(a.std(ddof=1) / a.mean()) if len(a) > 1 and a.mean() else None


def noise_by_series(db: Any, group: str, verdicts: Sequence[Verdict]) -> list[Noise]:
    base_runs, head_runs = ab_runs(db, group)
    runs = base_runs + head_runs
    samples = load_samples(db, runs, GATED_METRICS)
    by_key = {v.subject.series_key: v for v in verdicts}
    out = []
    for key, s in sorted(samples.items(), key=lambda kv: kv[1].subject.label):
        per_process = [s.per_run[r] for r in runs if r in s.per_run]
        m = metric(s.subject.metric)
        within = [c for p in per_process if (c := _cv(p)) is not None] if m.sampling is Sampling.TRIALS else []
        v = by_key.get(key)
        detectable = None
        if v is not None and v.evidence is not None and v.evidence.method != "tolerance":
            end = v.evidence.ci_low if m.better is Better.HIGHER else v.evidence.ci_high
            detectable = max(worse_change(end, m.better), 0.0)
        out.append(Noise(
            label=s.subject.label, metric=s.subject.metric, within_cv=median(within) if within else None,
            between_cv=_cv([median(p) for p in per_process]), detectable=detectable,
            outcome=v.outcome.value if v else "-",
        ))
    return out


def false_alarms(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.outcome in (Outcome.REGRESSED, Outcome.IMPROVED)]
