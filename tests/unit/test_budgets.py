import pytest

from pytest_llmperf.budgets import (
    Budget,
    BudgetError,
    check_budgets,
    describe_miss,
    merge_budgets,
    parse_budget_text,
    parse_budgets,
)
from tests.factories import make_generate, make_record


def test_marker_dict_gives_global_and_per_batch_budgets():
    budgets = parse_budgets({"load_s": 30, "tokens_per_s": {"*": 10, 8: 60}, "peak_mem_bytes": "2GiB"})
    assert set(budgets) == {
        Budget("load_s", 30.0), Budget("tokens_per_s", 10.0), Budget("tokens_per_s", 60.0, 8),
        Budget("peak_mem_bytes", 2.0 * 2**30),
    }


def test_direction_comes_from_the_metric():
    assert Budget("tokens_per_s", 10).admits(11) and not Budget("tokens_per_s", 10).admits(9)
    assert Budget("ttft_ms", 10).admits(9) and not Budget("ttft_ms", 10).admits(11)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"tokens_per_sec": 1}, "unknown metric 'tokens_per_sec'; metrics with budgets: load_s"),
        ({"load_s": -1}, "must be a finite number >= 0"),
        ({"load_s": "fast"}, "must be a number in s"),
        ({"load_s": True}, "must be a number"),
        ({"load_s": {8: 1}}, "measured once per load"),
        ({"ttft_ms": {0: 1}}, "batch size keys must be positive integers"),
        ({"ttft_ms": {}}, "empty dict"),
        ({"peak_mem_bytes": "2 parsecs"}, "is not a byte size"),
        ([("load_s", 1)], "must be a dict"),
    ],
)
def test_bad_budgets_say_what_is_wrong(spec, fragment):
    with pytest.raises(BudgetError, match=None) as info:
        parse_budgets(spec)
    assert fragment in str(info.value)


def test_text_form_matches_the_dict_form():
    assert set(parse_budget_text("load_s=30, tokens_per_s=10 tokens_per_s[8]=60 peak_mem_bytes=2GiB")) == set(
        parse_budgets({"load_s": 30, "tokens_per_s": {"*": 10, 8: 60}, "peak_mem_bytes": "2GiB"})
    )


@pytest.mark.parametrize("text", ["load_s", "load_s[8]=3", "tokens_per_s[x]=3", "nope=1"])
def test_bad_text_budgets_are_rejected(text):
    with pytest.raises(BudgetError):
        parse_budget_text(text)


def test_later_layers_win_per_metric_and_batch():
    merged = merge_budgets([Budget("load_s", 1), Budget("ttft_ms", 5)], [Budget("load_s", 2)])
    assert set(merged) == {Budget("load_s", 2), Budget("ttft_ms", 5)}


def test_check_uses_the_median_and_batch_specific_budgets_win():
    # median e2e 1.0 s at batch 1 -> 100 tokens/s; at batch 8 -> 800 tokens/s
    record = make_record(make_generate(1, 1.0), make_generate(8, 1.0))
    checks = check_budgets(parse_budgets({"tokens_per_s": {"*": 50, 8: 900}}), record)
    by_batch = {c.batch_size: c for c in checks}
    assert by_batch[1].outcome == "pass" and by_batch[1].measured == pytest.approx(100.0)
    assert by_batch[8].outcome == "miss" and by_batch[8].limit == 900


def test_budgets_nothing_measured_are_unmeasured_not_passed():
    checks = check_budgets(parse_budgets({"ttft_ms": {32: 5}, "tpot_ms": 1000}), make_record())
    assert {c.outcome for c in checks} == {"unmeasured"}
    assert {(c.metric, c.batch_size) for c in checks} == {("ttft_ms", 32), ("tpot_ms", None)}


def test_out_of_memory_misses_a_budget():
    checks = check_budgets(parse_budgets({"tokens_per_s": 1}), make_record(make_generate(64, 1.0, outcome="oom")))
    assert [(c.outcome, c.measured) for c in checks] == [("miss", None)]
    assert "out of memory" in describe_miss(checks[0], make_record())


def test_load_budgets_are_checked_once():
    checks = check_budgets(parse_budgets({"load_s": 1.5}), make_record(make_generate(1, 1.0), load_s=2.0))
    assert [(c.metric, c.outcome, c.measured) for c in checks] == [("load_s", "miss", 2.0)]


def test_miss_line_names_metric_value_budget_model_backend_batch():
    record = make_record(make_generate(8, 1.0))
    (check,) = check_budgets(parse_budgets({"tokens_per_s": {8: 900}}), record)
    line = describe_miss(check, record)
    assert line == ("tokens_per_s = 800 tokens/s, budget >= 900 tokens/s "
                    "(model synthetic:llama-tiny, backend hf, batch 8)")
