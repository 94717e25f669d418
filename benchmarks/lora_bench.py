#!/usr/bin/env python3
"""LoRA / QLoRA training throughput and peak GPU memory: loris beside its peers, one process each.

Protocol (the one behind the shared anchor numbers, so results compare): a random-initialised
checkpoint with a real model's shape (bf16), random token ids in [0, 128000) with seed 1234,
labels = ids, LoRA r=16 / alpha=16 / dropout 0 on the 7 projections with fp32 adapters, and the same
loop for every system::

    with autocast(bf16): loss = model(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad()

torch AdamW(lr=2e-4) over the trainable parameters; 3 warm-up steps, then 10 timed steps.

  python benchmarks/lora_bench.py suite --settings lora --systems hf unsloth loris --outdir OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Mixture of Experts: transformers 5 keeps each layer's experts as stacked parameters, which PEFT adapts
# through target_parameters (loris and Unsloth put LoRA on the experts from the same TARGETS names).
# A PEFT model built so gives the fused gate_up stack rank r; loris gives it 2r (r each for gate and
# up, the rank_pattern PEFT honours when it loads such an adapter), so loris does a little more work.
MOE_FAMILIES = ("qwen3_moe", "gpt_oss")
EXPERT_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
VOCAB = 128256
SHAPES = {
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
    ),
    # Qwen3-1.7B and Gemma-2-2B shapes (qk-norm; soft-capping, sliding windows, GeGLU, 256k vocab)
    "qwen3-1.7b": dict(
        family="qwen3",
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
    ),
    "gemma2-2b": dict(
        family="gemma2",
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        tie_word_embeddings=True,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        max_position_embeddings=8192,
    ),
    # Qwen3-30B-A3B's layer (128 experts, top-8, expert width 768, GQA 32/4, head_dim 128) with 12 of
    # its 48 layers, so the bf16 checkpoint (~15 GB) fits the GPU hosts' disks; per-layer work equals
    # the real model's, so tokens/s scale by 12/48 to the full depth.
    "qwen3-30b-a3b-12l": dict(
        family="qwen3_moe",
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        num_hidden_layers=12,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
    ),
    # gpt-oss-20b's layer (32 experts, top-4, expert width 2880, GQA 64/8, head_dim 64, sinks, sliding
    # window 128 on alternate layers) with 12 of its 24 layers (~19 GB in bf16); tokens/s scale by 12/24
    "gpt-oss-20b-12l": dict(
        family="gpt_oss",
        vocab_size=201088,
        hidden_size=2880,
        intermediate_size=2880,
        num_local_experts=32,
        num_experts_per_tok=4,
        num_hidden_layers=12,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=64,
        sliding_window=128,
        tie_word_embeddings=False,
    ),
    "moe-tiny": dict(
        family="qwen3_moe",
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=128,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
    ),
}
SETTINGS = {
    "lora": dict(shape="1b", qlora=False, batch=4, seq=2048),
    "qlora": dict(shape="8b", qlora=True, batch=2, seq=2048),
    "smoke": dict(shape="tiny", qlora=False, batch=2, seq=128),
    # Mixture of Experts (Qwen3-30B-A3B layers): LoRA on attention and on every expert
    "moe-qlora": dict(shape="qwen3-30b-a3b-12l", qlora=True, batch=2, seq=2048),
    "moe-lora": dict(shape="qwen3-30b-a3b-12l", qlora=False, batch=2, seq=2048),
    "moe-smoke": dict(shape="moe-tiny", qlora=False, batch=2, seq=128),
    "gptoss-qlora": dict(shape="gpt-oss-20b-12l", qlora=True, batch=2, seq=2048),
    "gptoss-lora": dict(shape="gpt-oss-20b-12l", qlora=False, batch=2, seq=2048),
    "qwen3": dict(shape="qwen3-1.7b", qlora=False, batch=4, seq=2048),
    "gemma2": dict(shape="gemma2-2b", qlora=False, batch=4, seq=2048),
    # batch 1, the longest sequence that trains: doubling from 16k, then bisection to 4k tokens
    "maxctx": dict(shape="8b", qlora=True, batch=1, seq=262144, search=True),
    # the same search capped at 128k tokens (each trial near 256k costs minutes): where both systems
    # reach the cap, the peak memory at 128k compares their headroom
    "maxctx-128k": dict(shape="8b", qlora=True, batch=1, seq=131072, search=True),
    "maxctx-smoke": dict(shape="tiny", qlora=False, batch=1, seq=4096, search=True),
}
GiB = 1024**3


def make_checkpoint(shape: str, out: Path) -> None:
    """A random bf16 checkpoint of ``shape`` (Llama 3 unless the shape names another family) plus a
    byte-level tokenizer of 128256 ids (the benchmark feeds ids below 128000)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    spec = dict(SHAPES[shape])
    family = spec.pop("family", "llama")
    if family != "llama":
        cfg = AutoConfig.for_model(family, bos_token_id=128000, eos_token_id=128001, **spec)
    else:
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            bos_token_id=128000,
            eos_token_id=128001,
            rope_scaling=dict(
                rope_type="llama3",
                factor=32.0 if shape != "8b" else 8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
            **spec,
        )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        if family in MOE_FAMILIES:  # built in bf16 directly: MoE layers in fp32 would not fit
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        else:
            model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size="5GB")
    del model
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"]
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    while len(vocab) < VOCAB - len(specials):
        vocab[f"Ġt{len(vocab)}"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.add_special_tokens(specials)
    PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=specials[0], eos_token=specials[1], pad_token=specials[2]
    ).save_pretrained(out)


def load_system(system: str, ckpt: str, qlora: bool, seq: int, seed: int, res: dict):
    import torch

    if system == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=ckpt,
            max_seq_length=seq,
            dtype=torch.bfloat16,
            load_in_4bit=qlora,
            load_in_16bit=not qlora,
            local_files_only=True,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=TARGETS,
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=seed,
            max_seq_length=seq,
        )
        return model
    if system.startswith("loris"):
        if system.endswith("unpacked"):  # A/B of the stacked q/k/v and gate/up GEMMs
            os.environ["LORIS_PACK_PROJECTIONS"] = "0"
        from loris import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            ckpt, max_seq_length=seq, dtype=torch.bfloat16, load_in_4bit=qlora
        )
        mode = "offload" if system.endswith("offload") else "auto" if system.endswith("auto") else True
        model = FastLanguageModel.get_peft_model(
            model,
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=TARGETS,
            use_gradient_checkpointing=mode,
            random_state=seed,
        )
        res["gradient_checkpointing"] = str(mode)
        return model
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if system == "liger":
        import liger_kernel.transformers as liger

        family = json.loads((Path(ckpt) / "config.json").read_text())["model_type"]
        getattr(liger, f"apply_liger_kernel_to_{family}")()
    kw = dict(dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0})
    if qlora:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(ckpt, **kw)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)
    moe = json.loads((Path(ckpt) / "config.json").read_text())["model_type"] in MOE_FAMILIES
    return get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=TARGETS,
            target_parameters=EXPERT_PARAMETERS if moe else None,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )


def train(args) -> dict:
    setting = SETTINGS[args.setting]
    res = dict(system=args.system, setting=args.setting, **setting)
    t0 = time.time()
    if args.system == "unsloth":
        import unsloth  # noqa: F401  (must precede transformers)
    import torch

    res["import_s"] = round(time.time() - t0, 1)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    res["gpu"] = torch.cuda.get_device_name(0)
    res["host_cpu"] = host_cpu()
    t1 = time.time()
    model = load_system(args.system, args.ckpt, setting["qlora"], setting["seq"], args.seed, res)
    model.train()
    res["load_s"] = round(time.time() - t1, 1)
    torch.cuda.synchronize()
    res["mem_after_load_GiB"] = round(torch.cuda.memory_allocated() / GiB, 3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    res["trainable_params"] = sum(p.numel() for p in trainable)
    g = torch.Generator().manual_seed(1234)
    n = 0 if setting.get("search") else args.warmup + args.steps
    b, s = setting["batch"], setting["seq"]
    batches = [torch.randint(0, 128000, (b, s), generator=g).to(dev) for _ in range(n)]
    opt = torch.optim.AdamW(trainable, lr=2e-4)

    def step(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    if setting.get("search"):
        res.update(max_context(step, opt, dev, s))
        res["versions"] = versions()
        return res
    losses = [step(batches[i]) for i in range(args.warmup)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    events = []
    t = time.perf_counter()
    for i in range(args.steps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        losses.append(step(batches[args.warmup + i]))
        e1.record()
        events.append((e0, e1))
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    times = sorted(a.elapsed_time(z) / 1000 for a, z in events)
    res["tokens_per_s"] = round(b * s * args.steps / dt, 1)
    res["tokens_per_s_median_step"] = round(b * s / times[len(times) // 2], 1)
    res["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
    res["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
    res["losses"] = [round(float(x), 4) for x in losses]
    plan = getattr(getattr(model, "gradient_checkpointing", None), "plan", None)
    if plan is not None:  # loris' "auto" mode: how many blocks kept their activations
        res["blocks_kept"] = plan.kept
    res["versions"] = versions()
    return res


def max_context(step, opt, dev, hi: int, start: int = 16384, grain: int = 4096) -> dict:
    """Largest batch-1 sequence (multiple of ``grain``, at most ``hi``) whose training step fits."""
    import gc

    import torch

    start = min(start, hi)
    tried = {}

    def fits(seq: int) -> bool:
        ids = torch.randint(0, 128000, (1, seq), device=dev)
        try:
            torch.cuda.synchronize()
            t = time.perf_counter()
            step(ids)
            torch.cuda.synchronize()
            tried[seq] = time.perf_counter() - t
            return True
        except torch.cuda.OutOfMemoryError:
            tried[seq] = None
            return False
        finally:
            opt.zero_grad(set_to_none=True)
            del ids
            gc.collect()
            torch.cuda.empty_cache()

    lo, up = 0, None
    seq = start
    while seq <= hi:
        if not fits(seq):
            up = seq
            break
        lo, seq = seq, seq * 2
    if up is None:  # every doubling fitted: try the cap itself
        if lo < hi and fits(hi):
            lo = hi
        up = hi + grain if lo == hi else hi
    while up - lo > grain:
        mid = (lo + up) // 2 // grain * grain
        if mid <= lo:
            break
        lo, up = (mid, up) if fits(mid) else (lo, mid)
    return {
        "max_seq": lo,
        "step_s_at_max": tried.get(lo),
        "tried": {str(k): v for k, v in sorted(tried.items())},
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / GiB, 3),
        "search_cap": hi,
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "triton", "bitsandbytes", "liger_kernel", "unsloth"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cmd_train(args) -> int:
    try:
        res = train(args)
        res["ok"] = True
    except BaseException as e:  # noqa: BLE001 - report every failure in the results
        res = dict(
            system=args.system,
            setting=args.setting,
            ok=False,
            error=f"{type(e).__name__}: {e}"[:1500],
            traceback=traceback.format_exc()[-3000:],
        )
        traceback.print_exc()
    print("RESULT " + json.dumps(res), flush=True)
    return 0 if res["ok"] else 1


WARM_GPU = """
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + {seconds}
while time.time() < end:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
"""


def warm_gpu(seconds: float) -> None:
    """Keep the GPU busy for a while before the first timed run: an idle card starts at low clocks,
    and without this the first system of a suite ran up to 15% slower than the same system later."""
    if seconds > 0:
        subprocess.run([sys.executable, "-c", WARM_GPU.format(seconds=seconds)], check=False)


def host_cpu() -> str:
    """The host's CPU model and core count: speeds differ between hosts of one GPU kind, and a step
    near the host/GPU crossover follows the host."""
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else 'unknown'} x{os.cpu_count()}"


def _run_system(args, setting: str, ckpt: Path, system: str) -> dict:
    """One system's training run, in its own process."""
    t = time.time()
    cmd = [sys.executable, __file__, "train", "--system", system, "--setting", setting, "--ckpt", str(ckpt)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    res = (
        json.loads(line[-1][7:])
        if line
        else dict(system=system, setting=setting, ok=False, error=p.stderr[-2000:])
    )
    res["wall_s"] = round(time.time() - t, 1)
    outcome = (
        f"{res.get('tokens_per_s')} tok/s, peak {res.get('peak_mem_gb')} GiB"
        if res.get("ok")
        else "FAILED " + res.get("error", "")[-600:]
    )
    print(f"[bench] {setting}/{system}: {outcome}", flush=True)
    return res


def cmd_suite(args) -> int:
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for setting in args.settings:
        ckpt = Path(args.workdir) / SETTINGS[setting]["shape"]
        if not (ckpt / "config.json").exists():
            t = time.time()
            make_checkpoint(SETTINGS[setting]["shape"], ckpt)
            print(f"[bench] checkpoint {setting}: {time.time() - t:.0f}s", flush=True)
        if not rows:
            warm_gpu(args.warm_gpu)
        # Rounds interleave the systems (A B A B), so a drift of the host or the card during the
        # suite touches every system alike; every run is kept, the table shows each one's best.
        for round_ in range(args.repeat):
            for system in args.systems:
                res = _run_system(args, setting, ckpt, system)
                res["round"] = round_
                rows.append(res)
                (out / "lora_bench.json").write_text(json.dumps(rows, indent=1))
    print_table(rows)
    return 0


HOPPER_BF16_DENSE_FLOPS = 989.4e12  # H100 / H200 SXM, dense bf16 tensor-core peak (same chip)


def flops_per_token(shape: str, seq: int) -> float:
    """Model FLOPs per trained token for LoRA on frozen weights: forward (2N) and input gradients (2N)
    of every linear incl. the LM head, plus causal attention (2·s·d forward, 4·s·d backward per
    layer). Recomputation, the LoRA matmuls and NF4 dequantization are not counted (MFU counts the
    model's work, not the implementation's)."""
    c = SHAPES[shape]
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    vocab = c.get("vocab_size", VOCAB)
    q = c["num_attention_heads"] * c["head_dim"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    experts = c.get("num_experts", c.get("num_local_experts"))
    if experts:  # the experts a token is routed to, and the router
        mlp = 3 * h * c.get("moe_intermediate_size", inter) * c["num_experts_per_tok"] + h * experts
    else:
        mlp = 3 * h * inter
    per_layer = h * (q + 2 * kv) + q * h + mlp
    n = layers * per_layer + h * vocab
    return 4 * n + 6 * seq * q * layers


def mfu(row: dict) -> float | None:
    """Model FLOPs utilisation of a result row, against the H100/H200 dense bf16 peak."""
    if not row.get("ok") or not any(g in str(row.get("gpu", "")) for g in ("H100", "H200")):
        return None
    return row["tokens_per_s"] * flops_per_token(row["shape"], row["seq"]) / HOPPER_BF16_DENSE_FLOPS


def best_runs(rows) -> list[dict]:
    """One row per (setting, system): the run with the most tokens/s (failed runs only where no run
    succeeded), carrying every run's tokens/s in ``runs``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["system"]), []).append(r)
    best = []
    for group in groups.values():
        ok = [r for r in group if r.get("ok") and "tokens_per_s" in r]
        if not ok:
            best.append(group[-1])
            continue
        top = dict(max(ok, key=lambda r: r["tokens_per_s"]))
        top["runs"] = [r["tokens_per_s"] for r in ok]
        best.append(top)
    return best


def print_table(rows) -> None:
    print(
        "| setting | system | tokens/s | median-step tokens/s | peak GiB | MFU | loss first -> last | runs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in best_runs(rows):
        if r.get("ok") and "max_seq" in r:
            print(
                f"| {r['setting']} | {r['system']} | max context {r['max_seq']:,} tokens (cap {r['search_cap']:,}) | | | | | |"
            )
        elif r.get("ok"):
            u = mfu(r)
            runs = ", ".join(f"{t:,.0f}" for t in r.get("runs", [r["tokens_per_s"]]))
            print(
                f"| {r['setting']} | {r['system']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_median_step']:,.0f} | "
                f"{r['peak_mem_gb']:.2f} | {'' if u is None else f'{100 * u:.1f}%'} | "
                f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f} | {runs} |"
            )
        else:
            print(f"| {r['setting']} | {r['system']} | failed | | | | {r.get('error', '')[:80]} | |")


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--system", required=True)
    t.add_argument("--setting", required=True, choices=list(SETTINGS))
    t.add_argument("--ckpt", required=True)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--seed", type=int, default=3407)
    s = sub.add_parser("suite")
    s.add_argument("--settings", nargs="+", default=["lora"])
    s.add_argument("--systems", nargs="+", default=["hf", "unsloth", "loris"])
    s.add_argument("--outdir", default=os.environ.get("OUT", "bench-out"))
    s.add_argument("--workdir", default="/dev/shm/loris-bench")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--timeout", type=int, default=400)
    s.add_argument("--repeat", type=int, default=1, help="rounds over the systems, interleaved")
    s.add_argument("--warm-gpu", type=float, default=20.0, help="seconds of GPU load before the first run")
    tb = sub.add_parser("table", help="print the Markdown table (with MFU) of a results JSON")
    tb.add_argument("results")
    args = ap.parse_args()
    if args.cmd == "table":
        print_table(json.loads(Path(args.results).read_text()))
        return 0
    return cmd_train(args) if args.cmd == "train" else cmd_suite(args)


if __name__ == "__main__":
    sys.exit(main())
