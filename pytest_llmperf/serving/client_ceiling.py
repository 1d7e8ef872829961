"""The load generator's own ceiling: the request rate at which the client, not the server, is the limit.

A measuring instrument for the client. The instant server (``python -m pytest_llmperf.serving.client_ceiling
--port P``, a process of its own so that its work never holds the client's interpreter) answers
``/v1/completions`` at once: the asked number of SSE token chunks, each its own HTTP chunk and shaped like
vLLM's, then the usage and ``[DONE]``. With ``--token-gap-ms`` it streams instead, one chunk per request
per gap as a batched engine does, so that the client reads about one chunk per wake-up as it does against
a real server. Every request then costs the server next to nothing, and what limits the rate is the
client: its event loop falls behind the schedule.

The search raises an open loop's rate geometrically and then bisects between the last step that passed
and the first that failed. A step fails when its sends fell behind the schedule (achieved / target rate
below ``min_achieved_ratio``), a send went out more than ``max_send_lag_s`` late, or a request failed; a
rate counts as failed only when ``attempts`` steps in a row at it failed, since a busy machine can stall
any one step, while a step that kept up did. The first run of a process pays one-off costs (imports,
first connections), so a short warm-up run goes before the search.
Each step also records the client's and the server's CPU time per second of wall time: a client near one
second per second is saturated, and a server near it would make the ceiling the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pytest_llmperf.launch.distributed import free_port
from pytest_llmperf.serving.server_process import ServerCommand, ServerProcess

#: the model name the instant server reports
INSTANT_MODEL = "instant"


class CeilingError(ValueError):
    """A search that cannot be run; the message names the setting, the value and what is allowed."""


@dataclass(frozen=True)
class CeilingCriteria:
    """When a step counts as kept up with."""

    #: achieved send rate / the schedule's rate, at least
    min_achieved_ratio: float = 0.95
    #: the worst lateness of a send against its schedule, at most
    max_send_lag_s: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.min_achieved_ratio <= 1:
            raise CeilingError(f"min_achieved_ratio {self.min_achieved_ratio!r}: expected a fraction in (0, 1], "
                               "e.g. 0.95")
        if not (math.isfinite(self.max_send_lag_s) and self.max_send_lag_s > 0):
            raise CeilingError(f"max_send_lag_s {self.max_send_lag_s!r}: expected a positive number of seconds, "
                               "e.g. 0.05")

    def kept_up(self, step: CeilingStep) -> bool:
        return (step.failed == 0 and step.achieved_ratio >= self.min_achieved_ratio
                and step.max_send_lag_s <= self.max_send_lag_s)


@dataclass(frozen=True)
class CeilingStep:
    """One open-loop run at one rate against the instant server."""

    #: the planned schedule's own rate ((sends - 1) / its span), not the nominal rate it was drawn at
    target_rate_rps: float
    achieved_rate_rps: float
    max_send_lag_s: float
    requests: int
    failed: int
    #: the client's end-to-end latency per request: against an instant server, the client's own cost
    median_e2el_ms: float | None = None
    #: CPU seconds per wall second over the run (None when not measured)
    client_cpu_share: float | None = None
    server_cpu_share: float | None = None

    @property
    def achieved_ratio(self) -> float:
        return self.achieved_rate_rps / self.target_rate_rps


@dataclass(frozen=True)
class ClientCeiling:
    output_tokens: int
    #: the highest rate at which the client kept up; None when it did not at the first rate tried
    ceiling_rps: float | None
    #: every step in the order run
    steps: tuple[CeilingStep, ...]
    criteria: CeilingCriteria
    #: False when the search stopped at ``max_rps`` with every step kept up: the ceiling lies higher
    limited: bool


def search_ceiling(measure: Callable[[float], CeilingStep], *, output_tokens: int, start_rps: float = 20.0,
                   factor: float = 2.0, max_rps: float = 5000.0, refinements: int = 2, attempts: int = 2,
                   criteria: CeilingCriteria | None = None) -> ClientCeiling:
    """Run ``measure`` at ``start_rps``, ``start_rps * factor``, ... up to ``max_rps`` until a rate fails
    (``attempts`` steps in a row not kept up with), then bisect (geometric means) ``refinements`` times
    between the last kept-up rate and the failed one."""
    criteria = criteria or CeilingCriteria()
    if not (math.isfinite(start_rps) and start_rps > 0):
        raise CeilingError(f"start_rps {start_rps!r}: expected a positive request rate")
    if not (math.isfinite(factor) and factor > 1):
        raise CeilingError(f"factor {factor!r}: expected a number above 1 (each step multiplies the rate by it)")
    if not max_rps >= start_rps:
        raise CeilingError(f"max_rps {max_rps!r}: expected at least start_rps ({start_rps!r})")
    if refinements < 0:
        raise CeilingError(f"refinements {refinements!r}: expected 0 or more bisection steps")
    if attempts < 1:
        raise CeilingError(f"attempts {attempts!r}: expected 1 or more steps per rate before it counts as failed")
    steps: list[CeilingStep] = []

    def kept_up_at(rate: float) -> bool:
        for _ in range(attempts):
            steps.append(measure(rate))
            if criteria.kept_up(steps[-1]):
                return True
        return False

    kept: float | None = None
    failed: float | None = None
    rate = start_rps
    while rate <= max_rps * (1 + 1e-9):
        if not kept_up_at(rate):
            failed = rate
            break
        kept = rate
        rate *= factor
    if failed is not None and kept is not None:
        for _ in range(refinements):
            middle = math.sqrt(kept * failed)
            if kept_up_at(middle):
                kept = middle
            else:
                failed = middle
    return ClientCeiling(output_tokens=output_tokens, ceiling_rps=kept, steps=tuple(steps), criteria=criteria,
                         limited=failed is not None)


def measure_step(url: str, rate_rps: float, *, output_tokens: int, prompt_tokens: int = 32, seconds: float = 2.0,
                 min_requests: int = 40, seed: int = 0) -> CeilingStep:
    """An open loop at ``rate_rps`` for about ``seconds`` (at least ``min_requests``) against ``url``."""
    import httpx

    from pytest_llmperf.serving.arrivals import OpenLoop, achieved_rate_rps
    from pytest_llmperf.serving.load_generator import Completion, run_load
    from pytest_llmperf.serving.request_metrics import ServingSummary

    requests = max(min_requests, math.ceil(rate_rps * seconds))
    plan = OpenLoop(rate_rps=rate_rps, requests=requests, seed=seed)
    completion = Completion(prompt_ids=tuple(range(1, prompt_tokens + 1)), output_tokens=output_tokens)

    def server_cpu_s() -> float:
        return float(httpx.get(url + "/stats", timeout=10.0).json()["cpu_s"])

    server_before, client_before, wall_before = server_cpu_s(), time.process_time(), time.perf_counter()
    run = run_load(url, INSTANT_MODEL, [completion] * requests, plan)
    wall = time.perf_counter() - wall_before
    client_cpu, server_cpu = time.process_time() - client_before, server_cpu_s() - server_before
    target = achieved_rate_rps(plan.send_s())
    summary = ServingSummary.of(run.records, run.duration_s) if run.duration_s > 0 else None
    return CeilingStep(
        target_rate_rps=target if target is not None else rate_rps,
        achieved_rate_rps=run.achieved_rate_rps or 0.0, max_send_lag_s=run.max_send_lag_s, requests=requests,
        failed=requests - (summary.completed if summary else 0),
        median_e2el_ms=summary.e2el_ms.median if summary else None,
        client_cpu_share=client_cpu / wall, server_cpu_share=server_cpu / wall,
    )


def client_ceiling(output_tokens: int, *, token_gap_ms: float = 0.0, start_rps: float = 20.0, factor: float = 2.0,
                   max_rps: float = 5000.0, refinements: int = 2, attempts: int = 2, seconds: float = 2.0,
                   criteria: CeilingCriteria | None = None) -> ClientCeiling:
    """Start the instant server, find the client's ceiling at ``output_tokens`` per request, stop the server."""
    with instant_server(token_gap_ms=token_gap_ms) as url:
        measure_step(url, start_rps, output_tokens=output_tokens, seconds=0.0, min_requests=20)  # the warm-up
        return search_ceiling(lambda rate: measure_step(url, rate, output_tokens=output_tokens, seconds=seconds),
                              output_tokens=output_tokens, start_rps=start_rps, factor=factor, max_rps=max_rps,
                              refinements=refinements, attempts=attempts, criteria=criteria)


def instant_server_command(port: int, token_gap_ms: float = 0.0) -> ServerCommand:
    argv = (sys.executable, "-m", "pytest_llmperf.serving.client_ceiling", "--port", str(port),
            "--token-gap-ms", repr(float(token_gap_ms)))
    return ServerCommand(argv=argv, port=port, ready_path="/health", name="the instant server")


@contextmanager
def instant_server(*, token_gap_ms: float = 0.0) -> Iterator[str]:
    """The instant server running in a subprocess on 127.0.0.1 for the ``with`` block; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="llmperf-instant-") as scratch:
        server = ServerProcess.start(instant_server_command(free_port(), token_gap_ms), Path(scratch) / "server.log",
                                     timeout_s=60)
        try:
            yield server.url
        finally:
            server.stop()


# ---- the server process ---------------------------------------------------------------------------------

STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk holding one SSE event."""
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def completion_stream(model: str, request_id: int, output_tokens: int, prompt_tokens: int) -> tuple[list[bytes], bytes]:
    """One streamed completion's chunked body: a chunk per token, then the rest (usage, ``[DONE]``, the end)."""
    head = (f'{{"id":"cmpl-{request_id}","object":"text_completion","created":{int(time.time())},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,"text":').encode()
    tokens = [_chunk(head + b'" t%d","logprobs":null,"finish_reason":%s,"stop_reason":null}]}'
                     % (i % 1000, b'"length"' if i == output_tokens - 1 else b"null"))
              for i in range(output_tokens)]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
             "total_tokens": prompt_tokens + output_tokens}
    rest = (_chunk(b'{"id":"cmpl-%d","object":"text_completion","choices":[],"usage":%s}'
                   % (request_id, json.dumps(usage, separators=(",", ":")).encode()))
            + _chunk(b"[DONE]") + b"0\r\n\r\n")
    return tokens, rest


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body)


@dataclass
class _Stream:
    writer: asyncio.StreamWriter
    tokens: list[bytes]
    rest: bytes
    done: asyncio.Future[None]
    sent: int = 0


class _Ticker:
    """Every gap, the next token chunk of every open stream, all together, as a batched engine's steps send."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.streams: list[_Stream] = []
        self.busy = asyncio.Event()

    def add(self, writer: asyncio.StreamWriter, tokens: list[bytes], rest: bytes) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.streams.append(_Stream(writer, tokens, rest, done))
        self.busy.set()
        return done

    async def run(self) -> None:
        while True:
            if not self.streams:
                self.busy.clear()
                await self.busy.wait()
            await asyncio.sleep(self.gap_s)
            still = []
            for stream in self.streams:
                if stream.writer.is_closing():
                    stream.done.set_result(None)
                    continue
                stream.writer.write(stream.tokens[stream.sent])
                stream.sent += 1
                if stream.sent == len(stream.tokens):
                    stream.writer.write(stream.rest)
                    stream.done.set_result(None)
                else:
                    still.append(stream)
            self.streams = still


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticker: _Ticker | None,
                  counter: list[int]) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {name.strip().lower(): value.strip()
                       for name, _, value in (line.partition(":") for line in lines if line)}
            if "chunked" in headers.get("transfer-encoding", ""):
                writer.write(_response("411 Length Required", b'{"error":"send a content-length"}'))
                break
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path == "/health":
                writer.write(_response("200 OK", b"ok", "text/plain"))
            elif method == "GET" and path == "/stats":
                writer.write(_response("200 OK", json.dumps({"cpu_s": time.process_time()}).encode()))
            elif method == "POST" and path == "/v1/completions":
                asked = json.loads(body)
                max_tokens, prompt = asked.get("max_tokens"), asked.get("prompt")
                if not isinstance(max_tokens, int) or max_tokens < 1:
                    writer.write(_response("400 Bad Request", b'{"error":"max_tokens: expected a whole number '
                                                              b'of tokens, at least 1"}'))
                else:
                    counter[0] += 1
                    prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
                    tokens, rest = completion_stream(str(asked.get("model", INSTANT_MODEL)), counter[0], max_tokens,
                                                     prompt_tokens)
                    writer.write(STREAM_HEAD)
                    if ticker is None:
                        writer.write(b"".join(tokens) + rest)
                    else:
                        await ticker.add(writer, tokens, rest)
            else:
                writer.write(_response("404 Not Found", b'{"error":"the instant server serves GET /health, '
                                                        b'GET /stats and POST /v1/completions"}'))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int, token_gap_ms: float = 0.0) -> None:
    ticker = _Ticker(token_gap_ms / 1000.0) if token_gap_ms > 0 else None
    counter = [0]
    server = await asyncio.start_server(lambda r, w: _handle(r, w, ticker, counter), "127.0.0.1", port,
                                        backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticking = asyncio.create_task(ticker.run()) if ticker is not None else None
    async with server:
        await stop.wait()
    if ticking is not None:
        ticking.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the instant server: " + __doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-gap-ms", type=float, default=0.0,
                        help="stream a chunk per request every this many milliseconds (0: all at once)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.token_gap_ms) and args.token_gap_ms >= 0):
        parser.error(f"--token-gap-ms {args.token_gap_ms!r}: expected 0 (all at once) or a positive gap")
    asyncio.run(serve(args.port, args.token_gap_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
