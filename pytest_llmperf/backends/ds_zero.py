"""``ds-zero``: DeepSpeed ZeRO-3 inference, one process per rank.

Parameters are partitioned across the ranks (and with variant "cpu-offload" kept in CPU memory) and
gathered layer by layer as each forward needs them. Every rank runs its own stream of prompts, in
step with the others (``synced_gpus``), so a group of N ranks generates N streams: the plugin counts
``streams = ranks`` in tokens_per_s, as the BLOOM study did.
"""

from __future__ import annotations

import gc
from typing import Any, ClassVar

import deepspeed
import torch
from transformers.integrations import HfDeepSpeedConfig

from pytest_llmperf.backends.base import LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import from_pretrained
from pytest_llmperf.backends.generation import greedy_generate
from pytest_llmperf.measure.clocks import device_sync


def zero3_config(dtype: str, hidden_size: int, world_size: int, offload: bool, device: str) -> dict[str, Any]:
    """A ZeRO stage 3 configuration for inference (no optimizer; batch sizes are DeepSpeed's formality)."""
    return {
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 0,
            **({"offload_param": {"device": "cpu", "pin_memory": device.startswith("cuda")}} if offload else {}),
        },
        "train_micro_batch_size_per_gpu": 1,
        "train_batch_size": world_size,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DsZeroBackend:
    id: ClassVar[str] = "ds-zero"

    def __init__(self) -> None:
        self._engine: Any = None
        self._device = "cpu"
        self._offload = False
        self._sync = device_sync("cpu")

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        from transformers import AutoConfig

        self._device = request.device
        self._offload = request.variant == "cpu-offload"
        self._sync = device_sync(request.device)
        with span("read"):
            hidden = AutoConfig.from_pretrained(request.checkpoint, local_files_only=True).hidden_size
            config = zero3_config(request.dtype, hidden, request.world_size, self._offload, request.device)
            # while this object lives, from_pretrained builds the model partitioned (zero.Init)
            hf_config = HfDeepSpeedConfig(config)
            model = from_pretrained(request.checkpoint, request.dtype)
        with span("engine"):
            self._engine = deepspeed.initialize(model=model, config_params=config)[0]
            self._engine.module.eval()
        del hf_config

    @property
    def input_device(self) -> str:
        return self._device

    def _loaded(self) -> Any:
        if self._engine is None:
            raise RuntimeError("the ds-zero backend has no model loaded; call load() first")
        return self._engine

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        # every rank must run the same number of forward passes: each gathers parameters with the others
        return greedy_generate(self._loaded().module, input_ids, new_tokens, synced_gpus=True)

    def synchronize(self) -> None:
        self._sync()

    def weights_bytes(self) -> int:
        """This rank's partition of the parameters."""
        return sum(
            p.ds_tensor.numel() * p.ds_tensor.element_size() if hasattr(p, "ds_tensor") else p.numel() * p.element_size()
            for p in self._loaded().module.parameters()
        )

    def devices(self) -> tuple[str, ...]:
        return (self._device, "cpu") if self._offload and self._device != "cpu" else (self._device,)

    def device_map(self) -> dict[str, str] | None:
        return None

    def module(self) -> torch.nn.Module:
        return self._loaded().module

    def close(self) -> None:
        if self._engine is not None:
            self._engine.destroy()
        self._engine = None
        gc.collect()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
