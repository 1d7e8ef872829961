"""How fast and how accurate the dashboard's change-point detection is on long histories.

Generates ``--series`` histories of ``--runs`` runs each (by default the dashboard's worst case: 50 series of
10,000 runs), each with a few level shifts of 5-25 % (up or down, at least ``--spacing`` runs apart), 2-5 %
Gaussian noise and a few single-run outliers (0.3x to 10x), then times ``detect_change_points`` on each and
prints the time per series and in all, how many of the generated shifts it found within 2 and within 5 runs
(shifts of 5-10 % apart from those of 10-25 %: the former are near ``min_relative_change``, and the window
medians of a 5-6 % shift under 5 % noise often fall below it), and how many change points it
reported that match none.

    .venv/bin/python benchmarks/changepoint_speed.py [--series 50] [--runs 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pytest_llmperf.dashboard.changepoints import ChangePointConfig, detect_change_points


def generate(rng: np.random.Generator, runs: int, spacing: int) -> tuple[np.ndarray, dict[int, float]]:
    """One history, and its shifts: the first run at each new level, and the relative change there."""
    shifts = rng.integers(2, 7)
    while True:
        at = np.sort(rng.choice(np.arange(spacing, runs - spacing), size=shifts, replace=False))
        if np.all(np.diff(at) >= spacing):
            break
    level = np.ones(runs)
    changes = rng.choice([-1, 1], size=shifts) * rng.uniform(0.05, 0.25, size=shifts)
    for i, change in zip(at, changes):
        level[i:] *= 1 + change
    x = level * (1 + rng.uniform(0.02, 0.05) * rng.standard_normal(runs))
    odd = rng.choice(runs, size=rng.integers(0, 6), replace=False)
    x[odd] *= rng.choice([0.3, 3.0, 10.0], size=len(odd))
    return x, {int(i): float(c) for i, c in zip(at, changes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--spacing", type=int, default=100, help="fewest runs between two generated shifts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    histories = [generate(rng, args.runs, args.spacing) for _ in range(args.series)]
    config = ChangePointConfig()
    detect_change_points([1.0] * 30 + [2.0] * 30, config)  # imports scipy outside the timing

    times, spurious = [], 0
    # per band of shift size: [generated, found within 2 runs, found within 5 runs]
    bands = {"5-10 %": [0, 0, 0], "10-25 %": [0, 0, 0]}
    for x, truth in histories:
        start = time.perf_counter()
        found = [c.index for c in detect_change_points(x, config)]
        times.append(time.perf_counter() - start)
        for t, change in truth.items():
            band = bands["5-10 %" if abs(change) < 0.10 else "10-25 %"]
            error = min((abs(f - t) for f in found), default=None)
            band[0] += 1
            band[1] += error is not None and error <= 2
            band[2] += error is not None and error <= 5
        spurious += sum(1 for f in found if all(abs(f - t) > 5 for t in truth))

    ms = np.array(times) * 1e3
    total = sum(b[0] for b in bands.values())
    print(f"{args.series} series of {args.runs} runs, {total} generated shifts (2-5 % noise, single-run outliers)")
    print(f"time per series: median {np.median(ms):.1f} ms, mean {ms.mean():.1f} ms, max {ms.max():.1f} ms")
    print(f"total: {ms.sum() / 1e3:.2f} s")
    for name, (n, near, close) in bands.items():
        print(f"shifts of {name}: found within 2 runs {near}/{n} ({near / max(n, 1):.1%}), "
              f"within 5 runs {close}/{n} ({close / max(n, 1):.1%})")
    print(f"change points more than 5 runs from any generated shift: {spurious}")


if __name__ == "__main__":
    main()
