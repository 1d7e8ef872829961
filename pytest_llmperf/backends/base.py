"""The backend interface: what every way of running a causal LM implements.

A backend only loads a checkpoint and generates. Timing, memory, output checks, trials and
statistics belong to the core (``pytest_llmperf.measure``), so every backend is measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import torch

    from pytest_llmperf.measure.token_clock import TokenClock

#: ``span("phase name")`` times one phase of a load, device work included
PhaseSpan = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True)
class LoadRequest:
    checkpoint: Path
    #: canonical dtype name: "float32", "float16" or "bfloat16"
    dtype: str
    #: "cpu" or "cuda:N": this rank's device (for a one-process backend, the first of ``devices``)
    device: str
    variant: str = "default"
    #: every device this process may use, in order; a one-process backend that spreads a model over
    #: several devices (accelerate) uses exactly these. Empty means ``(device,)``.
    devices: tuple[str, ...] = ()
    rank: int = 0
    #: ranks in the group (1 for in-process backends)
    world_size: int = 1
    #: a private, empty directory that lives as long as the loaded model (disk offload goes here)
    scratch_dir: Path | None = None
    #: a directory kept between runs for what a backend derives from the checkpoint (a GGUF file
    #: written from it); None: derive into ``scratch_dir``
    cache_dir: Path | None = None
    #: CPU threads this load may use: the cores of the CPU slots it leased (None on CUDA)
    threads: int | None = None
    #: the GGUF file the model came from (a ``gguf:`` model source); ``checkpoint`` is then its
    #: dequantized transformers copy
    gguf_file: Path | None = None

    @property
    def leased_devices(self) -> tuple[str, ...]:
        return self.devices or (self.device,)


class BackendUnavailable(Exception):
    """This backend cannot run here (package missing, device or architecture unsupported); the test is skipped."""


class Backend(Protocol):
    """A backend may also define, as static methods run in the test process before any rank is started:
    ``unavailable_reason(request, config) -> str | None``, a reason it cannot run;
    ``prepare_host(request) -> None``, one-off work on this machine that is not part of loading a model
    (compiling an op), which may raise BackendUnavailable; and ``reproduces_reference(request) -> bool``,
    False where the variant changes the arithmetic on purpose (quantization), so that its fidelity to hf is
    measured instead of requiring hf's tokens (absent: True)."""

    id: ClassVar[str]

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        """Load the checkpoint ready to generate, wrapping each phase in ``span(name)``.

        The phases must cover the whole load: reading/deserialising, placing on the device, and any
        engine initialisation, so that they add up to the total load time.
        """

    @property
    def input_device(self) -> str:
        """Where prompt token ids must be placed."""

    def generate(self, input_ids: torch.Tensor, new_tokens: int, clock: TokenClock | None = None) -> torch.Tensor:
        """Greedy decoding of exactly ``new_tokens`` tokens; returns prompt + new tokens per row.

        When given a ``clock``, call ``clock.tick()`` as each step's tokens are ready (``clock.tick(row)``
        where rows produce their tokens independently): the timestamps are the trial's TTFT and
        inter-token latencies. Starting and stopping the clock is the caller's."""

    def synchronize(self) -> None:
        """Wait until all work queued on this backend's devices is done."""

    def weights_bytes(self) -> int:
        """Bytes of the parameters this rank holds, each shared parameter counted once."""

    def devices(self) -> tuple[str, ...]:
        """The devices holding this rank's part of the model ("disk" included when offloaded)."""

    def device_map(self) -> dict[str, str] | None:
        """Module name -> device, where the backend places modules by a map (accelerate); else None."""

    def module(self) -> torch.nn.Module:
        """This rank's model, as torch sees it (the correctness checks perturb its weights)."""

    def close(self) -> None:
        """Free the model and its device memory."""
