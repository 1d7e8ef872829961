"""The gate's rule on generated measurements: real slowdowns fail, noise does not, and doubt is said."""

import numpy as np
import pytest

from pytest_llmperf.gate.evidence import compare_fixed, compare_samples, compare_to_history
from pytest_llmperf.gate.verdict import Comparison, Outcome, judge
from pytest_llmperf.series import Subject


def subject(metric: str = "tokens_per_s", test_id: str = "t") -> Subject:
    return Subject(series_key=f"{test_id}:{metric}", test_id=test_id, model_id="m", backend="hf", variant="default",
                   dtype="float32", world_size=1, batch_size=1, metric=metric)


def rounds(rng, level: float, *, noise: float, n_rounds: int = 3, trials: int = 5, process_shift: float = 0.0):
    """Per-trial values of ``n_rounds`` processes: each process has its own level (process_shift), trials vary."""
    out = []
    for _ in range(n_rounds):
        process_level = level * (1 + rng.normal(0, process_shift))
        out.append(process_level * (1 + rng.normal(0, noise, trials)))
    return out


def verdict(base, head, metric="tokens_per_s", **kw):
    [v] = judge([Comparison(subject(metric), compare_samples(base, head), baseline="ab", **kw)])
    return v


def test_a_ten_percent_throughput_loss_under_three_percent_noise_is_a_regression():
    rng = np.random.default_rng(1)
    v = verdict(rounds(rng, 100, noise=0.03), rounds(rng, 90, noise=0.03))
    assert v.outcome is Outcome.REGRESSED and v.fails
    assert 0.86 < v.evidence.ratio < 0.94
    assert v.evidence.ci_low < v.evidence.ratio < v.evidence.ci_high < 1.0
    assert v.evidence.n_base == v.evidence.n_head == 15


def test_direction_comes_from_the_metric_a_longer_time_per_token_is_worse():
    rng = np.random.default_rng(2)
    assert verdict(rounds(rng, 10, noise=0.03), rounds(rng, 11, noise=0.03), metric="tpot_ms").outcome \
        is Outcome.REGRESSED
    assert verdict(rounds(rng, 10, noise=0.03), rounds(rng, 9, noise=0.03), metric="tpot_ms").outcome \
        is Outcome.IMPROVED


def test_a_significant_change_smaller_than_the_minimum_effect_is_unchanged():
    rng = np.random.default_rng(3)
    v = verdict(rounds(rng, 100, noise=0.005, n_rounds=4), rounds(rng, 98, noise=0.005, n_rounds=4))
    assert v.evidence.ratio < 0.99  # real, and detectable
    assert v.outcome is Outcome.UNCHANGED


def test_a_large_change_in_heavy_noise_with_few_trials_is_inconclusive_not_a_pass():
    rng = np.random.default_rng(4)
    v = verdict(rounds(rng, 100, noise=0.16, n_rounds=1, trials=3), rounds(rng, 92, noise=0.16, n_rounds=1, trials=3))
    assert v.outcome is Outcome.INCONCLUSIVE
    assert "not significant" in v.notes[-1]


def test_shifts_between_processes_are_not_taken_for_a_regression():
    """The H100 data: one process can sit 13 % off another. With the head's single process low by chance,
    the pooled trials differ clearly, but the interval over processes says it may be no change at all."""
    rng = np.random.default_rng(5)
    base = [100 * (1 + rng.normal(0, 0.01, 5)) for _ in range(3)]
    head = [100 * (1 + rng.normal(0, 0.01, 5)) for _ in range(2)] + [88 * (1 + rng.normal(0, 0.01, 5))]
    v = verdict(base, head)
    assert v.outcome is not Outcome.REGRESSED
    assert v.evidence.ci_high > 0.99


def test_same_code_against_itself_raises_few_false_alarms_over_many_comparisons():
    rng = np.random.default_rng(6)
    comparisons = [
        Comparison(subject(test_id=f"t{i}"), compare_samples(rounds(rng, 100, noise=0.05, process_shift=0.02),
                                                             rounds(rng, 100, noise=0.05, process_shift=0.02),
                                                             seed=i), baseline="ab")
        for i in range(40)
    ]
    verdicts = judge(comparisons)
    outcomes = [v.outcome for v in verdicts]
    assert outcomes.count(Outcome.REGRESSED) + outcomes.count(Outcome.IMPROVED) <= 1
    # with 5 % noise, 15 trials a side cannot always rule a 5 % change out: those say so instead of passing
    assert outcomes.count(Outcome.UNCHANGED) >= 10
    assert all(v.notes for v in verdicts if v.outcome is Outcome.INCONCLUSIVE)


def test_a_regression_among_many_comparisons_survives_the_false_discovery_control():
    rng = np.random.default_rng(7)
    comparisons = [Comparison(subject(test_id=f"t{i:02}"), compare_samples(rounds(rng, 100, noise=0.03),
                                                                           rounds(rng, 100, noise=0.03)), "ab")
                   for i in range(30)]
    comparisons.append(Comparison(subject(test_id="slow"), compare_samples(rounds(rng, 100, noise=0.03),
                                                                          rounds(rng, 80, noise=0.03)), "ab"))
    verdicts = judge(comparisons)
    assert verdicts[0].subject.test_id == "slow" and verdicts[0].outcome is Outcome.REGRESSED  # regressions first
    assert verdicts[0].p_worse >= verdicts[0].comparison.evidence.p_lower  # adjusted, never smaller


def test_deterministic_values_are_held_against_the_tolerance():
    grown = judge([Comparison(subject("peak_mem_bytes"), compare_fixed([1000.0], [1100.0]), "ab")])[0]
    assert grown.outcome is Outcome.REGRESSED and grown.p_worse is None
    same = judge([Comparison(subject("peak_mem_bytes"), compare_fixed([1000.0], [1010.0]), "ab")])[0]
    assert same.outcome is Outcome.UNCHANGED
    larger_batch = judge([Comparison(subject("max_batch"), compare_fixed([16.0], [32.0]), "ab")])[0]
    assert larger_batch.outcome is Outcome.IMPROVED


def test_a_current_run_outside_the_history_is_judged_by_the_prediction_interval():
    history = [100.0, 101.5, 99.0, 100.8, 99.6, 100.3]
    slow = judge([Comparison(subject(), compare_to_history(history, [88.0, 89.0, 88.5]), "history")])[0]
    assert slow.outcome is Outcome.REGRESSED
    assert slow.evidence.ci_low < 1.0 < slow.evidence.ci_high  # the interval is where the history expects it
    usual = judge([Comparison(subject(), compare_to_history(history, [99.5]), "history")])[0]
    assert usual.outcome is Outcome.UNCHANGED
    noisy = [100.0, 130.0, 75.0, 110.0]  # a history this spread cannot tell a 10 % loss from noise
    doubt = judge([Comparison(subject(), compare_to_history(noisy, [90.0]), "history")])[0]
    assert doubt.outcome is Outcome.INCONCLUSIVE


def test_no_evidence_is_inconclusive_with_the_reason_and_an_accepted_regression_does_not_fail():
    none = judge([Comparison(subject(), None, "history", note="no baseline with this environment")])[0]
    assert none.outcome is Outcome.INCONCLUSIVE and none.notes == ("no baseline with this environment",)
    rng = np.random.default_rng(8)
    accepted = judge([Comparison(subject(), compare_samples(rounds(rng, 100, noise=0.02), rounds(rng, 80, noise=0.02)),
                                 "ab", accepted="the new sampler trades speed for quality")])[0]
    assert accepted.outcome is Outcome.REGRESSED and not accepted.fails
    assert "accepted: the new sampler trades speed for quality" in accepted.notes


@pytest.mark.parametrize(("call", "message"), [
    (lambda: compare_samples([[]], [[1.0]]), "values on both sides"),
    (lambda: compare_to_history([1.0, 2.0], [1.0]), "at least 3 earlier runs"),
    (lambda: compare_fixed([0.0], [1.0]), "positive base"),
])
def test_comparisons_without_enough_data_say_what_is_missing(call, message):
    with pytest.raises(ValueError, match=message):
        call()
