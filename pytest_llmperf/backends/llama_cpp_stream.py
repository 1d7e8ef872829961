"""Token ids and timestamps of each row from llama.cpp's streamed completion chunks.

llama.cpp's server streams one chunk per new token of a row (``choices[0].index`` is the row), with
the token's id in ``logprobs`` (asked for with ``n_probs``) and, with ``timings_per_token``, the
count of tokens the row has produced so far (``timings.predicted_n``). A token whose text ends in
the middle of a UTF-8 character is held back and released with the next one in a single chunk,
which carries only the last token's id: its count still tells how many tokens became available.
Held-back tokens are ticked when they are released (that is when a client sees them); their ids are
not streamed, so they are recorded as ``UNKNOWN_ID``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: the id recorded for a token llama.cpp did not stream (held back mid UTF-8 character)
UNKNOWN_ID = -1


class EngineError(RuntimeError):
    """llama.cpp's server answered a request with an error."""


def raise_on_error(answer: Any, what: str) -> None:
    if isinstance(answer, dict) and "error" in answer:
        error = answer["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise EngineError(f"llama.cpp refused the {what}: {message}")


@dataclass
class RowStreams:
    """Collects the streamed tokens of ``rows`` rows; ``tick(row, at)`` is called once per new token."""

    rows: int
    tick: Callable[[int, float], None] | None = None
    ids: list[list[int]] = field(init=False)
    finished: list[bool] = field(init=False)
    #: each row's latest ``timings`` (llama.cpp's own account; the final chunk's covers the whole request)
    timings: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = [[] for _ in range(self.rows)]
        self.finished = [False] * self.rows
        self.timings = [{} for _ in range(self.rows)]

    def __call__(self, chunk: Any) -> None:
        """The streaming callback: one chunk of llama.cpp's OpenAI-style completion stream."""
        now = time.perf_counter()
        if chunk is None:  # the server's keep-alive: no choice in it
            return
        raise_on_error(chunk, "completion")
        for choice in chunk.get("choices") or ():
            self._take(int(choice.get("index", 0)), choice, chunk.get("timings") or {}, now)

    def _take(self, row: int, choice: dict[str, Any], timings: dict[str, Any], now: float) -> None:
        if not 0 <= row < self.rows:
            raise EngineError(f"llama.cpp streamed a token for row {row} of a {self.rows}-row request")
        if choice.get("finish_reason") is not None:
            self.finished[row] = True
        if timings:
            self.timings[row] = timings
        known = [int(entry["id"]) for entry in (choice.get("logprobs") or {}).get("content") or ()]
        produced = int(timings.get("predicted_n", len(self.ids[row]) + len(known)))
        count = max(produced - len(self.ids[row]), len(known))
        new_ids = [UNKNOWN_ID] * (count - len(known)) + known
        self.ids[row].extend(new_ids)
        if self.tick is not None:
            for _ in new_ids:
                self.tick(row, now)

    def check(self, new_tokens: int) -> None:
        """Every row finished with exactly ``new_tokens`` tokens."""
        counts = [len(ids) for ids in self.ids]
        if set(counts) != {new_tokens} or not all(self.finished):
            raise EngineError(
                f"llama.cpp streamed {'/'.join(map(str, counts))} tokens per row for a generate of {new_tokens} new "
                f"tokens{'' if all(self.finished) else ' and did not finish every row'}"
            )
