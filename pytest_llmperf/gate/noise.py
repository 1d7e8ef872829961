"""The noise a comparison is judged against: how far one process's (or one run's) value of a series moves.

The unit of replication is the process in an A/B run and the run in a history: the trials of one process
share that process's level (on the H100 the process medians differ by 12-13 % while its trials vary
3-22 %), so a series is summarised by one value per process, the median of its trials, and compared on the
log scale, where a slowdown by a factor is a shift. ``ProcessNoise`` is the standard deviation of those log
values between processes of the same code, with its degrees of freedom: pooled from every group of
processes that ran the same revision (the sides of earlier A/B runs and A/A calibrations, the current
run's own sides), so that a handful of new processes is judged against a noise level the history already
knows instead of one estimated from two points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median


def process_value(values: Sequence[float]) -> float:
    """One process's value of a series, on the log scale: the log of the median of its trials (or its value)."""
    if len(values) == 0:
        raise ValueError("a process value needs at least one measurement")
    m = float(values[0] if len(values) == 1 else median(values))
    if m <= 0:
        raise ValueError(f"a process value needs positive measurements, got a median of {m}")
    return math.log(m)


@dataclass(frozen=True)
class ProcessNoise:
    """The SD of log process values of one series (0.13 is about 13 %), from ``df`` degrees of freedom."""

    sd: float
    df: int
    #: where it was measured, for the report: "3 earlier A/B sides + this run"
    source: str

    @property
    def variance(self) -> float:
        return self.sd ** 2


def pooled(groups: Iterable[Sequence[float]], source: str) -> ProcessNoise | None:
    """The within-group SD of log values pooled over groups of the same code; None without 2 values in a group."""
    squares, df = 0.0, 0
    for group in groups:
        if len(group) < 2:
            continue
        mean = sum(group) / len(group)
        squares += sum((x - mean) ** 2 for x in group)
        df += len(group) - 1
    if df == 0:
        return None
    return ProcessNoise(math.sqrt(squares / df), df, source)


def combine(*estimates: ProcessNoise | None) -> ProcessNoise | None:
    """Estimates of the same noise from disjoint data, pooled by their degrees of freedom."""
    present = [e for e in estimates if e is not None and e.df > 0]
    if not present:
        return None
    df = sum(e.df for e in present)
    variance = sum(e.variance * e.df for e in present) / df
    return ProcessNoise(math.sqrt(variance), df, " + ".join(e.source for e in present))


@dataclass(frozen=True)
class NoiseParts:
    """A series' noise split into what more trials average away and what only more processes do.

    ``within_sd``: SD of log trial values inside one process; ``between_sd``: SD of the processes' true levels.
    The SD of one process's value with ``trials`` trials is then ``sqrt(between_sd**2 + k * within_sd**2 / trials)``
    with ``k = pi / 2`` for a median of normal trials."""

    within_sd: float
    between_sd: float

    def process_sd(self, trials: int) -> float:
        return math.sqrt(self.between_sd ** 2 + (math.pi / 2) * self.within_sd ** 2 / max(trials, 1))


def noise_parts(processes: Sequence[Sequence[float]]) -> NoiseParts | None:
    """Within- and between-process noise of one revision's processes (each a sequence of trial values)."""
    logs = [[math.log(v) for v in p] for p in processes if len(p) and min(p) > 0]
    within = pooled(logs, "trials")
    level = pooled([[process_value(p) for p in processes if len(p) and min(p) > 0]], "processes")
    if level is None:
        return None
    mean_trials = sum(len(p) for p in logs) / len(logs)
    within_sd = within.sd if within is not None else 0.0
    between_var = max(level.variance - (math.pi / 2) * within_sd ** 2 / mean_trials, 0.0)
    return NoiseParts(within_sd, math.sqrt(between_var))
