"""The load generator against real servers: the instant server (the client's measuring instrument), a server that
drops kept-alive connections, and llama.cpp's, serving a tiny synthetic Llama on this machine."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import re
import threading
from contextlib import nullcontext

import pytest

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.launch.distributed import free_port
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.serving.arrivals import ClosedLoop, OpenLoop
from pytest_llmperf.serving.client_ceiling import (
    STREAM_HEAD,
    CeilingCriteria,
    client_ceiling,
    completion_stream,
    instant_server,
)
from pytest_llmperf.serving.load_generator import Completion, Endpoint, StreamReading, run_load
from pytest_llmperf.serving.request_metrics import ServingSummary


def _completions(n: int, output_tokens: int = 8) -> list[Completion]:
    return [Completion(prompt_ids=tuple(range(10 + i, 26 + i)), output_tokens=output_tokens) for i in range(n)]


# ---- the instant server ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def instant():
    with instant_server() as url:
        yield url


def test_against_the_instant_server_every_request_is_sent_on_schedule_and_read_to_its_end(instant) -> None:
    plan = OpenLoop(rate_rps=20.0, requests=20, seed=3)
    run = run_load(instant, "m", _completions(20, output_tokens=16), plan)
    assert (run.asked, run.sent, len(run.records)) == (20, 20, 20)
    assert all(r.error is None and r.output_tokens == 16 and len(r.chunk_s) == 16 for r in run.records)
    schedule = plan.send_s()
    assert all(actual >= planned - 1e-6 for actual, planned in zip(run.sent_s, schedule))
    # close to the schedule's own rate; loose, since a busy machine delays sends (never advances them)
    target = (len(schedule) - 1) / schedule[-1]
    assert run.achieved_rate_rps is not None and 0.5 * target < run.achieved_rate_rps < 2 * target
    # a response read to its end leaves its connection open for the next request
    assert run.connections_opened <= run.max_in_flight


def test_one_request_at_a_time_uses_one_connection(instant) -> None:
    run = run_load(instant, "m", _completions(5), ClosedLoop(concurrency=1, requests=5))
    assert run.connections_opened == 1 and all(r.ok for r in run.records)


def test_a_refused_request_is_that_request_s_error(instant) -> None:
    run = run_load(instant, "m", _completions(1, output_tokens=0), OpenLoop(rate_rps=1.0, requests=1))
    (record,) = run.records
    assert record.error is not None and record.error.startswith("HTTP 400") and "max_tokens" in record.error


def test_a_run_leaves_the_garbage_collector_as_it_found_it(instant) -> None:
    run_load(instant, "m", _completions(2), OpenLoop(rate_rps=math.inf, requests=2))
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_the_client_ceiling_search_runs_against_the_instant_server() -> None:
    lenient = CeilingCriteria(min_achieved_ratio=0.5, max_send_lag_s=5.0)  # behaviour here, not timing
    ceiling = client_ceiling(4, start_rps=20.0, max_rps=20.0, seconds=0.5, criteria=lenient)
    (step,) = ceiling.steps
    assert step.requests == 40 and step.failed == 0 and ceiling.ceiling_rps == 20.0 and not ceiling.limited
    assert step.median_e2el_ms is not None and step.median_e2el_ms > 0
    assert step.client_cpu_share is not None and step.client_cpu_share > 0
    assert step.server_cpu_share is not None and step.server_cpu_share >= 0


# ---- a server that closes kept-alive connections ---------------------------------------------------------

@pytest.fixture
def forgetful_server():
    """Answers the first request of each connection, and closes the connection when a second arrives (as a
    server whose keep-alive ran out just as the client reused the connection)."""
    port = free_port()
    started = threading.Event()
    box: dict[str, object] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                asked = json.loads(await reader.readexactly(int(found.group(1)) if found else 0))
                if answered:
                    break
                tokens, rest = completion_stream("m", 1, asked["max_tokens"], len(asked["prompt"]))
                writer.write(STREAM_HEAD + b"".join(tokens) + rest)
                await writer.drain()
                answered = True
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def serve() -> None:
        stop = asyncio.get_running_loop().create_future()
        box["loop"], box["stop"] = asyncio.get_running_loop(), stop
        async with await asyncio.start_server(handle, "127.0.0.1", port):
            started.set()
            await stop

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{port}"
    loop, stop = box["loop"], box["stop"]
    loop.call_soon_threadsafe(stop.set_result, None)  # type: ignore[attr-defined]
    thread.join(10)


def test_a_kept_alive_connection_the_server_dropped_is_retried_on_a_new_one(forgetful_server) -> None:
    run = run_load(forgetful_server, "m", _completions(3), ClosedLoop(concurrency=1, requests=3))
    assert all(r.ok for r in run.records), [r.error for r in run.records]
    assert run.connections_opened == 3  # each reuse met a dropped connection and went to a new one


# ---- reading the event stream ------------------------------------------------------------------------------

def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _token(text: str, finish: str | None = None) -> bytes:
    return _event({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


def test_a_token_whose_text_is_empty_counts_and_a_closing_trailer_does_not() -> None:
    reading = StreamReading()
    reading.feed(_token(" a"), 1.0)
    reading.feed(_token(""), 2.0)  # a special token: no text, but a token arrived
    reading.feed(_token(" b", finish="length"), 3.0)
    # llama.cpp's trailer: no text, the finish reason again, and the usage
    reading.feed(_event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                         "usage": {"completion_tokens": 3, "prompt_tokens": 4}}), 4.0)
    reading.feed(b"data: [DONE]\n\n", 5.0)
    assert reading.chunk_s == [1.0, 2.0, 3.0]
    record = reading.record(0.0, Completion(prompt_ids=(1, 2, 3, 4), output_tokens=3))
    assert record.ok and record.output_tokens == 3 and record.prompt_tokens == 4


def test_an_event_split_across_reads_is_timed_when_its_end_arrives() -> None:
    event = _token(" a")
    reading = StreamReading()
    reading.feed(event[:10], 1.0)
    reading.feed(event[10:-2], 2.0)  # all but the line's end
    assert reading.chunk_s == []
    reading.feed(event[-2:] + _token(" b"), 3.0)
    assert reading.chunk_s == [3.0, 3.0]


def test_an_error_the_server_streams_is_the_request_s_error() -> None:
    reading = StreamReading()
    reading.feed(_event({"error": {"message": "out of memory"}}), 1.0)
    record = reading.record(0.0, Completion(prompt_ids=(1,), output_tokens=2))
    assert record.error is not None and "out of memory" in record.error and not record.ok


def test_fewer_tokens_than_asked_is_an_error() -> None:
    reading = StreamReading()
    reading.feed(_token(" a") + _event({"choices": [], "usage": {"completion_tokens": 1}}), 1.0)
    record = reading.record(0.0, Completion(prompt_ids=(1,), output_tokens=2))
    assert record.error == "the server generated 1 tokens, 2 were asked"


def test_a_url_that_is_not_http_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match=r"server URL '127.0.0.1:8000': expected http://host:port"):
        Endpoint.of("127.0.0.1:8000")
    assert Endpoint.of("http://h:81/base/").path == "/base/v1/completions"


def test_a_plan_for_another_number_of_requests_is_refused() -> None:
    with pytest.raises(ValueError, match="the plan sends 3 requests but 2 were given"):
        run_load("http://127.0.0.1:9", "m", _completions(2), OpenLoop(rate_rps=1.0, requests=3))


# ---- llama.cpp's server ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(synthetic_cache, tmp_path_factory):
    pytest.importorskip("xllamacpp", reason="llama.cpp's server comes with xllamacpp: "
                                             "pip install 'pytest-llmperf[llama-cpp]'")
    from pytest_llmperf.backends.llama_cpp import LlamaCppBackend

    checkpoint = ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)
    backend = LlamaCppBackend()
    backend.load(LoadRequest(checkpoint, "float32", "cpu", scratch_dir=tmp_path_factory.mktemp("llama"), threads=1),
                 lambda name: nullcontext())
    yield backend._loaded().listening_address
    backend.close()


def test_an_open_loop_sends_every_request_on_its_schedule_and_each_gets_its_tokens(server) -> None:
    plan = OpenLoop(rate_rps=40.0, requests=20, seed=1)
    run = run_load(server, "m", _completions(20), plan)
    assert (run.asked, run.sent, len(run.records)) == (20, 20, 20)
    assert all(r.error is None and r.output_tokens == 8 for r in run.records), [r.error for r in run.records]
    # llama.cpp closes each stream with a trailer (no text, its finish reason, the usage): not a token
    assert all(len(r.chunk_s) == 8 for r in run.records)
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
