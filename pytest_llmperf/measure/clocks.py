"""Timing: wall-clock spans bracketed by a device synchronisation.

CUDA work is asynchronous: a span starts and ends with ``torch.cuda.synchronize`` so it covers the
device's work, not just the kernel launches. On CPU the synchronisation is a no-op and the span is
plain ``time.perf_counter``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pytest_llmperf.devices import cuda_index

T = TypeVar("T")


def device_sync(device: str) -> Callable[[], None]:
    """The function that waits for all queued work on ``device`` ("cpu", "cuda", "cuda:N")."""
    if device.startswith("cuda"):
        import torch

        index = cuda_index(device)
        return lambda: torch.cuda.synchronize(index)
    return lambda: None


class Stopwatch:
    def __init__(self, sync: Callable[[], None]):
        self._sync = sync

    def time(self, fn: Callable[[], T]) -> tuple[T, float]:
        """Run ``fn`` and return its result and the seconds it took, device work included."""
        self._sync()
        start = time.perf_counter()
        result = fn()
        self._sync()
        return result, time.perf_counter() - start

    @contextmanager
    def span(self, sink: list[tuple[str, float]], name: str) -> Iterator[None]:
        """Append ``(name, seconds)`` to ``sink`` for the block's duration, device work included."""
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        sink.append((name, time.perf_counter() - start))


#: set to 1 to let the garbage collector run inside timed trials (to measure what pausing it gains)
GC_DURING_TRIALS_ENV = "LLMPERF_GC_DURING_TRIALS"


def collect_garbage() -> None:
    """A full collection before a configuration's warm-ups, so that its trials start with little garbage.

    Not before each trial: a full collection walks every object and leaves the caches cold, which
    measured as +1.2 ms of TTFT on a 3.6 ms prefill of a tiny model (and +1.2 ms of llama.cpp's own
    prompt time); the warm-ups after it warm the caches again."""
    import gc
    import os

    if os.environ.get(GC_DURING_TRIALS_ENV) != "1":
        gc.collect()


@contextmanager
def gc_paused() -> Iterator[None]:
    """A trial without a garbage-collection pause in it: the collector is held off during it."""
    import gc
    import os

    if os.environ.get(GC_DURING_TRIALS_ENV) == "1" or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
