"""Arrival schedules: the rate and burstiness asked for, the number of requests asked for, the same every run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_llmperf.serving.arrivals import ArrivalPlanError, ClosedLoop, OpenLoop, achieved_rate_rps


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 4.0])
def test_an_open_loop_sends_the_requests_asked_at_the_rate_asked(burstiness: float) -> None:
    plan = OpenLoop(rate_rps=20.0, requests=4001, burstiness=burstiness, seed=0)
    send = plan.send_s()
    gaps = np.diff(send)
    assert len(send) == 4001 and send[0] == 0.0 and bool(np.all(gaps >= 0))
    rate = achieved_rate_rps(send)
    # the mean of 4000 gaps of CV 1/sqrt(k) has a relative SE of 1/sqrt(4000 k): allow 4 of them
    assert rate is not None and rate == pytest.approx(20.0, rel=4 / math.sqrt(4000 * burstiness))
    # a gamma of shape k has CV 1/sqrt(k): Poisson gaps vary as much as their mean, burstier ones more
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.1)


def test_the_schedule_is_fixed_by_the_seed() -> None:
    assert OpenLoop(5.0, 50, seed=1).send_s() == OpenLoop(5.0, 50, seed=1).send_s()
    assert OpenLoop(5.0, 50, seed=1).send_s() != OpenLoop(5.0, 50, seed=2).send_s()


def test_an_infinite_rate_sends_everything_at_once() -> None:
    send = OpenLoop(rate_rps=math.inf, requests=7).send_s()
    assert send == (0.0,) * 7 and achieved_rate_rps(send) is None


def test_one_request_has_no_rate() -> None:
    assert OpenLoop(rate_rps=2.0, requests=1).send_s() == (0.0,)
    assert achieved_rate_rps((0.0,)) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate_rps": 0.0, "requests": 10}, r"request rate 0\.0: expected requests per second > 0"),
    ({"rate_rps": math.nan, "requests": 10}, r"request rate nan"),
    ({"rate_rps": 1.0, "requests": 0}, r"requests 0: expected a whole number of requests, at least 1"),
    ({"rate_rps": 1.0, "requests": 2.5}, r"requests 2\.5"),
    ({"rate_rps": 1.0, "requests": 10, "burstiness": 0.0}, r"burstiness 0\.0: expected a gamma shape > 0"),
])
def test_a_plan_that_cannot_be_followed_names_the_field_and_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ArrivalPlanError, match=message):
        OpenLoop(**kwargs)


def test_a_closed_loop_needs_at_least_one_request_in_flight() -> None:
    assert ClosedLoop(concurrency=4, requests=100).concurrency == 4
    with pytest.raises(ArrivalPlanError, match=r"concurrency 0: expected a whole number of requests in flight"):
        ClosedLoop(concurrency=0, requests=100)
