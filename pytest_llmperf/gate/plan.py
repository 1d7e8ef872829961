"""Planning an A/B run from the noise it will meet: the processes a change needs, and the change a run can see.

All on the log scale of ``noise``: with between-process SD ``sd`` and ``n`` processes a side, the log
difference of the sides has standard error ``sd * sqrt(2 / n)``; a one-sided test at ``level`` catches a
worse change of ``delta`` (log) with ``power`` when ``delta >= (z_level + z_power) * se``. The group-sequential
design (``sequential``) needs slightly more processes at its last look than a single test does
(``SEQUENTIAL_INFLATION``: about 9 % for the power-family spending over 10-20 looks at the levels a suite uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from pytest_llmperf.gate.noise import NoiseParts

DEFAULT_POWER = 0.8
SEQUENTIAL_INFLATION = 1.09


@lru_cache(maxsize=4096)
def quantile(p: float, df: int | None = None) -> float:
    """The upper ``p`` quantile of Student's t with ``df`` degrees of freedom (normal without: a known SD)."""
    from scipy.special import ndtri, stdtrit

    return float(stdtrit(df, 1 - p)) if df else float(-ndtri(p))


def z_sum(level: float, power: float, df: int | None = None) -> float:
    """The standard errors between no change and the change a one-sided test at ``level`` catches with ``power``."""
    return quantile(level, df) + quantile(1 - power, df)


def processes_needed(sd: float, change: float, level: float, power: float = DEFAULT_POWER, *,
                     sequential: bool = True) -> int:
    """Processes per side to catch a worse change of ``change`` (0.1: 10 %) with ``power`` at ``level``."""
    if not change > 0:
        raise ValueError(f"the change to detect must be above 0, not {change!r}")
    delta = math.log1p(change)  # the smaller of the two directions' log changes: a slowdown by 10 % or a loss
    n = 2 * (z_sum(level, power) * sd / delta) ** 2 * (SEQUENTIAL_INFLATION if sequential else 1.0)
    return max(2, math.ceil(n))


def detectable(sd: float, processes: int, level: float, power: float = DEFAULT_POWER, *, df: int | None = None,
               ) -> float:
    """The worse change (as a fraction) that ``processes`` per side catch with ``power`` at ``level``; ``df``:
    the degrees of freedom of the SD the comparison will use (None: known)."""
    return math.expm1(z_sum(level, power, df) * sd * math.sqrt(2 / max(processes, 1)))


@dataclass(frozen=True)
class TrialAdvice:
    trials: int
    #: the SD of one process's value with that many trials, and with the trials used now
    process_sd: float
    process_sd_now: float


def best_trials(parts: NoiseParts, *, process_s: float, trial_s: float, now: int) -> TrialAdvice:
    """The trials per process that buy the most precision per second: each process costs ``process_s`` (start,
    load, warm-up) plus ``trial_s`` per trial; more trials average away only the within-process part.

    Minimising (process_s + T trial_s)(between^2 + k within^2 / T) gives T = sqrt(process_s k within^2 /
    (trial_s between^2)); at least 2 trials (the median of one is all noise), at most 50."""
    k_within = (math.pi / 2) * parts.within_sd ** 2
    if parts.between_sd <= 0 or trial_s <= 0:
        trials = 50
    else:
        trials = round(math.sqrt(process_s * k_within / (trial_s * parts.between_sd ** 2)))
    trials = min(max(trials, 2), 50)
    return TrialAdvice(trials, parts.process_sd(trials), parts.process_sd(now))
