"""Serving results as data: their metrics by vLLM's names, budgets on them, and their series in the history."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pytest_llmperf.budgets import BudgetError, check_budgets, describe_miss, parse_budget_text, parse_budgets
from pytest_llmperf.history import schema as schema_mod
from pytest_llmperf.history.samples import series_samples
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.metrics import METRICS, Scope
from pytest_llmperf.report.junit import junit_properties
from pytest_llmperf.report.terminal import render_summary
from pytest_llmperf.results import BenchRecord
from tests.factories import GPU_ENV, make_generate, make_record, make_server_record, make_serving, run_context
from tests.history_rows import results_snapshot, rows


def test_a_load_point_reports_every_latency_statistic_by_vllms_names() -> None:
    result = make_serving(4.0, ttft_s=0.05, gap_s=0.01, output_tokens=8, slo=(("ttft_ms", 60.0),))
    values = result.metric_values()
    serving_metrics = {name for name, m in METRICS.items() if m.scope is Scope.SERVING}
    assert set(values) == serving_metrics
    assert values["median_ttft_ms"] == pytest.approx(50.0) and values["p99_ttft_ms"] == pytest.approx(50.0)
    assert values["median_tpot_ms"] == pytest.approx(10.0) and values["p99_itl_ms"] == pytest.approx(10.0)
    assert values["median_e2el_ms"] == pytest.approx(120.0)
    assert values["error_rate"] == 0 and values["goodput"] == pytest.approx(values["request_throughput"])


def test_without_slos_there_is_no_goodput_and_failed_requests_count_as_errors() -> None:
    values = make_serving(failed=5, requests=20).metric_values()
    assert "goodput" not in values and values["error_rate"] == pytest.approx(0.25)


def test_a_record_with_serving_load_points_round_trips_through_json() -> None:
    record = replace(make_server_record(make_serving(2.0), make_serving(concurrency=4, slo=(("tpot_ms", 50.0),))),
                     max_rate_rps=6.5)
    assert BenchRecord.from_dict(record.to_dict()) == record
    assert record.load_metric_values()["max_rate_rps"] == 6.5


def test_a_serving_budget_holds_at_every_load_point_and_names_the_one_that_missed() -> None:
    record = make_server_record(make_serving(2.0, ttft_s=0.05), make_serving(8.0, ttft_s=0.4))
    checks = check_budgets(parse_budgets({"p99_ttft_ms": 200}), record)
    assert [(c.point, c.outcome) for c in checks] == [("request_rate=2 p32o32", "pass"),
                                                       ("request_rate=8 p32o32", "miss")]
    miss = describe_miss(checks[1], record)
    assert "p99_ttft_ms = 400 ms" in miss and "load point request_rate=8 p32o32" in miss


def test_a_serving_budget_of_a_test_that_served_nothing_is_unmeasured() -> None:
    checks = check_budgets(parse_budget_text("goodput=3"), make_record(make_generate(1, 1.0)))
    assert [(c.metric, c.outcome) for c in checks] == [("goodput", "unmeasured")]


def test_a_serving_budget_per_batch_size_is_refused() -> None:
    with pytest.raises(BudgetError, match="per serving load point, not per batch size"):
        parse_budgets({"p99_ttft_ms": {8: 100}})
    with pytest.raises(BudgetError, match="per serving load point"):
        parse_budget_text("p99_ttft_ms[8]=100")


def test_each_load_point_and_workload_is_a_series_of_its_own_in_the_history() -> None:
    record = make_server_record(make_serving(2.0), make_serving(8.0), make_serving(2.0, workload="sharegpt"),
                                make_serving(concurrency=4))
    with HistoryStore.open(":memory:") as store:
        store.start_run("r", GPU_ENV, run_context())
        store.record_test("r", record, test_outcome="passed")
        samples = series_samples(store, ["r"], ["median_ttft_ms"])
        measured = rows(store, "SELECT request_rate, concurrency, workload, serving FROM measurements "
                               "WHERE kind = 'generate' ORDER BY id")
    subjects = {(s.subject.point.get("request_rate"), s.subject.point.get("concurrency"), s.subject.workload)
                for s in samples.values()}
    assert subjects == {(2.0, None, "p32o32"), (8.0, None, "p32o32"), (2.0, None, "sharegpt"), (None, 4, "p32o32")}
    assert all(len(s.per_run["r"]) == 1 for s in samples.values())  # one value per run: the run is the unit
    assert [m["workload"] for m in measured] == ["p32o32", "p32o32", "sharegpt", "p32o32"]
    assert '"sent": 20' in measured[0]["serving"] and '"warmup_requests": 2' in measured[0]["serving"]


def test_a_v5_history_upgrades_to_v6_and_keeps_its_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "history.db"
    monkeypatch.setattr(schema_mod, "MIGRATIONS", schema_mod.MIGRATIONS[:5])
    with HistoryStore.open(path) as store:
        store.start_run("v5", GPU_ENV, run_context())
        store.record_test("v5", make_record(make_generate(8, 1.0)), test_outcome="passed")
        before = results_snapshot(store)
    monkeypatch.undo()
    with HistoryStore.open(path) as store:
        assert store.schema_version() == 6
        assert results_snapshot(store) == before
        store.start_run("v6", GPU_ENV, run_context())
        store.record_test("v6", make_server_record(make_serving(2.0)), test_outcome="passed")
        assert series_samples(store, ["v6"], ["p99_ttft_ms"])


def test_the_summary_and_junit_show_each_load_point() -> None:
    record = replace(make_server_record(make_serving(2.0, slo=(("ttft_ms", 60.0),))),
                     budget_checks=check_budgets(parse_budgets({"p99_ttft_ms": 200}),
                                                 make_server_record(make_serving(2.0))))
    text = "".join(render_summary([record]))
    assert "request_rate=2 p32o32" in text and "20/20" in text and "1 ok" in text
    assert "50 / 50" in text  # median / p99 TTFT in ms
    props = dict(junit_properties(record))
    assert props["llmperf.p99_ttft_ms[request_rate=2 p32o32]"] == "50"
