"""The gate's rule on generated measurements: real slowdowns fail, noise does not, and doubt is said."""

import math

import numpy as np
import pytest

from pytest_llmperf.gate.evidence import compare_fixed, compare_processes, compare_to_history
from pytest_llmperf.gate.noise import ProcessNoise
from pytest_llmperf.gate.verdict import Comparison, Look, Outcome, judge
from pytest_llmperf.series import SeriesKey
from tests.factories import series_key


def subject(metric: str = "tokens_per_s", test_id: str = "t") -> SeriesKey:
    return series_key(metric, test_id)


def processes(rng, level: float, *, n: int = 3, trials: int = 5, within: float = 0.03, between: float = 0.0):
    """Per-trial values of ``n`` processes: each process has its own level (``between``), trials vary (``within``)."""
    return [level * np.exp(rng.normal(0, between)) * np.exp(rng.normal(0, within, trials)) for _ in range(n)]


def verdict(base, head, metric="tokens_per_s", prior=None, **kw):
    [v] = judge([Comparison(subject(metric), compare_processes(base, head, prior=prior), baseline="ab", **kw)])
    return v


def test_a_ten_percent_throughput_loss_under_small_noise_is_a_regression():
    rng = np.random.default_rng(1)
    v = verdict(processes(rng, 100, n=4), processes(rng, 90, n=4))
    assert v.outcome is Outcome.REGRESSED and v.fails
    assert 0.86 < v.evidence.ratio < 0.94
    assert v.evidence.ci_low < v.evidence.ratio < v.evidence.ci_high < 1.0
    assert v.evidence.n_base == v.evidence.n_head == 4  # processes, not trials, are counted


def test_direction_comes_from_the_metric_a_longer_time_per_token_is_worse():
    rng = np.random.default_rng(2)
    assert verdict(processes(rng, 10, n=4), processes(rng, 11.5, n=4), metric="tpot_ms").outcome \
        is Outcome.REGRESSED
    assert verdict(processes(rng, 10, n=4), processes(rng, 8.5, n=4), metric="tpot_ms").outcome \
        is Outcome.IMPROVED


def test_a_significant_change_smaller_than_the_minimum_effect_is_unchanged():
    rng = np.random.default_rng(3)
    v = verdict(processes(rng, 100, n=6, within=0.002), processes(rng, 98, n=6, within=0.002))
    assert v.evidence.ratio < 0.99  # real, and detectable
    assert v.outcome is Outcome.UNCHANGED


def test_trials_of_one_process_do_not_count_as_independent():
    """The H100's processes sit 13 % apart while their trials agree within 1 %: two processes a side cannot
    tell a 10 % change from that, however many trials each ran."""
    rng = np.random.default_rng(4)
    base = processes(rng, 100, n=2, trials=50, within=0.01, between=0.13)
    head = [p * 0.9 for p in processes(rng, 100, n=2, trials=50, within=0.01, between=0.13)]
    v = verdict(base, head)
    assert v.outcome is Outcome.INCONCLUSIVE
    assert v.evidence.df == 2
    assert "could have detected" in v.notes[-1]


def test_the_history_s_known_noise_makes_few_processes_decisive():
    """With the between-process SD known from 60 earlier processes, 3 a side catch a 30 % loss that the 4
    degrees of freedom of the processes alone leave open."""
    rng = np.random.default_rng(5)
    base = processes(rng, 100, n=3, within=0.01, between=0.05)
    head = processes(rng, 70, n=3, within=0.01, between=0.05)
    known = ProcessNoise(sd=0.05, df=60, source="earlier runs")
    with_history = verdict(base, head, prior=known)
    assert with_history.outcome is Outcome.REGRESSED
    assert with_history.evidence.df == 64 and "earlier runs" in with_history.evidence.noise
    assert verdict(base, head).evidence.df == 4


def test_one_process_a_side_and_no_history_is_inconclusive_not_a_guess():
    v = verdict([[100.0, 101.0]], [[50.0, 51.0]])
    assert v.outcome is Outcome.INCONCLUSIVE
    assert "no noise estimate" in v.notes[-1]


def test_an_a_a_run_of_many_series_fails_rarely_because_the_level_is_shared():
    """200 A/A runs of 20 series each, with noise between processes: the run-level false-failure rate stays
    near the 1 % it is built for, where each comparison at 5 % would fail most runs."""
    rng = np.random.default_rng(6)
    failed = 0
    for _ in range(200):
        comparisons = [Comparison(subject(test_id=f"t{i}"), compare_processes(
            processes(rng, 100, n=3, between=0.05), processes(rng, 100, n=3, between=0.05)), "ab")
            for i in range(20)]
        failed += any(v.fails for v in judge(comparisons))
    assert failed <= 6  # 1 % of 200 is 2; 6 is beyond its 99.9 % binomial bound


def test_a_regression_among_many_series_survives_the_shared_level():
    rng = np.random.default_rng(7)
    known = ProcessNoise(sd=0.03, df=100, source="history")
    comparisons = [Comparison(subject(test_id=f"t{i:02}"), compare_processes(
        processes(rng, 100, n=4), processes(rng, 100, n=4), prior=known), "ab") for i in range(30)]
    comparisons.append(Comparison(subject(test_id="slow"), compare_processes(
        processes(rng, 100, n=4), processes(rng, 80, n=4), prior=known), "ab"))
    verdicts = judge(comparisons)
    assert verdicts[0].subject.test_id == "slow" and verdicts[0].outcome is Outcome.REGRESSED  # regressions first
    assert verdicts[0].p_worse == pytest.approx(min(1.0, verdicts[0].evidence.p_lower * 31))  # Bonferroni


def test_a_reported_metric_is_judged_but_never_fails_the_run():
    rng = np.random.default_rng(8)
    v = verdict(processes(rng, 10, n=4), processes(rng, 13, n=4), metric="tpot_ms", gated=False)
    assert v.outcome is Outcome.REGRESSED and not v.fails
    assert "reported, not gated" in v.notes


def test_early_looks_of_a_sequential_run_demand_more_than_the_last():
    """The same evidence regresses at the planned last look but not at the first of ten: extra rounds do not
    test again at the full level."""
    rng = np.random.default_rng(9)
    known = ProcessNoise(sd=0.05, df=200, source="history")
    evidence = compare_processes(processes(rng, 100, n=4, between=0.05), processes(rng, 91, n=4, between=0.05),
                                 prior=known)
    c = [Comparison(subject(), evidence, "ab")]
    early = judge(c, look=Look(rounds=2, first=2, planned=11, final=False))[0]
    last = judge(c, look=Look(rounds=11, first=2, planned=11, final=True))[0]
    assert evidence.p_lower < 0.01
    assert early.outcome is Outcome.INCONCLUSIVE and last.outcome is Outcome.REGRESSED


def test_deterministic_values_are_held_against_the_tolerance():
    grown = judge([Comparison(subject("peak_mem_bytes"), compare_fixed([1000.0], [1100.0]), "ab")])[0]
    assert grown.outcome is Outcome.REGRESSED and grown.p_worse is None
    same = judge([Comparison(subject("peak_mem_bytes"), compare_fixed([1000.0], [1010.0]), "ab")])[0]
    assert same.outcome is Outcome.UNCHANGED
    larger_batch = judge([Comparison(subject("max_batch"), compare_fixed([16.0], [32.0]), "ab")])[0]
    assert larger_batch.outcome is Outcome.IMPROVED


def test_a_current_run_outside_the_history_is_a_regression_and_a_usual_one_unchanged_only_if_the_interval_says():
    history = [100.0, 100.5, 99.6, 100.2, 99.8, 100.1]
    slow = judge([Comparison(subject(), compare_to_history(history, [88.0]), "history")])[0]
    assert slow.outcome is Outcome.REGRESSED
    usual = judge([Comparison(subject(), compare_to_history(history, [99.9]), "history")])[0]
    assert usual.outcome is Outcome.UNCHANGED
    noisy = [100.0, 130.0, 75.0, 110.0]  # a history this spread cannot rule out a 5 % loss, whatever the value
    doubt = judge([Comparison(subject(), compare_to_history(noisy, [101.0]), "history")])[0]
    assert doubt.outcome is Outcome.INCONCLUSIVE


def test_unchanged_is_rare_for_a_real_change_of_twice_the_minimum_effect():
    rng = np.random.default_rng(10)
    called = 0
    for _ in range(500):
        history = list(100 * np.exp(rng.normal(0, 0.03, 10)))
        current = 90 * math.exp(rng.normal(0, 0.03))  # a 10 % loss, twice the 5 % minimum effect
        v = judge([Comparison(subject(), compare_to_history(history, [current]), "history")])[0]
        called += v.outcome is Outcome.UNCHANGED
    assert called <= 5


def test_no_evidence_is_inconclusive_with_the_reason_and_an_accepted_regression_does_not_fail():
    none = judge([Comparison(subject(), None, "history", note="no baseline with this environment")])[0]
    assert none.outcome is Outcome.INCONCLUSIVE and none.notes == ("no baseline with this environment",)
    rng = np.random.default_rng(8)
    accepted = judge([Comparison(subject(), compare_processes(processes(rng, 100, n=4), processes(rng, 80, n=4)),
                                 "ab", accepted="the new sampler trades speed for quality")])[0]
    assert accepted.outcome is Outcome.REGRESSED and not accepted.fails
    assert "accepted: the new sampler trades speed for quality" in accepted.notes


@pytest.mark.parametrize(("call", "message"), [
    (lambda: compare_processes([[]], [[1.0]]), "values on both sides"),
    (lambda: compare_to_history([1.0, 2.0], [1.0]), "at least 3 earlier runs"),
    (lambda: compare_fixed([0.0], [1.0]), "positive base"),
    (lambda: compare_processes([[0.0]], [[1.0]]), "positive measurements"),
])
def test_comparisons_without_enough_data_say_what_is_missing(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_run_noisier_than_its_history_is_judged_on_its_own_processes():
    """The history says processes agree within 2 %; this run's spread by 15 % (a load burst): pooling them
    would call a 12 % difference of two noisy processes a regression."""
    quiet = ProcessNoise(sd=0.02, df=30, source="8 earlier same-code groups")
    base, head = [[6220.0], [5550.0], [6318.0]], [[5915.0], [5829.0], [4379.0]]
    v = verdict(base, head, prior=quiet)
    assert v.outcome is Outcome.INCONCLUSIVE and not v.fails
    assert v.evidence.df == 4 and v.evidence.noise.startswith("this run alone: noisier than 8 earlier")
    calm = verdict([[100.0], [101.0], [99.5]], [[90.0], [89.0], [90.5]], prior=quiet)
    assert calm.evidence.df == 34 and calm.outcome is Outcome.REGRESSED  # as noisy as its history: pooled
