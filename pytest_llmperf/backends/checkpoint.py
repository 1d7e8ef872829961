"""Reading a checkpoint with transformers, the same way for every backend (local files only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers
from transformers import AutoModelForCausalLM

from pytest_llmperf.models.dtypes import torch_dtype


def from_pretrained(checkpoint: Path, dtype: str, **kwargs: Any) -> transformers.PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` from local files, without transformers' progress bars."""
    hf_logging = transformers.utils.logging
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=torch_dtype(dtype), local_files_only=True, **kwargs
        )
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def parameters_bytes(model: Any) -> int:
    """Bytes of a module's parameters, each shared (tied) parameter counted once."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def copy_into_memory(model: Any) -> None:
    """Copy CPU tensors that safetensors left memory-mapped into memory.

    Mapped weights are read lazily by the first forward; copying them makes "ready to generate"
    mean the weights are in memory, so the load time includes reading them.
    """
    import torch

    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()
