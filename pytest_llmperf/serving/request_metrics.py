"""Serving metrics over the requests of one load point, with vLLM ``bench serve``'s names and definitions.

Per request, from the client's clock: TTFT = first token's arrival - send; E2EL = last token's arrival -
send; TPOT = (E2EL - TTFT) / (output tokens - 1); ITL = every gap between token arrivals. Over a run:
mean, median, p90 and p99 of each (ITL pooled over all requests' gaps, as vLLM does); request, output and
total-token throughput over the run's duration; the error rate; goodput = requests that met every SLO per
second. The output token count is the server's ``usage``, not the number of streamed chunks (a chunk may
carry several tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: the per-request latencies an SLO may bound, in milliseconds
SLO_METRICS = ("ttft_ms", "tpot_ms", "e2el_ms")
PERCENTILES = (50, 90, 99)


class SloError(ValueError):
    """An SLO that cannot be used; the message names it and the accepted form."""


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it; times in seconds on one monotonic clock."""

    send_s: float
    #: when each streamed chunk with tokens arrived
    chunk_s: tuple[float, ...]
    #: output tokens by the server's count (``usage``)
    output_tokens: int
    prompt_tokens: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunk_s) and self.output_tokens >= 1

    @property
    def ttft_ms(self) -> float:
        return (self.chunk_s[0] - self.send_s) * 1000.0

    @property
    def e2el_ms(self) -> float:
        return (self.chunk_s[-1] - self.send_s) * 1000.0

    @property
    def tpot_ms(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2el_ms - self.ttft_ms) / (self.output_tokens - 1)

    @property
    def itl_ms(self) -> tuple[float, ...]:
        return tuple((b - a) * 1000.0 for a, b in zip(self.chunk_s, self.chunk_s[1:]))

    def value(self, metric: str) -> float | None:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2el_ms": self.e2el_ms}[metric]


@dataclass(frozen=True)
class Distribution:
    """mean, median, p90, p99 of one latency (None for all when nothing was measured)."""

    mean: float | None
    median: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls(None, None, None, None)
        import numpy as np

        p50, p90, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
        return cls(float(np.mean(values)), p50, p90, p99)


@dataclass(frozen=True)
class ServingSummary:
    requests: int
    completed: int
    duration_s: float
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2el_ms: Distribution
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    error_rate: float
    #: requests per second that met every SLO (None without SLOs)
    goodput: float | None

    @classmethod
    def of(cls, records: Sequence[RequestRecord], duration_s: float,
           slo: Mapping[str, float] | None = None) -> ServingSummary:
        if duration_s <= 0:
            raise ValueError(f"a run's duration must be positive, got {duration_s!r} s")
        done = [r for r in records if r.ok]
        output = sum(r.output_tokens for r in done)
        good = None if not slo else sum(1 for r in done if meets(r, slo)) / duration_s
        return cls(
            requests=len(records), completed=len(done), duration_s=duration_s,
            ttft_ms=Distribution.of([r.ttft_ms for r in done]),
            tpot_ms=Distribution.of([t for r in done if (t := r.tpot_ms) is not None]),
            itl_ms=Distribution.of([gap for r in done for gap in r.itl_ms]),
            e2el_ms=Distribution.of([r.e2el_ms for r in done]),
            request_throughput=len(done) / duration_s,
            output_throughput=output / duration_s,
            total_token_throughput=(output + sum(r.prompt_tokens for r in done)) / duration_s,
            error_rate=(len(records) - len(done)) / len(records) if records else 0.0,
            goodput=good,
        )


def meets(record: RequestRecord, slo: Mapping[str, float]) -> bool:
    """Whether a completed request met every SLO (a TPOT SLO is met by a one-token request)."""
    for metric, limit in slo.items():
        value = record.value(metric)
        if value is not None and value > limit:
            return False
    return True


def parse_slo(text: str) -> dict[str, float]:
    """``"ttft_ms=200 tpot_ms=50"`` -> ``{"ttft_ms": 200.0, "tpot_ms": 50.0}``."""
    slo: dict[str, float] = {}
    for item in text.split():
        name, sep, raw = item.partition("=")
        if not sep or name not in SLO_METRICS:
            raise SloError(f"SLO {item!r}: expected <metric>=<milliseconds> with a metric among "
                           f"{', '.join(SLO_METRICS)}, e.g. 'ttft_ms=200 tpot_ms=50'")
        try:
            limit = float(raw)
        except ValueError:
            limit = math.nan
        if not math.isfinite(limit) or limit <= 0:
            raise SloError(f"SLO {item!r}: the limit must be a positive number of milliseconds")
        if name in slo:
            raise SloError(f"SLO {item!r}: {name} is given twice")
        slo[name] = limit
    return slo
