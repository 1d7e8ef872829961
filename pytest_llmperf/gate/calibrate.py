"""``llmperf calibrate``: the same revision against itself (A/A), to see the noise the gate works in and plan for it.

For every gated series: the spread of trials within a process and of the processes' medians, the
between-process SD the gate will use (this run's processes pooled with what the history knows of the
series), and from it the smallest change an A/B run of these rounds catches with 80 % power, and the
rounds a target change (``--detect``) needs. Across the series it advises how many trials per process buy
the most precision per second: when the processes' levels differ more than trials do, more and shorter
processes beat more trials. A verdict other than unchanged or inconclusive in an A/A run is a false alarm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from pytest_llmperf.gate.noise import NoiseParts, ProcessNoise, combine, noise_parts, pooled, process_value
from pytest_llmperf.gate.plan import TrialAdvice, best_trials, detectable, processes_needed
from pytest_llmperf.gate.samples import same_code_groups
from pytest_llmperf.gate.verdict import DEFAULT_ALPHA, Outcome, Verdict
from pytest_llmperf.history.runs import ab_sides, process_timing
from pytest_llmperf.history.samples import series_samples
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.metrics import GATED_METRICS, Sampling, metric


@dataclass(frozen=True)
class SeriesNoise:
    """What one series' noise allows, for A/B runs of ``rounds`` processes a side at a per-test ``level``."""

    #: SD of log trials within a process (None: one value per process), and of the processes' true levels
    parts: NoiseParts | None
    #: the between-process SD of log process values the gate uses, with its degrees of freedom
    noise: ProcessNoise | None
    #: the worse change caught with 80 % power at ``rounds`` processes a side
    detectable: float | None
    #: processes a side that catch the target change with 80 % power
    rounds_needed: int | None


def series_noise(processes: Sequence[Sequence[float]], *, prior: ProcessNoise | None, rounds: int, level: float,
                 detect: float, trials: bool) -> SeriesNoise:
    """``processes``: one revision's processes, each a sequence of trial values (or its one value)."""
    logs = [process_value(p) for p in processes if len(p) and min(p) > 0]
    noise = combine(prior, pooled([logs], "this calibration"))
    parts = noise_parts(processes) if trials else None
    if noise is None:
        return SeriesNoise(parts, None, None, None)
    # an A/B run of ``rounds`` will pool this noise with its own 2 (rounds - 1) degrees of freedom
    return SeriesNoise(parts, noise, detectable(noise.sd, rounds, level, df=noise.df + 2 * rounds - 2),
                       processes_needed(noise.sd, detect, level))


@dataclass(frozen=True)
class Noise:
    label: str
    metric: str
    #: median over processes of each process's trials' coefficient of variation (None: one value per process)
    within_cv: float | None
    #: coefficient of variation of the processes' medians (None: fewer than 2 processes)
    between_cv: float | None
    estimate: SeriesNoise
    outcome: str


def _cv(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return sd / mean if mean else None


def noise_by_series(store: HistoryStore, group: str, verdicts: Sequence[Verdict], *, rounds: int, detect: float,
                    alpha: float = DEFAULT_ALPHA) -> list[Noise]:
    sides = ab_sides(store, group)
    runs = [*sides.base, *sides.head]
    samples = series_samples(store, runs, GATED_METRICS)
    earlier = same_code_groups(store, GATED_METRICS, exclude_group=group)
    by_key = {v.subject.digest(): v for v in verdicts}
    tests = max(1, sum(1 for v in verdicts if v.comparison.gated and v.p_worse is not None))
    out = []
    for key, s in sorted(samples.items(), key=lambda kv: kv[1].subject.label):
        per_process = [s.per_run[r] for r in runs if r in s.per_run]
        m = metric(s.subject.metric)
        is_trials = m.sampling is Sampling.TRIALS
        groups = earlier.get(key, [])
        prior = pooled(groups, f"{len(groups)} earlier same-code groups")
        if m.sampling is Sampling.FIXED and len({v for p in per_process for v in p}) == 1:
            continue  # deterministic: a tolerance, no noise to plan for
        estimate = series_noise(per_process, prior=prior, rounds=rounds, level=alpha / tests, detect=detect,
                                trials=is_trials)
        within = [c for p in per_process if (c := _cv(p)) is not None] if is_trials else []
        v = by_key.get(key)
        out.append(Noise(label=s.subject.label, metric=s.subject.metric,
                         within_cv=median(within) if within else None,
                         between_cv=_cv([median(p) for p in per_process]), estimate=estimate,
                         outcome=v.outcome.value if v else "-"))
    return out


def trial_advice(store: HistoryStore, group: str, rows: Sequence[Noise]) -> TrialAdvice | None:
    """How many trials per process buy the most precision per second, for the typical gated per-trial series."""
    sides = ab_sides(store, group)
    runs = [*sides.base, *sides.head]
    if not runs:
        return None
    timing = process_timing(store, runs)
    walls, trial_time, trial_count = list(timing.walls_s), timing.trial_s, timing.trials
    per_measurement = trial_count / timing.measurements if timing.measurements else 0.0
    parts = [r.estimate.parts for r in rows if r.estimate.parts is not None]
    if not walls or not trial_count or not parts:
        return None
    trial_s = trial_time / len(runs) / per_measurement  # one more trial in each of a process's measurements
    process_s = max(median(walls) - trial_time / len(runs), 0.0)
    typical = NoiseParts(median(p.within_sd for p in parts), median(p.between_sd for p in parts))
    return best_trials(typical, process_s=process_s, trial_s=trial_s, now=round(per_measurement))


def false_alarms(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.comparison.gated and v.outcome in (Outcome.REGRESSED, Outcome.IMPROVED)]
