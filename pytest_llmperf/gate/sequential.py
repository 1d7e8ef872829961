"""Group-sequential boundaries: look at the data after every round and keep the error rate of one look.

A/B rounds add processes until the answer is clear. Testing again at the full level after every round
(optional stopping) lets a false alarm through at any of them; here each look spends part of the level
instead, by the power-family spending function ``f(t) = alpha * t**2`` (Kim and DeMets) for information
fraction ``t`` (processes so far / processes planned): between Pocock's (early looks stop easily, the last
needs many more processes) and O'Brien-Fleming's (early looks almost never stop); simulated on the H100
noise it stops a 20 % loss at about 16 processes a side where O'Brien-Fleming-type spending needs 29-34,
and its last look needs about 9 % more processes than a single test. Looks come after every round at
first, then whenever the rounds have grown by a quarter (``look_rounds``).

The z-statistics of successive looks are those of a Brownian motion observed at ``t_1 < t_2 < ...``; the
boundary ``c_k`` solves ``P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) = f(t_k) - f(t_{k-1})``, computed by
numerical integration of the motion's density over the region that has not stopped (no Monte Carlo, so tiny
levels such as 0.01 / 30 are exact to ~1e-9). A run that stops before its planned last look (a time budget)
spends all that is left at the look where it stops. Boundaries are one-sided; stopping for "unchanged" (an
equivalence test, see ``verdict``) only ever stops earlier, which can only lower the false-alarm rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

_GRID = 2001  # points of the density grid per look
_NEGLIGIBLE = 1e-15


#: the exponent of the power-family spending function
SPENDING_POWER = 2.0


def spent(alpha: float, fraction: float) -> float:
    """The one-sided level spent by information fraction ``fraction``: ``alpha * fraction ** 2``."""
    return alpha * min(max(fraction, 0.0), 1.0) ** SPENDING_POWER


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
            c = float(norm.isf(increment)) if increment > _NEGLIGIBLE else np.inf
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

        if increment <= _NEGLIGIBLE:  # a look that may spend less than this rejects nothing (z beyond ~8)
            c = np.inf
        else:
            low, high = -20 * np.sqrt(t), 20 * np.sqrt(t)
            c_s = brentq(lambda b, wanted=increment: exceed(b) - wanted, low, high, xtol=1e-10)
            c = c_s / np.sqrt(t)
        bounds.append(float(c))
        top = c * np.sqrt(t) if np.isfinite(c) else 12 * np.sqrt(t)
        new_grid = np.linspace(-12 * np.sqrt(t), top, _GRID)
        kernel = norm.pdf((new_grid[:, None] - grid[None, :]) / step) / step
        density, grid = kernel @ weights, new_grid
    return tuple(bounds)


@lru_cache(maxsize=4096)
def _design(alpha: float, fractions: tuple[float, ...], stop_at: int | None) -> tuple[float, ...]:
    last = len(fractions) - 1 if stop_at is None else stop_at
    cumulative = tuple(spent(alpha, f) if i < last else alpha for i, f in enumerate(fractions[: last + 1]))
    return _boundaries(alpha, fractions[: last + 1], cumulative)


def boundaries(alpha: float, fractions: Sequence[float], *, stop_at: int | None = None) -> tuple[float, ...]:
    """z-boundaries of the looks at these information fractions (increasing, the planned last one 1.0).

    ``stop_at``: the index of a look where the run stops before its planned end; it spends what is left."""
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(b <= a for a, b in pairwise(fractions)) or fractions[0] <= 0:
        raise ValueError(f"information fractions must increase from above 0, got {fractions}")
    return _design(float(alpha), fractions, stop_at)


#: after the first looks, the next look comes when the rounds have grown by this factor
LOOK_GROWTH = 1.25


@lru_cache(maxsize=1024)
def look_rounds(first: int, planned: int) -> tuple[int, ...]:
    """The rounds after which a run of ``planned`` rounds looks: every round up to ``first + 3``, then each
    about 25 % after the last (2, 3, 4, 5, 7, 9, 12, 15, ... planned). Few looks cost little level; a look
    whose rounds grew by a quarter can only be a quarter late."""
    if not 1 <= first <= planned:
        raise ValueError(f"the first look ({first}) must lie in 1..{planned} rounds")
    looks, r = [], first
    while r < planned:
        looks.append(r)
        r = r + 1 if r < first + 3 else max(r + 1, math.ceil(r * LOOK_GROWTH))
    return (*looks, planned)


def nominal_level(alpha: float, rounds: int, *, first: int, planned: int, final: bool = False) -> float:
    """The one-sided p-value threshold of the look after ``rounds`` rounds (one of ``look_rounds``, or any
    round when ``final``: the run stops there, also before ``planned``)."""
    looks = look_rounds(first, planned)
    if final and rounds not in looks:
        looks = (*(r for r in looks if r < rounds), rounds)
    if rounds not in looks:
        raise ValueError(f"a design of {planned} rounds from {first} does not look after {rounds} rounds: "
                         f"it looks after {', '.join(map(str, looks))}")
    look = looks.index(rounds)
    z = boundaries(alpha, tuple(r / planned for r in looks), stop_at=look if final else None)[look]
    return float(norm.sf(z))
