"""When requests are sent: an open loop at a request rate, or a closed loop at a fixed concurrency.

An open loop sends request ``i`` at ``send_s[i]`` whatever the server is doing, as clients in the wild do:
the gaps between sends are gamma-distributed with mean ``1 / rate`` and shape ``burstiness`` (1 is a
Poisson process; below 1 requests bunch up, above 1 they come more evenly), as vLLM's ``bench serve``
draws them. The schedule is fixed before the first send, from a seed, so the same plan sends the same
requests at the same offsets in every run, and what was sent can be checked against what was asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ArrivalPlanError(ValueError):
    """A plan that cannot be followed; the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class OpenLoop:
    """``requests`` requests at ``rate_rps`` per second on average (``math.inf``: all at once)."""

    rate_rps: float
    requests: int
    burstiness: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_requests(self.requests)
        if math.isnan(self.rate_rps) or self.rate_rps <= 0:
            raise ArrivalPlanError(f"request rate {self.rate_rps!r}: expected requests per second > 0 "
                                   "(inf sends every request at once)")
        if not math.isfinite(self.burstiness) or self.burstiness <= 0:
            raise ArrivalPlanError(f"burstiness {self.burstiness!r}: expected a gamma shape > 0 (1 is a Poisson "
                                   "process, below 1 burstier, above 1 more even)")

    def send_s(self) -> tuple[float, ...]:
        """Seconds from the start to each request's send; the first request goes at 0."""
        if math.isinf(self.rate_rps):
            return (0.0,) * self.requests
        import numpy as np  # here, not at import: the plugin module loads in every pytest session

        rng = np.random.default_rng([self.seed, self.requests])
        gaps = rng.gamma(shape=self.burstiness, scale=1.0 / (self.rate_rps * self.burstiness), size=self.requests - 1)
        return (0.0, *(float(t) for t in np.cumsum(gaps)))


@dataclass(frozen=True)
class ClosedLoop:
    """``requests`` requests, ``concurrency`` in flight at all times: each completion sends the next."""

    concurrency: int
    requests: int

    def __post_init__(self) -> None:
        _check_requests(self.requests)
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ArrivalPlanError(f"concurrency {self.concurrency!r}: expected a whole number of requests in "
                                   "flight, at least 1")


def achieved_rate_rps(send_s: tuple[float, ...]) -> float | None:
    """Requests per second actually sent: (sends - 1) / the span from the first send to the last.
    None for fewer than two sends, or sends all at one instant."""
    if len(send_s) < 2 or send_s[-1] <= send_s[0]:
        return None
    return (len(send_s) - 1) / (send_s[-1] - send_s[0])


def _check_requests(requests: int) -> None:
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise ArrivalPlanError(f"requests {requests!r}: expected a whole number of requests, at least 1")
