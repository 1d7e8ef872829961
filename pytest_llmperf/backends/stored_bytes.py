"""The bytes a model's weights really occupy, quantized or not.

``parameters_bytes`` (numel * element size) and transformers' ``get_memory_footprint`` read a
parameter's *logical* dtype and shape. Quantized weights are stored otherwise: torchao's and
optimum-quanto's tensor subclasses report the float dtype and full shape while holding int8 data
and per-row scales; bitsandbytes keeps packed 4-bit bytes in the parameter and its absmax and code
beside it (``quant_state``), or int8 data with row scales (``SCB``). Here each parameter is taken
apart into the plain tensors that hold its data, and each of those is counted once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

#: attributes of a bitsandbytes ``QuantState`` that hold tensors; ``state2`` is the nested state of
#: double quantization (absmax quantized again)
_QUANT_STATE_TENSORS = ("absmax", "code", "offset")


def _plain(tensor: torch.Tensor) -> bool:
    return type(tensor) in (torch.Tensor, torch.nn.Parameter) or not hasattr(tensor, "__tensor_flatten__")


def _quant_state_tensors(state: Any) -> Iterator[torch.Tensor]:
    for name in _QUANT_STATE_TENSORS:
        value = getattr(state, name, None)
        if isinstance(value, torch.Tensor):
            yield value
    nested = getattr(state, "state2", None)
    if nested is not None:
        yield from _quant_state_tensors(nested)


def stored_tensors(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The plain tensors that hold one parameter's data: a tensor subclass's inner tensors (recursively),
    and the quantization state bitsandbytes keeps beside its parameters."""
    if _plain(tensor):
        yield tensor
    else:
        names, _ = tensor.__tensor_flatten__()  # type: ignore[attr-defined]
        for name in names:
            inner = getattr(tensor, name, None)
            if isinstance(inner, torch.Tensor):
                yield from stored_tensors(inner)
    state = getattr(tensor, "quant_state", None)  # bitsandbytes Params4bit
    if state is not None:
        yield from _quant_state_tensors(state)
    row_scales = getattr(tensor, "SCB", None)  # bitsandbytes Int8Params
    if isinstance(row_scales, torch.Tensor):
        yield row_scales


def stored_weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the tensors holding a model's parameters, each counted once (tied parameters, and
    attributes that alias the parameter's own data, such as bitsandbytes' ``CB``)."""
    seen: set[tuple[str, int, int]] = set()
    total = 0
    for parameter in model.parameters():
        for tensor in stored_tensors(parameter):
            nbytes = tensor.numel() * tensor.element_size()
            key = (str(tensor.device), tensor.data_ptr(), nbytes)
            if key not in seen:
                seen.add(key)
                total += nbytes
    return total
