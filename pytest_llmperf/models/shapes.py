"""Named model shapes: the hyper-parameters of a model without its weights.

A shape is enough to build a synthetic model with random weights (``synthetic.py``) or to predict
memory (``plan.py``). Real shapes copy the published ``config.json`` of the model they are named
after; only the special token ids differ (every shape uses the synthetic tokenizer's layout below).
Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: token ids of the synthetic tokenizer's special tokens; unk is not a config attribute
UNK_TOKEN_ID = 0
SPECIAL_TOKEN_IDS: dict[str, int] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}


@dataclass(frozen=True)
class Shape:
    name: str
    #: transformers' ``model_type``: "llama", "bloom", "gpt2", ...
    model_type: str
    #: keyword arguments of the config class, as (name, value) pairs so the shape stays hashable
    config: tuple[tuple[str, Any], ...]
    description: str

    @property
    def kwargs(self) -> dict[str, Any]:
        return {**dict(self.config), **SPECIAL_TOKEN_IDS}


def _shape(name: str, model_type: str, description: str, **config: Any) -> Shape:
    return Shape(name, model_type, tuple(config.items()), description)


# Tiny shapes: ~0.2 M parameters, built in well under a second. With random weights greedy decoding
# tends to repeat one token: tied embeddings make the logits favour the input token, and a small
# initializer_range leaves the layers too weak to move away from it. So the tiny shapes untie the
# output head and use a larger initializer_range, which also widens the gaps between the top logits
# that a token-by-token comparison of backends relies on. ``tests/unit/test_models_shapes.py``
# checks that greedy decoding yields varied tokens.
_TINY = dict(vocab_size=1024, initializer_range=0.2, tie_word_embeddings=False)

_SHAPES = (
    _shape("bloom-tiny", "bloom", "tiny BLOOM for tests (~0.23 M parameters)",
           hidden_size=64, n_layer=2, n_head=4, **_TINY),
    _shape("llama-tiny", "llama", "tiny Llama with grouped-query attention for tests (~0.2 M parameters)",
           hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=1024, **_TINY),
    _shape("llama-tiny-hd32", "llama", "tiny Llama whose heads are 32 wide, the least vLLM's CPU attention takes "
           "(~0.4 M parameters)",
           hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=1024, **_TINY),
    _shape("gpt2-tiny", "gpt2", "tiny GPT-2 for tests (~0.3 M parameters)",
           n_embd=64, n_layer=2, n_head=4, n_positions=1024, **_TINY),
    _shape("bloom-560m", "bloom", "bigscience/bloom-560m",
           vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
    _shape("bloom-1b7", "bloom", "bigscience/bloom-1b7",
           vocab_size=250880, hidden_size=2048, n_layer=24, n_head=16),
    _shape("bloom-7b1", "bloom", "bigscience/bloom-7b1",
           vocab_size=250880, hidden_size=4096, n_layer=30, n_head=32),
    _shape("bloom-176b", "bloom", "bigscience/bloom (176 B)",
           vocab_size=250880, hidden_size=14336, n_layer=70, n_head=112),
    _shape("llama-1b", "llama", "TinyLlama/TinyLlama-1.1B (Llama 2 architecture, 1.1 B)",
           vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
           rms_norm_eps=1e-5, rope_theta=10000.0),
    _shape("llama-2-7b", "llama", "meta-llama/Llama-2-7b-hf",
           vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
           rms_norm_eps=1e-5, rope_theta=10000.0),
    _shape("llama-2-70b", "llama", "meta-llama/Llama-2-70b-hf",
           vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
           num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096,
           rms_norm_eps=1e-5, rope_theta=10000.0),
    _shape("llama-3-8b", "llama", "meta-llama/Meta-Llama-3-8B",
           vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
           rms_norm_eps=1e-5, rope_theta=500000.0),
    _shape("gpt2", "gpt2", "openai-community/gpt2 (124 M)",
           vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    _shape("gpt2-xl", "gpt2", "openai-community/gpt2-xl (1.5 B)",
           vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48, n_head=25),
)

SHAPES: dict[str, Shape] = {s.name: s for s in _SHAPES}


def shape_config(name_or_path: str | Path) -> PretrainedConfig:
    """The config of a named shape, or of a ``config.json`` file (or a directory holding one)."""
    from transformers import AutoConfig

    if isinstance(name_or_path, str) and name_or_path in SHAPES:
        shape = SHAPES[name_or_path]
        return AutoConfig.for_model(shape.model_type, **shape.kwargs)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{str(name_or_path)!r} is neither a known shape nor a config.json file; "
            f"known shapes: {', '.join(SHAPES)}"
        )
    return config_from_json(path)


def config_from_json(path: Path) -> PretrainedConfig:
    """Load a ``config.json`` of any architecture transformers knows."""
    from transformers import AutoConfig

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read model config {str(path)!r}: {e}") from e
    if not isinstance(data, Mapping) or "model_type" not in data:
        raise ValueError(f"model config {str(path)!r} has no \"model_type\" (e.g. \"llama\")")
    kwargs = dict(data)
    model_type = kwargs.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except ValueError as e:
        raise ValueError(f"model config {str(path)!r}: {e}") from e
