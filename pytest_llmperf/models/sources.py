"""From a model spec to a checkpoint directory on this machine, and the model's identity.

Nothing is ever downloaded: hub models come from the local Hugging Face cache only, synthetic
models are built locally (when they fit), local checkpoints are used where they are.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.models.dtypes import dtype_bytes, resolve_dtype
from pytest_llmperf.models.fingerprint import config_hash
from pytest_llmperf.models.gguf_source import GgufSourceError, check_gguf_header, dequantized_checkpoint
from pytest_llmperf.models.plan import capacity_problem, num_parameters
from pytest_llmperf.models.spec import ModelSpec
from pytest_llmperf.models.synthetic import ensure_synthetic, synthetic_config, synthetic_dir
from pytest_llmperf.results import ModelIdentity

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class ModelSourceError(ValueError):
    """The model cannot be found or used here; the message says why and what to do."""


class ModelTooLarge(ModelSourceError):
    """A synthetic model does not fit this machine (disk, RAM or device memory): skip, don't fail."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ResolvedModel:
    """A checkpoint directory here, and what identifies its model everywhere."""

    path: Path
    model_id: str
    config_hash: str
    model_type: str
    #: the concrete dtype the model is to be loaded in
    dtype: str
    num_parameters: int
    config: PretrainedConfig = field(compare=False, repr=False)
    #: the GGUF file this model came from (``gguf:`` sources); ``path`` is then its dequantized copy
    gguf_file: Path | None = None

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.model_id, self.config_hash, self.model_type, self.dtype, self.num_parameters)

    @property
    def vocab_size(self) -> int:
        return int(self.config.get_text_config().vocab_size)

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """bos/eos/pad/unk ids the config names (lists flattened); prompts never draw them."""
        text_config = self.config.get_text_config()
        ids: list[int] = []
        for role in ("bos", "eos", "pad", "unk"):
            value = getattr(text_config, f"{role}_token_id", None)
            ids.extend(value if isinstance(value, list | tuple) else [] if value is None else [value])
        return tuple(int(i) for i in ids)


def resolve_model(
    spec: ModelSpec,
    dtype: str,
    cache_dir: Path,
    *,
    seed: int = 0,
    device_kind: str = "cpu",
    device_memory_bytes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ResolvedModel:
    """Find (or, for synthetic specs, build into ``cache_dir``) the checkpoint of ``spec``.

    Raises ``ModelSourceError`` when it is missing, and ``ModelTooLarge`` when a synthetic model
    would not fit this machine.
    """
    dtype = resolve_dtype(dtype, device_kind)
    if spec.kind == "synthetic":
        return _synthetic(spec, dtype, Path(cache_dir), seed, device_kind, device_memory_bytes, progress)
    if spec.kind == "gguf":
        return _gguf(spec, dtype, Path(cache_dir), progress)
    path = _hub_snapshot(spec) if spec.kind == "hub" else _local_checkpoint(spec)
    config = _load_config(spec, path)
    return _resolved(spec, path, dtype, config, _num_parameters(spec, config))


def model_config(spec: ModelSpec) -> PretrainedConfig:
    """The config of ``spec`` alone: nothing is built or loaded (for ``llmperf plan``)."""
    if spec.kind == "synthetic":
        try:
            return synthetic_config(spec)
        except ValueError as e:
            raise ModelSourceError(str(e)) from e
    if spec.kind == "gguf":
        return _gguf_config(spec)
    path = _hub_snapshot(spec) if spec.kind == "hub" else _local_checkpoint(spec)
    return _load_config(spec, path)


def _gguf(spec: ModelSpec, dtype: str, cache_dir: Path, progress: Callable[[str], None] | None) -> ResolvedModel:
    assert spec.path is not None
    try:
        path = dequantized_checkpoint(spec.path, cache_dir, progress or (lambda step: None))
    except GgufSourceError as e:
        raise ModelSourceError(str(e)) from e
    config = _load_config(spec, path)
    return replace(_resolved(spec, path, dtype, config, _num_parameters(spec, config)), gguf_file=spec.path)


def _gguf_config(spec: ModelSpec) -> PretrainedConfig:
    from transformers import AutoConfig

    assert spec.path is not None
    try:
        check_gguf_header(spec.path)
        return AutoConfig.from_pretrained(spec.path.parent, gguf_file=spec.path.name)
    except (GgufSourceError, OSError, ValueError, KeyError) as e:
        raise ModelSourceError(f"cannot read the config of {spec.text!r} from {spec.path}: {e}") from e


def _synthetic(
    spec: ModelSpec,
    dtype: str,
    cache_dir: Path,
    seed: int,
    device_kind: str,
    device_memory_bytes: int | None,
    progress: Callable[[str], None] | None,
) -> ResolvedModel:
    config = model_config(spec)
    params = _num_parameters(spec, config)
    built = synthetic_dir(config, dtype, cache_dir, seed=seed, name=spec.name).is_dir()
    problem = capacity_problem(
        params * dtype_bytes(dtype),
        disk_dir=None if built else cache_dir,
        device_kind=device_kind,
        device_memory_bytes=device_memory_bytes,
        model=spec.text,
    )
    if problem is not None:
        raise ModelTooLarge(f"{spec.model_id}: {problem}")
    path = ensure_synthetic(spec, dtype, cache_dir, seed=seed, progress=progress)
    return _resolved(spec, path, dtype, config, params)


def _num_parameters(spec: ModelSpec, config: PretrainedConfig) -> int:
    try:
        return num_parameters(config)
    except ValueError as e:
        raise ModelSourceError(f"{spec.text!r} is not a causal language model: {e}") from e


def _resolved(spec: ModelSpec, path: Path, dtype: str, config: PretrainedConfig, params: int) -> ResolvedModel:
    return ResolvedModel(path, spec.model_id, config_hash(config), config.model_type, dtype, params, config)


def _local_checkpoint(spec: ModelSpec) -> Path:
    path = spec.path
    assert path is not None
    if not path.is_dir():
        raise ModelSourceError(
            f"model directory {path} (from {spec.text!r}) does not exist; pass a checkpoint directory "
            f"holding config.json and the weights, e.g. one written by save_pretrained"
        )
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model directory {path} (from {spec.text!r}) has no config.json; pass the checkpoint "
            f"directory itself (the one holding config.json and the weights)"
        )
    return path


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at each call (HF_HUB_CACHE, else
    HF_HOME/hub), unlike ``huggingface_hub.constants`` which reads it once at import."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_snapshot(spec: ModelSpec) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert spec.repo_id is not None
    cache = hub_cache_dir()
    at = f" at revision {spec.revision!r}" if spec.revision else ""
    try:
        path = Path(snapshot_download(spec.repo_id, revision=spec.revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError) as e:
        raise ModelSourceError(
            f"hub model {spec.repo_id!r}{at} is not in the local Hugging Face cache {cache} "
            f"(HF_HUB_CACHE, or HF_HOME/hub); no download is attempted. Fix: run "
            f"`hf download {spec.repo_id}` on a machine with network access and copy its cache "
            f"here (or point HF_HOME at it), or pass a local checkpoint directory instead"
        ) from e
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"hub model {spec.repo_id!r}{at} in the cache {cache} has no config.json at {path}; "
            f"download it completely with `hf download {spec.repo_id}`"
        )
    return path


def _load_config(spec: ModelSpec, path: Path) -> PretrainedConfig:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"cannot read the config of {spec.text!r} at {path}: {e}") from e
