"""The statistics behind a verdict: how far one side is from the other, in units of the noise between processes.

Two kinds of evidence, by the kind of metric (``Metric.sampling``):

* ``processes``: each process (A/B) or run (history) counts once, as the log of the median of its trials
  (``noise.process_value``). The effect is the difference of the sides' mean log values, a ratio of
  geometric means; its standard error comes from the between-process SD (``ProcessNoise``), pooled from the
  history where it knows the series and from this comparison's own processes, and the statistic is Student's
  t with the pooled degrees of freedom. With no history this is the two-sample t-test of the processes at
  hand, valid for the few there are (and correspondingly cautious). A run whose own processes spread
  clearly more than the history says (an F-test at 5 %: a busy machine) is judged on its own processes.
* ``tolerance``: deterministic values (bytes, a largest batch): the change of the median against a
  tolerance; there is no variance to test. Where such values do vary (a host's peak RSS), they are
  compared like the others instead (see ``is_constant``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_llmperf.gate.noise import ProcessNoise, combine, pooled, process_value

#: the confidence of the interval shown beside a verdict (the rule uses its own levels)
SHOWN_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Evidence:
    """What one comparison found. ``ratio`` is head / base; the CI is of that ratio."""

    method: str
    #: the base's value (geometric mean of its processes' medians, or the history's), and the head's
    base: float
    head: float
    ci_low: float
    ci_high: float
    #: Student's t of the log difference; None for a tolerance check
    statistic: float | None
    #: one-sided p-values: that head is higher than base, and that it is lower; None for a tolerance check
    p_higher: float | None
    p_lower: float | None
    #: processes (A/B) or runs (history) on each side; values for a tolerance check
    n_base: int
    n_head: int
    #: standard error of the log difference, and its degrees of freedom (None for a tolerance check)
    se_log: float | None = None
    df: int | None = None
    #: where the noise level came from
    noise: str = ""

    @property
    def ratio(self) -> float:
        return self.head / self.base

    @property
    def abs_change(self) -> float:
        """The change in the metric's own unit, head - base."""
        return self.head - self.base

    @property
    def log_change(self) -> float:
        return math.log(self.ratio)


def _t_evidence(method: str, base_log: float, head_log: float, se: float, noise: ProcessNoise | None,
                n_base: int, n_head: int) -> Evidence:
    from scipy.special import stdtr, stdtrit  # Student's t CDF and quantile, without scipy.stats' overhead

    base, head = math.exp(base_log), math.exp(head_log)
    diff = head_log - base_log
    if noise is None or not se > 0:
        # no noise level at all (one process a side, nothing in the history), or no spread ever seen
        exact = noise is not None  # a known SD of 0: any difference is real
        p_up = 0.0 if exact and diff > 0 else (1.0 if exact else 0.5)
        p_down = 0.0 if exact and diff < 0 else (1.0 if exact else 0.5)
        low, high = (head / base, head / base) if exact else (0.0, math.inf)
        return Evidence(method, base, head, low, high, None, p_up, p_down, n_base, n_head,
                        se if exact else math.inf, noise.df if noise else 0,
                        noise.source if noise else "no noise estimate")
    statistic = diff / se
    half = float(stdtrit(noise.df, 1 - (1 - SHOWN_CONFIDENCE) / 2)) * se
    below = float(stdtr(noise.df, statistic))
    return Evidence(method, base, head, math.exp(diff - half), math.exp(diff + half), statistic,
                    float(stdtr(noise.df, -statistic)), below, n_base, n_head, se, noise.df, noise.source)


#: a run whose own processes spread more than its history's at this significance is judged on its own
NOISIER_THAN_HISTORY_P = 0.05


def current_noise(prior: ProcessNoise | None, own: ProcessNoise | None) -> ProcessNoise | None:
    """The history's noise pooled with this run's, unless this run is clearly noisier than its history (a
    busy machine, a load burst in one process): then its own processes alone, a valid if weaker test."""
    from scipy.special import fdtrc  # the F distribution's upper tail

    if prior is not None and own is not None and prior.sd > 0 and \
            float(fdtrc(own.df, prior.df, own.variance / prior.variance)) < NOISIER_THAN_HISTORY_P:
        return ProcessNoise(own.sd, own.df, f"this run alone: noisier than {prior.source} "
                                            f"({own.sd:.1%} against {prior.sd:.1%})")
    return combine(prior, own)


def compare_processes(base: Sequence[Sequence[float]], head: Sequence[Sequence[float]], *,
                      prior: ProcessNoise | None = None) -> Evidence:
    """Each side's processes, one sequence of values (trials) per process; ``prior``: the history's noise."""
    b = [process_value(p) for p in base if len(p)]
    h = [process_value(p) for p in head if len(p)]
    if not b or not h:
        raise ValueError(f"compare_processes needs values on both sides (base: {len(b)}, head: {len(h)} processes)")
    noise = current_noise(prior, pooled([b, h], "this run"))
    b_mean, h_mean = sum(b) / len(b), sum(h) / len(h)
    se = noise.sd * math.sqrt(1 / len(b) + 1 / len(h)) if noise else math.inf
    return _t_evidence("processes", b_mean, h_mean, se, noise, len(b), len(h))


def compare_to_history(history: Sequence[float], recent: Sequence[float], *,
                       noise: ProcessNoise | None = None) -> Evidence:
    """The newest runs' values (one per run) against the earlier runs' (one per run, at least 3).

    ``noise``: the between-run SD of this series; by default the spread of ``history`` itself."""
    if len(history) < 3:
        raise ValueError(f"a history comparison needs at least 3 earlier runs, got {len(history)}")
    if not recent:
        raise ValueError("compare_to_history needs a current value")
    h = [process_value([v]) for v in history]
    r = [process_value([v]) for v in recent]
    noise = noise or pooled([h], f"{len(h)} runs")
    h_mean, r_mean = sum(h) / len(h), sum(r) / len(r)
    se = noise.sd * math.sqrt(1 / len(h) + 1 / len(r)) if noise else math.inf
    window = "the newest run" if len(r) == 1 else f"the newest {len(r)} runs"
    return _t_evidence(f"history: {window}", h_mean, r_mean, se, noise, len(h), len(r))


def is_constant(values: Sequence[float], rel: float = 1e-3) -> bool:
    """Values that do not vary (within ``rel``): deterministic in practice, so a tolerance, not a test, applies.

    Device memory counters are; a host's peak RSS is not quite, and then the metric is compared as noisy."""
    if len(values) == 0:
        return True
    low, high = min(values), max(values)
    return high - low <= rel * max(abs(high), abs(low), 1e-30)


def compare_fixed(base: Sequence[float], head: Sequence[float]) -> Evidence:
    """Deterministic values: the ratio of medians, with no interval and no test."""
    from statistics import median

    if len(base) == 0 or len(head) == 0:
        raise ValueError(f"compare_fixed needs values on both sides (base: {len(base)}, head: {len(head)})")
    b, h = float(median(base)), float(median(head))
    if b <= 0:
        raise ValueError(f"a ratio needs a positive base value, got {b}")
    return Evidence(method="tolerance", base=b, head=h, ci_low=h / b, ci_high=h / b, statistic=None,
                    p_higher=None, p_lower=None, n_base=len(base), n_head=len(head))
