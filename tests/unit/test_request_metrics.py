"""Serving metrics: vLLM's definitions on hand-made request records whose answers are known."""

from __future__ import annotations

import pytest

from pytest_llmperf.serving.request_metrics import RequestRecord, ServingSummary, SloError, meets, parse_slo


def _request(send: float, ttft: float, gaps: list[float], tokens: int | None = None,
             error: str | None = None) -> RequestRecord:
    chunks = [send + ttft]
    for gap in gaps:
        chunks.append(chunks[-1] + gap)
    return RequestRecord(send_s=send, chunk_s=tuple(chunks), output_tokens=tokens or len(chunks), prompt_tokens=10,
                         error=error)


def test_one_request_s_latencies() -> None:
    r = _request(1.0, 0.2, [0.05, 0.05, 0.1])
    assert r.ttft_ms == pytest.approx(200) and r.e2el_ms == pytest.approx(400)
    assert r.tpot_ms == pytest.approx(200 / 3) and r.itl_ms == pytest.approx((50, 50, 100))


def test_tpot_counts_the_server_s_tokens_not_the_chunks() -> None:
    r = _request(0.0, 0.1, [0.1], tokens=5)  # two chunks carried five tokens
    assert r.tpot_ms == pytest.approx(100 / 4)


def test_the_summary_of_a_run() -> None:
    records = [_request(0.0, 0.1, [0.02] * 9), _request(0.5, 0.3, [0.04] * 9),
               _request(1.0, 0.0, [], error="HTTP 500")]
    s = ServingSummary.of(records, duration_s=2.0, slo={"ttft_ms": 200})
    assert (s.requests, s.completed, s.error_rate) == (3, 2, pytest.approx(1 / 3))
    assert s.ttft_ms.mean == pytest.approx(200) and s.ttft_ms.median == pytest.approx(200)
    assert s.itl_ms.median == pytest.approx(30) and s.itl_ms.p99 == pytest.approx(40)  # 18 gaps pooled
    assert s.request_throughput == pytest.approx(1.0) and s.output_throughput == pytest.approx(10.0)
    assert s.total_token_throughput == pytest.approx(20.0 / 2.0 + 10.0)
    assert s.goodput == pytest.approx(0.5)  # one of the two met the 200 ms TTFT SLO


def test_nothing_completed_leaves_latencies_unmeasured() -> None:
    s = ServingSummary.of([_request(0.0, 0.0, [], error="timeout")], duration_s=1.0)
    assert s.ttft_ms.median is None and s.completed == 0 and s.error_rate == 1.0 and s.goodput is None


def test_slos_parse_and_judge() -> None:
    slo = parse_slo("ttft_ms=200 tpot_ms=50")
    assert slo == {"ttft_ms": 200.0, "tpot_ms": 50.0}
    assert meets(_request(0.0, 0.15, [0.04]), slo) and not meets(_request(0.0, 0.15, [0.06]), slo)
    assert meets(_request(0.0, 0.15, []), {"tpot_ms": 1})  # one token has no TPOT to miss


@pytest.mark.parametrize(("text", "message"), [
    ("ttft=200", r"SLO 'ttft=200': expected <metric>=<milliseconds> with a metric among ttft_ms, tpot_ms, e2el_ms"),
    ("ttft_ms=-1", r"the limit must be a positive number of milliseconds"),
    ("ttft_ms=fast", r"the limit must be a positive number"),
    ("ttft_ms=1 ttft_ms=2", r"ttft_ms is given twice"),
])
def test_a_bad_slo_names_itself_and_the_form(text: str, message: str) -> None:
    with pytest.raises(SloError, match=message):
        parse_slo(text)
