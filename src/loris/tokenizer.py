"""Tokenizer loading and the fixes training needs (a pad token that is not EOS, padding sides)."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# Existing tokens that families reserve for padding, tried before adding a new one.
_PAD_CANDIDATES = (
    "<|finetune_right_pad_id|>",
    "<|PAD_TOKEN|>",
    "<pad>",
    "<|pad|>",
    "[PAD]",
    "<|endoftext|>",
    "<unk>",
)
NEW_PAD_TOKEN = "<|PAD_TOKEN|>"


def load_tokenizer(
    folder: Path, gguf_file: Path | None = None, *, trust_remote_code: bool = False, token=None
):
    from transformers import AutoTokenizer

    if gguf_file is not None:
        return AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code, token=token)


def ensure_pad_token(tokenizer, vocab_rows: int) -> None:
    """Give the tokenizer a pad token distinct from EOS where the vocabulary allows.

    Padding with EOS teaches nothing wrong when padded labels are masked, but collators that mask by
    ``pad_token_id`` would then also mask the real EOS, and the model never learns to stop.
    """
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return
    vocab = tokenizer.get_vocab()
    for cand in _PAD_CANDIDATES:
        tid = vocab.get(cand)
        if tid is not None and tid != eos and tid < vocab_rows:
            tokenizer.pad_token = cand
            return
    if len(tokenizer) < vocab_rows:  # a spare embedding row exists: use it without resizing
        tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
        return
    if tokenizer.pad_token_id is None:
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != eos:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            logger.warning(
                "no spare token for padding: padding with EOS (mask padded labels by attention mask)"
            )
            tokenizer.pad_token = tokenizer.eos_token
