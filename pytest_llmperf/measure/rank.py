"""What one rank does with a backend: a measured load, the first generate, then warm-ups and trials.

This is the only place generate calls are timed, so every backend and launcher measures alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pytest_llmperf.backends.base import Backend, LoadRequest
from pytest_llmperf.measure.clocks import Stopwatch, collect_garbage, gc_paused
from pytest_llmperf.measure.energy import energy_meter
from pytest_llmperf.measure.memory import memory_meter
from pytest_llmperf.measure.oom import free_memory, is_out_of_memory
from pytest_llmperf.measure.page_cache import resident_fraction, weight_files
from pytest_llmperf.measure.token_clock import TokenClock, TokenTimeline
from pytest_llmperf.results import GenerateConfig, GenerateResult, LoadResult, PageCache, Trial

#: ``progress(description, completed, total)``
ProgressFn = Callable[[str, int, int], None]


class GenerationMismatch(AssertionError):
    """A backend did not generate what was asked (count of new tokens, or it changed the prompt)."""


def check_output(backend_id: str, output: object, input_ids: object, new_tokens: int) -> None:
    """Every row must be the prompt followed by exactly ``new_tokens`` tokens."""
    import torch

    assert isinstance(output, torch.Tensor) and isinstance(input_ids, torch.Tensor)
    batch, prompt = input_ids.shape
    expected = (batch, prompt + new_tokens)
    if tuple(output.shape) != expected:
        raise GenerationMismatch(
            f"backend {backend_id} returned output of shape {tuple(output.shape)}, expected {expected}: "
            f"{output.shape[-1] - prompt} new tokens per sequence instead of {new_tokens}"
        )
    if not torch.equal(output[:, :prompt].cpu(), input_ids.cpu()):
        raise GenerationMismatch(f"backend {backend_id} returned sequences that do not start with the prompt")


def _pairs(device_map: dict[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    return None if device_map is None else tuple((module, str(device)) for module, device in device_map.items())


class RankRunner:
    def __init__(self, backend: Backend, device: str):
        self.backend = backend
        self.device = device
        self._stopwatch = Stopwatch(backend.synchronize)
        self._memory = memory_meter(device)
        self._energy = energy_meter(device)

    def _inputs(self, input_ids: np.ndarray):
        import torch

        return torch.as_tensor(input_ids, dtype=torch.long, device=self.backend.input_device)

    def load(self, request: LoadRequest) -> LoadResult:
        files = weight_files(request.checkpoint)
        page_cache = PageCache(resident_fraction(files) if files else None)
        phases: list[tuple[str, float]] = []
        self._memory.start()
        _, load_s = self._stopwatch.time(
            lambda: self.backend.load(request, lambda name: self._stopwatch.span(phases, name))
        )
        memory = self._memory.stop()
        return LoadResult(
            load_s=load_s,
            phases=tuple(phases),
            weights_bytes=self.backend.weights_bytes(),
            memory=memory,
            page_cache=page_cache,
            devices=self.backend.devices(),
            device_map=_pairs(self.backend.device_map()),
        )

    def first_generate(self, input_ids: np.ndarray, new_tokens: int) -> float | None:
        """Seconds of the first generate after load; None if it ran out of memory (the trials will say so)."""
        try:
            return self._timed(self._inputs(input_ids), new_tokens)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        free_memory(self.device)
        return None

    def tokens(self, input_ids: np.ndarray, new_tokens: int) -> np.ndarray:
        """The greedy output (prompt + new tokens per row) as token ids, for correctness checks."""
        inputs = self._inputs(input_ids)
        output = self.backend.generate(inputs, new_tokens)
        check_output(self.backend.id, output, inputs, new_tokens)
        return output.cpu().numpy()

    def _timed(self, inputs, new_tokens: int) -> float:
        output, seconds = self._stopwatch.time(lambda: self.backend.generate(inputs, new_tokens))
        check_output(self.backend.id, output, inputs, new_tokens)
        return seconds

    def _timestamped(self, inputs, new_tokens: int) -> TokenTimeline:
        """One generate, each of its tokens timestamped as it is produced."""
        clock = TokenClock(self.backend.synchronize, rows=int(inputs.shape[0]), new_tokens=new_tokens)
        clock.start()
        output = self.backend.generate(inputs, new_tokens, clock)
        clock.stop()
        check_output(self.backend.id, output, inputs, new_tokens)
        return clock.timeline(self.backend.id)

    def generate(self, config: GenerateConfig, input_ids: np.ndarray,
                 progress: ProgressFn | None = None) -> GenerateResult:
        """Warm-ups, then ``config.trials`` trials, each one generate with its tokens timestamped.

        An out-of-memory error is a result: outcome "oom", memory freed, nothing raised.
        """
        report = progress or (lambda *_: None)
        label = f"batch {config.batch_size}"
        oom: str | None = None
        measuring = False
        try:
            inputs = self._inputs(input_ids)
            if config.warmups:
                collect_garbage()  # the warm-ups then warm the caches the collection left cold
            for i in range(config.warmups):
                report(f"{label}: warm-up", i, config.warmups)
                self._timestamped(inputs, config.new_tokens)
            self._memory.start()
            measuring = True
            if self._energy:
                self._energy.start()
            trials = []
            for i in range(config.trials):
                report(f"{label}: trials", i, config.trials)
                with gc_paused():
                    timeline = self._timestamped(inputs, config.new_tokens)
                trials.append(Trial.from_timeline(timeline, batch_size=config.batch_size))
            joules = self._energy.stop() if self._energy else None
            memory = self._memory.stop()
            measuring = False
            report(f"{label}: trials", config.trials, config.trials)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            oom = f"out of memory on {self.device}: {str(exc).strip().splitlines()[0][:300]}"
        if oom is not None:
            if measuring:
                self._memory.stop()  # a sampling meter's thread must not outlive the span
            # outside the except block, so the traceback's frames no longer pin the tensors
            free_memory(self.device)
            return GenerateResult(config=config, outcome="oom", error=oom)
        tokens = config.trials * config.batch_size * config.new_tokens
        return GenerateResult(
            config=config,
            outcome="ok",
            trials=tuple(trials),
            memory=memory,
            energy_j_per_token=None if joules is None else joules / tokens,
        )

    def close(self) -> None:
        self.backend.close()
