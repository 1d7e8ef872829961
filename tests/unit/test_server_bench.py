"""The serving fixture's logic without a server: the max-rate search, argument errors, log names."""

from __future__ import annotations

import pytest

from pytest_llmperf.serving.server_bench import (
    MAX_HALVINGS,
    RATE_RESOLUTION,
    ServeArgumentError,
    _plan,
    _search,
    _workload,
    safe_log_name,
)


def _capacity(true_max: float) -> tuple[list[float], object]:
    probed: list[float] = []

    def passes(rate: float) -> bool:
        probed.append(rate)
        return rate <= true_max

    return probed, passes


def test_the_limit_itself_is_the_answer_when_it_meets_the_slo() -> None:
    probed, passes = _capacity(100.0)
    assert _search(passes, 50.0) == 50.0 and probed == [50.0]


@pytest.mark.parametrize("true_max", [3.3, 7.0, 12.0, 49.0])
def test_the_search_brackets_the_largest_passing_rate_within_its_resolution(true_max: float) -> None:
    probed, passes = _capacity(true_max)
    found = _search(passes, 50.0)
    assert found is not None and found <= true_max < found * RATE_RESOLUTION
    assert len(probed) <= 1 + MAX_HALVINGS + 8  # a handful of probes, not a scan


def test_no_passing_rate_down_to_the_last_halving_gives_none() -> None:
    probed, passes = _capacity(0.0)
    assert _search(passes, 64.0) is None and min(probed) == 64.0 / 2**MAX_HALVINGS


@pytest.mark.parametrize(("rate", "concurrency", "problem"), [
    (None, None, "either request_rate .* or concurrency"),
    (4.0, 2, "not both or neither"),
    (float("inf"), None, "use concurrency=N"),
    (-1.0, None, "expected requests per second > 0"),
    (None, 0, "at least 1"),
])
def test_a_plan_that_cannot_be_followed_names_the_call_and_the_fix(rate, concurrency, problem: str) -> None:
    with pytest.raises(ServeArgumentError, match=rf"llm_server.serve.*{problem}"):
        _plan("llm_server.serve(...)", rate, concurrency, 10, 1.0, 0)


def test_a_workload_is_an_object_or_its_label() -> None:
    assert _workload("call", "p16o4").label == "p16o4"
    with pytest.raises(ServeArgumentError, match="workload='p16x4'"):
        _workload("call", "p16x4")
    with pytest.raises(ServeArgumentError, match="expected a Workload or its label"):
        _workload("call", 16)


def test_a_test_id_becomes_a_file_name() -> None:
    assert safe_log_name("suites/test_serving.py::test_x[llama-tiny-vllm-eager]") == \
        "suites_test_serving.py_test_x_llama-tiny-vllm-eager.log"
