"""What a backend holding one model per rank, on one device, has in common with the others.

Subclasses load in ``load`` (setting ``self._model`` after ``self._use_device(request.device)``);
``module()`` is what generates and what the correctness checks perturb. A backend whose ``_model``
is an engine wrapping the module (DeepSpeed) overrides ``module``.
"""

from __future__ import annotations

import gc
from typing import Any, ClassVar

import torch

from pytest_llmperf.backends.checkpoint import parameters_bytes
from pytest_llmperf.backends.generation import greedy_generate
from pytest_llmperf.measure.clocks import device_sync
from pytest_llmperf.measure.token_clock import TokenClock


class OneModelBackend:
    id: ClassVar[str]

    def __init__(self) -> None:
        self._model: Any = None
        self._device = "cpu"
        self._sync = device_sync("cpu")

    def _use_device(self, device: str) -> None:
        self._device = device
        self._sync = device_sync(device)

    def _loaded(self) -> Any:
        if self._model is None:
            raise RuntimeError(f"the {self.id} backend has no model loaded; call load() first")
        return self._model

    @property
    def input_device(self) -> str:
        return self._device

    def module(self) -> torch.nn.Module:
        return self._loaded()

    def generate(self, input_ids: torch.Tensor, new_tokens: int, clock: TokenClock | None = None) -> torch.Tensor:
        return greedy_generate(self.module(), input_ids, new_tokens, clock)

    def synchronize(self) -> None:
        self._sync()

    def weights_bytes(self) -> int:
        return parameters_bytes(self.module())

    def devices(self) -> tuple[str, ...]:
        return (self._device,)

    def device_map(self) -> dict[str, str] | None:
        return None

    def close(self) -> None:
        self._model = None
        gc.collect()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
