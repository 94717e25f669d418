"""`fast_generate` (vLLM-style requests and outputs) and `stream_chat` (text deltas for a chat UI)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from loris.generation import engine
from loris.generation.params import CompletionOutput, LoRARequest, RequestOutput, SamplingParams
from loris.generation.stop import StopStrings, cut_at_stop
from loris.models.state import DEFAULT_MAX_SEQ_LENGTH, model_state


def eos_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer, the model config and the generation config, de-duplicated."""
    found: list[int] = []
    for source in (getattr(tokenizer, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        if source is None:
            continue
        found.extend([source] if isinstance(source, int) else list(source))
    return sorted(set(int(i) for i in found))


def _encode(tokenizer, prompts) -> tuple[list[str | None], list[list[int]]]:
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    texts, ids = [], []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need a tokenizer: load the model with FastLanguageModel")
            texts.append(p)
            ids.append(tokenizer(p, add_special_tokens=False)["input_ids"])
        elif isinstance(p, dict) and "prompt_token_ids" in p:
            texts.append(None)
            ids.append(list(p["prompt_token_ids"]))
        else:
            texts.append(None)
            ids.append([int(t) for t in p])
    return texts, ids


@contextlib.contextmanager
def lora_context(model, lora_request: LoRARequest | None, base_when_none: bool):
    """Generate with the adapter of ``lora_request`` (loaded over the live one and restored after),
    or with the base model when it is None and ``base_when_none`` (Unsloth + vLLM's behaviour)."""
    from loris.lora import adapters_disabled, lora_modules

    if lora_request is None:
        ctx = adapters_disabled(model) if base_when_none else contextlib.nullcontext()
        with ctx:
            yield
        return
    from loris.peft_format import load_adapter_weights, read_adapter_config

    mods = dict(lora_modules(model))
    if not mods:
        raise ValueError("lora_request needs a model with LoRA slots: call get_peft_model first")
    # The Parameter objects themselves come back (an optimizer holds them; an adapter of another
    # rank replaces them while it is loaded), with their values, rank and scaling.
    saved = {
        k: (m.lora_A, m.lora_B, m.lora_A.detach().clone(), m.lora_B.detach().clone(), m.r, m.scaling)
        for k, m in mods.items()
    }
    try:
        with torch.no_grad():
            load_adapter_weights(model, lora_request.lora_path, read_adapter_config(lora_request.lora_path))
        yield
    finally:
        with torch.no_grad():
            for k, (a, b, a_val, b_val, r, scaling) in saved.items():
                m = mods[k]
                m.lora_A, m.lora_B, m.r, m.scaling = a, b, r, scaling
                a.copy_(a_val)
                b.copy_(b_val)


def fast_generate(
    model,
    prompts,
    sampling_params: SamplingParams | None = None,
    lora_request: LoRARequest | None = None,
    *,
    tokenizer=None,
    options: engine.EngineOptions | None = None,
    use_tqdm: bool = False,
) -> list[RequestOutput]:
    """Texts or token id lists → one `RequestOutput` per prompt with ``n`` completions each.

    As in Unsloth with vLLM, ``lora_request=None`` generates with the base weights (adapters off)
    and ``lora_request=model.load_lora(folder)`` with that saved adapter; ``lora_request="live"``
    uses the adapter as it is in memory now (what GRPO rollouts and ``model.generate`` do).
    """
    params = sampling_params or SamplingParams()
    state = model_state(model)
    tokenizer = tokenizer if tokenizer is not None else state.tokenizer
    texts, ids = _encode(tokenizer, prompts)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else pad
    eos = [] if params.ignore_eos else eos_ids(model, tokenizer)
    eos += list(params.stop_token_ids or [])
    stops = list(params.stop or [])
    max_new = params.max_tokens or max(
        1, (state.max_seq_length or DEFAULT_MAX_SEQ_LENGTH) - max(map(len, ids))
    )
    input_ids, mask = engine.left_pad(ids, pad)
    live = isinstance(lora_request, str) and lora_request == "live"
    with lora_context(model, None if live else lora_request, base_when_none=not live):
        result = engine.run(
            model,
            input_ids,
            mask,
            n=params.n,
            max_new_tokens=max_new,
            sampling=params.sampling_config(),
            eos_token_ids=eos,
            pad_token_id=pad,
            stop=StopStrings(tokenizer, stops),
            seed=params.seed,
            options=options,
        )
    outputs = []
    rows = result.rows()
    eos_set = set(eos)
    for i, (text, pids) in enumerate(zip(texts, ids, strict=True)):
        req = RequestOutput(request_id=str(i), prompt=text, prompt_token_ids=pids)
        for j in range(params.n):
            r = i * params.n + j
            toks = rows[r]
            reason, stop_reason = result.finish_reasons[r], None
            out_text = ""
            if tokenizer is not None:
                out_text = tokenizer.decode(toks, skip_special_tokens=params.skip_special_tokens)
                out_text, hit = cut_at_stop(out_text, stops, params.include_stop_str_in_output)
                stop_reason = hit
            if reason == "stop" and stop_reason is None and toks and toks[-1] in eos_set:
                stop_reason = toks[-1]
            req.outputs.append(CompletionOutput(j, out_text, toks, reason, stop_reason))
        outputs.append(req)
    return outputs


def stream_chat(
    model,
    tokenizer,
    messages: list[dict[str, str]],
    sampling_params: SamplingParams | None = None,
    *,
    options: engine.EngineOptions | None = None,
) -> Iterator[str]:
    """Yield the assistant reply to ``messages`` as text deltas while it is generated."""
    params = sampling_params or SamplingParams(temperature=0, max_tokens=256)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    input_ids, mask = engine.left_pad([ids], getattr(tokenizer, "pad_token_id", None) or 0)
    eos = eos_ids(model, tokenizer) + list(params.stop_token_ids or [])
    stops = list(params.stop or [])
    generated: list[int] = []
    shown = ""
    with torch.no_grad(), engine._eval_mode(model):
        steps = engine.iterate(
            model,
            input_ids,
            mask,
            max_new_tokens=params.max_tokens or 256,
            sampling=params.sampling_config(),
            eos_token_ids=eos,
            pad_token_id=getattr(tokenizer, "pad_token_id", None) or 0,
            stop=StopStrings(tokenizer, stops),
            seed=params.seed,
            options=options,
        )
        for tok, done in steps:
            generated.append(int(tok[0]))
            full = tokenizer.decode(generated, skip_special_tokens=True)
            full, hit = cut_at_stop(full, stops)
            if full.endswith("\ufffd") and not bool(done[0]):
                continue  # an incomplete multi-byte character: wait for the next token
            if len(full) > len(shown):
                yield full[len(shown) :]
                shown = full
            if bool(done[0]) or hit is not None:
                break
