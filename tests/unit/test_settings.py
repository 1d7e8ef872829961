from pathlib import Path

import pytest

from pytest_llmperf.budgets import Budget
from pytest_llmperf.settings import (
    DEFAULT_KNOBS,
    OPTIONS,
    Knobs,
    Settings,
    SettingsError,
    resolve_knobs,
)


def _settings(cli=None, ini=None, tmp=Path("/project")) -> Settings:
    return Settings.from_sources(enabled=True, cli=cli or {}, ini=ini or {}, rootdir=tmp)


def test_every_option_has_a_flag_and_an_ini_key():
    for option in OPTIONS:
        assert option.flag == "--llmperf-" + option.name.replace("_", "-")
        assert option.ini == "llmperf_" + option.name


def test_defaults():
    settings = _settings()
    assert settings.db_path == Path("/project/.llmperf/history.db")
    assert settings.models == ("synthetic:bloom-tiny", "synthetic:llama-tiny")
    assert settings.backends == ("hf", "accelerate", "ds-inference", "ds-zero", "hf-tp", "llama-cpp", "vllm")
    assert settings.world_sizes is None and settings.max_batch == 0
    assert Knobs(trials=5, warmups=1, batch_sizes=(1, 8, 32), prompt_tokens=32, new_tokens=100, prompts="random",
                 workload="p32o32", dtype="auto", device="auto", seed=0) == DEFAULT_KNOBS
    assert settings.slo == () and settings.max_rate_rps == 0 and settings.server_url is None


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("slo", "ttft=200", "expected <metric>=<milliseconds>"),
    ("slo", "ttft_ms=-1", "positive number of milliseconds"),
    ("server_url", "127.0.0.1:8000", "the server's base URL"),
    ("max_rate", "-2", "requests per second"),
    ("workload", "p32", "p<P>o<O>|expected|workload"),
])
def test_a_bad_serving_option_names_the_option_and_the_fix(name: str, text: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=rf"llmperf_{name} = .*({problem})"):
        _settings(ini={name: text})


def test_serving_options_are_parsed() -> None:
    settings = _settings(ini={"slo": "ttft_ms=200 tpot_ms=50", "server_url": "http://10.0.0.2:8000/",
                              "max_rate": "32", "workload": "sharegpt-max512"})
    assert settings.slo == (("ttft_ms", 200.0), ("tpot_ms", 50.0)) and settings.max_rate_rps == 32.0
    assert settings.server_url == "http://10.0.0.2:8000" and settings.ini.workload == "sharegpt-max512"


def test_ini_values_are_parsed_and_command_line_wins():
    settings = _settings(cli={"db": "/tmp/x.db", "trials": 7},
                         ini={"db": "other.db", "trials": "3", "batch_sizes": "2, 4", "budgets": "load_s=5"})
    assert settings.db_path == Path("/tmp/x.db")
    assert settings.cli.trials == 7 and settings.ini.trials == 3
    assert settings.ini.batch_sizes == (2, 4)
    assert settings.ini_budgets == (Budget("load_s", 5.0),)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("trials", "0", "llmperf_trials = '0' in the ini file: expected a positive integer"),
        ("new_tokens", "1", "at least 2 new tokens"),
        ("batch_sizes", "1,x", "expected a list of positive integers"),
        ("dtype", "float8", "float8"),
        ("device", "tpu", "expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("backends", "hf,no-such-engine", "unknown backend 'no-such-engine'; known backends: hf, accelerate"),
        ("world_sizes", "1,two", "expected 'auto' or a list of positive integers"),
        ("memory_headroom", "lots", "is not a byte size"),
        ("rank_timeout", "-1", "expected a positive number of seconds"),
        ("models", "synthetic:nope", "nope"),
        ("budgets", "speed=3", "unknown metric 'speed'"),
        ("progress", "loud", "expected 'auto', 'on' or 'off'"),
    ],
)
def test_bad_ini_values_name_the_key_the_value_and_what_is_allowed(key, value, fragment):
    with pytest.raises(SettingsError) as info:
        _settings(ini={key: value})
    assert f"llmperf_{key} = {value!r}" in str(info.value)
    assert fragment in str(info.value)


def test_precedence_command_line_then_marker_then_ini_then_default():
    cli, marker, ini = Knobs(trials=9), Knobs(trials=4, warmups=2), Knobs(trials=1, warmups=0, new_tokens=50)
    resolved = resolve_knobs(cli, marker, ini, DEFAULT_KNOBS)
    assert (resolved.trials, resolved.warmups, resolved.new_tokens, resolved.prompt_tokens) == (9, 2, 50, 32)
