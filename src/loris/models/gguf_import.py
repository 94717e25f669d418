"""Read a GGUF file as a Hugging Face checkpoint: an HF config dict plus HF-named, dequantized tensors.

llama.cpp's converter renames tensors, reorders Q/K rows for its interleaved RoPE (Llama-style
architectures only) and stores Gemma's norm weights as ``1 + w``; each step is undone here, so the
rest of loading sees the same checkpoint transformers would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loris.models.families import FAMILIES, FamilySpec

# GGUF architecture → the family loaded from it
_ARCHES: dict[str, FamilySpec] = {arch: spec for spec in FAMILIES.values() for arch in spec.load_arches}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
# The norm after attention is "post_attention_layernorm" in both naming schemes, but it means the pre-MLP
# norm for Llama-style models and the output norm of attention for Gemma.
_LLAMA_NORMS = {"ffn_norm": "post_attention_layernorm"}
_GEMMA_NORMS = {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFCheckpoint:
    """An opened GGUF file: its metadata as an HF config and its tensors under HF names."""

    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        self.reader = gguf.GGUFReader(str(self.path))
        self.arch = self.field("general.architecture")
        if self.arch not in _ARCHES:
            raise ValueError(
                f"GGUF architecture {self.arch!r} is not supported for loading; supported: {', '.join(_ARCHES)}"
            )
        self.family = _ARCHES[self.arch]
        self.model_type = self.family.model_type
        self.permuted_qk, self.norm_plus_one = self.family.gguf_permuted_qk, self.family.gguf_norm_plus_one
        self.hf_config = self._hf_config()

    def field(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def _arch_field(self, key: str, default: Any = None) -> Any:
        return self.field(f"{self.arch}.{key}", default)

    def _hf_config(self) -> dict[str, Any]:
        embd = next(t for t in self.reader.tensors if t.name == "token_embd.weight")
        vocab = int(embd.shape[1])
        n_head = int(self._arch_field("attention.head_count"))
        hidden = int(self._arch_field("embedding_length"))
        head_dim = int(self._arch_field("attention.key_length", hidden // n_head))
        cfg: dict[str, Any] = {
            "model_type": self.model_type,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": int(self._arch_field("feed_forward_length")),
            "num_hidden_layers": int(self._arch_field("block_count")),
            "num_attention_heads": n_head,
            "num_key_value_heads": int(self._arch_field("attention.head_count_kv", n_head)),
            "head_dim": head_dim,
            "max_position_embeddings": int(self._arch_field("context_length", 4096)),
            "rms_norm_eps": float(self._arch_field("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self._arch_field("rope.freq_base", 10000.0)),
            "tie_word_embeddings": not any(t.name == "output.weight" for t in self.reader.tensors),
            "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.field("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self.field("tokenizer.ggml.padding_token_id"),
        }
        scaling = self._arch_field("rope.scaling.type")
        if scaling and scaling != "none":
            cfg["rope_scaling"] = {
                "rope_type": scaling,
                "factor": float(self._arch_field("rope.scaling.factor", 1.0)),
                "original_max_position_embeddings": self._arch_field("rope.scaling.original_context_length"),
            }
        window = self._arch_field("attention.sliding_window")
        if window:
            cfg["sliding_window"] = int(window)
        if self.family.gguf_config is not None:
            cfg.update(self.family.gguf_config(self._arch_field, head_dim))
        return cfg

    def _hf_name(self, name: str) -> str | None:
        stem, _, suffix = name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk":
            layer, kind = parts[1], ".".join(parts[2:])
            norms = _GEMMA_NORMS if self.norm_plus_one else _LLAMA_NORMS
            hf = self.family.gguf_tensor_names.get(kind) or _LAYER_NAMES.get(kind) or norms.get(kind)
            if hf is None:
                return None
            return f"model.layers.{layer}.{hf}.{suffix}"
        base = _GLOBAL_NAMES.get(stem)
        return f"{base}.{suffix}" if base else None

    def tensors(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor) pairs, dequantized to ``dtype`` one at a time."""
        from gguf.quants import dequantize

        cfg = self.hf_config
        for t in self.reader.tensors:
            name = self._hf_name(t.name)
            if name is None:
                continue
            shape = [int(d) for d in reversed(t.shape)]
            array = dequantize(t.data, t.tensor_type).reshape(shape)
            w = torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy
            if self.permuted_qk and name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg["num_attention_heads"] if "q_proj" in name else cfg["num_key_value_heads"]
                w = unpermute_qk(w, heads)
            if self.norm_plus_one and name.endswith("norm.weight"):
                w = w - 1.0
            yield name, w.to(dtype)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order for Q/K (pairs interleaved per head) back to HF's rotate-half order."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half row order → llama.cpp's interleaved order (inverse of `unpermute_qk`)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
