from pathlib import Path

import pytest

from pytest_llmperf.budgets import Budget
from pytest_llmperf.case import MarkerError, cases_from_marker
from pytest_llmperf.settings import Knobs, Settings


@pytest.fixture
def settings() -> Settings:
    return Settings.from_sources(enabled=True, cli={"trials": 2},
                                 ini={"budgets": "load_s=60 ttft_ms=500", "backends": "hf"}, rootdir=Path("/p"))


def test_a_marker_without_model_or_backend_expands_to_the_configured_lists(settings):
    cases = cases_from_marker((), {}, settings)
    assert [(c.model, c.backend, c.variant) for c in cases] == [
        ("synthetic:bloom-tiny", "hf", "default"), ("synthetic:llama-tiny", "hf", "default")]
    assert [c.id for c in cases] == ["bloom-tiny-hf", "llama-tiny-hf"]


def test_world_sizes_auto_go_up_to_the_pool_and_one_device_backends_stay_at_one(settings):
    cases = cases_from_marker((), {"model": "synthetic:llama-tiny", "backend": ["hf", "ds-zero", "accelerate"]},
                              settings, pool_size=5)
    assert [c.id for c in cases] == [
        "llama-tiny-hf", "llama-tiny-ds-zero", "llama-tiny-ds-zero-ws2", "llama-tiny-ds-zero-ws4",
        "llama-tiny-accelerate", "llama-tiny-accelerate-ws2", "llama-tiny-accelerate-ws4"]
    # asked for explicitly, a size is kept (and skipped at run time with the reason)
    (case,) = cases_from_marker((), {"model": "synthetic:llama-tiny", "backend": "hf", "world_size": 8}, settings)
    assert case.world_size == 8 and case.id == "llama-tiny-hf-ws8"


def test_variants_go_to_the_backends_that_have_them(settings):
    cases = cases_from_marker((), {"model": "synthetic:llama-tiny", "world_size": 1,
                                   "backend": ["hf", "ds-inference", "accelerate", "ds-zero"],
                                   "variant": ["kernel-inject", "disk-offload", "cpu-offload"]}, settings)
    assert [(c.backend, c.variant) for c in cases] == [
        ("ds-inference", "kernel-inject"), ("accelerate", "cpu-offload"), ("accelerate", "disk-offload"),
        ("ds-zero", "cpu-offload")]
    assert cases[0].id == "llama-tiny-ds-inference-kernel-inject"


def test_marker_budgets_override_ini_budgets_per_metric(settings):
    (case,) = cases_from_marker((), {"model": "synthetic:gpt2-tiny", "budgets": {"load_s": 5}}, settings)
    assert set(case.budgets) == {Budget("load_s", 5.0), Budget("ttft_ms", 500.0)}


def test_knobs_command_line_beats_call_beats_marker(settings):
    (case,) = cases_from_marker((), {"model": "synthetic:gpt2-tiny", "trials": 4, "warmups": 3}, settings)
    knobs = case.knobs(settings, Knobs(warmups=1))
    assert (knobs.trials, knobs.warmups) == (2, 1)


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (("x",), {}, "positional arguments"),
        ((), {"modle": "synthetic:llama-tiny"}, "unknown argument modle; allowed: model, backend"),
        ((), {"backend": "trt"}, "backend='trt': unknown backend; allowed: hf"),
        ((), {"world_size": [1, 0]}, "world_size=[1, 0]: expected a positive int or a list of them"),
        ((), {"memory_headroom": 1.5}, "expected a byte size"),
        ((), {"model": "synthetic:nope"}, "model='synthetic:nope'"),
        ((), {"model": 3}, "expected a string or a non-empty list of strings"),
        ((), {"trials": "5"}, "trials='5': expected an int"),
        ((), {"trials": 0}, "expected a positive integer"),
        ((), {"batch_sizes": [1, 2.5]}, "expected an int or a list of ints"),
        ((), {"budgets": {"tokens_per_sec": 3}}, "unknown metric 'tokens_per_sec'"),
        ((), {"budgets": {"load_s": -3}}, ">= 0"),
        ((), {"variant": "turbo"}, "no backend of this test has it; their variants: hf: default"),
        ((), {"dtype": "int4"}, "int4"),
    ],
)
def test_bad_markers_name_the_argument_and_what_is_allowed(settings, args, kwargs, fragment):
    with pytest.raises(MarkerError) as info:
        cases_from_marker(args, kwargs, settings)
    assert fragment in str(info.value)
