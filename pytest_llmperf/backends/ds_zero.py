"""``ds-zero``: DeepSpeed ZeRO-3 inference, one process per rank.

Parameters are partitioned across the ranks (and with variant "cpu-offload" kept in CPU memory) and
gathered layer by layer as each forward needs them. Every rank runs its own stream of prompts, in
step with the others (``synced_gpus``), so a group of N ranks generates N streams: the plugin counts
``streams = ranks`` in tokens_per_s, as the BLOOM study did.
"""

from __future__ import annotations

from typing import Any, ClassVar

import deepspeed
import torch
from transformers.integrations import HfDeepSpeedConfig

from pytest_llmperf.backends.base import LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import from_pretrained
from pytest_llmperf.backends.deepspeed_ops import load_cpu_comm_op, prepare_host
from pytest_llmperf.backends.generation import greedy_generate
from pytest_llmperf.backends.one_model import OneModelBackend
from pytest_llmperf.measure.token_clock import TokenClock


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


class DsZeroBackend(OneModelBackend):
    """``_model`` is DeepSpeed's engine."""

    id: ClassVar[str] = "ds-zero"
    prepare_host = staticmethod(prepare_host)

    @staticmethod
    def unavailable_reason(request: LoadRequest, config: Any) -> str | None:
        """Why this cannot run, known before any rank starts (else None)."""
        if request.variant == "cpu-offload" and not request.device.startswith("cuda"):
            return ("ds-zero's cpu-offload keeps the partitioned parameters in CPU memory instead of CUDA memory, "
                    "so it needs CUDA; on CPU they already are in CPU memory")
        return None

    def __init__(self) -> None:
        super().__init__()
        self._offload = False

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        from transformers import AutoConfig

        self._use_device(request.device)
        self._offload = request.variant == "cpu-offload"
        if request.device == "cpu":
            with span("comm-op"):  # built by prepare_host: found, loaded, or a stale build baton cleared
                load_cpu_comm_op()
        with span("read"):
            hidden = AutoConfig.from_pretrained(request.checkpoint, local_files_only=True).hidden_size
            config = zero3_config(request.dtype, hidden, request.world_size, self._offload, request.device)
            # while this object lives, from_pretrained builds the model partitioned (zero.Init)
            hf_config = HfDeepSpeedConfig(config)
            model = from_pretrained(request.checkpoint, request.dtype)
        with span("engine"):
            self._model = deepspeed.initialize(model=model, config_params=config)[0]
            self._model.module.eval()
        del hf_config

    def module(self) -> torch.nn.Module:
        return self._loaded().module

    def generate(self, input_ids: torch.Tensor, new_tokens: int, clock: TokenClock | None = None) -> torch.Tensor:
        # every rank must run the same number of forward passes: each gathers parameters with the others
        return greedy_generate(self.module(), input_ids, new_tokens, clock, synced_gpus=True)

    def weights_bytes(self) -> int:
        """This rank's partition of the parameters."""
        partitions = (getattr(p, "ds_tensor", p) for p in self.module().parameters())
        return sum(t.numel() * t.element_size() for t in partitions)

    def devices(self) -> tuple[str, ...]:
        return (self._device, "cpu") if self._offload and self._device != "cpu" else (self._device,)

    def close(self) -> None:
        if self._model is not None:
            self._model.destroy()
        super().close()
