"""Fidelity arithmetic: teacher-forced agreement, the first divergence of free generation, and how both
travel as load metrics (record, JSON, budgets, the terminal line)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from pytest_llmperf.budgets import check_budgets, describe_miss, parse_budgets
from pytest_llmperf.fidelity import agreement, fidelity_check, first_divergence, forced_inputs
from pytest_llmperf.measure.metrics import METRICS, Scope
from pytest_llmperf.report.terminal import _header
from pytest_llmperf.results import BenchRecord
from tests.factories import make_generate, make_record

PROMPT = 3
NEW = 6


def _reference() -> np.ndarray:
    """Two rows: prompt ids 100.., then NEW new tokens 10.. and 20.."""
    prompt = np.arange(100, 100 + PROMPT)
    return np.stack([np.concatenate([prompt, np.arange(10 * r + 10, 10 * r + 10 + NEW)]) for r in (0, 1)])


def test_first_divergence_is_the_number_of_equal_new_tokens_before_the_first_difference():
    ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    out = np.array([[1, 2, 9, 4], [0, 6, 7, 8]])
    assert first_divergence(ref, out) == (2, 0)
    assert first_divergence(ref, ref.copy()) == (4, 4)  # none differs: the number compared
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        first_divergence(ref, out[:, :3])


def test_agreement_counts_equal_predictions_over_positions_and_rows():
    ref = np.array([[1, 5], [2, 6], [3, 7]])  # (positions, rows)
    assert agreement(ref, np.array([[1, 5], [0, 6], [3, 0]])) == (4, 6)
    assert agreement(ref, ref) == (6, 6)


def test_forced_inputs_are_the_prompt_and_the_references_first_k_new_tokens():
    ref = _reference()
    inputs = forced_inputs(ref, PROMPT, 3)
    assert [i.shape for i in inputs] == [(2, PROMPT), (2, PROMPT + 1), (2, PROMPT + 2)]
    np.testing.assert_array_equal(inputs[2], ref[:, :PROMPT + 2])


def test_a_backend_that_follows_the_reference_everywhere():
    ref = _reference()
    forced = ref[:, PROMPT:].T.copy()  # (positions, rows): every next token right
    check = fidelity_check(ref, [ref.copy()], [forced], prompt_tokens=PROMPT)
    assert (check.agreed_tokens, check.compared_tokens, check.token_agreement) == (12, 12, 1.0)
    assert check.first_divergence == (NEW, NEW) and check.first_divergence_tokens == NEW
    assert "follows hf for all 6 new tokens" in check.detail


def test_one_flip_costs_one_teacher_forced_token_but_the_rest_of_the_free_row():
    ref = _reference()
    free = ref.copy()
    free[1, PROMPT + 2:] = 999  # row 1 departs at new token 2 and stays off, as a decode does
    forced = ref[:, PROMPT:].T.copy()
    forced[2, 1] = 999  # teacher forcing puts it back on the reference's prefix: only position 2 is wrong
    check = fidelity_check(ref, [free], [forced], prompt_tokens=PROMPT)
    assert (check.agreed_tokens, check.compared_tokens) == (11, 12)
    assert check.token_agreement == pytest.approx(11 / 12)
    assert check.first_divergence == (NEW, 2) and check.first_divergence_tokens == 2
    assert "11/12" in check.detail and "departs from hf at new token 2" in check.detail


def test_every_rank_counts_and_fewer_positions_than_new_tokens_are_allowed():
    ref = _reference()
    forced = ref[:, PROMPT:PROMPT + 4].T.copy()
    wrong = np.zeros_like(forced)
    check = fidelity_check(ref, [ref.copy(), ref.copy()], [forced, wrong], prompt_tokens=PROMPT)
    assert (check.positions, check.agreed_tokens, check.compared_tokens) == (4, 8, 16)
    assert check.first_divergence == (NEW,) * 4
    with pytest.raises(ValueError, match="7 teacher-forced positions"):
        fidelity_check(ref, [ref], [np.zeros((7, 2), dtype=int)], prompt_tokens=PROMPT)
    with pytest.raises(ValueError, match="free generation of shape"):
        fidelity_check(ref, [ref[:, :-1]], [forced], prompt_tokens=PROMPT)


def _record_with(agreed: int, compared: int = 64, divergence: tuple[int, ...] = (3, 7)) -> BenchRecord:
    ref = _reference()
    check = fidelity_check(ref, [ref], [ref[:, PROMPT:].T.copy()], prompt_tokens=PROMPT)
    check = replace(check, agreed_tokens=agreed, compared_tokens=compared, first_divergence=divergence,
                    new_tokens=32)
    return replace(make_record(make_generate(1, 1.0)), fidelity=check, variant="bnb-nf4")


def test_fidelity_metrics_are_load_metrics_with_a_lower_bound():
    for name, unit in (("token_agreement", "ratio"), ("first_divergence_tokens", "tokens")):
        assert METRICS[name].unit == unit and METRICS[name].scope is Scope.LOAD and METRICS[name].bound == "min"
    values = _record_with(48).load_metric_values()
    assert values["token_agreement"] == 0.75 and values["first_divergence_tokens"] == 3.0


def test_a_record_with_fidelity_round_trips_through_json():
    record = _record_with(48)
    again = BenchRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and again.fidelity is not None and again.fidelity.first_divergence == (3, 7)
    assert BenchRecord.from_dict(json.loads(json.dumps(make_record().to_dict()))).fidelity is None


@pytest.mark.parametrize(("agreed", "outcome"), [(61, "pass"), (58, "pass"), (57, "miss"), (0, "miss")])
def test_a_token_agreement_budget_is_a_lower_bound(agreed, outcome):
    record = _record_with(agreed)
    (check,) = check_budgets(parse_budgets({"token_agreement": 0.9}), record)
    assert (check.bound, check.batch_size, check.outcome) == ("min", None, outcome)
    assert check.measured == agreed / 64  # 58/64 = 0.906 passes 0.9, 57/64 = 0.891 does not
    if outcome == "miss":
        assert describe_miss(check, record).startswith(f"token_agreement = {agreed / 64:.1%}, budget >= 90.0%")


def test_token_agreement_budget_without_a_fidelity_is_unmeasured():
    (check,) = check_budgets(parse_budgets({"token_agreement": 0.9}), make_record(make_generate(1, 1.0)))
    assert check.outcome == "unmeasured" and check.measured is None


def test_the_terminal_header_shows_fidelity_instead_of_match():
    header = _header(_record_with(48))
    assert "fidelity vs hf: token agreement 75.0% (48/64 teacher-forced), free-run divergence at new token 3 of 32" \
        in header
    assert "tokens vs hf" not in header
    assert "free-run divergence none of 32" in _header(_record_with(64, divergence=(32, 32)))
