"""Synthetic checkpoints: a config, seeded random weights and a local tokenizer, built once and cached.

A checkpoint lives in ``<cache_dir>/<name>-<dtype>-<hash12>/`` where the hash covers the config,
the dtype, the seed and ``FORMAT_VERSION``. Builders (pytest-xdist workers, parallel sessions)
serialise on a lock file next to it and build into a temporary sibling that is renamed into place,
so the directory either does not exist or is complete.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from pytest_llmperf.models.dtypes import parse_dtype, torch_dtype
from pytest_llmperf.models.fingerprint import canonical_config, digest
from pytest_llmperf.models.shapes import shape_config
from pytest_llmperf.models.spec import ModelSpec
from pytest_llmperf.models.tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: bump when the files a build writes change, so old cache entries are not reused
FORMAT_VERSION = 1

Progress = Callable[[str], None]


def synthetic_config(spec: ModelSpec) -> PretrainedConfig:
    """The config a synthetic spec builds (its named shape, or its config file)."""
    source = spec.shape if spec.shape is not None else spec.config_path
    if spec.kind != "synthetic" or source is None:
        raise ValueError(f"{spec.text!r} is not a synthetic model spec")
    return shape_config(source)


def synthetic_dir(config: PretrainedConfig, dtype: str, cache_dir: Path, *, seed: int = 0,
                  name: str | None = None) -> Path:
    """Where ``ensure_synthetic`` keeps the checkpoint of (config, dtype, seed)."""
    dtype = parse_dtype(dtype, allow_auto=False)
    key = digest({"config": canonical_config(config), "dtype": dtype, "seed": seed, "format": FORMAT_VERSION}, 12)
    return Path(cache_dir) / f"{name or config.model_type}-{dtype}-{key}"


def ensure_synthetic(
    spec_or_config: ModelSpec | PretrainedConfig,
    dtype: str,
    cache_dir: Path,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """The directory of the synthetic checkpoint, built first if no earlier call built it."""
    if isinstance(spec_or_config, ModelSpec):
        config, name = synthetic_config(spec_or_config), spec_or_config.name
    else:
        config, name = spec_or_config, None
    target = synthetic_dir(config, dtype, cache_dir, seed=seed, name=name)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(target.name + ".lock")):
        if _complete(target):
            return target
        _remove_leftovers(target)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
        try:
            _build(config, parse_dtype(dtype, allow_auto=False), seed, staging, progress or (lambda step: None))
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _build(config: PretrainedConfig, dtype: str, seed: int, out: Path, progress: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    progress("initialising weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    progress("building tokenizer")
    tokenizer = build_tokenizer(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    progress("writing safetensors")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _complete(target: Path) -> bool:
    # A target only ever appears by renaming a finished build into place.
    return (target / "config.json").is_file()


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.building-"


def _remove_leftovers(target: Path) -> None:
    """Remove what a crashed build left behind (only called while holding the lock)."""
    for stale in target.parent.glob(_staging_prefix(target) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
