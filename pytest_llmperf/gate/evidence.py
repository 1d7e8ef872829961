"""The statistics behind a verdict: how sure we are that one side differs from the other, and by how much.

Three kinds of evidence, one per kind of metric (``Metric.sampling``):

* ``samples``: per-trial values grouped by the process that measured them. The effect is the ratio of
  medians (head / base); its confidence interval comes from a two-level bootstrap (resample processes,
  then trials within each), so that a shift between processes, several percent on a GPU, widens the
  interval instead of passing for an effect. The test is a one-sided Mann-Whitney U on the pooled values,
  in each direction.
* ``prediction``: one current value against a baseline of earlier runs' values: is it outside the
  prediction interval of those runs (Student's t, one new observation), and by how much.
* ``tolerance``: deterministic values (bytes, a largest batch): the change of the median against a
  tolerance; there is no variance to test. Where such values do vary (a host's peak RSS), they are
  compared like the others instead (see ``is_constant``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Evidence:
    """What one comparison found. ``ratio`` is head / base (of medians); the CI is of that ratio."""

    method: str
    #: the base's median (or the history's), and the head's, in the metric's own unit
    base: float
    head: float
    ci_low: float
    ci_high: float
    #: Mann-Whitney's U, or the prediction interval's t; None for a tolerance check
    statistic: float | None
    #: one-sided p-values: that head is higher than base, and that it is lower; None for a tolerance check
    p_higher: float | None
    p_lower: float | None
    n_base: int
    n_head: int

    @property
    def ratio(self) -> float:
        return self.head / self.base

    @property
    def abs_change(self) -> float:
        """The change in the metric's own unit, head - base."""
        return self.head - self.base


def _flatten(groups: Sequence[Sequence[float]]) -> np.ndarray:
    return np.concatenate([np.asarray(g, dtype=float) for g in groups if len(g)]) if groups else np.array([])


def _cluster_medians(groups: list[np.ndarray], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Medians of ``resamples`` two-level bootstrap samples: processes with replacement, then trials in each."""
    sizes = np.array([len(g) for g in groups])
    padded = np.full((len(groups), sizes.max()), np.nan)
    for i, g in enumerate(groups):
        padded[i, : len(g)] = g
    picked = rng.integers(0, len(groups), size=(resamples, len(groups)))  # (R, G) process indices
    # trial indices within each picked process, drawn from that process's own size; columns past it stay NaN
    within = np.floor(rng.random((resamples, len(groups), sizes.max())) * sizes[picked][..., None]).astype(int)
    values = padded[picked[..., None], within]
    values[np.arange(sizes.max()) >= sizes[picked][..., None]] = np.nan
    return np.nanmedian(values.reshape(resamples, -1), axis=1)


def compare_samples(base: Sequence[Sequence[float]], head: Sequence[Sequence[float]], *,
                    confidence: float = 0.95, seed: int = 0) -> Evidence:
    """Per-trial values of each side, one inner sequence per process (or a single one)."""
    from scipy.stats import mannwhitneyu

    base_groups = [np.asarray(g, dtype=float) for g in base if len(g)]
    head_groups = [np.asarray(g, dtype=float) for g in head if len(g)]
    a, b = _flatten(base_groups), _flatten(head_groups)
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"compare_samples needs values on both sides (base: {len(a)}, head: {len(b)})")
    base_median, head_median = float(np.median(a)), float(np.median(b))
    if base_median <= 0:
        raise ValueError(f"a ratio needs a positive base median, got {base_median}")
    rng = np.random.default_rng(seed)
    ratios = (_cluster_medians(head_groups, rng, BOOTSTRAP_RESAMPLES)
              / _cluster_medians(base_groups, rng, BOOTSTRAP_RESAMPLES))
    tail = (1 - confidence) / 2
    ci_low, ci_high = (float(x) for x in np.quantile(ratios, [tail, 1 - tail]))
    higher = mannwhitneyu(b, a, alternative="greater")
    lower = mannwhitneyu(b, a, alternative="less")
    return Evidence(
        method="mann-whitney + cluster bootstrap", base=base_median, head=head_median, ci_low=ci_low,
        ci_high=ci_high, statistic=float(higher.statistic),
        p_higher=float(higher.pvalue), p_lower=float(lower.pvalue), n_base=len(a), n_head=len(b),
    )


def compare_to_history(history: Sequence[float], current: Sequence[float], *, confidence: float = 0.95) -> Evidence:
    """The current run's median against the earlier runs' values (one per run): at least 3 of them."""
    from scipy.stats import t as student_t

    h = np.asarray(history, dtype=float)
    if len(h) < 3:
        raise ValueError(f"a prediction interval needs at least 3 earlier runs, got {len(h)}")
    if len(current) == 0:
        raise ValueError("compare_to_history needs a current value")
    value = float(np.median(np.asarray(current, dtype=float)))
    mean, sd, n = float(h.mean()), float(h.std(ddof=1)), len(h)
    reference = float(np.median(h))
    if reference <= 0:
        raise ValueError(f"a ratio needs a positive baseline, got {reference}")
    spread = sd * np.sqrt(1 + 1 / n)
    half = float(student_t.ppf(1 - (1 - confidence) / 2, n - 1) * spread)
    if spread > 0:
        t = (value - mean) / spread
        p_higher, p_lower = float(student_t.sf(t, n - 1)), float(student_t.cdf(t, n - 1))
    else:  # identical history: any difference is outside it
        t = 0.0 if value == mean else float(np.sign(value - mean) * np.inf)
        p_higher = 0.0 if value > mean else 1.0
        p_lower = 0.0 if value < mean else 1.0
    # the interval of the ratio: where the current value could be and still fit the history
    return Evidence(
        method="prediction interval", base=reference, head=value, ci_low=(mean - half) / reference,
        ci_high=(mean + half) / reference, statistic=float(t),
        p_higher=p_higher, p_lower=p_lower, n_base=n, n_head=len(current),
    )


def is_constant(values: Sequence[float], rel: float = 1e-3) -> bool:
    """Values that do not vary (within ``rel``): deterministic in practice, so a tolerance, not a test, applies.

    Device memory counters are; a host's peak RSS is not quite, and then the metric is compared as noisy."""
    if len(values) == 0:
        return True
    low, high = min(values), max(values)
    return high - low <= rel * max(abs(high), abs(low), 1e-30)


def compare_fixed(base: Sequence[float], head: Sequence[float]) -> Evidence:
    """Deterministic values: the ratio of medians, with no interval and no test."""
    if len(base) == 0 or len(head) == 0:
        raise ValueError(f"compare_fixed needs values on both sides (base: {len(base)}, head: {len(head)})")
    b, h = float(np.median(base)), float(np.median(head))
    if b <= 0:
        raise ValueError(f"a ratio needs a positive base value, got {b}")
    return Evidence(method="tolerance", base=b, head=h, ci_low=h / b, ci_high=h / b, statistic=None,
                    p_higher=None, p_lower=None, n_base=len(base), n_head=len(head))
