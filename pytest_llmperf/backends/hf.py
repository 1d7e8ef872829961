"""``hf``: plain transformers, ``from_pretrained`` then ``generate``, on the CPU or one CUDA device.

The default variant is the checkpoint as it is (the reference every other backend is checked
against); the others quantize its weights while loading (``hf_quantized``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pytest_llmperf.backends import hf_quantized
from pytest_llmperf.backends.base import LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import copy_into_memory, from_pretrained
from pytest_llmperf.backends.one_model import OneModelBackend
from pytest_llmperf.backends.stored_bytes import stored_weights_bytes


class HfBackend(OneModelBackend):
    id: ClassVar[str] = "hf"

    @staticmethod
    def unavailable_reason(request: LoadRequest, config: Any) -> str | None:
        return hf_quantized.unavailable_reason(request)

    @staticmethod
    def reproduces_reference(request: LoadRequest) -> bool:
        """Only full precision generates the reference's tokens: quantization changes the arithmetic."""
        return request.variant == hf_quantized.DEFAULT

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        self._use_device(request.device)
        if request.variant != hf_quantized.DEFAULT:
            self._model = hf_quantized.load_quantized(request, span)
            return
        with span("read"):
            model = from_pretrained(request.checkpoint, request.dtype)
        with span("place"):
            if request.device == "cpu":
                copy_into_memory(model)
            else:
                model.to(request.device)  # type: ignore[arg-type]  # transformers' wrapped ``to`` is mistyped
            model.eval()
        self._model = model

    def weights_bytes(self) -> int:
        """The bytes the weights are stored in: int8 or packed 4-bit data with its scales where quantized."""
        return stored_weights_bytes(self.module())
