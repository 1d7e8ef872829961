"""``hf-tp``: transformers' own tensor parallelism (the model's ``tp_plan``), one process per rank."""

from __future__ import annotations

import gc
from typing import Any, ClassVar

import torch
from transformers import AutoConfig
from transformers.distributed import DistributedConfig

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import copy_into_memory, from_pretrained
from pytest_llmperf.backends.generation import greedy_generate
from pytest_llmperf.measure.clocks import device_sync


class HfTpBackend:
    id: ClassVar[str] = "hf-tp"

    def __init__(self) -> None:
        self._model: Any = None
        self._device = "cpu"
        self._sync = device_sync("cpu")

    @staticmethod
    def unavailable_reason(request: LoadRequest, config: Any) -> str | None:
        """Why this cannot run, known before any rank starts (else None)."""
        if not getattr(config, "base_model_tp_plan", None):
            # without a plan, transformers would silently load a full copy on every rank
            return (f"transformers has no tensor-parallel plan for {config.model_type} "
                    "(config.base_model_tp_plan is empty), so hf-tp cannot shard it")
        return None

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        reason = self.unavailable_reason(request, AutoConfig.from_pretrained(request.checkpoint, local_files_only=True))
        if reason:
            raise BackendUnavailable(reason)
        self._device = request.device
        self._sync = device_sync(request.device)
        with span("read+shard"):
            model = from_pretrained(request.checkpoint, request.dtype,
                                    distributed_config=DistributedConfig(tp_size=request.world_size))
            if request.device == "cpu":
                copy_into_memory(model)
            model.eval()
        self._model = model

    @property
    def input_device(self) -> str:
        return self._device

    def _loaded(self) -> Any:
        if self._model is None:
            raise RuntimeError("the hf-tp backend has no model loaded; call load() first")
        return self._model

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        return greedy_generate(self._loaded(), input_ids, new_tokens)

    def synchronize(self) -> None:
        self._sync()

    def weights_bytes(self) -> int:
        """This rank's shards: a sharded parameter is a DTensor, whose local part is what the rank holds."""
        total = 0
        for p in self._loaded().parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            total += local.numel() * local.element_size()
        return total

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
