"""The load generator against a real server: llama.cpp's, serving a tiny synthetic Llama on this machine."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.serving.arrivals import ClosedLoop, OpenLoop
from pytest_llmperf.serving.load_generator import Completion, run_load
from pytest_llmperf.serving.request_metrics import ServingSummary

pytest.importorskip("xllamacpp", reason="llama.cpp's server comes with xllamacpp: "
                                 "pip install 'pytest-llmperf[llama-cpp]'")
pytest.importorskip("httpx", reason="the load generator speaks HTTP with httpx: pip install httpx")


@pytest.fixture(scope="module")
def server(synthetic_cache, tmp_path_factory):
    from pytest_llmperf.backends.llama_cpp import LlamaCppBackend

    checkpoint = ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)
    backend = LlamaCppBackend()
    backend.load(LoadRequest(checkpoint, "float32", "cpu", scratch_dir=tmp_path_factory.mktemp("llama"), threads=1),
                 lambda name: nullcontext())
    yield backend._loaded().listening_address
    backend.close()


def _completions(n: int, output_tokens: int = 8) -> list[Completion]:
    return [Completion(prompt_ids=tuple(range(10 + i, 26 + i)), output_tokens=output_tokens) for i in range(n)]


def test_an_open_loop_sends_every_request_on_its_schedule_and_each_gets_its_tokens(server) -> None:
    plan = OpenLoop(rate_rps=40.0, requests=20, seed=1)
    run = run_load(server, "m", _completions(20), plan)
    assert (run.asked, run.sent, len(run.records)) == (20, 20, 20)
    assert all(r.error is None and r.output_tokens == 8 for r in run.records), [r.error for r in run.records]
    schedule = plan.send_s()
    # every send waited for its own time only: never early, and its lateness is what the run reports
    assert all(actual >= planned - 1e-6 for actual, planned in zip(run.sent_s, schedule))
    assert max(a - p for a, p in zip(run.sent_s, schedule)) <= run.max_send_lag_s + 0.05
    summary = ServingSummary.of(run.records, run.duration_s)
    assert summary.completed == 20 and summary.error_rate == 0
    assert summary.ttft_ms.median is not None and summary.ttft_ms.median > 0
    assert summary.tpot_ms.median is not None and summary.itl_ms.p99 is not None
    assert summary.output_throughput == pytest.approx(20 * 8 / run.duration_s)


def test_a_closed_loop_keeps_exactly_its_concurrency_in_flight(server) -> None:
    run = run_load(server, "m", _completions(9), ClosedLoop(concurrency=3, requests=9))
    assert run.sent == 9 and run.max_in_flight == 3 and run.target_rate_rps is None
    assert all(r.error is None for r in run.records)


def test_all_at_once_sends_everything_before_any_answer(server) -> None:
    run = run_load(server, "m", _completions(6), OpenLoop(rate_rps=math.inf, requests=6))
    assert run.max_in_flight == 6 and all(r.error is None for r in run.records)


def test_a_server_that_refuses_is_an_error_per_request_not_a_crash(server) -> None:
    too_long = [Completion(prompt_ids=tuple(range(10, 2000)), output_tokens=8)]  # past the model's 1024 positions
    run = run_load(server, "m", too_long, OpenLoop(rate_rps=1.0, requests=1))
    (record,) = run.records
    assert record.error is not None and not record.ok
    assert ServingSummary.of(run.records, 1.0).error_rate == 1.0


def test_a_plan_for_another_number_of_requests_is_refused() -> None:
    with pytest.raises(ValueError, match="the plan sends 3 requests but 2 were given"):
        run_load("http://127.0.0.1:9", "m", _completions(2), OpenLoop(rate_rps=1.0, requests=3))
