"""The generation engine against independent oracles: no-cache argmax decoding, each prompt alone,
repeated prompts, the merged LoRA weights, transformers' logits processors (via `sampling.py`)."""

from __future__ import annotations

import pytest
import torch

from loris import FastLanguageModel
from loris.generation import engine
from loris.generation.sampling import SamplingConfig
from loris.lora import lora_modules
from tiny_models import FAMILIES, VOCAB

FAMILY_NAMES = list(FAMILIES)


def _load(folder, **kw):
    kw.setdefault("load_in_4bit", False)
    model, tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, device_map="cpu", **kw)
    return model.eval(), tok


def _prompts(seed=0, lengths=(9, 4, 6)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def _argmax_no_cache(model, prompt: list[int], steps: int) -> list[int]:
    """The oracle: re-run the whole sequence every step, no cache, no padding."""
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


def _run(model, prompts, **kw):
    ids, mask = engine.left_pad(prompts, 0)
    kw.setdefault("max_new_tokens", 10)
    return engine.run(model, ids, mask, **kw)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("decode", ["eager", "static"])
def test_greedy_ragged_batch_equals_no_cache_argmax(family, decode, saved_family):
    """Ragged, left-padded batch == each prompt alone decoded without a cache (windows of 6 are
    crossed: 9 + 10 tokens), for the model's forward and for the fixed-shape (graph) step."""
    _, folder = saved_family(family)
    model, _ = _load(folder)
    prompts = _prompts()
    got = _run(model, prompts, options=engine.EngineOptions(decode=decode)).rows()
    for prompt, row in zip(prompts, got, strict=True):
        assert row == _argmax_no_cache(model, prompt, 10)


def test_n_samples_share_one_prefill(saved_family):
    _, folder = saved_family("qwen2")
    model, _ = _load(folder)
    prompts = _prompts(lengths=(7, 3))
    widths = []
    hook = model.embed_tokens.register_forward_hook(lambda m, i, o: widths.append(tuple(i[0].shape)))
    try:
        shared = _run(model, prompts, n=3).rows()
    finally:
        hook.remove()
    assert widths[0] == (2, 7)  # one prefill of the 2 distinct prompts ...
    assert all(w == (6, 1) for w in widths[1:])  # ... then 2 x 3 rows decode one token a step
    repeated = _run(model, [p for p in prompts for _ in range(3)]).rows()
    assert shared == repeated


def test_fixed_seed_sampling_reproducible(saved_family):
    _, folder = saved_family("gemma3")
    model, _ = _load(folder)
    cfg = SamplingConfig(
        do_sample=True, temperature=1.3, top_p=0.95, top_k=50, min_p=0.01, repetition_penalty=1.2
    )
    a = _run(model, _prompts(), n=2, sampling=cfg, seed=11).rows()
    b = _run(model, _prompts(), n=2, sampling=cfg, seed=11).rows()
    c = _run(model, _prompts(), n=2, sampling=cfg, seed=12).rows()
    assert a == b and a != c
    assert a[0] != a[1]  # the n samples of one prompt are drawn independently


def test_eos_ends_each_row_on_its_own(saved_family):
    _, folder = saved_family("llama")
    model, _ = _load(folder)
    prompts = _prompts()
    free = _run(model, prompts).rows()
    stop_id = free[1][3]  # row 1's 4th token becomes an EOS id
    res = _run(model, prompts, eos_token_ids=[stop_id], pad_token_id=0)
    for free_row, row, n, reason in zip(
        free, res.rows(), res.lengths.tolist(), res.finish_reasons, strict=True
    ):
        assert n == len(row)
        if stop_id in free_row:
            cut = free_row.index(stop_id) + 1
            assert row == free_row[:cut] and reason == "stop"
        else:
            assert row == free_row and reason == "length"
    assert res.lengths[1] <= 4
    assert res.tokens[1, res.lengths[1] :].eq(0).all()


def test_stop_strings_end_sequences(saved_family):
    from loris.generation.fast import fast_generate
    from loris.generation.params import SamplingParams

    _, folder = saved_family("mistral")
    model, tok = _load(folder)
    prompts = _prompts()
    free = fast_generate(
        model, prompts, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), "live"
    )
    words = free[0].outputs[0].text.split()
    stop = " ".join(words[2:4])  # two words in the middle of completion 0
    out = fast_generate(
        model, prompts, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, stop=[stop]), "live"
    )
    first = out[0].outputs[0]
    assert first.finish_reason == "stop" and first.stop_reason == stop
    assert first.text == free[0].outputs[0].text.split(stop)[0].rstrip(" ") or first.text.endswith(" ")
    assert stop not in first.text and len(first.token_ids) == 4  # ended on the token completing it
    for f, o in zip(free[1:], out[1:], strict=True):  # the other rows run on unless they contain it
        if stop not in f.outputs[0].text:
            assert o.outputs[0].token_ids == f.outputs[0].token_ids


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_lora_live_equals_merged(family, saved_family):
    _, folder = saved_family(family)
    model, _ = _load(folder)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(3)
    for _, m in lora_modules(model):
        with torch.no_grad():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)
    model.eval()
    live = _run(model, _prompts()).rows()
    merged = _run(model, _prompts(), options=engine.EngineOptions(merge_lora=True)).rows()
    from loris.lora import adapters_disabled

    with adapters_disabled(model):
        base = _run(model, _prompts()).rows()
    assert live == merged and live != base
    assert not any(m.merged for _, m in lora_modules(model))  # the live model was left as it was


def test_four_bit_base_with_lora(saved_family):
    _, folder = saved_family("llama")
    model, _ = _load(folder, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    model.eval()
    prompts = _prompts(lengths=(7, 3))
    rows = _run(model, prompts, max_new_tokens=5, options=engine.EngineOptions(decode="static")).rows()
    assert rows == [_argmax_no_cache(model, p, 5) for p in prompts]


def test_fast_generate_outputs_and_stream(saved_family):
    from loris.generation.fast import fast_generate, stream_chat
    from loris.generation.params import SamplingParams

    _, folder = saved_family("phi3")
    model, tok = _load(folder)
    outs = model.fast_generate(["w5 w6 w7", [9, 10, 11]], SamplingParams(temperature=0, max_tokens=6, n=2))
    assert len(outs) == 2 and all(len(o.outputs) == 2 for o in outs)
    assert outs[0].outputs[0].token_ids == outs[0].outputs[1].token_ids  # greedy: equal samples
    assert outs[0].outputs[0].text == tok.decode(outs[0].outputs[0].token_ids, skip_special_tokens=True)
    assert outs[1].prompt_token_ids == [9, 10, 11]
    same = fast_generate(model, [[9, 10, 11]], SamplingParams(temperature=0, max_tokens=6))
    assert same[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    pieces = list(
        stream_chat(
            model, tok, [{"role": "user", "content": "w5 w6 w7"}], SamplingParams(temperature=0, max_tokens=6)
        )
    )
    whole = fast_generate(model, ["w5 w6 w7 "], SamplingParams(temperature=0, max_tokens=6))[0].outputs[0]
    assert "".join(pieces) == whole.text and len(pieces) > 1


# ------------------------------------------------------------------- decode steps kept between calls
STATIC = engine.EngineOptions(decode="static")
EAGER = engine.EngineOptions(decode="eager")


def _lora_model(saved_family, family="llama"):
    _, folder = saved_family(family)
    model, _ = _load(folder)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)
    return model.eval()


def _only_step(model):
    steps = engine.decode_steps(model)
    assert len(steps) == 1
    return next(iter(steps.values()))


def test_static_step_is_reused_across_prompt_lengths_in_a_bucket(saved_family):
    """A long batch then a short one (3 rows, 40 and 19 columns: one 64-column bucket): one step,
    one cache, and the short call's stale columns (left by the long one) change nothing."""
    model = _lora_model(saved_family)
    long_prompts, short_prompts = _prompts(1, (30, 20, 25)), _prompts(2, (9, 4, 6))
    first = _run(model, long_prompts, options=STATIC).rows()
    step = _only_step(model)
    keys = step.cache.keys[0]
    assert step.cache.max_len == engine.DECODE_BUCKET and not step.in_use
    second = _run(model, short_prompts, options=STATIC).rows()
    assert _only_step(model) is step and step.cache.keys[0] is keys
    assert first == _run(model, long_prompts, options=EAGER).rows()
    assert second == _run(model, short_prompts, options=EAGER).rows()
    assert list(engine.decode_steps(model).values()) == [step]  # the eager calls kept none


def test_reused_step_sees_in_place_adapter_updates(saved_family):
    model = _lora_model(saved_family)
    prompts = _prompts()
    before = _run(model, prompts, options=STATIC).rows()
    step = _only_step(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # what an optimizer step does: the same tensors, new values
        for _, m in lora_modules(model):
            m.lora_B.add_(torch.randn(m.lora_B.shape, generator=g) * 0.5)
    reused = _run(model, prompts, options=STATIC).rows()
    assert _only_step(model) is step
    assert engine.release_decode_steps(model) == 1
    fresh = _run(model, prompts, options=STATIC).rows()
    assert _only_step(model) is not step
    assert reused == fresh == _run(model, prompts, options=EAGER).rows()
    assert reused != before


def test_disabling_adapters_selects_another_step(saved_family):
    from loris.lora import adapters_disabled

    model = _lora_model(saved_family)
    prompts = _prompts()
    live = _run(model, prompts, options=STATIC).rows()
    live_step = _only_step(model)
    with adapters_disabled(model):
        base = _run(model, prompts, options=STATIC).rows()
        base_eager = _run(model, prompts, options=EAGER).rows()
    steps = list(engine.decode_steps(model).values())
    assert len(steps) == 2 and steps[0] is live_step
    assert base == base_eager and base != live
    assert _run(model, prompts, options=STATIC).rows() == live
    assert list(engine.decode_steps(model).values()) == [steps[1], live_step]  # most recent last


def test_at_most_four_steps_least_recently_used_dropped(saved_family):
    _, folder = saved_family("qwen2")
    model, _ = _load(folder)
    prompts = _prompts()

    def rows_kept():
        return [key[0][0] for key in engine.decode_steps(model)]

    for n in (1, 2, 3, 4):
        _run(model, prompts, n=n, max_new_tokens=2, options=STATIC)
    assert rows_kept() == [3, 6, 9, 12]
    _run(model, prompts, n=1, max_new_tokens=2, options=STATIC)  # used again: now the most recent
    _run(model, prompts, n=5, max_new_tokens=2, options=STATIC)
    assert engine.MAX_CACHED_STEPS == 4 and rows_kept() == [9, 12, 3, 15]
    assert engine.release_decode_steps(model) == 4
    assert engine.decode_steps(model) == {} and engine.release_decode_steps(model) == 0


def test_merged_copies_and_model_copies_keep_no_steps(saved_family):
    import copy

    model = _lora_model(saved_family)
    prompts = _prompts()
    merged = _run(model, prompts, options=engine.EngineOptions(decode="static", merge_lora=True)).rows()
    assert engine.decode_steps(model) == {}
    live = _run(model, prompts, options=STATIC).rows()
    assert merged == live and len(engine.decode_steps(model)) == 1
    clone = copy.deepcopy(model)
    assert engine.decode_steps(clone) == {}
    assert _run(clone, prompts, options=STATIC).rows() == live
    assert _only_step(clone).model is clone


def test_kept_steps_live_in_the_engine_and_die_with_their_model(saved_family):
    """The engine keeps steps per model without holding the model: nothing in the model's own
    attributes, and once the user drops the model its steps (cache, graph) go too."""
    import gc
    import weakref

    model = _lora_model(saved_family)
    _run(model, _prompts(), options=STATIC)
    step = _only_step(model)
    assert step.model is model
    assert not any(isinstance(v, engine._DecodeSteps) for v in vars(model).values())
    alive = weakref.ref(model)
    kept = weakref.ref(step)
    del model, step
    gc.collect()
    assert alive() is None and kept() is None


@torch.no_grad()
def test_interleaved_calls_do_not_share_a_step(saved_family):
    """A call started while another (a stream) is still decoding gets its own step and cache."""
    model = _lora_model(saved_family)
    a, b = _prompts(1), _prompts(2)
    want_a, want_b = (_run(model, p, options=EAGER).tokens for p in (a, b))
    _run(model, a, options=STATIC)  # a kept step for this shape
    stream = engine.iterate(model, *engine.left_pad(a, 0), max_new_tokens=10, options=STATIC)
    first = [next(stream)[0]]
    got_b = _run(model, b, options=STATIC).tokens
    first += [tok for tok, _ in stream]
    assert torch.equal(torch.stack(first, 1), want_a) and torch.equal(got_b, want_b)
    assert not _only_step(model).in_use


def test_moved_tensors_replace_the_kept_step(saved_family):
    """A graph reads tensors by address: a reassigned weight, or a derived tensor a module keeps
    (lora_fused's memos) rebuilt as a new tensor, gives a new step, and the stale one is dropped."""
    model = _lora_model(saved_family)
    prompts = _prompts()
    _run(model, prompts, options=STATIC)
    first = _only_step(model)
    _, m = next(lora_modules(model))
    m.lora_B = torch.nn.Parameter(m.lora_B.detach() * 2)
    reassigned = _run(model, prompts, options=STATIC).rows()
    second = _only_step(model)
    assert second is not first and reassigned == _run(model, prompts, options=EAGER).rows()
    m._adapter_cache = (("a key",), (torch.zeros(2), torch.zeros(3)))  # as memo_on keeps them
    _run(model, prompts, options=STATIC)
    third = _only_step(model)
    assert third is not second
    _run(model, prompts, options=STATIC)
    assert _only_step(model) is third
