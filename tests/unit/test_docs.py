"""The README documents every option and every metric the code defines."""

from pathlib import Path

import pytest

from pytest_llmperf.measure.metrics import METRICS
from pytest_llmperf.settings import OPTIONS

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_option_is_in_the_options_table(option):
    row = next((line for line in README.splitlines() if line.startswith(f"| `{option.flag}=")), None)
    assert row is not None, f"{option.flag} is missing from the README's options table"
    assert f"`{option.ini}`" in row


@pytest.mark.parametrize("name", METRICS)
def test_every_metric_is_in_the_glossary(name):
    assert f"| `{name}` | {METRICS[name].unit} |" in README
