"""The client-ceiling search, driven by a stand-in for the measurement: which rates it tries, what it keeps."""

from __future__ import annotations

import math

import pytest

from pytest_llmperf.serving.client_ceiling import (
    CeilingCriteria,
    CeilingError,
    CeilingStep,
    completion_stream,
    search_ceiling,
)
from pytest_llmperf.serving.load_generator import Completion, StreamReading


def _step(rate: float, *, ratio: float = 1.0, lag_s: float = 0.001, failed: int = 0) -> CeilingStep:
    return CeilingStep(target_rate_rps=rate, achieved_rate_rps=rate * ratio, max_send_lag_s=lag_s, requests=100,
                       failed=failed)


class Client:
    """Keeps up below ``limit_rps``; above it sends fall behind."""

    def __init__(self, limit_rps: float) -> None:
        self.limit_rps = limit_rps
        self.tried: list[float] = []

    def __call__(self, rate: float) -> CeilingStep:
        self.tried.append(rate)
        return _step(rate, ratio=1.0 if rate <= self.limit_rps else self.limit_rps / rate)


def test_the_rate_doubles_until_a_step_falls_behind_then_bisects_between_the_last_two() -> None:
    client = Client(limit_rps=300.0)
    ceiling = search_ceiling(client, output_tokens=16, start_rps=50.0, factor=2.0, max_rps=10_000.0, refinements=2,
                             attempts=1)
    assert client.tried[:4] == [50.0, 100.0, 200.0, 400.0]
    middle = math.sqrt(200.0 * 400.0)  # 282.8: kept up, so the next bisects 282.8 .. 400
    assert client.tried[4:] == pytest.approx([middle, math.sqrt(middle * 400.0)])
    assert ceiling.ceiling_rps == pytest.approx(middle) and ceiling.limited
    assert [s.target_rate_rps for s in ceiling.steps] == client.tried and ceiling.output_tokens == 16


def test_a_client_that_never_falls_behind_reports_the_highest_rate_tried_and_no_limit() -> None:
    ceiling = search_ceiling(Client(limit_rps=math.inf), output_tokens=8, start_rps=10.0, factor=3.0, max_rps=100.0)
    assert [s.target_rate_rps for s in ceiling.steps] == [10.0, 30.0, 90.0]
    assert ceiling.ceiling_rps == 90.0 and not ceiling.limited


def test_a_client_behind_at_the_first_rate_has_no_ceiling_and_is_not_bisected() -> None:
    client = Client(limit_rps=1.0)
    ceiling = search_ceiling(client, output_tokens=8, start_rps=10.0, refinements=3, attempts=2)
    assert client.tried == [10.0, 10.0] and ceiling.ceiling_rps is None and ceiling.limited


def test_a_rate_fails_only_when_every_attempt_at_it_fell_behind() -> None:
    stalls = {40.0: 1, 80.0: 2}  # one stalled step at 40/s (a busy moment), two at 80/s

    def measure(rate: float) -> CeilingStep:
        stalled = stalls.get(rate, 0) > 0
        stalls[rate] = stalls.get(rate, 0) - 1
        return _step(rate, lag_s=1.0 if stalled else 0.0)

    ceiling = search_ceiling(measure, output_tokens=4, start_rps=20.0, refinements=0, attempts=2)
    assert [s.target_rate_rps for s in ceiling.steps] == [20.0, 40.0, 40.0, 80.0, 80.0]
    assert ceiling.ceiling_rps == 40.0


@pytest.mark.parametrize("step", [_step(100.0, ratio=0.9), _step(100.0, lag_s=0.2), _step(100.0, failed=1)],
                         ids=["sends behind the schedule", "a send too late", "a failed request"])
def test_a_step_is_not_kept_up_with_when_any_criterion_fails(step) -> None:
    criteria = CeilingCriteria(min_achieved_ratio=0.95, max_send_lag_s=0.05)
    assert not criteria.kept_up(step)
    assert criteria.kept_up(_step(100.0, ratio=0.96, lag_s=0.04))


def test_the_step_that_failed_is_in_the_steps_with_its_figures() -> None:
    ceiling = search_ceiling(lambda rate: _step(rate, lag_s=0.5 if rate > 40 else 0.0), output_tokens=4,
                             start_rps=20.0, refinements=0, attempts=1)
    assert ceiling.ceiling_rps == 40.0
    assert [(s.target_rate_rps, s.max_send_lag_s) for s in ceiling.steps] == [(20.0, 0.0), (40.0, 0.0), (80.0, 0.5)]
    assert ceiling.steps[-1].achieved_ratio == 1.0


@pytest.mark.parametrize(("settings", "names"), [
    ({"start_rps": 0.0}, "start_rps 0.0"),
    ({"factor": 1.0}, "factor 1.0"),
    ({"start_rps": 100.0, "max_rps": 10.0}, "max_rps 10.0"),
    ({"refinements": -1}, "refinements -1"),
    ({"attempts": 0}, "attempts 0"),
])
def test_a_search_that_cannot_run_is_refused_naming_the_setting(settings, names) -> None:
    with pytest.raises(CeilingError, match=names):
        search_ceiling(Client(limit_rps=100.0), output_tokens=4, **settings)


@pytest.mark.parametrize(("criteria", "names"), [
    ({"min_achieved_ratio": 1.5}, "min_achieved_ratio 1.5"),
    ({"max_send_lag_s": 0.0}, "max_send_lag_s 0.0"),
])
def test_criteria_out_of_range_are_refused(criteria, names) -> None:
    with pytest.raises(CeilingError, match=names):
        CeilingCriteria(**criteria)


def test_the_instant_server_s_stream_reads_as_one_token_per_chunk_and_its_usage() -> None:
    tokens, rest = completion_stream("m", request_id=7, output_tokens=5, prompt_tokens=3)
    body = b"".join(tokens) + rest
    # the chunked framing undone: every chunk is "<size>\r\n<event>\r\n"
    events = []
    while body:
        size, _, body = body.partition(b"\r\n")
        events.append(body[:int(size, 16)])
        body = body[int(size, 16) + 2:]
    assert events[-1] == b""  # the last chunk, empty, ends the body
    reading = StreamReading()
    for at, event in enumerate(events):
        reading.feed(event, float(at))
    assert reading.chunk_s == [0.0, 1.0, 2.0, 3.0, 4.0]
    record = reading.record(send=-1.0, completion=Completion(prompt_ids=(1, 2, 3), output_tokens=5))
    assert record.ok and record.output_tokens == 5 and record.prompt_tokens == 3
