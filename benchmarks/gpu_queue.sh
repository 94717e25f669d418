#!/usr/bin/env bash
# The GPU work waiting for a device, as parts that each fit one 10-minute device call, most valuable
# first. Results go under $OUT/<part>/ (the device tool brings $OUT back); commit them under
# benchmarks/results/ with the date and the GPU's name.
#
#   bash benchmarks/gpu_queue.sh prepare     # here, on the CPU machine: fills the git-ignored .whl/
#   device run, carry [".whl"]:  bash benchmarks/gpu_queue.sh tests
#                                bash benchmarks/gpu_queue.sh speed    # then dpo, moe, gptoss, rollout, maxctx1, maxctx2
#
# tests    (~6 min)  every GPU test, then the torchrun smoke (DDP LoRA, FSDP2 full) on one GPU
# speed    (~7 min)  LoRA-1B: loris default, loris "auto" and Unsloth, two rounds, plus loris as of fd60f81
#                    (before the structure step, #14) interleaved: the no-speed-change check
# dpo      (~6 min)  benchmarks/dpo_bench.py, LoRA-1B shape: loris, TRL + PEFT (± Liger), Unsloth (#17)
# moe      (~9 min)  Qwen3-30B-A3B shape (12 of 48 layers), QLoRA and LoRA: loris, transformers + PEFT,
#                    Unsloth (#19); gptoss: the same for gpt-oss-20b's shape (12 of 24 layers)
# rollout  (~7 min)  decode_bench --profile (where a decode step's time goes) and grpo_bench's per-phase
#                    times, loris vs Unsloth (#18)
# maxctx1, maxctx2   longest context, Llama-3.1-8B QLoRA batch 1, loris vs Unsloth (#18), resumable
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
OLD_REV=fd60f81  # main before the structure step (#14)

prepare() {
    local shared=../shared/bench
    mkdir -p .whl/peers .whl/bench
    # what the test suite needs beyond the GPU image (torch, transformers, peft, hypothesis come with it)
    for w in bitsandbytes datasets dill multiprocess; do cp "$shared"/wheels/"$w"-*.whl .whl/; done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl gguf==0.19.0
    # the peers, and the shared harness the DPO/GRPO benchmarks build their checkpoints with
    for w in cut_cross_entropy liger_kernel torchao trl unsloth-2 unsloth_zoo; do
        cp "$shared"/wheels/"$w"*.whl .whl/peers/
    done
    cp "$shared"/anchor_bench.py "$shared"/grpo_anchor.py .whl/bench/
    rm -rf ".whl/$OLD_REV" && mkdir -p ".whl/$OLD_REV" && git archive "$OLD_REV" src | tar -x -C ".whl/$OLD_REV"
    du -sh .whl
}

site() {  # the wheels into /tmp/site (the image's python3 holds torch); $1 = "peers" adds Unsloth, TRL, Liger
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl ${1:+.whl/peers/*.whl} >/dev/null 2>&1
    export PYTHONPATH=$PWD/src:/tmp/site HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
    export LORIS_BENCH_SHARED=$PWD/.whl/bench
}

tests() {
    local o=$OUT/tests && mkdir -p "$o"
    site ""
    nvidia-smi -L | tee "$o/gpu.txt"
    timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -40 | tee "$o/gpu-tests.txt"
    timeout 200 torchrun --nproc-per-node 1 benchmarks/distributed_smoke.py --only ddp_lora fsdp2_full \
        --out "$o/distributed_smoke.json" 2>&1 | tail -20 | tee "$o/distributed_smoke.log"
}

speed() {
    local o=$OUT/speed && mkdir -p "$o"
    site peers
    nvidia-smi -L | tee "$o/gpu.txt"
    local bench=(python3 benchmarks/lora_bench.py suite --settings lora --steps 6 --warmup 2 --timeout 240
                 --workdir /dev/shm/loris-bench)
    for round in 1 2; do
        PYTHONPATH=$PWD/.whl/$OLD_REV/src:/tmp/site "${bench[@]}" --systems loris --warm-gpu 0 \
            --outdir "$o/old-$round" 2>&1 | grep '^\[bench\]' | sed "s/loris:/loris@$OLD_REV:/" | tee -a "$o/log.txt"
        "${bench[@]}" --systems loris loris-auto unsloth --warm-gpu 0 --outdir "$o/new-$round" 2>&1 \
            | grep '^\[bench\]' | tee -a "$o/log.txt"
    done
}

dpo() {
    local o=$OUT/dpo && mkdir -p "$o"
    site peers
    nvidia-smi -L | tee "$o/gpu.txt"
    python3 benchmarks/dpo_bench.py suite --settings lora --steps 6 --timeout 240 --workdir /dev/shm/dpo \
        --out "$o/dpo_bench_lora.json" 2>&1 | tail -30 | tee "$o/log.txt"
}

moe_suite() {  # $1: the part's folder; the rest: lora_bench settings
    local o=$OUT/$1 && mkdir -p "$o" && shift
    site peers
    nvidia-smi -L | tee "$o/gpu.txt"
    python3 benchmarks/lora_bench.py suite --settings "$@" --systems loris hf unsloth --steps 6 --warmup 2 \
        --timeout 240 --workdir /dev/shm/loris-bench --outdir "$o" 2>&1 | tail -30 | tee "$o/log.txt"
}

moe() { moe_suite moe moe-qlora moe-lora; }

gptoss() { moe_suite gptoss gptoss-qlora gptoss-lora; }

rollout() {
    local o=$OUT/rollout && mkdir -p "$o"
    site peers
    nvidia-smi -L | tee "$o/gpu.txt"
    timeout 240 python3 benchmarks/decode_bench.py --out "$o/decode_bench.json" --profile 2>&1 | tail -20 \
        | tee "$o/decode.log"
    python3 benchmarks/grpo_bench.py suite --only loris_grpo unsloth_grpo --steps 6 --workdir /dev/shm/grpo \
        --timeout 200 --out "$o/grpo_bench.json" 2>&1 | tail -20 | tee "$o/grpo.log"
}

maxctx1() {
    local o=$OUT/maxctx && mkdir -p "$o"
    site peers
    nvidia-smi -L | tee "$o/gpu.txt"
    python3 benchmarks/maxctx_bench.py search --systems loris-offload unsloth --start 344064 --grain 16384 \
        --budget-s 540 --workdir /dev/shm/loris-bench --out /dev/shm/loris-bench/maxctx.json 2>&1 | tail -20
    cp /dev/shm/loris-bench/maxctx.json "$o/maxctx-1.json"
}

maxctx2() {  # on the same warm machine; on a cold one carry maxctx-1.json and --resume it
    local o=$OUT/maxctx && mkdir -p "$o"
    site peers
    python3 benchmarks/maxctx_bench.py search --resume /dev/shm/loris-bench/maxctx.json --budget-s 540 \
        --workdir /dev/shm/loris-bench --out /dev/shm/loris-bench/maxctx.json 2>&1 | tail -20
    cp /dev/shm/loris-bench/maxctx.json "$o/maxctx-2.json"
}

case "${1:-}" in
    prepare | tests | speed | dpo | moe | gptoss | rollout | maxctx1 | maxctx2) "$1" ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
