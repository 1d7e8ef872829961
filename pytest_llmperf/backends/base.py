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

#: ``span("phase name")`` times one phase of a load, device work included
PhaseSpan = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True)
class LoadRequest:
    checkpoint: Path
    #: canonical dtype name: "float32", "float16" or "bfloat16"
    dtype: str
    #: "cpu" or "cuda:N": the one device this rank may use
    device: str
    variant: str = "default"


class BackendUnavailable(Exception):
    """This backend cannot run here (package missing, device or architecture unsupported); the test is skipped."""


class Backend(Protocol):
    id: ClassVar[str]

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        """Load the checkpoint ready to generate, wrapping each phase in ``span(name)``.

        The phases must cover the whole load: reading/deserialising, placing on the device, and any
        engine initialisation, so that they add up to the total load time.
        """

    @property
    def input_device(self) -> str:
        """Where prompt token ids must be placed."""

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy decoding of exactly ``new_tokens`` tokens; returns prompt + new tokens per row."""

    def synchronize(self) -> None:
        """Wait until all work queued on this backend's devices is done."""

    def weights_bytes(self) -> int:
        """Bytes of the parameters this rank holds, each shared parameter counted once."""

    def devices(self) -> tuple[str, ...]:
        """The devices holding this rank's part of the model."""

    def close(self) -> None:
        """Free the model and its device memory."""
