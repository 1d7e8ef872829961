"""A GGUF file written from a transformers Llama checkpoint, so llama.cpp runs the same weights as hf.

Only the ``llama`` architecture is written. What llama.cpp expects differs from the checkpoint in
two ways that matter for identical outputs:

- llama.cpp's ``llama`` graph applies rotary embeddings to interleaved pairs (GPT-J style), while
  transformers rotates the two halves of each head. The rows of ``q_proj`` and ``k_proj`` are
  therefore reordered per head (half ``i`` of a head becomes pair element ``i``), the same
  permutation llama.cpp's ``convert_hf_to_gguf.py`` applies.
- Hyper-parameters live in the file's metadata (``llama.*`` keys): rms eps, rope base, heads and
  key/value heads (GQA), head width. A tied output head is left out: llama.cpp then reuses
  ``token_embd.weight``.

The tokenizer's vocabulary is written as a SentencePiece-type (``llama``) vocabulary with the token
texts of ``tokenizer.json``: llama.cpp accepts it for any vocabulary (the synthetic word-level one
included) and prompts are token ids, so ids are exact; text is only faithful for SentencePiece models.

Files are cached by checkpoint content and type, and written atomically under a file lock so that
parallel workers write each file once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

if TYPE_CHECKING:
    import numpy as np

#: the model types this writer converts
SUPPORTED_MODEL_TYPES = ("llama",)
#: GGUF tensor types a file can be written in (1-D tensors, the norms, always stay float32)
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
#: bump when the files written change, so old cache entries are not reused
FORMAT_VERSION = 1
#: weight files up to this size are hashed whole for the cache key; larger ones by size and samples
_FULL_HASH_BYTES = 256 * 2**20
_SAMPLE_BYTES = 4 * 2**20


class UnsupportedModel(ValueError):
    """The checkpoint's architecture (or a feature of it) has no GGUF writer here."""


@dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters llama.cpp needs, read from a Llama ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    linear_rope_factor: float | None
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LlamaShape:
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModel(
                f"no GGUF writer for model type {model_type!r}: the writer supports {', '.join(SUPPORTED_MODEL_TYPES)} "
                "checkpoints; give the model as a GGUF file instead (a gguf: model source)"
            )
        for flag in ("attention_bias", "mlp_bias"):
            if config.get(flag):
                raise UnsupportedModel(f"llama checkpoint with {flag}=true: the GGUF writer writes no bias tensors")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear"):
            raise UnsupportedModel(
                f"llama checkpoint with rope type {rope_type!r}: the GGUF writer supports the default and linear rope"
            )
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            context_length=int(config.get("max_position_embeddings") or 2048),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            linear_rope_factor=float(rope["factor"]) if rope_type == "linear" else None,
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


def read_config(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FileNotFoundError(f"{path}: cannot read the checkpoint's config ({e})") from e


def unsupported_reason(checkpoint: Path) -> str | None:
    """Why this checkpoint cannot be written as GGUF, or None."""
    try:
        LlamaShape.from_config(read_config(checkpoint))
    except UnsupportedModel as e:
        return str(e)
    return None


def gguf_path(checkpoint: Path, gguf_type: str, cache_dir: Path) -> Path:
    """Where ``ensure_gguf`` keeps the file for this checkpoint's content and type."""
    _check_type(gguf_type)
    key = hashlib.sha256(repr((FORMAT_VERSION, gguf_type, _content_digest(Path(checkpoint)))).encode()).hexdigest()
    return Path(cache_dir) / "gguf" / f"{Path(checkpoint).name}-{gguf_type}-{key[:16]}.gguf"


def ensure_gguf(checkpoint: Path, gguf_type: str, cache_dir: Path) -> tuple[Path, bool]:
    """The cached GGUF file of (checkpoint, type), and whether this call wrote it."""
    target = gguf_path(checkpoint, gguf_type, cache_dir)
    if target.is_file():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target, False
        fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(fd)
        try:
            write_gguf(Path(checkpoint), gguf_type, Path(staging))
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
    return target, True


def write_gguf(checkpoint: Path, gguf_type: str, out: Path) -> None:
    """Write ``checkpoint`` (a transformers Llama directory) as one GGUF file of ``gguf_type`` tensors."""
    import gguf

    _check_type(gguf_type)
    shape = LlamaShape.from_config(read_config(checkpoint))
    weights = _read_weights(checkpoint)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(checkpoint.name)
    writer.add_file_type(_FILE_TYPES[gguf_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hyperparameters(writer, shape)
    _add_vocabulary(writer, checkpoint, shape.vocab_size)
    for name, array in _gguf_tensors(weights, shape):
        data, raw_type = _encode(array, gguf_type)
        writer.add_tensor(name, data, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's output rows from halves (transformers) to interleaved pairs (llama.cpp)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}


def _check_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type {gguf_type!r} is not one the writer knows; use one of {', '.join(GGUF_TYPES)}")


def _content_digest(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in checkpoint.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".json") and not p.name.startswith(".")))
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with path.open("rb") as f:
            if size <= _FULL_HASH_BYTES:
                for chunk in iter(lambda: f.read(2**20), b""):
                    digest.update(chunk)
            else:  # head, middle and tail: a rewrite of a large file changes them
                for offset in (0, size // 2, size - _SAMPLE_BYTES):
                    f.seek(offset)
                    digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def _read_weights(checkpoint: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint}: no *.safetensors weights to write a GGUF file from")
    weights: dict[str, np.ndarray] = {}
    for path in files:
        with safe_open(str(path), "pt") as f:
            for name in f.keys():  # noqa: SIM118 - a safetensors file is not iterable
                weights[name] = f.get_tensor(name).float().numpy()
    return weights


def _add_hyperparameters(writer: Any, shape: LlamaShape) -> None:
    import gguf

    writer.add_vocab_size(shape.vocab_size)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    if shape.linear_rope_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(shape.linear_rope_factor)


def _add_vocabulary(writer: Any, checkpoint: Path, vocab_size: int) -> None:
    """The tokenizer's tokens by id, as a SentencePiece-type vocabulary, with its special ids."""
    import gguf

    tokens, special_ids, unk = _tokenizer_tokens(checkpoint)
    config = read_config(checkpoint)
    roles = {role: config.get(f"{role}_token_id") for role in ("bos", "eos", "pad")}
    texts: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        text = tokens.get(i)
        if text is None:
            texts.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            texts.append(text)
            types.append(gguf.TokenType.UNKNOWN if text == unk
                         else gguf.TokenType.CONTROL if i in special_ids or i in roles.values()
                         else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(texts)
    writer.add_token_scores([0.0] * vocab_size)
    writer.add_token_types(types)
    for role, value in roles.items():
        if isinstance(value, int) and 0 <= value < vocab_size:
            getattr(writer, f"add_{role}_token_id")(value)
    if unk is not None and unk in texts:
        writer.add_unk_token_id(texts.index(unk))
    # prompts are given as token ids: nothing is added to them
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def _tokenizer_tokens(checkpoint: Path) -> tuple[dict[int, str], set[int], str | None]:
    """id -> token text from ``tokenizer.json`` (model vocabulary and added tokens), the ids of special
    tokens, and the unknown token's text."""
    path = checkpoint / "tokenizer.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FileNotFoundError(f"{path}: the GGUF writer needs the checkpoint's tokenizer.json ({e})") from e
    model = data.get("model") or {}
    vocab = model.get("vocab") or {}
    tokens: dict[int, str] = {}
    if isinstance(vocab, dict):
        tokens.update({int(i): text for text, i in vocab.items()})
    else:  # Unigram: a list of [text, score]
        tokens.update({i: entry[0] for i, entry in enumerate(vocab)})
    special_ids: set[int] = set()
    for added in data.get("added_tokens") or []:
        tokens[int(added["id"])] = added["content"]
        if added.get("special"):
            special_ids.add(int(added["id"]))
    return tokens, special_ids, model.get("unk_token") or None


def _gguf_tensors(weights: dict[str, np.ndarray], shape: LlamaShape) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, array) for every tensor llama.cpp's llama graph reads, q/k permuted."""
    def take(name: str) -> np.ndarray:
        try:
            return weights[name]
        except KeyError:
            raise UnsupportedModel(f"llama checkpoint without tensor {name!r}: not a Llama layout the writer knows") \
                from None

    out = [("token_embd.weight", take("model.embed_tokens.weight")), ("output_norm.weight", take("model.norm.weight"))]
    if not shape.tied_embeddings and "lm_head.weight" in weights:
        out.append(("output.weight", weights["lm_head.weight"]))
    for i in range(shape.layers):
        hf, blk = f"model.layers.{i}.", f"blk.{i}."
        out += [
            (blk + "attn_norm.weight", take(hf + "input_layernorm.weight")),
            (blk + "attn_q.weight", permute_for_rope(take(hf + "self_attn.q_proj.weight"), shape.heads)),
            (blk + "attn_k.weight", permute_for_rope(take(hf + "self_attn.k_proj.weight"), shape.kv_heads)),
            (blk + "attn_v.weight", take(hf + "self_attn.v_proj.weight")),
            (blk + "attn_output.weight", take(hf + "self_attn.o_proj.weight")),
            (blk + "ffn_norm.weight", take(hf + "post_attention_layernorm.weight")),
            (blk + "ffn_gate.weight", take(hf + "mlp.gate_proj.weight")),
            (blk + "ffn_up.weight", take(hf + "mlp.up_proj.weight")),
            (blk + "ffn_down.weight", take(hf + "mlp.down_proj.weight")),
        ]
    return out


def _encode(array: np.ndarray, gguf_type: str) -> tuple[np.ndarray, Any]:
    """The array in ``gguf_type`` (raw bytes for quantized types) and its GGML type; 1-D tensors stay
    float32, and a matrix whose rows do not split into quantization blocks is written float16."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim < 2 or gguf_type == "f32":
        return array, GGMLQuantizationType.F32
    if gguf_type == "f16":
        return array.astype(np.float16), GGMLQuantizationType.F16
    qtype = GGMLQuantizationType.Q8_0 if gguf_type == "q8_0" else GGMLQuantizationType.Q4_0
    block, _ = GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block:
        return array.astype(np.float16), GGMLQuantizationType.F16
    return quants.quantize(array, qtype), qtype
