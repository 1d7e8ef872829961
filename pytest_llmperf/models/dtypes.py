"""Floating-point dtype names, parsed and resolved without importing torch.

Canonical names are torch's: ``float32``, ``float16``, ``bfloat16``. ``auto`` stands for the usual
choice on a device kind (bfloat16 on CUDA, float32 on CPU) until ``resolve_dtype`` pins it down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"

#: canonical name -> bytes per element
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}

ALIASES: dict[str, str] = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}


def allowed_names(*, allow_auto: bool = True) -> list[str]:
    """Every spelling ``parse_dtype`` accepts, canonical names first."""
    return [*DTYPE_BYTES, *ALIASES, *([AUTO] if allow_auto else [])]


def parse_dtype(name: str, *, allow_auto: bool = True) -> str:
    """The canonical name of a dtype spelling (``"bf16"`` -> ``"bfloat16"``), or ``"auto"``."""
    key = name.strip().lower().removeprefix("torch.")
    if key == AUTO and allow_auto:
        return AUTO
    canonical = ALIASES.get(key, key)
    if canonical not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; allowed: {', '.join(allowed_names(allow_auto=allow_auto))}")
    return canonical


def resolve_dtype(name: str, device_kind: str) -> str:
    """The canonical dtype to use on ``device_kind`` ("cpu" or "cuda"); ``auto`` picks per device."""
    parsed = parse_dtype(name)
    if parsed != AUTO:
        return parsed
    return "bfloat16" if device_kind.startswith("cuda") else "float32"


def dtype_bytes(name: str) -> int:
    """Bytes per element of a concrete dtype (``auto`` is refused: resolve it first)."""
    return DTYPE_BYTES[parse_dtype(name, allow_auto=False)]


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` of a concrete dtype name (imports torch)."""
    import torch

    return getattr(torch, parse_dtype(name, allow_auto=False))
