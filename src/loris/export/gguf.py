"""Our own Hugging Face → GGUF converter, on the `gguf` package (no llama.cpp build needed).

One conversion serves every requested quantization: the merged model is planned once
(`loris.export.merged_tensors`), each tensor is computed once, renamed to llama.cpp's names,
transformed the way llama.cpp's loaders expect (Q/K rows interleaved for Llama-style RoPE, Gemma's
norm weights stored as ``1 + w``) and then encoded for each method with `loris.export.gguf_quants`
(llama.cpp's per-tensor type mix) and streamed into that method's file. Every file is written under
a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from loris.export.atomic import temp_file_for
from loris.export.merged_tensors import PlannedTensor, merged_plan_for_export
from loris.models.config import ModelConfig
from loris.models.families import FAMILIES, family_spec
from loris.models.state import model_state

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType

_ARCH_BY_NAME = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


def gguf_arch(cfg: ModelConfig) -> gguf.MODEL_ARCH:
    """The GGUF architecture this config's family is written as (its `FamilySpec.gguf_arch`)."""
    if cfg.model_type not in FAMILIES:
        raise ValueError(gguf_unsupported_message(cfg.model_type))
    return _ARCH_BY_NAME[FAMILIES[cfg.model_type].gguf_arch]


def gguf_unsupported_message(model_type: str) -> str:
    """Why a model type has no GGUF export in loris, and the way to get one anyway."""
    arch_name = {"cohere": "command-r", "gpt_oss": "gpt-oss", "stablelm": "stablelm"}.get(
        model_type, model_type.replace("_", "-")
    )
    known = arch_name in gguf.MODEL_ARCH_NAMES.values() or model_type in gguf.MODEL_ARCH_NAMES.values()
    llama_cpp = (
        f"gguf-py knows the architecture ({arch_name!r}), but loris has no tensor-name and metadata map for it"
        if known
        else f"neither loris nor gguf-py has a GGUF architecture for model_type={model_type!r}"
    )
    return (
        f"GGUF export of model_type={model_type!r}: {llama_cpp}. loris writes GGUF for "
        f"{', '.join(sorted(FAMILIES))}. Save the merged model with "
        "save_pretrained_merged(folder, tokenizer, save_method='merged_16bit') and convert that folder with "
        "llama.cpp's convert_hf_to_gguf.py"
        + (" (which supports it)." if known else ", if it supports the architecture.")
    )


@dataclass
class GGUFTensor:
    """One tensor of the output files: llama.cpp name, torch-order shape, and its fp32 values."""

    name: str
    shape: tuple[int, ...]
    compute: Callable[[], torch.Tensor]


# ---------------------------------------------------------------------------------- quant hooks


def _quants():
    from loris.export import gguf_quants

    return gguf_quants


def resolve_methods(methods: str | Sequence[str] | None, dtype: torch.dtype) -> list[str]:
    return _quants().resolve_quantization_methods(methods, dtype)


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return rows * (shape[-1] // block) * type_size


# ---------------------------------------------------------------------------------- tensors


def permute_for_llama_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half row order → llama.cpp's interleaved pairs (per head)."""
    from loris.models.gguf_import import permute_qk

    return permute_qk(w, n_heads)


def gguf_tensors(model, plan: list[PlannedTensor]) -> list[GGUFTensor]:
    """The plan renamed to llama.cpp's tensor names, with the per-architecture transforms attached."""
    cfg: ModelConfig = model.config
    spec = family_spec(cfg.model_type)
    permute, plus_one = spec.gguf_permuted_qk, spec.gguf_norm_plus_one
    names = gguf.TensorNameMap(gguf_arch(cfg), cfg.num_layers)
    out = [*_rope_tensors(cfg)]
    plan = _stack_experts(plan)
    if cfg.moe is not None and cfg.moe.expert_layout == "gpt_oss":
        plan = _split_gpt_oss_experts(plan, cfg.moe.intermediate_size)
    for t in plan:
        name = names.get_name(t.name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for tensor {t.name!r} of a {cfg.model_type} model")
        if not name.endswith((".weight", ".bias")):  # a bare parameter (gpt-oss' self_attn.sinks)
            name += ".weight"
        compute = t.compute
        if permute and t.name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            heads = cfg.num_heads if ".q_proj." in t.name else cfg.num_kv_heads
            compute = lambda c=compute, h=heads: permute_for_llama_rope(c(), h)  # noqa: E731
        elif plus_one and t.name.endswith("norm.weight"):
            compute = lambda c=compute: c() + 1.0  # noqa: E731
        out.append(GGUFTensor(name, tuple(t.shape), compute))
    return out


_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _stack_experts(plan: list[PlannedTensor]) -> list[PlannedTensor]:
    """Per-expert projections (the Hub's layout) → one (experts, rows, cols) tensor per projection
    and layer, llama.cpp's ``ffn_{gate,up,down}_exps``; every other tensor passes through."""
    out: list[PlannedTensor] = []
    groups: dict[str, list[PlannedTensor]] = {}
    for t in plan:
        m = _EXPERT.match(t.name)
        if m is None:
            out.append(t)
            continue
        key = f"{m.group(1)}.{m.group(3)}.weight"
        if key not in groups:
            groups[key] = []
            out.append(PlannedTensor(key, (), lambda: None, True))  # placeholder, keeps the order
        groups[key].append(t)
    for i, t in enumerate(out):
        parts = groups.get(t.name)
        if parts is not None and t.shape == ():
            out[i] = PlannedTensor(
                t.name,
                (len(parts), *parts[0].shape),
                lambda ps=parts: torch.stack([p.compute() for p in ps]),
                is_projection=True,
            )
    return out


_GPT_OSS_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)(_bias)?$")


def _split_gpt_oss_experts(plan: list[PlannedTensor], inter: int) -> list[PlannedTensor]:
    """gpt-oss' stacked experts as llama.cpp's converter writes them: the (experts, in, out)
    ``gate_up_proj`` with interleaved columns becomes ``ffn_gate_exps`` / ``ffn_up_exps`` (experts,
    out, in), ``down_proj`` ``ffn_down_exps`` (experts, out, in), each bias split alike."""
    out: list[PlannedTensor] = []
    for t in plan:
        m = _GPT_OSS_EXPERT.match(t.name)
        if m is None:
            out.append(t)
            continue
        prefix, proj, bias = m.group(1), m.group(2), m.group(3) is not None
        suffix = ".bias" if bias else ".weight"
        e = t.shape[0]
        if proj == "down_proj":
            shape = t.shape if bias else (e, t.shape[2], t.shape[1])
            compute = t.compute if bias else (lambda c=t.compute: c().transpose(1, 2).contiguous())
            out.append(PlannedTensor(prefix + ".down_proj" + suffix, shape, compute, not bias))
            continue
        fused = _computed_once(t.compute, uses=2)
        for name, start in (("gate_proj", 0), ("up_proj", 1)):
            if bias:
                compute = lambda c=fused, s=start: c()[:, s::2].contiguous()  # noqa: E731
                shape = (e, inter)
            else:
                compute = lambda c=fused, s=start: c()[:, :, s::2].transpose(1, 2).contiguous()  # noqa: E731
                shape = (e, inter, t.shape[1])
            out.append(PlannedTensor(f"{prefix}.{name}{suffix}", shape, compute, not bias))
    return out


def _computed_once(compute: Callable[[], torch.Tensor], uses: int) -> Callable[[], torch.Tensor]:
    """``compute`` run on the first call, its result handed out ``uses`` times, then dropped."""
    held: list = []

    def get() -> torch.Tensor:
        if not held:
            held[:] = [compute(), uses]
        value = held[0]
        held[1] -= 1
        if held[1] == 0:
            held.clear()
        return value

    return get


def _rope_tensors(cfg: ModelConfig) -> list[GGUFTensor]:
    """llama.cpp's per-frequency RoPE factors: Llama 3.1's band smoothing, Phi-3's LongRoPE lists."""
    rope = cfg.rope
    dim = rope.rotary_dim or cfg.head_dim
    if rope.rope_type == "llama3":
        from loris.models.rope import _base_inv_freq, _llama3

        base = _base_inv_freq(rope.theta, dim)
        factors = (base / _llama3(base, rope)).float()
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        return [GGUFTensor(name, tuple(factors.shape), lambda f=factors: f)]
    if rope.rope_type == "longrope" and rope.long_factor and rope.short_factor:
        out = []
        for kind, values in (
            (gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, rope.long_factor),
            (gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT, rope.short_factor),
        ):
            t = torch.tensor(values, dtype=torch.float32)
            if t.numel() != dim // 2:
                raise ValueError(f"LongRoPE factor list has {t.numel()} entries, expected {dim // 2}")
            out.append(GGUFTensor(gguf.TENSOR_NAMES[kind] + ".weight", tuple(t.shape), lambda t=t: t))
        return out
    return []


# ---------------------------------------------------------------------------------- metadata


def write_arch_metadata(writer: gguf.GGUFWriter, cfg: ModelConfig, warn: Callable[[str], None]) -> None:
    """Hyper-parameters llama.cpp reads for this architecture (the family's own from its spec)."""
    spec = family_spec(cfg.model_type)
    head_dim = cfg.head_dim
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope.theta)
    writer.add_vocab_size(cfg.vocab_size)
    if head_dim != cfg.hidden_size // cfg.num_heads or spec.gguf_key_length:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if spec.gguf_rope_dimension:
        writer.add_rope_dimension_count(cfg.rope.rotary_dim or head_dim)
    _write_rope_scaling(writer, cfg, warn)
    if spec.gguf_metadata is not None:
        spec.gguf_metadata(writer, cfg, warn)
    elif cfg.sliding_window and any(cfg.is_sliding(i) for i in range(cfg.num_layers)):
        warn(
            f"sliding-window attention ({cfg.sliding_window}) is not represented for {cfg.model_type} in GGUF; "
            "runtimes use full attention"
        )


def _write_rope_scaling(writer: gguf.GGUFWriter, cfg: ModelConfig, warn: Callable[[str], None]) -> None:
    rope = cfg.rope
    kind = rope.rope_type
    if kind in ("default", None):
        return
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope.factor)
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope.factor)
        if rope.original_max_position_embeddings:
            writer.add_rope_scaling_orig_ctx_len(rope.original_max_position_embeddings)
    elif kind == "llama3":
        pass  # carried by the rope_freqs tensor, as llama.cpp's converter writes it
    elif kind == "longrope":
        original = rope.original_max_position_embeddings or cfg.max_position_embeddings
        writer.add_rope_scaling_orig_ctx_len(original)
        scale = cfg.max_position_embeddings / original
        factor = rope.attention_factor
        if factor is None:
            factor = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(original))
        writer.add_rope_scaling_attn_factors(factor)
    else:
        warn(f"rope scaling {kind!r} has no GGUF equivalent; the file uses plain RoPE")


def _first(v):
    return v[0] if isinstance(v, (list, tuple)) and v else v


def _model_name(model) -> str:
    name = str(model_state(model).name_or_path or "").rstrip("/")
    if not name:
        return "model"
    path = Path(name)
    return path.stem if path.suffix == ".gguf" else path.name


# ---------------------------------------------------------------------------------- writing


@dataclass
class _Output:
    method: str
    path: Path
    tmp: Path
    writer: gguf.GGUFWriter
    types: list[Q]


def _new_writer(model, cfg, arch, method, tok_meta, tensors, warn) -> tuple[gguf.GGUFWriter, list[Q]]:
    q = _quants()
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(_model_name(model))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(int(q.file_type_for(method)))
    write_arch_metadata(writer, cfg, warn)
    if tok_meta is not None:
        tok_meta.write(writer)
    else:  # no vocabulary, but keep the config's special ids (readers build their configs from them)
        for tid, add in (
            (cfg.bos_token_id, writer.add_bos_token_id),
            (_first(cfg.eos_token_id), writer.add_eos_token_id),
            (cfg.pad_token_id, writer.add_pad_token_id),
        ):
            if tid is not None:
                add(int(tid))
    mixer = q.TypeMixer(
        method,
        n_layers=cfg.num_layers,
        n_head=cfg.num_heads,
        n_head_kv=cfg.num_kv_heads,
        tied_embeddings=not any(t.name == "output.weight" for t in tensors),
        arch=gguf.MODEL_ARCH_NAMES[arch],
    )
    types = []
    for t in tensors:
        qtype = Q.F32 if t.name.startswith("rope_") else mixer.type_for(t.name, t.shape)
        types.append(qtype)
        writer.add_tensor_info(
            t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, qtype), raw_dtype=qtype
        )
    return writer, types


def convert_to_gguf(
    model,
    outputs: dict[str, Path],
    tokenizer: Any = None,
) -> list[Path]:
    """Write one GGUF per ``method → path`` from a single pass over the merged model's tensors."""
    cfg: ModelConfig = model.config
    arch = gguf_arch(cfg)
    warnings_seen: list[str] = []

    def warn(msg: str) -> None:
        if msg not in warnings_seen:
            warnings_seen.append(msg)
            logger.warning(msg)

    tok_meta = None
    if tokenizer is not None:
        from loris.export.gguf_tokenizer import tokenizer_metadata

        tok_meta = tokenizer_metadata(tokenizer, cfg.vocab_size, model_state(model).source_gguf_file)
    else:
        warn("no tokenizer given: the GGUF has no vocabulary and runtimes cannot use it for text")
    plan, source = merged_plan_for_export(model)
    logger.info("loris: merging LoRA into %s", source)
    print(f"loris: merging LoRA into {source}")
    tensors = gguf_tensors(model, plan)
    outs: list[_Output] = []
    try:
        for method, path in outputs.items():
            writer, types = _new_writer(model, cfg, arch, method, tok_meta, tensors, warn)
            tmp = temp_file_for(path)
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            outs.append(_Output(method, path, tmp, writer, types))
        q = _quants()
        for i, t in enumerate(tensors):
            values = t.compute()
            if tuple(values.shape) != t.shape:
                raise RuntimeError(f"{t.name}: computed shape {tuple(values.shape)} != planned {t.shape}")
            for o in outs:
                o.writer.write_tensor_data(q.quantize(values, o.types[i]))
            del values
        for o in outs:
            o.writer.close()
            os.replace(o.tmp, o.path)
    finally:
        for o in outs:
            if o.tmp.exists():
                o.writer.close()
                o.tmp.unlink()
    return [o.path for o in outs]


def gguf_filename(name: str, method: str) -> str:
    return f"{name}.{method.upper()}.gguf"


def save_gguf(
    model,
    save_directory: str | Path,
    tokenizer: Any = None,
    quantization_method: str | Sequence[str] | None = "fast_quantized",
    first_conversion: str | None = None,
    name: str = "model",
    backend: str = "loris",
) -> list[Path]:
    """Write ``<save_directory>/<name>.<QUANT>.gguf`` per method, plus an Ollama ``Modelfile`` when possible.

    ``first_conversion`` (Unsloth's intermediate 16-bit file) is not needed: every method is encoded
    straight from the merged 16-bit tensors. ``backend="llama.cpp"`` (needs llama-cpp-python) writes one
    F16 file with loris' converter and quantizes it with llama.cpp's own ``llama_model_quantize``.
    """
    if backend not in ("loris", "llama.cpp"):
        raise ValueError(f"backend={backend!r}: use 'loris' (no llama.cpp needed) or 'llama.cpp'")
    if model.config.model_type not in FAMILIES:  # before any file is written
        raise ValueError(gguf_unsupported_message(model.config.model_type))
    if first_conversion is not None:
        logger.info(
            "first_conversion=%r ignored: loris quantizes straight from the merged tensors", first_conversion
        )
    methods = resolve_methods(quantization_method, model.dtype)
    folder = Path(save_directory)
    # -- free-space check before writing (loris.export.diskspace) --
    from loris.export.diskspace import ensure_free_space, estimate_bytes

    ensure_free_space(
        folder, estimate_bytes(model, methods), f"the GGUF export ({', '.join(methods)}) to {folder}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {m: folder / gguf_filename(name, m) for m in methods}
    if backend == "llama.cpp":
        paths = _convert_with_llamacpp(model, outputs, tokenizer)
    else:
        paths = convert_to_gguf(model, outputs, tokenizer)
    _write_modelfile(folder, tokenizer, paths[0].name)
    return paths


def _convert_with_llamacpp(model, outputs: dict[str, Path], tokenizer: Any) -> list[Path]:
    """Float methods from loris' converter; quantized ones by llama.cpp from one F16 file."""
    import ctypes

    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError(
            "backend='llama.cpp' needs llama-cpp-python (pip install 'loris[gguf-check]'); "
            "the default backend='loris' writes the same blocks without it"
        ) from e
    floats = {m: p for m, p in outputs.items() if m in ("f32", "f16", "bf16")}
    quants = {m: p for m, p in outputs.items() if m not in floats}
    folder = next(iter(outputs.values())).parent
    with tempfile.TemporaryDirectory(dir=folder, prefix=".llamacpp-") as tmp:
        f16 = floats.get("f16") or Path(tmp) / "source.F16.gguf"
        convert_to_gguf(model, {**floats, "f16": f16}, tokenizer)
        for method, path in quants.items():
            partial = Path(tmp) / path.name
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = int(_quants().file_type_for(method))
            rc = llama_cpp.llama_model_quantize(
                str(f16).encode(), str(partial).encode(), ctypes.byref(params)
            )
            if rc != 0:
                raise RuntimeError(f"llama.cpp's quantizer failed for {method} (return code {rc})")
            os.replace(partial, path)
    return list(outputs.values())


def _write_modelfile(folder: Path, tokenizer: Any, gguf_name: str) -> None:
    """Modelfile through `loris.export.ollama` when it offers one; skipped (with a note) otherwise."""
    try:
        from loris.export import ollama
    except ImportError:
        print("loris: skipping the Ollama Modelfile (loris.export.ollama is not available)")
        return
    make = getattr(ollama, "modelfile_for", None)
    if make is None or tokenizer is None:
        print("loris: skipping the Ollama Modelfile (no tokenizer or no Modelfile builder)")
        return
    try:
        text = make(tokenizer, gguf_name)
    except Exception as e:  # a Modelfile is a convenience: never fail the export for it
        print(f"loris: skipping the Ollama Modelfile ({type(e).__name__}: {e})")
        return
    tmp = temp_file_for(folder / "Modelfile")
    tmp.write_text(text)
    os.replace(tmp, folder / "Modelfile")
