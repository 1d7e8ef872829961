"""``hf``: plain transformers, ``from_pretrained`` then ``generate``, on the CPU or one CUDA device."""

from __future__ import annotations

import gc
from typing import ClassVar

import torch
import transformers

from pytest_llmperf.backends.base import LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import copy_into_memory, from_pretrained, parameters_bytes
from pytest_llmperf.backends.generation import greedy_generate
from pytest_llmperf.measure.clocks import device_sync


class HfBackend:
    id: ClassVar[str] = "hf"

    def __init__(self) -> None:
        self._model: transformers.PreTrainedModel | None = None
        self._device = "cpu"
        self._sync = device_sync("cpu")

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        self._device = request.device
        self._sync = device_sync(request.device)
        with span("read"):
            model = from_pretrained(request.checkpoint, request.dtype)
        with span("place"):
            if request.device == "cpu":
                copy_into_memory(model)
            else:
                model.to(request.device)
            model.eval()
        self._model = model

    @property
    def input_device(self) -> str:
        return self._device

    def _loaded(self) -> transformers.PreTrainedModel:
        if self._model is None:
            raise RuntimeError("the hf backend has no model loaded; call load() first")
        return self._model

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        return greedy_generate(self._loaded(), input_ids, new_tokens)

    def synchronize(self) -> None:
        self._sync()

    def weights_bytes(self) -> int:
        return parameters_bytes(self._loaded())

    def devices(self) -> tuple[str, ...]:
        return (self._device,)

    def device_map(self) -> dict[str, str] | None:
        return None

    def module(self) -> torch.nn.Module:
        return self._loaded()

    def close(self) -> None:
        self._model = None
        gc.collect()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
