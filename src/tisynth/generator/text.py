"""The prompt encoder: a CLIP text model and its tokenizer.

Two sources:

* a pretrained base (a local folder or a hub id in diffusers layout): ``CLIPTextModel`` from
  subfolder ``text_encoder`` and the tokenizer from ``tokenizer``;
* offline / from scratch: a small ``CLIPTextModel`` built from a ``CLIPTextConfig`` with random
  weights, and a word-level tokenizer built in code from the words of the prompt template and
  the registry's class names (plus ``[PAD]``, ``[UNK]``, ``[BOS]``, ``[EOS]``), wrapped as a
  transformers fast tokenizer so that ``save_pretrained`` / ``AutoTokenizer.from_pretrained``
  work without any download.

Prompt embeddings are the text model's ``last_hidden_state`` for prompts padded / truncated to
``max_length`` tokens (77 for CLIP).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from tisynth.classes import ClassRegistry
from tisynth.errors import TisynthError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


class TextError(TisynthError, ValueError):
    """A text-encoder or tokenizer setting that cannot be used."""


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Whitespace()


def prompt_vocabulary(
    registry: ClassRegistry, template: str, extra_words: Iterable[str] = ()
) -> list[str]:
    """Words of ``template`` (without its ``{classes}`` slot), the class names and ``extra_words``.

    Words are lower-cased and split the way the word-level tokenizer splits them (on whitespace
    and punctuation), in first-seen order.
    """
    if "{classes}" not in template:
        raise TextError(f"prompt template {template!r} has no {{classes}} slot")
    texts = [template.replace("{classes}", " "), *registry.names, *extra_words]
    pre = _pre_tokenizer()
    words: dict[str, None] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text.lower()):
            words.setdefault(word, None)
    return list(words)


def build_word_tokenizer(words: Sequence[str], max_length: int = 77) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words``: ``[BOS] w1 … wn [EOS] [PAD]…``, lower-cased.

    Unknown words become ``[UNK]``. Needs no download; saved and loaded with
    ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    if max_length < 2:
        raise TextError(f"tokenizer max_length must be at least 2 (BOS + EOS), got {max_length}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=max_length,
    )


def build_text_encoder(config: Mapping[str, Any], tokenizer: Any, max_length: int) -> CLIPTextModel:
    """A randomly initialised ``CLIPTextModel`` from ``config`` (``CLIPTextConfig`` keys).

    ``vocab_size`` defaults to the tokenizer's size, ``max_position_embeddings`` to
    ``max_length``, and the special token ids to the tokenizer's.
    """
    cfg = dict(config)
    vocab = len(tokenizer)
    cfg.setdefault("vocab_size", vocab)
    if cfg["vocab_size"] < vocab:
        raise TextError(f"text_encoder vocab_size {cfg['vocab_size']} is smaller than the tokenizer's {vocab} tokens")
    cfg.setdefault("max_position_embeddings", max_length)
    if cfg["max_position_embeddings"] < max_length:
        raise TextError(
            f"text_encoder max_position_embeddings {cfg['max_position_embeddings']} < tokenizer max_length {max_length}"
        )
    for key, token in (("pad_token_id", "pad_token_id"), ("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        value = getattr(tokenizer, token, None)
        if value is not None:
            cfg.setdefault(key, value)
    model = CLIPTextModel(CLIPTextConfig(**cfg))
    model.requires_grad_(False)
    model.eval()
    return model


@torch.no_grad()
def encode_prompts(
    tokenizer: Any,
    text_encoder: CLIPTextModel,
    prompts: Sequence[str],
    max_length: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Prompt embeddings ``B × max_length × hidden`` (``last_hidden_state``, padded/truncated)."""
    if isinstance(prompts, str):
        raise TextError("prompts must be a sequence of strings, not one string")
    device = device if device is not None else text_encoder.device
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    return text_encoder(ids).last_hidden_state
