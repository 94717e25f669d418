"""Tokenizer loading and the fixes training needs (a pad token that is not EOS, padding sides)."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

from loris.file_modes import as_if_created_tree

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
        return _gguf_tokenizer(gguf_file)
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


def _gguf_cache_dir(gguf_file: Path) -> Path:
    """Where the converted tokenizer of one GGUF file is kept (keyed on path, size and mtime)."""
    stat = gguf_file.stat()
    key = hashlib.sha1(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("LORIS_CACHE", Path.home() / ".cache" / "loris"))
    return root / "gguf-tokenizers" / key


def _gguf_tokenizer(gguf_file: Path):
    """transformers' GGUF tokenizer conversion takes tens of seconds, so its result is cached on disk."""
    from transformers import AutoTokenizer

    cache = _gguf_cache_dir(gguf_file)
    if (cache / "tokenizer_config.json").exists():
        return _without_bpe_cleanup(AutoTokenizer.from_pretrained(str(cache)))
    tok = _without_bpe_cleanup(AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name))
    _special_tokens_from_gguf(tok, gguf_file)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        tok.save_pretrained(str(tmp))
        as_if_created_tree(tmp)  # what a plain open()/mkdir() gives, whatever the writers did
        os.replace(tmp, cache)
    except OSError as e:  # a read-only home is no reason to fail
        logger.debug("could not cache the GGUF tokenizer: %s", e)
    return tok


def _without_bpe_cleanup(tokenizer):
    """transformers' GGUF conversion sets ``clean_up_tokenization_spaces=True``, which transformers then
    ignores for a BPE vocabulary, warning at the first decode; False decodes the same, silently (and is
    what tokenizers saved from it, e.g. beside an adapter, then say)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if tokenizer.clean_up_tokenization_spaces and type(getattr(backend, "model", None)).__name__ == "BPE":
        tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def _special_tokens_from_gguf(tokenizer, gguf_file: Path) -> None:
    """Take BOS/EOS/PAD from the GGUF's own metadata; transformers' GGUF tokenizer may guess them wrong."""
    import gguf

    fields = gguf.GGUFReader(str(gguf_file)).fields
    for key, attr in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token")):
        f = fields.get(f"tokenizer.ggml.{key}_token_id")
        if f is not None:
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(int(f.contents())))
