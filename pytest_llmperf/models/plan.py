"""Memory predictions from a model config alone: weights, KV cache, and whether a model fits here.

Parameters are counted on the meta device (no memory is allocated and nothing is initialised), so
even a 176 B model is planned in a fraction of a second.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.models.dtypes import dtype_bytes, parse_dtype

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: fraction of disk, RAM or device memory left free when deciding whether a model fits
HEADROOM = 0.10


def num_parameters(config: PretrainedConfig) -> int:
    """Parameters of the causal LM ``config`` describes; tied parameters count once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def weights_bytes(config: PretrainedConfig, dtype: str) -> int:
    return num_parameters(config) * dtype_bytes(dtype)


def kv_cache_bytes(config: PretrainedConfig, batch_size: int, seq_len: int, dtype: str) -> int:
    """2 (K and V) * layers * kv_heads * head_dim * seq_len * batch_size * bytes per element."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * seq_len * batch_size * dtype_bytes(dtype)


@dataclass(frozen=True)
class PlanRow:
    """Predicted memory of one rank, for one world size and batch size."""

    world_size: int
    batch_size: int
    weights_bytes: int
    kv_cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes


@dataclass(frozen=True)
class ModelPlan:
    model_type: str
    dtype: str
    num_parameters: int
    #: all ranks together
    weights_bytes: int
    prompt_tokens: int
    new_tokens: int
    rows: tuple[PlanRow, ...]
    #: what the plan is titled with (e.g. the model spec); empty: the model type
    name: str = ""


def plan_model(
    config: PretrainedConfig,
    dtype: str,
    batch_sizes: Iterable[int],
    world_sizes: Iterable[int],
    prompt_tokens: int,
    new_tokens: int,
    *,
    name: str = "",
) -> ModelPlan:
    """Per-rank memory for every (world size, batch size), assuming weights and KV split evenly."""
    dtype = parse_dtype(dtype, allow_auto=False)
    params = num_parameters(config)
    weights = params * dtype_bytes(dtype)
    seq_len = prompt_tokens + new_tokens
    rows = tuple(
        PlanRow(
            world_size=w,
            batch_size=b,
            weights_bytes=_per_rank(weights, w),
            kv_cache_bytes=_per_rank(kv_cache_bytes(config, b, seq_len, dtype), w),
        )
        for w in world_sizes
        for b in batch_sizes
    )
    return ModelPlan(config.model_type, dtype, params, weights, prompt_tokens, new_tokens, rows, name)


def _per_rank(total: int, world_size: int) -> int:
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    return -(-total // world_size)


def gigabytes(n: int | float) -> str:
    """Bytes as decimal gigabytes: 2 decimals from 1 GB (``352.49``), 3 significant digits below (``0.00288``)."""
    return f"{n / 1e9:.2f}" if n >= 1e9 or n == 0 else f"{n / 1e9:.3g}"


def capacity_problem(
    weights_bytes: int,
    *,
    disk_dir: Path | None,
    device_kind: str,
    device_memory_bytes: int | None,
    model: str = "<model>",
) -> str | None:
    """Why a synthetic model of ``weights_bytes`` cannot be built and loaded here, or None.

    Building always happens on the host: it needs free disk at ``disk_dir`` (None: already built)
    and host RAM. Loading needs host RAM on CPU, and ``device_memory_bytes`` (the memory of the
    devices the model is spread over; None: unknown) on CUDA. ``HEADROOM`` of each is kept free.
    """
    import psutil

    building = disk_dir is not None
    on_cuda = device_kind.startswith("cuda")
    available: list[tuple[str, int]] = []
    if disk_dir is not None:
        available.append((f"free disk at {disk_dir}", shutil.disk_usage(_existing_ancestor(disk_dir)).free))
    if building or not on_cuda:
        available.append(("available host RAM", psutil.virtual_memory().available))
    if on_cuda and device_memory_bytes is not None:
        available.append(("device memory", device_memory_bytes))
    short = [(what, n) for what, n in available if weights_bytes > n * (1 - HEADROOM)]
    if not short:
        return None
    lacking = "; ".join(f"{gigabytes(n)} GB of {what}" for what, n in short)
    return (
        f"the model's weights take {gigabytes(weights_bytes)} GB, more than fits in {lacking} "
        f"(keeping {HEADROOM:.0%} free); see `llmperf plan {model}`"
    )


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
