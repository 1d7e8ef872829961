"""The ``hf`` backend's quantized variants: transformers' own quantization configs, applied while loading.

| variant | library | weights |
| --- | --- | --- |
| ``bnb-int8`` | bitsandbytes (LLM.int8) | int8 per-row, float32 row scales |
| ``bnb-nf4`` | bitsandbytes | 4-bit NormalFloat, two per byte, a float32 absmax per 64 |
| ``torchao-int8`` | torchao (``Int8WeightOnlyConfig``) | int8 per-row, float scale and zero point |
| ``quanto-int8`` | optimum-quanto | int8 per-row, float scales |

transformers quantizes the decoder's linear layers; the embeddings, norms and ``lm_head`` stay in the
checkpoint's dtype. A quantized model does not generate the full-precision tokens, so these variants
say ``reproduces_reference`` False and the bench measures their fidelity instead.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import from_pretrained
from pytest_llmperf.models.dtypes import torch_dtype

DEFAULT = "default"
INSTALL = "pip install 'pytest-llmperf[quantized]'"


@dataclass(frozen=True)
class Quantization:
    variant: str
    #: the distribution to install, and the module to import
    package: str
    module: str
    #: the transformers quantization config, for the checkpoint's dtype name
    config: Callable[[str], Any]
    #: the smallest CUDA compute capability its kernels run on (None: any)
    min_cuda_capability: tuple[int, int] | None = None


def _bnb_int8(dtype: str) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def _bnb_nf4(dtype: str) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch_dtype(dtype))


def _torchao_int8(dtype: str) -> Any:
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def _quanto_int8(dtype: str) -> Any:
    from transformers import QuantoConfig

    return QuantoConfig(weights="int8")


QUANTIZATIONS: dict[str, Quantization] = {q.variant: q for q in (
    # LLM.int8's CUDA kernels need Turing (7.5) or newer
    Quantization("bnb-int8", "bitsandbytes", "bitsandbytes", _bnb_int8, min_cuda_capability=(7, 5)),
    Quantization("bnb-nf4", "bitsandbytes", "bitsandbytes", _bnb_nf4),
    Quantization("torchao-int8", "torchao", "torchao", _torchao_int8),
    Quantization("quanto-int8", "optimum-quanto", "optimum.quanto", _quanto_int8),
)}
VARIANTS: tuple[str, ...] = (DEFAULT, *QUANTIZATIONS)


def quantization(variant: str) -> Quantization:
    try:
        return QUANTIZATIONS[variant]
    except KeyError:
        raise ValueError(f"hf has no quantized variant {variant!r}; variants: {', '.join(VARIANTS)}") from None


def unavailable_reason(request: LoadRequest) -> str | None:
    """Why a quantized variant cannot run here: its library missing, or a GPU its kernels do not support."""
    if request.variant == DEFAULT:
        return None
    q = quantization(request.variant)
    try:
        importlib.import_module(q.module)
    except ImportError as e:
        return (f"hf variant {q.variant} needs the Python package {q.package!r}, which cannot be imported "
                f"({e}); {INSTALL}")
    if q.min_cuda_capability is not None and request.device.startswith("cuda"):
        import torch

        capability = torch.cuda.get_device_capability(request.device)
        if capability < q.min_cuda_capability:
            need = ".".join(map(str, q.min_cuda_capability))
            return (f"hf variant {q.variant}: {q.package}'s kernels need CUDA compute capability {need} or newer; "
                    f"{request.device} has {capability[0]}.{capability[1]}")
    return None


def load_quantized(request: LoadRequest, span: PhaseSpan) -> Any:
    """The checkpoint read and quantized by transformers onto ``request.device`` (phase "read"), then its
    unquantized tensors copied out of the memory-mapped file (phase "place")."""
    reason = unavailable_reason(request)
    if reason:
        raise BackendUnavailable(reason)
    q = quantization(request.variant)
    _silence_cast_notice(q.variant)
    with span("read"):
        model = from_pretrained(request.checkpoint, request.dtype, quantization_config=q.config(request.dtype),
                                device_map={"": request.device})
    with span("place"):
        if request.device == "cpu":
            _copy_plain_tensors_into_memory(model)
        model.eval()
    return model


def _copy_plain_tensors_into_memory(model: Any) -> None:
    """What ``checkpoint.copy_into_memory`` does, for the tensors left as they were read (embeddings, norms,
    ``lm_head``): quantized ones were made in memory, and replacing a tensor subclass's or a bitsandbytes
    parameter's data would part it from the state kept beside it."""
    import torch

    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


class _CastNotice(logging.Filter):
    """bitsandbytes' int8 matmul logs on every call that it casts float32 inputs to float16: that is how
    LLM.int8 works (docs/engines/quantized.md says it once), not news at every decoding step."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


_CAST_NOTICE = _CastNotice()


def _silence_cast_notice(variant: str) -> None:
    if variant == "bnb-int8":
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_CAST_NOTICE)  # added once: a set
