"""Recognising an allocator's out-of-memory failure, and freeing memory after one."""

from __future__ import annotations

import gc

_CPU_OOM_TEXT = ("can't allocate memory", "cannot allocate memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a real allocation failure (CUDA OOM, a failed host allocation), not other errors."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _CPU_OOM_TEXT)


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
