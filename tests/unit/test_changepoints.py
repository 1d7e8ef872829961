"""Change-point detection on generated histories: what it must find, and what it must leave alone."""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import numpy as np
import pytest

from pytest_llmperf.dashboard.changepoints import ChangePoint, ChangePointConfig, detect_change_points

SEEDS = range(20)


def noisy(levels, noise: float, seed: int) -> np.ndarray:
    """``levels`` with relative Gaussian noise (``noise`` = 0.05: 5 %)."""
    levels = np.asarray(levels, dtype=float)
    return levels * (1 + noise * np.random.default_rng(seed).standard_normal(len(levels)))


def step(before: int, after: int, change: float) -> np.ndarray:
    return np.r_[np.ones(before), np.full(after, 1 + change)]


@pytest.mark.parametrize("factor", [10.0, 0.1])
def test_a_single_outlier_is_not_a_change_point(factor):
    for seed in SEEDS:
        x = noisy(np.ones(100), 0.05, seed)
        x[np.random.default_rng(1000 + seed).integers(3, 97)] *= factor
        assert detect_change_points(x) == [], f"seed {seed}"


@pytest.mark.parametrize("change", [0.10, -0.10])
def test_a_level_shift_is_found_where_it_happened(change):
    [point] = detect_change_points(noisy(step(60, 60, change), 0.05, seed=0))
    assert abs(point.index - 60) <= 2
    assert point.relative_change == pytest.approx(change, abs=0.02)
    assert point.before == pytest.approx(1.0, abs=0.02)
    assert point.after == pytest.approx(1 + change, abs=0.02)
    assert point.p_value < ChangePointConfig().alpha


def test_a_level_shift_is_found_under_every_seed():
    errors = []
    for change in (0.10, -0.10):
        for seed in SEEDS:
            points = detect_change_points(noisy(step(60, 60, change), 0.05, seed))
            assert len(points) == 1, f"change {change}, seed {seed}: {points}"
            assert points[0].relative_change == pytest.approx(change, abs=0.035), f"change {change}, seed {seed}"
            errors.append(abs(points[0].index - 60))
    # A 10 % step under 5 % noise is a 2-sigma step: no estimator places it within 2 runs every time (least
    # squares misses by more about one time in eleven), so most within 2 runs, and none far off.
    assert sum(e <= 2 for e in errors) >= 34, errors
    assert max(errors) <= 8, errors


def test_a_slow_drift_is_not_a_staircase():
    counts = [len(detect_change_points(noisy(np.linspace(1.0, 1.2, 200), 0.02, seed))) for seed in SEEDS]
    assert max(counts) <= 1 and sum(counts) <= 1, counts


def test_two_shifts_are_both_found_in_order():
    placed = 0
    for seed in SEEDS:
        levels = np.r_[np.ones(60), np.full(60, 1.15), np.ones(60)]
        points = detect_change_points(noisy(levels, 0.05, seed))
        assert len(points) == 2, f"seed {seed}: {points}"
        up, down = points
        assert up.relative_change == pytest.approx(0.15, abs=0.04), f"seed {seed}"
        assert down.relative_change == pytest.approx(1 / 1.15 - 1, abs=0.04), f"seed {seed}"
        assert up.after == down.before
        placed += abs(up.index - 60) <= 2 and abs(down.index - 120) <= 2
    assert placed >= 18  # both within 2 runs in 98 % of 500 seeds


@pytest.mark.parametrize("noise", ["gaussian", "heavy-tailed"])
def test_pure_noise_has_almost_no_change_points(noise):
    flagged = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        z = rng.standard_normal(100) if noise == "gaussian" else rng.standard_t(3, 100)
        flagged += bool(detect_change_points(1 + 0.05 * z))
    assert flagged <= 1


def test_a_shift_smaller_than_min_relative_change_is_not_reported():
    # 3 % under 1 % noise: unmistakable, but below the 5 % that matters
    for seed in range(10):
        x = noisy(step(100, 100, 0.03), 0.01, seed)
        assert detect_change_points(x) == [], f"seed {seed}"
    [point] = detect_change_points(noisy(step(100, 100, 0.03), 0.01, 0), ChangePointConfig(min_relative_change=0.02))
    assert abs(point.index - 100) <= 2


def test_a_regression_and_its_fix_are_both_found():
    for seed in range(5):
        levels = np.ones(300)
        levels[150:160] = 0.8  # ten runs 20 % slower, then back
        points = detect_change_points(noisy(levels, 0.03, seed))
        assert [p.index for p in points] == pytest.approx([150, 160], abs=2), f"seed {seed}: {points}"
        assert points[0].relative_change < -0.15 and points[1].relative_change > 0.15


def test_quantised_values():
    [point] = detect_change_points([10] * 50 + [12] * 50)
    assert point == ChangePoint(50, 10.0, 12.0, pytest.approx(0.2), point.p_value)
    assert point.p_value < 1e-6


def test_what_is_reported_is_consistent():
    config = ChangePointConfig()
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        levels = np.repeat(1 + 0.3 * rng.random(8), rng.integers(5, 80, size=8))
        points = detect_change_points(noisy(levels, 0.03, seed), config)
        indices = [p.index for p in points]
        assert indices == sorted(indices)
        assert all(b - a >= config.min_segment for a, b in zip([0, *indices], [*indices, len(levels)]))
        for p in points:
            assert abs(p.relative_change) >= config.min_relative_change
            assert p.relative_change == pytest.approx((p.after - p.before) / p.before)
            assert p.p_value < config.alpha
        assert all(a.after == b.before for a, b in pairwise(points))


def test_a_long_history_with_several_shifts():
    levels = np.ones(10_000)
    for at, change in ((1500, 0.12), (4000, -0.2), (4100, 0.25), (8000, 0.08)):
        levels[at:] *= 1 + change
    points = detect_change_points(noisy(levels, 0.02, seed=0))
    assert [p.index for p in points] == pytest.approx([1500, 4000, 4100, 8000], abs=2)


@pytest.mark.parametrize("values", [[], [1.0], [1.0, 2.0, 3.0, 4.0, 5.0], [7.0] * 100,
                                    [7.0] * 50 + [70.0] + [7.0] * 49])
def test_too_short_or_flat(values):
    assert detect_change_points(values) == []


def test_fewer_runs_than_two_segments():
    # a clear step, but fewer than 2 * min_segment runs
    assert detect_change_points([1.0, 1.0, 1.0, 2.0, 2.0], ChangePointConfig(min_segment=3)) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_rejected_by_index(bad):
    x = list(np.ones(20))
    x[7] = bad
    with pytest.raises(ValueError, match=r"values\[7\]"):
        detect_change_points(x)


def test_values_must_be_one_dimensional():
    with pytest.raises(ValueError, match="one-dimensional"):
        detect_change_points(np.ones((10, 2)))


@pytest.mark.parametrize("fields", [{"min_relative_change": -0.1}, {"min_segment": 0}, {"alpha": 0.0}, {"alpha": 1.0},
                                    {"window": 0}])
def test_config_is_checked(fields):
    with pytest.raises(ValueError):
        ChangePointConfig(**fields)


def test_results_and_config_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ChangePointConfig().window = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ChangePoint(1, 1.0, 2.0, 1.0, 0.0).index = 2  # type: ignore[misc]
