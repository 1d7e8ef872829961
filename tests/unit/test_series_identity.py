"""One series identity: its digest is the key every history file already holds, and it is ready for load points
other than a batch size. The pinned values were computed by the code before ``SeriesKey`` had load points."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pytest_llmperf.dashboard.history import page_key
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.series import LoadPoint, SeriesKey
from tests.factories import GPU_ENV, make_generate, make_record, run_context

QWEN_B8 = SeriesKey(test_id="tests/perf/test_qwen.py::test_generate[eager]", model_id="Qwen/Qwen2.5-0.5B-Instruct",
                    model_config_hash="3f2a9c41d07be655", backend="hf", variant="eager", dtype="bfloat16", world_size=1,
                    point=LoadPoint.of(batch_size=8, prompt_tokens=128, new_tokens=64), metric="tokens_per_s",
                    env_fingerprint="0b13c6002c203e59")


def test_the_digest_of_existing_batch_series_does_not_change() -> None:
    assert QWEN_B8.digest() == "8e56c985ddffda2b72189475beb03535"
    assert replace(QWEN_B8, point=LoadPoint(), metric="load_s").digest() == "09dcb9fa25c065800f1c8b0e8a161624"


def test_the_history_stores_the_keys_it_always_stored() -> None:
    with HistoryStore.open(":memory:") as store:
        store.start_run("r", GPU_ENV, run_context())
        store.record_test("r", make_record(make_generate(8, 1.0)), test_outcome="passed")
        keys = dict(store.db.execute(
            "SELECT metric, series_key FROM results WHERE metric IN ('tokens_per_s', 'load_s')").fetchall())
    assert keys == {"tokens_per_s": "3f57983d305fd4af9613d0b9403dfeae", "load_s": "595b0aedfad4f7d5d6fddbca349df2e0"}


def test_dashboard_pages_keep_their_addresses() -> None:
    page = SeriesKey(test_id="t.py::test_x", model_id="synthetic:llama-tiny", model_config_hash="abc", backend="hf",
                     variant="default", dtype="float32", world_size=1,
                     point=LoadPoint.of(batch_size=8, prompt_tokens=32, new_tokens=100), metric="tokens_per_s",
                     env_fingerprint=GPU_ENV.fingerprint())
    assert page_key(page) == "a0397566f7a5858e"


def test_a_load_point_of_other_coordinates_is_a_series_of_its_own() -> None:
    serving = replace(QWEN_B8, point=LoadPoint.of(batch_size=8, prompt_tokens=128, new_tokens=64, request_rate=2.5))
    assert serving.digest() != QWEN_B8.digest()
    assert serving.canonical()["request_rate"] == 2.5 and "request_rate" not in QWEN_B8.canonical()
    assert serving.label == "tests/perf/test_qwen.py::test_generate[eager] b8 request_rate=2.5 tokens_per_s"
    assert replace(QWEN_B8, point=LoadPoint.of(concurrency=16)).point.label == "concurrency=16"
    assert QWEN_B8.label == "tests/perf/test_qwen.py::test_generate[eager] b8 tokens_per_s"


def test_the_history_refuses_coordinates_it_has_no_column_for() -> None:
    from pytest_llmperf.history.series_columns import series_columns

    with pytest.raises(ValueError, match="no column for the load-point coordinates input_rate"):
        series_columns(replace(QWEN_B8, point=LoadPoint.of(input_rate=2.5)))


def test_a_serving_load_point_and_its_workload_round_trip_through_the_columns() -> None:
    from pytest_llmperf.history.series_columns import SERIES_COLUMNS, series_columns, series_key_from

    serving = replace(QWEN_B8, point=LoadPoint.of(request_rate=2.5), workload="p32o32", metric="p99_ttft_ms")
    columns = series_columns(serving)
    assert (columns["request_rate"], columns["workload"], columns["batch_size"]) == (2.5, "p32o32", None)
    assert series_key_from([columns.get(c) for c in SERIES_COLUMNS]) == serving
    assert serving.digest() != replace(serving, workload="sharegpt").digest()
    assert "workload" not in series_columns(QWEN_B8) and "request_rate" not in series_columns(QWEN_B8)


@pytest.mark.parametrize(("coordinates", "problem"), [
    ((("new_tokens", 64), ("batch_size", 8)), "sorted by name"),
    ((("batch_size", 8), ("batch_size", 9)), "named once each"),
    ((("request rate", 2.0),), "not an identifier"),
    ((("batch_size", 8.0),), "whole number"),
    ((("concurrency", float("nan")),), "finite number"),
    ((("concurrency", True),), "finite number"),
])
def test_a_malformed_load_point_is_refused(coordinates, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        LoadPoint(coordinates)


def test_keys_are_built_by_keyword_only() -> None:
    with pytest.raises(TypeError):
        SeriesKey("t", "m", "h", "hf", "default", "float32", 1, LoadPoint(), "load_s", "env")  # type: ignore[misc]


def test_a_prompt_set_is_its_own_series_and_random_prompts_keep_their_key() -> None:
    text = replace(QWEN_B8, prompts="text")
    assert text.digest() != QWEN_B8.digest() and QWEN_B8.digest() == "8e56c985ddffda2b72189475beb03535"
    assert text.label.endswith("b8 prompts=text tokens_per_s")


def test_the_history_reads_back_the_prompt_set_of_a_series() -> None:
    from pytest_llmperf.history.samples import series_samples

    record = make_record(make_generate(8, 1.0))
    text_record = replace(record, generates=tuple(replace(g, config=replace(g.config, prompts="text"))
                                                  for g in record.generates))
    with HistoryStore.open(":memory:") as store:
        store.start_run("r", GPU_ENV, run_context())
        store.record_test("r", text_record, test_outcome="passed")
        samples = series_samples(store, ["r"], ["tokens_per_s", "load_s"])
    by_metric = {s.subject.metric: s.subject for s in samples.values()}
    assert by_metric["tokens_per_s"].prompts == "text" and by_metric["load_s"].prompts is None
    assert by_metric["tokens_per_s"].digest() in samples
