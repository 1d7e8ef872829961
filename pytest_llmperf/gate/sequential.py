"""Group-sequential boundaries: look at the data after every round and keep the error rate of one look.

A/B rounds add processes until the answer is clear. Testing again at the full level after every round
(optional stopping) lets a false alarm through at any of them; here each look spends part of the level
instead, by the Lan-DeMets spending function of O'Brien-Fleming type, ``f(t) = 2 - 2 Phi(z_{1-a/2} / sqrt t)``
for information fraction ``t`` (processes so far / processes planned), so that early looks stop only on
a clear difference and the last look keeps nearly the whole level.

The z-statistics of successive looks are those of a Brownian motion observed at ``t_1 < t_2 < ...``; the
boundary ``c_k`` solves ``P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) = f(t_k) - f(t_{k-1})``, computed by
numerical integration of the motion's density over the region that has not stopped (no Monte Carlo, so tiny
levels such as 0.01 / 30 are exact to ~1e-9). A run that stops before its planned last look (a time budget)
spends all that is left at the look where it stops. Boundaries are one-sided; stopping for "unchanged" (an
equivalence test, see ``verdict``) only ever stops earlier, which can only lower the false-alarm rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

_GRID = 2001  # points of the density grid per look


def spent(alpha: float, fraction: float) -> float:
    """The one-sided level spent by information fraction ``fraction`` (O'Brien-Fleming-type spending)."""
    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return alpha
    return float(2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / np.sqrt(fraction)))


@lru_cache(maxsize=4096)
def _boundaries(alpha: float, fractions: tuple[float, ...], cumulative: tuple[float, ...]) -> tuple[float, ...]:
    times = np.asarray(fractions)
    bounds: list[float] = []
    # sub-density of the motion S at the previous look, restricted to "has not stopped", on a grid
    grid = density = None
    previous_spent = 0.0
    for k, (t, total) in enumerate(zip(times, cumulative, strict=True)):
        increment = total - previous_spent
        previous_spent = total
        if k == 0:
            c = float(norm.isf(increment)) if increment > 0 else np.inf
            bounds.append(c)
            top = c * np.sqrt(t) if np.isfinite(c) else 12 * np.sqrt(t)
            grid = np.linspace(-12 * np.sqrt(t), top, _GRID)
            density = norm.pdf(grid, scale=np.sqrt(t))
            continue
        assert grid is not None and density is not None
        step = np.sqrt(t - times[k - 1])
        weights = density * np.gradient(grid)

        def exceed(b: float, weights: np.ndarray = weights, grid: np.ndarray = grid, step: float = step) -> float:
            return float(np.sum(weights * norm.sf((b - grid) / step)))

        if increment <= 0:
            c = np.inf
        else:
            low, high = -20 * np.sqrt(t), 20 * np.sqrt(t)
            c_s = brentq(lambda b: exceed(b) - increment, low, high, xtol=1e-10)
            c = c_s / np.sqrt(t)
        bounds.append(float(c))
        top = c * np.sqrt(t) if np.isfinite(c) else 12 * np.sqrt(t)
        new_grid = np.linspace(-12 * np.sqrt(t), top, _GRID)
        kernel = norm.pdf((new_grid[:, None] - grid[None, :]) / step) / step
        density, grid = kernel @ weights, new_grid
    return tuple(bounds)


def boundaries(alpha: float, fractions: Sequence[float], *, stop_at: int | None = None) -> tuple[float, ...]:
    """z-boundaries of the looks at these information fractions (increasing, the planned last one 1.0).

    ``stop_at``: the index of a look where the run stops before its planned end; it spends what is left."""
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)) or fractions[0] <= 0:
        raise ValueError(f"information fractions must increase from above 0, got {fractions}")
    last = len(fractions) - 1 if stop_at is None else stop_at
    cumulative = tuple(spent(alpha, f) if i < last else alpha for i, f in enumerate(fractions[: last + 1]))
    return _boundaries(float(alpha), fractions[: last + 1], cumulative)


def round_fractions(first: int, planned: int) -> tuple[float, ...]:
    """Information fractions of looks after rounds ``first``, ``first + 1``, ... ``planned``."""
    if not 1 <= first <= planned:
        raise ValueError(f"the first look ({first}) must lie in 1..{planned} rounds")
    return tuple(r / planned for r in range(first, planned + 1))


def nominal_level(alpha: float, rounds: int, *, first: int, planned: int, final: bool = False) -> float:
    """The one-sided p-value threshold of the look after ``rounds`` rounds, in a design that looks after
    every round from ``first`` to ``planned``. ``final``: the run stops here (also before ``planned``)."""
    if not first <= rounds <= planned:
        raise ValueError(f"a look after {rounds} rounds is outside the planned {first}..{planned}")
    look = rounds - first
    z = boundaries(alpha, round_fractions(first, planned), stop_at=look if final else None)[look]
    return float(norm.sf(z))
