"""``ds-inference``: DeepSpeed-Inference tensor parallelism, one process per rank (tp_size = ranks).

Variant "autotp" shards the transformers model with DeepSpeed's automatic tensor parallelism and
runs it as it is. Variant "kernel-inject" replaces its blocks with DeepSpeed's fused CUDA kernels
(``replace_with_kernel_inject=True``); where DeepSpeed refuses (no CUDA, an architecture or a
transformers version it does not support) the test is skipped with DeepSpeed's own reason. Variant
"int8" is kernel injection with ``dtype=torch.int8``: DeepSpeed's int8 inference kernels (the BLOOM
study's int8 tables), CUDA only; it does not reproduce hf's tokens, so its fidelity is measured.
"""

from __future__ import annotations

from typing import Any, ClassVar

import deepspeed
import torch

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import copy_into_memory, from_pretrained
from pytest_llmperf.backends.deepspeed_ops import load_cpu_comm_op, prepare_host
from pytest_llmperf.backends.one_model import OneModelBackend
from pytest_llmperf.backends.stored_bytes import stored_weights_bytes
from pytest_llmperf.models.dtypes import torch_dtype

#: variants that replace the model's blocks with DeepSpeed's CUDA kernels
_KERNEL_VARIANTS = ("kernel-inject", "int8")


class DsInferenceBackend(OneModelBackend):
    """``_model`` is DeepSpeed's InferenceEngine."""

    id: ClassVar[str] = "ds-inference"
    prepare_host = staticmethod(prepare_host)

    @staticmethod
    def reproduces_reference(request: LoadRequest) -> bool:
        """int8 weights change the arithmetic on purpose: the bench measures fidelity instead of exact tokens."""
        return request.variant != "int8"

    @staticmethod
    def unavailable_reason(request: LoadRequest, config: Any) -> str | None:
        """Why this cannot run, known before any rank starts (else None)."""
        if request.variant in _KERNEL_VARIANTS and not request.device.startswith("cuda"):
            # DeepSpeed's inference kernels exist for CUDA only ("not implemented on CPU backend")
            return f"ds-inference {request.variant} needs CUDA: DeepSpeed has no CPU inference kernels"
        if request.variant == "autotp" and request.world_size > 1 and getattr(config, "model_type", None) == "bloom":
            import transformers

            if int(transformers.__version__.split(".")[0]) >= 5:
                # measured on CPU, tp 2, transformers 5.24, deepspeed 0.19.8: the attention has each rank's
                # heads, the ALiBi bias all of them ("The expanded size of the tensor (4) must match the
                # existing size (8)"); DeepSpeed's patched bias builder does not take effect
                return ("DeepSpeed AutoTP does not shard BLOOM's ALiBi bias with transformers 5: with tp_size > 1 "
                        "every rank's attention gets the bias of all heads and generate fails with a shape mismatch")
        return None

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        kernel_inject = request.variant in _KERNEL_VARIANTS
        self._use_device(request.device)
        if request.device == "cpu":
            with span("comm-op"):  # built by prepare_host: found, loaded, or a stale build baton cleared
                load_cpu_comm_op()
        with span("read"):
            model = from_pretrained(request.checkpoint, request.dtype)
            reason = self.unavailable_reason(request, model.config)
            if reason:
                raise BackendUnavailable(reason)
            if request.device == "cpu":
                copy_into_memory(model)
        with span("shard"):
            try:
                self._model = deepspeed.init_inference(
                    model,
                    tensor_parallel={"tp_size": request.world_size},
                    dtype=torch.int8 if request.variant == "int8" else torch_dtype(request.dtype),
                    replace_with_kernel_inject=kernel_inject,
                )
            except (RuntimeError, NotImplementedError, ValueError) as e:
                if kernel_inject:  # DeepSpeed's refusals (version, architecture, device) are skips
                    raise BackendUnavailable(f"DeepSpeed kernel injection: {e}") from e
                raise
            self._model.module.eval()

    def module(self) -> torch.nn.Module:
        return self._loaded().module

    def weights_bytes(self) -> int:
        """As stored: int8 data (and the scales DeepSpeed keeps as parameters) for the int8 variant."""
        return stored_weights_bytes(self.module())
