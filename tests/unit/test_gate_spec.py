"""Gate settings: minimum effects from each layer, and which tests an acceptance covers."""

import pytest

from pytest_llmperf.case import MarkerError, cases_from_marker
from pytest_llmperf.gate.spec import GateSpec, matches_test_id, parse_min_effect
from pytest_llmperf.settings import Settings


def test_min_effect_is_a_number_a_mapping_or_text_with_per_metric_values():
    assert parse_min_effect(0.1) == (("*", 0.1),)
    assert parse_min_effect({"load_s": 0.2}) == (("load_s", 0.2),)
    assert parse_min_effect("0.05 load_s=0.2, tokens_per_s=0.03") == (
        ("*", 0.05), ("load_s", 0.2), ("tokens_per_s", 0.03))


@pytest.mark.parametrize(("value", "message"), [
    ("fast", "must be a number"), (0, "above 0"), ({"tokens": 0.1}, "unknown metric 'tokens'"), (True, "must be"),
])
def test_a_bad_min_effect_names_the_value_and_what_is_allowed(value, message):
    with pytest.raises(ValueError, match=message):
        parse_min_effect(value)


def test_a_metric_specific_value_beats_any_default_and_higher_layers_beat_lower():
    spec = GateSpec(layers=((("*", 0.1),), (("load_s", 0.3), ("*", 0.2))))
    assert spec.min_effect("load_s") == 0.3
    assert spec.min_effect("tpot_ms") == 0.1
    assert GateSpec().min_effect("tpot_ms") == 0.05
    assert spec.to_json()["min_effect"] == {"*": 0.1, "load_s": 0.3}


def test_patterns_take_star_as_a_wildcard_and_brackets_literally():
    test_id = "suites/test_bloom_study.py::test_load[llama-tiny-hf]"
    assert matches_test_id(test_id, test_id)
    assert matches_test_id("suites/*::test_load[*-hf]", test_id)
    assert not matches_test_id("suites/*::test_load[*-ds-zero]", test_id)
    assert not matches_test_id("suites/test_bloom_study.py::test_load", test_id)


def test_the_marker_takes_min_effect_and_accept_regression(tmp_path):
    settings = Settings.from_sources(enabled=True, cli={"min_effect": (("*", 0.5),)},
                                     ini={"min_effect": "0.02 load_s=0.3"}, rootdir=tmp_path)
    [case] = cases_from_marker((), {"model": "synthetic:llama-tiny", "backend": "hf",
                                    "min_effect": {"tokens_per_s": 0.1}, "accept_regression": "new kernel"}, settings)
    assert case.gate.accept == "new kernel"
    assert case.gate.min_effect("tokens_per_s") == 0.1  # the marker's metric-specific value
    assert case.gate.min_effect("tpot_ms") == 0.5  # the command line's default beats the ini's
    with pytest.raises(MarkerError, match="accept_regression=''"):
        cases_from_marker((), {"model": "synthetic:llama-tiny", "accept_regression": ""}, settings)
    with pytest.raises(MarkerError, match="min_effect='x'"):
        cases_from_marker((), {"model": "synthetic:llama-tiny", "min_effect": "x"}, settings)
