"""A transformers tokenizer as GGUF ``tokenizer.*`` metadata, the way llama.cpp expects to read it.

Two tokenizer models exist for our families: byte-level BPE (``"gpt2"``: Llama 3, Qwen, SmolLM) and
SentencePiece (``"llama"``: Llama 2, Mistral, Gemma, Phi-3). Byte-level BPE files also name their
pre-tokenizer (``tokenizer.ggml.pre``), because llama.cpp re-implements each pre-tokenizer regex
natively. Like llama.cpp's own converter we identify it by tokenizing a fixed check text and hashing
the ids; a tokenizer the table does not know falls back to the value of the GGUF it was loaded
from, then to a guess from the pre-tokenizer's structure, and last to ``"default"`` with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

logger = logging.getLogger(__name__)

T = gguf.TokenType

# The fixed text llama.cpp's converter tokenizes to fingerprint a BPE pre-tokenizer (data, not code):
# whitespace runs, emoji with joiners, digit runs, Khmer, CJK, Cyrillic, quotes and contractions.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 "
    "\U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(ids of CHECK_TEXT)) → llama.cpp pre-tokenizer name, for the tokenizers of the families we
# export (and their common relatives). Values as published by llama.cpp's convert_hf_to_gguf_update.
KNOWN_PRE_TOKENIZERS: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen 1.5 / 2 / 2.5 / 3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 embedding
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # Phi-4 and others
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "mpt",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
}

# End-of-turn tokens the chat templates of our families close a turn with.
_EOT_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endofturn|>")
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


class UnsupportedTokenizerError(ValueError):
    pass


@dataclass
class TokenizerMetadata:
    model: str  # "gpt2" | "llama"
    pre: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
            "eot": writer.add_eot_token_id,
        }
        for kind, tid in self.special_ids.items():
            adders[kind](tid)
        if self.add_bos is not None:
            writer.add_add_bos_token(self.add_bos)
        if self.add_eos is not None:
            writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def pre_tokenizer_hash(tokenizer) -> str:
    """llama.cpp's fingerprint: sha256 of the printed id list of CHECK_TEXT (special tokens included)."""
    ids = tokenizer.encode(CHECK_TEXT)
    return hashlib.sha256(str(ids).encode()).hexdigest()


def _structure(tokenizer) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizerError(
            f"{type(tokenizer).__name__} has no fast (tokenizers) backend; GGUF export needs a fast "
            "tokenizer: load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    return json.loads(backend.to_str())


def _walk(node: Any):
    """Every dict inside a tokenizer.json component (Sequence nodes nest others)."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def guess_pre_from_structure(structure: dict[str, Any]) -> str | None:
    """The llama.cpp pre-tokenizer whose regex the tokenizer's pre-tokenizer uses, if recognisable."""
    nodes = list(_walk(structure.get("pre_tokenizer")))
    types = [n.get("type") for n in nodes]
    regexes = [(n.get("pattern") or {}).get("Regex", "") for n in nodes if n.get("type") == "Split"]
    for rx in regexes:
        if "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in rx and r"\p{N}{1,3}" in rx:
            return "llama-bpe"
        if "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in rx and r"\p{N}" in rx:
            return "qwen2"
    if "ByteLevel" in types and not regexes:
        digits = [n for n in nodes if n.get("type") == "Digits"]
        if digits and digits[0].get("individual_digits"):
            return "smollm"
        if any(n.get("type") == "ByteLevel" and n.get("use_regex", True) for n in nodes):
            return "gpt-2"
    return None


def _source_gguf_pre(source_gguf: Path | None, tokens: list[str]) -> str | None:
    """The pre-tokenizer recorded in the GGUF the model was loaded from, if it holds these tokens."""
    if source_gguf is None or not Path(source_gguf).exists():
        return None
    reader = gguf.GGUFReader(str(source_gguf))
    pre, toks = reader.fields.get("tokenizer.ggml.pre"), reader.fields.get("tokenizer.ggml.tokens")
    if pre is None or toks is None:
        return None
    src_tokens = toks.contents()
    n = min(len(src_tokens), len(tokens))
    if src_tokens[:n] != tokens[:n]:
        return None
    return str(pre.contents())


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def _merges(model: dict[str, Any]) -> list[str]:
    out = []
    for m in model.get("merges") or []:
        out.append(m if isinstance(m, str) else " ".join(m))
    return out


def tokenizer_metadata(tokenizer, vocab_size: int, source_gguf: Path | None = None) -> TokenizerMetadata:
    """Everything llama.cpp needs to tokenize like ``tokenizer``, for a model with ``vocab_size`` rows."""
    structure = _structure(tokenizer)
    model = structure.get("model") or {}
    kind = model.get("type")
    if kind == "BPE":  # byte-level BPE maps bytes to printable characters; SentencePiece BPE does not
        byte_level = any(
            n.get("type") == "ByteLevel"
            for n in _walk([structure.get("pre_tokenizer"), structure.get("decoder")])
        )
        spm = not byte_level
    elif kind == "Unigram":
        spm = True
    else:
        raise UnsupportedTokenizerError(
            f"a {kind} tokenizer cannot be written to GGUF: llama.cpp reads byte-level BPE ('gpt2') and "
            "SentencePiece ('llama') vocabularies. Export with the model's own tokenizer."
        )
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ValueError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model has only {vocab_size} embedding "
            "rows; resize the embeddings (model.resize_token_embeddings) or use the matching tokenizer."
        )
    by_id = {i: t for t, i in vocab.items()}
    added = {a["id"]: a for a in structure.get("added_tokens") or []}
    unk_id = tokenizer.unk_token_id
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
            continue
        if spm and i == unk_id:
            types.append(T.UNKNOWN)
        elif i in added:
            special = added[i].get("special") or _looks_special(tok)
            types.append(T.CONTROL if special else T.USER_DEFINED)
            if not special and spm:
                tok = tok.replace("\u2581", " ")  # llama.cpp expects user-defined spaces pre-normalised
        elif spm and _BYTE_TOKEN.match(tok):
            types.append(T.BYTE)
        else:
            types.append(T.NORMAL)
        tokens.append(tok)

    merges = _merges(model) if kind == "BPE" else []
    scores = None
    if spm:
        scores = _sentencepiece_file_scores(tokenizer, vocab_size) or _spm_scores(
            model, kind, tokens, merges, set(added)
        )
    meta = TokenizerMetadata(
        model="llama" if spm else "gpt2",
        pre="default",
        tokens=tokens,
        token_types=[int(t) for t in types],
        scores=scores,
        merges=merges or None,
        chat_template=_chat_template(tokenizer),
    )
    if not spm:
        meta.pre = _pre_name(tokenizer, structure, tokens, source_gguf)
    else:
        meta.add_space_prefix = _adds_space_prefix(structure)
    meta.special_ids = _special_ids(tokenizer, vocab)
    meta.add_bos, meta.add_eos = _adds_bos_eos(tokenizer)
    return meta


def _sentencepiece_file_scores(tokenizer, vocab_size: int) -> list[float] | None:
    """The scores of the tokenizer's own SentencePiece model, when it has one (what llama.cpp writes)."""
    path = getattr(tokenizer, "vocab_file", None)
    if not path or not str(path).endswith(".model") or not Path(path).exists():
        return None
    try:
        import sentencepiece
    except ImportError:
        return None
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    n = min(sp.get_piece_size(), vocab_size)
    return [float(sp.get_score(i)) for i in range(n)] + [-1000.0] * (vocab_size - n)


def _spm_scores(model, kind, tokens, merges, added_ids) -> list[float]:
    """SentencePiece scores: Unigram log-probs as they are; for BPE, minus the merge rank (what makes
    llama.cpp's highest-score-first merging follow the BPE merge order)."""
    if kind == "Unigram":
        table = {t: float(s) for t, s in model.get("vocab") or []}
        return [table.get(t, -1000.0) for t in tokens]
    rank = {m.replace(" ", ""): -float(r + 1) for r, m in reversed(list(enumerate(merges)))}
    # tokens no merge produces keep SentencePiece's convention: a lower id scores higher
    return [-1000.0 if i in added_ids else rank.get(t, -float(len(merges) + i)) for i, t in enumerate(tokens)]


def _pre_name(tokenizer, structure, tokens, source_gguf) -> str:
    digest = pre_tokenizer_hash(tokenizer)
    known = KNOWN_PRE_TOKENIZERS.get(digest)
    if known:
        return known
    from_source = _source_gguf_pre(source_gguf, tokens)
    if from_source:
        return from_source
    guessed = guess_pre_from_structure(structure)
    if guessed:
        logger.info(
            "pre-tokenizer hash %s is not in llama.cpp's table; guessed %r from its regex", digest, guessed
        )
        return guessed
    logger.warning(
        "unknown BPE pre-tokenizer (hash %s): writing tokenizer.ggml.pre='default'; llama.cpp may split "
        "text differently from transformers for this tokenizer.",
        digest,
    )
    return "default"


def _adds_space_prefix(structure: dict[str, Any]) -> bool:
    for node in _walk([structure.get("normalizer"), structure.get("pre_tokenizer")]):
        if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
            return True
        if node.get("type") == "Metaspace":
            return node.get("prepend_scheme", "always") != "never" and node.get("add_prefix_space", True)
    return False


def _special_ids(tokenizer, vocab: dict[str, int]) -> dict[str, int]:
    out = {}
    for kind, attr in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unk_token_id"),
        ("pad", "pad_token_id"),
    ):
        tid = getattr(tokenizer, attr, None)
        if isinstance(tid, int):
            out[kind] = tid
    for tok in _EOT_TOKENS:
        if tok in vocab:
            out["eot"] = vocab[tok]
            break
    return out


def _adds_bos_eos(tokenizer) -> tuple[bool, bool]:
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bool(ids) and bos is not None and ids[0] == bos
    add_eos = bool(ids) and eos is not None and ids[-1] == eos and len(ids) > 1
    return add_bos, add_eos


def _chat_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template if isinstance(template, str) else None
