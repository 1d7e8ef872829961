"""A load generator that does what it says: every request sent on its schedule, counted, and checked.

Streaming completions over HTTP (OpenAI ``/v1/completions``, which vLLM's and llama.cpp's servers both
serve), token-id prompts, exactly the asked output length (``max_tokens`` = ``min_tokens`` with
``ignore_eos``), kept-alive connections. In an open loop each request has its own task that sleeps
until its scheduled send, so no request waits for another to finish; in a closed loop ``concurrency``
workers each send the next request when theirs completes. The result says what was sent against what
was asked, and how late the sends were against the schedule: the generator's own accuracy.

What is timed, per request (the definitions of vLLM's ``bench serve``): the clock starts just before the
request is handed to the connection (connecting, when no idle connection is open, counts); a streamed
event is timed when the read that brought it returns. An event counts as a token's arrival when one of
its choices has text, or has no ``finish_reason`` yet (a token whose text is empty, such as a special
token); an event with neither is a server's closing trailer (llama.cpp sends its ``finish_reason`` and
usage that way) and carries no token. vLLM's client counts every event with a choice, trailers too.

The client is kept cheap, since what it spends runs on the client's clock inside TTFT and ITL and on
the CPU cores a local server shares (``benchmarks/client_ceiling.py`` measures it): HTTP/1.1 is spoken
with ``h11`` (httpx's own protocol layer) over asyncio streams, which costs a fraction of an httpx
request (httpcore polls every pooled connection per request, and retries a failed ``import sniffio``
on every lock it sets up when sniffio is not installed), and every response is read to its end so its
connection is reused. The garbage collector's heap is frozen for the run (as vLLM's benchmark does): a
full collection of a test process's heap (torch loaded) would otherwise stall the event loop for tens to
hundreds of milliseconds in the middle of streams.
"""

from __future__ import annotations

import asyncio
import gc
import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11

from pytest_llmperf.serving.arrivals import ClosedLoop, OpenLoop, achieved_rate_rps
from pytest_llmperf.serving.request_metrics import RequestRecord

#: bytes asked of a socket per read
READ_BYTES = 1 << 16
#: the most of an error response's body a record quotes
ERROR_CHARS = 300


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
    #: TCP connections opened (a response read to its end leaves its connection for the next request)
    connections_opened: int = 0

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
    """Send ``completions`` to the server at ``url`` (``http://host:port``) as ``plan`` says, and wait for all.
    ``timeout_s`` bounds each wait on the server (to connect, or for the next bytes of a response)."""
    if plan.requests != len(completions):
        raise ValueError(f"the plan sends {plan.requests} requests but {len(completions)} were given")
    endpoint = Endpoint.of(url)
    frozen = gc.isenabled() and gc.get_freeze_count() == 0
    if frozen:
        gc.freeze()
    try:
        return asyncio.run(_run(endpoint, model, completions, plan, timeout_s))
    finally:
        if frozen:
            gc.unfreeze()


@dataclass(frozen=True)
class Endpoint:
    """Where completions go: ``http(s)://host[:port][/prefix]`` + ``/v1/completions``."""

    host: str
    port: int
    tls: bool
    path: str

    @classmethod
    def of(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL {url!r}: expected http://host:port (or https://), e.g. "
                             "http://127.0.0.1:8000")
        tls = parts.scheme == "https"
        return cls(host=parts.hostname, port=parts.port or (443 if tls else 80), tls=tls,
                   path=parts.path.rstrip("/") + "/v1/completions")

    @property
    def host_header(self) -> str:
        return self.host if self.port == (443 if self.tls else 80) else f"{self.host}:{self.port}"


class _Flight:
    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


async def _run(endpoint: Endpoint, model: str, completions: Sequence[Completion], plan: OpenLoop | ClosedLoop,
               timeout_s: float) -> LoadRun:
    flight = _Flight()
    sent: list[float | None] = [None] * len(completions)
    records: list[RequestRecord | None] = [None] * len(completions)
    pool = _Pool(endpoint, timeout_s)
    try:
        start = time.perf_counter()

        async def one(i: int) -> None:
            with flight:
                sent[i] = time.perf_counter() - start
                body = json.dumps(request_body(model, completions[i])).encode()
                records[i] = await _stream(pool, body, completions[i])

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
    finally:
        pool.close()
    done = [r for r in records if r is not None]
    first = min((s for s in sent if s is not None), default=0.0)
    return LoadRun(records=tuple(done), asked=len(completions), sent_s=tuple(s for s in sent if s is not None),
                   duration_s=end - first, target_rate_rps=plan.rate_rps if isinstance(plan, OpenLoop) else None,
                   max_send_lag_s=lag, max_in_flight=flight.most, connections_opened=pool.opened)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT)

    @property
    def open(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()


class _Pool:
    """Kept-alive connections to one endpoint: an idle one when there is one, else a new one."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.idle: list[_Connection] = []
        self.opened = 0
        self._tls = ssl.create_default_context() if endpoint.tls else None

    async def take(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection (a new one when ``fresh``), and whether it served a request before."""
        while self.idle and not fresh:
            connection = self.idle.pop()
            if connection.open:
                return connection, True
            connection.writer.close()
        async with asyncio.timeout(self.timeout_s):
            reader, writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port, ssl=self._tls)
        self.opened += 1
        return _Connection(reader, writer), False

    def give_back(self, connection: _Connection) -> None:
        http = connection.http
        if http.our_state is h11.DONE and http.their_state is h11.DONE and connection.open:
            http.start_next_cycle()
            self.idle.append(connection)
        else:
            connection.writer.close()

    def close(self) -> None:
        for connection in self.idle:
            connection.writer.close()
        self.idle.clear()


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed: it ended before any byte of the response."""


async def _stream(pool: _Pool, body: bytes, completion: Completion) -> RequestRecord:
    """One streamed completion; a failure is a record with its error, never an exception."""
    send = time.perf_counter()
    try:
        connection, reused = await pool.take()
        try:
            reading = await _exchange(connection, pool, body, reused)
        except _StaleConnection:
            connection, _ = await pool.take(fresh=True)
            reading = await _exchange(connection, pool, body, False)
    except TimeoutError:
        return _failed(send, completion, f"the server sent nothing for {pool.timeout_s:g} s (timeout_s)")
    except Exception as e:  # a refused or broken connection, a timeout, a bad stream: this request's result
        return _failed(send, completion, f"{type(e).__name__}: {e}"[:ERROR_CHARS])
    if reading.error is not None:
        return _failed(send, completion, reading.error)
    return reading.record(send, completion)


async def _exchange(connection: _Connection, pool: _Pool, body: bytes, reused: bool) -> StreamReading:
    """Send one request on ``connection`` and read its whole response (so the connection can be reused)."""
    http, reader = connection.http, connection.reader
    endpoint = pool.endpoint
    reading = StreamReading()
    error_body = b""
    status = 0
    try:
        async with asyncio.timeout(pool.timeout_s) as deadline:
            connection.writer.write(
                http.send(h11.Request(method="POST", target=endpoint.path,
                                      headers=[("host", endpoint.host_header), ("content-type", "application/json"),
                                               ("content-length", str(len(body)))]))
                + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))
            now = 0.0
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(READ_BYTES)
                    now = time.perf_counter()
                    if not data and status == 0 and reused:
                        raise _StaleConnection()
                    http.receive_data(data)
                    deadline.reschedule(asyncio.get_running_loop().time() + pool.timeout_s)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    if status == 200:
                        reading.feed(event.data, now)
                    elif len(error_body) < ERROR_CHARS:
                        error_body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("the server closed the connection before the response ended")
    except ConnectionError:
        if status == 0 and reused:
            connection.writer.close()
            raise _StaleConnection() from None
        connection.writer.close()
        raise
    except BaseException:
        connection.writer.close()
        raise
    pool.give_back(connection)
    if status != 200:
        reading.error = f"HTTP {status}: {error_body.decode(errors='replace')}"[:ERROR_CHARS]
    return reading


@dataclass
class StreamReading:
    """What a streamed completion's SSE events said so far: token arrival times, usage, an error."""

    chunk_s: list[float] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    _partial: bytes | bytearray = b""

    def feed(self, data: bytes | bytearray, now: float) -> None:
        """Bytes of the event stream that arrived at ``now``; complete ``data:`` lines are read at once."""
        if b"\n" not in data:
            self._partial += data
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            event = json.loads(payload)
            if not isinstance(event, dict):
                continue
            if event.get("error"):
                self.error = f"the server streamed an error: {event['error']}"[:ERROR_CHARS]
            if event.get("usage"):
                self.usage = event["usage"]
            if any(choice.get("text") or choice.get("finish_reason") is None
                   for choice in event.get("choices") or () if isinstance(choice, dict)):
                self.chunk_s.append(now)

    def record(self, send: float, completion: Completion) -> RequestRecord:
        tokens = int(self.usage.get("completion_tokens", -1))
        error = self.error
        if error is None and tokens != completion.output_tokens:
            error = (f"the server generated {tokens if tokens >= 0 else 'an unreported number of'} tokens, "
                     f"{completion.output_tokens} were asked")
        elif error is None and not self.chunk_s:
            error = "the server streamed no tokens"
        return RequestRecord(send_s=send, chunk_s=tuple(self.chunk_s), output_tokens=max(tokens, 0),
                             prompt_tokens=int(self.usage.get("prompt_tokens", len(completion.prompt_ids))),
                             error=error)


def _failed(send: float, completion: Completion, error: str) -> RequestRecord:
    return RequestRecord(send_s=send, chunk_s=(), output_tokens=0, prompt_tokens=len(completion.prompt_ids),
                         error=error)
