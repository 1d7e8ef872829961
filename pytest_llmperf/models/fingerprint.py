"""Stable hashes of model configs: the same model hashes the same on every machine and every load.

A config is hashed by what ``save_pretrained`` writes (``to_diff_dict``: the values that differ from
the architecture's defaults), minus the keys that record where or how it was saved rather than what
the model is.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: keys that change with the library version, the file's location or the saved dtype, not the model
VOLATILE_KEYS = frozenset({
    "transformers_version",
    "_name_or_path",
    "_commit_hash",
    "_attn_implementation_autoset",
    "architectures",
    "dtype",
    "torch_dtype",
})


def canonical_config(config: PretrainedConfig) -> dict[str, Any]:
    """The config as a plain dict without volatile keys (also inside nested sub-configs)."""
    return _without_volatile(config.to_diff_dict())


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_without_volatile(v) for v in value]
    return value


def digest(value: Any, length: int) -> str:
    """The first ``length`` hex digits of the sha256 of ``value`` as canonical JSON."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_hash(config: PretrainedConfig) -> str:
    """16 hex digits identifying a model's architecture and hyper-parameters."""
    return digest(canonical_config(config), 16)
