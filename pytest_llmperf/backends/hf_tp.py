"""``hf-tp``: transformers' own tensor parallelism (the model's ``tp_plan``), one process per rank."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig
from transformers.distributed import DistributedConfig

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import copy_into_memory, from_pretrained
from pytest_llmperf.backends.one_model import OneModelBackend


class HfTpBackend(OneModelBackend):
    id: ClassVar[str] = "hf-tp"

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
        self._use_device(request.device)
        with span("read+shard"):
            model = from_pretrained(request.checkpoint, request.dtype,
                                    distributed_config=DistributedConfig(tp_size=request.world_size))
            if request.device == "cpu":
                copy_into_memory(model)
            model.eval()
        self._model = model

    def weights_bytes(self) -> int:
        """This rank's shards: a sharded parameter is a DTensor, whose local part is what the rank holds."""
        total = 0
        for p in self._loaded().parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            total += local.numel() * local.element_size()
        return total
