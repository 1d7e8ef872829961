import json

import pytest

from pytest_llmperf.measure.stats import Stats
from pytest_llmperf.results import BenchRecord, Trial
from tests.factories import make_generate, make_record


def test_trial_metrics_follow_the_glossary():
    trial = Trial(ttft_s=0.05, e2e_s=2.03, batch_size=8, new_tokens=100, streams=2)
    assert trial.value("ttft_ms") == pytest.approx(50.0)
    assert trial.value("tpot_ms") == pytest.approx((2.03 - 0.05) / 99 * 1000)
    assert trial.value("tokens_per_s") == pytest.approx(2 * 8 * 100 / 2.03)
    assert trial.value("ms_per_token") == pytest.approx(1000 / trial.value("tokens_per_s"))
    with pytest.raises(KeyError, match="per-trial metrics"):
        trial.value("load_s")


def test_stats_median_quartiles_and_cv():
    stats = Stats.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (stats.median, stats.q1, stats.q3, stats.iqr) == (3.0, 2.0, 4.0, 2.0)
    assert stats.cv == pytest.approx(43.617 / 22.0, rel=1e-4)  # sample std / mean
    assert Stats.of([5.0]).cv is None  # one trial measures no spread: not "0 %"
    with pytest.raises(ValueError):
        Stats.of([])


def test_generate_result_reports_medians_and_single_values():
    result = make_generate(4, 1.0)
    values = result.metric_values()
    assert values["tokens_per_s"] == pytest.approx(400.0)
    assert values["peak_mem_bytes"] == 3 * 2**30
    assert "peak_mem_reserved_bytes" not in values
    with pytest.raises(KeyError, match="not measured"):
        result.median("energy_j_per_token")


def test_record_round_trips_through_json():
    record = make_record(make_generate(1, 1.0), make_generate(64, 1.0, outcome="oom"))
    again = BenchRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
