"""``hf``: plain transformers, ``from_pretrained`` then ``generate``, on the CPU or one CUDA device."""

from __future__ import annotations

from typing import ClassVar

from pytest_llmperf.backends.base import LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import copy_into_memory, from_pretrained
from pytest_llmperf.backends.one_model import OneModelBackend


class HfBackend(OneModelBackend):
    id: ClassVar[str] = "hf"

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        self._use_device(request.device)
        with span("read"):
            model = from_pretrained(request.checkpoint, request.dtype)
        with span("place"):
            if request.device == "cpu":
                copy_into_memory(model)
            else:
                model.to(request.device)  # type: ignore[arg-type]  # transformers' wrapped ``to`` is mistyped
            model.eval()
        self._model = model
