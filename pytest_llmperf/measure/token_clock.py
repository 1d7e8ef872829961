"""Per-token timestamps of one generate: the one source of TTFT, inter-token latency and TPOT.

A backend calls ``clock.tick()`` each time a decoding step has produced its token for every row (or
``clock.tick(row)`` when its rows produce tokens independently, as llama.cpp's parallel sequences
do). Each timestamp is taken after the device's queued work is done, so it marks when the token
exists, not when its kernels were launched. The batch's k-th token is ready when every row has it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class TokenCountMismatch(AssertionError):
    """A backend reported a different number of tokens than it was asked to generate."""


@dataclass(frozen=True)
class TokenTimeline:
    """Seconds from the start of the generate call to each new token being ready (batch-wide), and to its end."""

    token_s: tuple[float, ...]
    end_s: float

    @property
    def ttft_s(self) -> float:
        return self.token_s[0]

    @property
    def itl_s(self) -> tuple[float, ...]:
        """The gaps between consecutive tokens (``new_tokens - 1`` of them)."""
        return tuple(b - a for a, b in zip(self.token_s, self.token_s[1:]))


class TokenClock:
    def __init__(self, sync: Callable[[], None], rows: int, new_tokens: int):
        self._sync = sync
        self._rows = rows
        self._new_tokens = new_tokens
        self._start: float | None = None
        self._end: float | None = None
        self._batch: list[float] = []
        self._per_row: list[list[float]] = [[] for _ in range(rows)]

    def start(self) -> None:
        """Mark the start of the request (after the device is idle)."""
        self._sync()
        self._start = time.perf_counter()

    def tick(self, row: int | None = None, *, at: float | None = None) -> None:
        """The next token of every row (``row=None``) or of one row is ready: now, or ``at`` (a
        ``time.perf_counter()`` reading taken when it was, in this process or another on this machine:
        on Linux it is the system-wide monotonic clock)."""
        if at is None:
            self._sync()
        now = time.perf_counter() if at is None else at
        if row is None:
            self._batch.append(now)
        else:
            self._per_row[row].append(now)

    def stop(self) -> None:
        """Mark the end of the request (once the device is idle)."""
        self._sync()
        self._end = time.perf_counter()

    def timeline(self, backend_id: str) -> TokenTimeline:
        """The timeline of the request's tokens. Raises when the backend reported the wrong count."""
        if self._start is None or self._end is None:
            raise RuntimeError("TokenClock.timeline() before start() and stop()")
        token_s = self._token_times(backend_id)
        return TokenTimeline(token_s=tuple(t - self._start for t in token_s), end_s=self._end - self._start)

    def _token_times(self, backend_id: str) -> list[float]:
        if self._batch and any(self._per_row):
            raise TokenCountMismatch(f"backend {backend_id} ticked both whole steps and single rows in one generate")
        if self._batch:
            counts = {len(self._batch)}
            times = self._batch
        else:
            counts = {len(r) for r in self._per_row}
            times = [max(ts) for ts in zip(*self._per_row)] if min(counts) else []
        if counts != {self._new_tokens}:
            raise TokenCountMismatch(
                f"backend {backend_id} reported {'/'.join(str(c) for c in sorted(counts))} token timestamps for a "
                f"generate of {self._new_tokens} new tokens: its generate must call clock.tick() once per new token "
                "(per step for the whole batch, or per row with clock.tick(row))"
            )
        return times
