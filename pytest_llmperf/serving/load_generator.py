"""A load generator that does what it says: every request sent on its schedule, counted, and checked.

Streaming completions over HTTP (OpenAI ``/v1/completions``, which vLLM's and llama.cpp's servers both
serve), token-id prompts, exactly the asked output length (``max_tokens`` = ``min_tokens`` with
``ignore_eos``), one async connection pool. In an open loop each request has its own task that sleeps
until its scheduled send, so no request waits for another to finish; in a closed loop ``concurrency``
workers each send the next request when theirs completes. The result says what was sent against what
was asked, and how late the sends were against the schedule: the generator's own accuracy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.serving.arrivals import ClosedLoop, OpenLoop, achieved_rate_rps
from pytest_llmperf.serving.request_metrics import RequestRecord


@dataclass(frozen=True)
class Completion:
    """One request: its prompt as token ids and the exact number of tokens to generate."""

    prompt_ids: tuple[int, ...]
    output_tokens: int


@dataclass(frozen=True)
class LoadRun:
    records: tuple[RequestRecord, ...]
    asked: int
    #: seconds from the run's start to each request's actual send, in request order
    sent_s: tuple[float, ...]
    #: from the first send to the last response
    duration_s: float
    #: the plan's rate (None for a closed loop)
    target_rate_rps: float | None
    #: the schedule's worst lateness: how far behind its planned time a send went out
    max_send_lag_s: float
    #: the most requests that were in flight at once
    max_in_flight: int

    @property
    def sent(self) -> int:
        return len(self.sent_s)

    @property
    def achieved_rate_rps(self) -> float | None:
        return achieved_rate_rps(tuple(sorted(self.sent_s)))


def request_body(model: str, completion: Completion) -> dict[str, Any]:
    n = completion.output_tokens
    return {"model": model, "prompt": list(completion.prompt_ids), "max_tokens": n, "min_tokens": n,
            "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}


def run_load(url: str, model: str, completions: Sequence[Completion], plan: OpenLoop | ClosedLoop, *,
             timeout_s: float = 600.0) -> LoadRun:
    """Send ``completions`` to the server at ``url`` (``http://host:port``) as ``plan`` says, and wait for all."""
    if plan.requests != len(completions):
        raise ValueError(f"the plan sends {plan.requests} requests but {len(completions)} were given")
    return asyncio.run(_run(url.rstrip("/") + "/v1/completions", model, completions, plan, timeout_s))


class _Flight:
    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


async def _run(endpoint: str, model: str, completions: Sequence[Completion], plan: OpenLoop | ClosedLoop,
               timeout_s: float) -> LoadRun:
    import httpx

    flight = _Flight()
    sent: list[float | None] = [None] * len(completions)
    records: list[RequestRecord | None] = [None] * len(completions)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            with flight:
                sent[i] = time.perf_counter() - start
                records[i] = await _stream(client, endpoint, request_body(model, completions[i]), completions[i])

        lag = 0.0
        if isinstance(plan, OpenLoop):
            tasks = []
            for i, at in enumerate(plan.send_s()):
                delay = start + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lag = max(lag, time.perf_counter() - start - at)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        else:
            queue = iter(range(len(completions)))

            async def worker() -> None:
                for i in queue:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
        end = time.perf_counter() - start
    done = [r for r in records if r is not None]
    first = min((s for s in sent if s is not None), default=0.0)
    return LoadRun(records=tuple(done), asked=len(completions), sent_s=tuple(s for s in sent if s is not None),
                   duration_s=end - first, target_rate_rps=plan.rate_rps if isinstance(plan, OpenLoop) else None,
                   max_send_lag_s=lag, max_in_flight=flight.most)


async def _stream(client: Any, endpoint: str, body: dict[str, Any], completion: Completion) -> RequestRecord:
    """One streamed completion; a failure is a record with its error, never an exception."""
    send = time.perf_counter()
    chunks: list[float] = []
    usage: dict[str, Any] = {}
    error = None
    try:
        async with client.stream("POST", endpoint, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return _failed(send, completion, f"HTTP {response.status_code}: {text[:300]}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if data.get("usage"):
                    usage = data["usage"]
                if any(c.get("text") for c in data.get("choices") or ()):
                    chunks.append(time.perf_counter())
    except Exception as e:  # a broken connection, a timeout, a bad stream: this request's result
        return _failed(send, completion, f"{type(e).__name__}: {e}"[:300])
    tokens = int(usage.get("completion_tokens", -1))
    if tokens != completion.output_tokens:
        error = (f"the server generated {tokens if tokens >= 0 else 'an unreported number of'} tokens, "
                 f"{completion.output_tokens} were asked")
    elif not chunks:
        error = "the server streamed no tokens"
    return RequestRecord(send_s=send, chunk_s=tuple(chunks), output_tokens=max(tokens, 0),
                         prompt_tokens=int(usage.get("prompt_tokens", len(completion.prompt_ids))), error=error)


def _failed(send: float, completion: Completion, error: str) -> RequestRecord:
    return RequestRecord(send_s=send, chunk_s=(), output_tokens=0, prompt_tokens=len(completion.prompt_ids),
                         error=error)
