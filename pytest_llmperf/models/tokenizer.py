"""A tokenizer for a synthetic model, built locally: one word per token id, exactly vocab_size of them.

Token ``i`` is the word ``t<i>``, except the special tokens, which sit at the ids the model config
names (``bos_token_id``, ``eos_token_id``, ``pad_token_id``); ``<unk>`` takes id 0 unless that is
taken. Text is split on whitespace, so ``"t7 t9"`` encodes to ``[7, 9]`` and decodes back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

#: role -> token text, in the order roles claim ids (the first role at an id names it)
SPECIAL_TEXTS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>"}
UNK_TEXT = "<unk>"


def special_token_ids(config: PretrainedConfig) -> dict[str, int]:
    """role -> token id for unk and every special token the config sets, all inside the vocabulary."""
    text_config = config.get_text_config()
    vocab_size = text_config.vocab_size
    ids: dict[str, int] = {}
    for role in SPECIAL_TEXTS:
        value: Any = getattr(text_config, f"{role}_token_id", None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is None:
            continue
        if not 0 <= value < vocab_size:
            raise ValueError(f"{role}_token_id {value} lies outside the vocabulary (vocab_size {vocab_size})")
        ids[role] = value
    taken = set(ids.values())
    ids["unk"] = next(i for i in range(vocab_size) if i not in taken)
    return ids


def build_tokenizer(config: PretrainedConfig) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text_config = config.get_text_config()
    ids = special_token_ids(config)
    texts: dict[int, str] = {}
    for role, i in ids.items():
        texts.setdefault(i, UNK_TEXT if role == "unk" else SPECIAL_TEXTS[role])
    vocab = {texts.get(i, f"t{i}"): i for i in range(text_config.vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TEXT))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokens = {f"{role}_token": texts[i] for role, i in ids.items()}
    if "pad" not in ids and "eos" in ids:
        tokens["pad_token"] = texts[ids["eos"]]
    max_length = getattr(text_config, "max_position_embeddings", None) or getattr(text_config, "n_positions", None)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=max_length or 1_000_000,
        **tokens,
    )
