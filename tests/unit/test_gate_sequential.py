"""Sequential A/B rounds: boundaries that keep the level, the plan, the looks and the stopping rules."""

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from pytest_llmperf.gate.ab import AbConfig, run_rounds
from pytest_llmperf.gate.evidence import compare_processes
from pytest_llmperf.gate.noise import NoiseParts, ProcessNoise, combine, noise_parts, pooled
from pytest_llmperf.gate.plan import best_trials, detectable, processes_needed
from pytest_llmperf.gate.sequential import boundaries, look_rounds, nominal_level, spent
from pytest_llmperf.gate.verdict import Comparison, Outcome
from pytest_llmperf.settings import duration, percentage
from tests.factories import series_key


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_boundaries_keep_the_level_over_all_looks(alpha):
    """Brownian paths checked against the boundaries cross at the planned level, no more."""
    looks = look_rounds(2, 30)
    fractions = [r / 30 for r in looks]
    bounds = np.array(boundaries(alpha, fractions))
    rng = np.random.default_rng(0)
    steps = np.cumsum(rng.normal(size=(100_000, 30)), axis=1)
    z = steps[:, np.array(looks) - 1] / np.sqrt(np.array(looks))
    crossed = (z >= bounds).any(axis=1).mean()
    assert crossed == pytest.approx(alpha, rel=0.12)
    assert all(a > b for a, b in pairwise(bounds))  # early looks demand more


def test_spending_is_alpha_times_the_fraction_squared_and_a_stop_spends_the_rest():
    assert spent(0.01, 0.5) == pytest.approx(0.0025)
    assert spent(0.01, 1.0) == 0.01 and spent(0.01, 0.0) == 0.0
    planned = nominal_level(0.01, 12, first=2, planned=30)
    stopped_there = nominal_level(0.01, 12, first=2, planned=30, final=True)
    assert stopped_there > planned  # a run stopped by its budget spends what is left at its last look
    assert nominal_level(0.01, 30, first=2, planned=30, final=True) < 0.01


def test_looks_come_every_round_then_a_quarter_apart():
    assert look_rounds(2, 100) == (2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30, 38, 48, 60, 75, 94, 100)
    assert look_rounds(3, 3) == (3,)
    with pytest.raises(ValueError, match="does not look after 6 rounds"):
        nominal_level(0.01, 6, first=2, planned=100)


def test_the_plan_matches_the_textbook_sample_size():
    # 13 % noise, a 20 % loss (log 0.223 > log 1.2), one-sided 1 %, 80 % power: 2 (3.17 0.13 / 0.182)^2 = 10.3
    assert processes_needed(0.13, 0.2, 0.01, sequential=False) == 11
    assert processes_needed(0.13, 0.2, 0.01) == 12  # the sequential design's 9 % more
    assert detectable(0.13, 11, 0.01) == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ValueError, match="above 0"):
        processes_needed(0.1, 0.0, 0.01)


def test_more_and_shorter_processes_when_processes_differ_more_than_trials():
    between_heavy = best_trials(NoiseParts(within_sd=0.03, between_sd=0.13), process_s=10.0, trial_s=1.0, now=10)
    within_heavy = best_trials(NoiseParts(within_sd=0.2, between_sd=0.01), process_s=10.0, trial_s=1.0, now=10)
    assert between_heavy.trials == 2 and within_heavy.trials == 50
    # precision per second: (seconds per process) x (variance per process), lower with the advice
    assert (10 + 2 * 1.0) * between_heavy.process_sd ** 2 < (10 + 10 * 1.0) * between_heavy.process_sd_now ** 2


def test_noise_is_pooled_by_degrees_of_freedom_and_split_into_within_and_between():
    a = pooled([[0.0, 0.2], [1.0, 1.2, 1.4]], "a")
    assert a.df == 3 and a.sd == pytest.approx(math.sqrt((0.02 + 0.08) / 3))
    assert pooled([[1.0]], "one value") is None
    both = combine(a, ProcessNoise(0.1, 7, "b"))
    assert both.df == 10 and both.source == "a + b"
    rng = np.random.default_rng(1)
    processes = [np.exp(rng.normal(0, 0.10) + rng.normal(0, 0.02, 20)) for _ in range(400)]
    parts = noise_parts(processes)
    assert parts.between_sd == pytest.approx(0.10, rel=0.1) and parts.within_sd == pytest.approx(0.02, rel=0.05)


def subject(metric="tokens_per_s"):
    return series_key(metric, "t")


def simulated(rng, head_level: float, sd: float = 0.05):
    base, head = [], []

    def run_round(index):
        base.append([100 * math.exp(rng.normal(0, sd))])
        head.append([head_level * math.exp(rng.normal(0, sd))])

    def compare():
        prior = ProcessNoise(sd, 200, "history")
        return [Comparison(subject(), compare_processes(base, head, prior=prior), "base")]

    return run_round, compare, base


def config(**kw):
    return AbConfig(repo=Path("."), base="a", head="b", db=Path("x.db"), pytest_args=(), **kw)


def test_a_large_regression_stops_the_run_at_an_early_look():
    run_round, compare, base = simulated(np.random.default_rng(2), 60.0)
    rounds, [v] = run_rounds(config(), run_round, compare, log=lambda _: None)
    assert v.outcome is Outcome.REGRESSED and v.fails
    assert rounds == len(base) < 10


def test_the_plan_sets_the_rounds_and_a_time_budget_ends_them_first():
    said = []
    run_round, compare, _base = simulated(np.random.default_rng(3), 100.0)
    rounds, _ = run_rounds(config(detect=0.1), run_round, compare, log=said.append)
    planned = processes_needed(0.05, 0.1, 0.01)
    assert f"{planned} round(s) planned" in said[0]
    assert rounds <= planned
    clock = iter(range(0, 10_000, 10))  # every call of the clock 10 s later
    run_round, compare, _base = simulated(np.random.default_rng(3), 100.0)
    rounds, _ = run_rounds(config(detect=0.01, time_budget_s=100), run_round, compare,
                           clock=lambda: float(next(clock)), log=said.append)
    assert rounds <= 6 and any("would not fit in the time budget of 100 s" in line for line in said)


def test_durations_and_changes_parse_with_their_units():
    assert duration("15m") == 900 and duration("90") == 90 and duration("1.5h") == 5400
    assert percentage("5%") == pytest.approx(0.05) and percentage("0.1") == 0.1
    with pytest.raises(ValueError, match="15m"):
        duration("soon")
    with pytest.raises(ValueError, match="5%"):
        percentage("-3%")
