"""`loris` command line: demo (and, as they land, train, grpo, export, chat)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# ---------------------------------------------------------------------------------- loris export


def _export_plan(args: argparse.Namespace) -> list[str]:
    """The requested artifacts in writing order: merged_16bit, merged_32bit, merged_4bit_forced, gguf."""
    plan = []
    if args.merged_16bit:
        plan.append("merged_16bit")
    if args.merged_32bit:
        plan.append("merged_32bit")
    if args.merged_4bit:
        plan.append("merged_4bit_forced")
    if args.gguf:
        plan.append("gguf")
    return plan


def _size(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def cmd_export(args: argparse.Namespace) -> int:
    """`loris export MODEL_OR_ADAPTER --out DIR ...`: merged safetensors, GGUF files, Hub uploads."""
    from loris.export.diskspace import NotEnoughDiskSpace, ensure_free_space, estimate_bytes, format_size
    from loris.export.gguf_quants import resolve_quantization_methods
    from loris.export.hub import HubUploadError, check_can_upload
    from loris.export.validate import ExportValidationError

    plan = _export_plan(args)
    if not plan and not args.push_to_hub:
        raise SystemExit(
            "loris export: nothing to export: pass --merged-16bit, --merged-32bit, --merged-4bit and/or "
            "--gguf METHOD ... "
            "(and --push-to-hub REPO to upload)"
        )
    try:
        if args.gguf:
            resolve_quantization_methods(args.gguf)  # fail before loading the model
        if args.push_to_hub:
            args.token = check_can_upload(args.push_to_hub, args.token)
    except (ValueError, HubUploadError) as err:
        raise SystemExit(f"loris export: {err}") from None
    import re

    source = Path(args.model)
    if not source.exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", args.model):
        raise SystemExit(
            f"loris export: {source} does not exist: pass a saved adapter or model folder, a .gguf file "
            "or a Hub repo id (user/name)"
        )

    from loris.face import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(str(source), load_in_4bit=False)
    out = Path(args.out)
    methods = resolve_quantization_methods(args.gguf, model.dtype) if args.gguf else []
    formats = [p for p in plan if p != "gguf"] + methods
    try:
        ensure_free_space(
            out, estimate_bytes(model, formats), f"loris export ({', '.join(formats)}) to {out}"
        )
        written = _write_artifacts(model, tokenizer, plan, methods, out, _artifact_name(source))
        if args.validate:
            _validate_artifacts(model, tokenizer, written)
        if args.push_to_hub:
            _push_artifacts(model, written, args, plan)
    except (NotEnoughDiskSpace, HubUploadError, ValueError, ExportValidationError) as err:
        raise SystemExit(f"loris export: {err}") from None
    for what, path in written:
        print(f"{what}: {path} ({format_size(_size(path))})")
    return 0


def _artifact_name(source: Path) -> str:
    stem = source.stem if source.suffix == ".gguf" else source.resolve().name
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in stem) or "model"


def _write_artifacts(model, tokenizer, plan, methods, out: Path, name: str) -> list[tuple[str, Path]]:
    from loris.export import pipeline

    written: list[tuple[str, Path]] = []
    for what in plan:
        folder = out / what
        kw = {"quantization_method": methods, "name": name} if what == "gguf" else {}
        written += [(w.label, w.path) for w in pipeline.write(model, tokenizer, what, folder, **kw)]
    return written


def _validate_artifacts(model, tokenizer, written: list[tuple[str, Path]]) -> None:
    """`--validate`: reload each artifact and compare (loris.export.validate); raises on a mismatch."""
    from loris.export import pipeline

    kinds = {"ollama Modelfile": "modelfile"}
    print("validating the export (reloading each artifact):")
    checks = [pipeline.Written(w, p, kinds.get(w, w.split()[0])) for w, p in written]
    pipeline.check(model, tokenizer, checks)


def _push_artifacts(model, written, args: argparse.Namespace, plan: list[str]) -> None:
    """Upload each written folder: the first artifact to REPO, further ones to REPO-bnb-4bit / REPO-GGUF."""
    from loris.export import pipeline

    repo = args.push_to_hub
    if not plan:
        info = pipeline.push(model, model.tokenizer, "adapter", repo, token=args.token, private=args.private)
        print(f"uploaded the adapter to {repo}: {info.commit_url}")
        return
    folders = {"gguf": Path(args.out) / "gguf", **{w: p for w, p in written if w.startswith("merged")}}
    for i, what in enumerate(plan):
        repo_id = repo if i == 0 else repo + pipeline.REPO_SUFFIXES[what]
        folder = folders[what]
        ggufs = sorted(folder.glob("*.gguf")) if what == "gguf" else ()
        info = pipeline.upload(
            model,
            folder,
            repo_id,
            what,
            args.token,
            args.private,
            f"Upload {what} made with loris export",
            gguf_files=ggufs,
        )
        print(f"uploaded {what} to {repo_id}: {info.commit_url}")


def add_export_parser(sub) -> None:
    export = sub.add_parser(
        "export",
        help="merged safetensors / GGUF (+ Ollama Modelfile) from a saved adapter or model; Hub upload",
    )
    export.add_argument(
        "model",
        metavar="MODEL_OR_ADAPTER",
        help="a saved adapter folder (loads its base), a model folder, a .gguf file or a Hub repo id",
    )
    export.add_argument("--out", required=True, help="output folder (one subfolder per artifact; required)")
    export.add_argument(
        "--merged-16bit",
        action="store_true",
        help="LoRA merged, as 16-bit safetensors (the source's float16/bfloat16; else bfloat16)",
    )
    export.add_argument(
        "--merged-32bit", action="store_true", help="LoRA merged, as float32 safetensors (twice the size)"
    )
    export.add_argument(
        "--merged-4bit", action="store_true", help="merged, then NF4 (bitsandbytes) safetensors"
    )
    export.add_argument(
        "--gguf", nargs="+", metavar="METHOD", help="GGUF quant methods, e.g. q4_k_m q8_0 f16"
    )
    export.add_argument(
        "--validate",
        action="store_true",
        help="reload each artifact and compare with the model (logits, llama.cpp, Modelfile template); "
        "exit non-zero on a mismatch, before any upload",
    )
    export.add_argument("--push-to-hub", metavar="REPO", help="upload to this Hub repo (user/name)")
    export.add_argument(
        "--token", default=None, help="Hub token (default: HF_TOKEN or huggingface-cli login)"
    )
    export.add_argument(
        "--private",
        action="store_true",
        default=None,
        help="create the Hub repo as private (default: the Hub's default, public)",
    )
    export.set_defaults(func=cmd_export)


def cmd_demo(args: argparse.Namespace) -> int:
    """`loris demo` (SFT on dates → ISO 8601), `loris demo grpo` and `loris demo dpo`."""
    if args.task == "dpo":
        from loris.demos.dpo_demo import run_dpo_demo

        return run_dpo_demo(args)
    if args.task == "grpo":
        from loris.demos.grpo_demo import run_grpo_demo

        return run_grpo_demo(args)
    from loris.demos.common import settings_from_args
    from loris.demos.sft_demo import DemoSettings, run

    run(settings_from_args(DemoSettings, args, "loris-demo"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """`loris train config.yaml`: SFT or preference training as the YAML recipe says (loris.train_recipe)."""
    import dataclasses

    from loris.train_recipe import RecipeError, load_recipe, ranks_refusal, run_recipe

    try:
        recipe = load_recipe(args.config)
    except (RecipeError, FileNotFoundError) as exc:
        raise SystemExit(f"loris train: {args.config}: {exc}") from None
    if args.max_steps is not None:
        recipe.train = dataclasses.replace(recipe.train, max_steps=args.max_steps)
    if args.output_dir is not None:
        recipe.train = dataclasses.replace(recipe.train, output_dir=args.output_dir)
    if args.check:
        how = (
            "LoRA"
            if recipe.lora
            else "the saved adapter"
            if recipe.model.is_adapter()
            else "full fine-tuning"
        )
        print(f"{args.config}: valid ({recipe.method}, {how} on {recipe.model.name_or_path})")
        return 0
    from loris.distributed import env

    if args.nproc is not None and not env.launched():
        refusal = ranks_refusal(recipe.method)
        if refusal is not None:
            raise SystemExit(f"loris train: method {refusal}")
        return _launch_torchrun(args)
    try:
        result = run_recipe(recipe)
    except RecipeError as exc:
        raise SystemExit(f"loris train: {args.config}: {exc}") from None
    finally:
        env.shutdown()
    if not env.is_main_process():
        return 0
    metrics = result["metrics"]
    print(
        f"trained {result['global_step']} steps in {metrics['train_runtime']:.1f}s, "
        f"mean loss {metrics['train_loss']:.4f}; logs and loss.png in {recipe.train.output_dir}"
    )
    for what, folder in result["saved"].items():
        print(f"  {what}: {folder}")
    return 0


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Run this same ``loris train`` under torchrun, one process per GPU (or CPU process), and wait."""
    import subprocess

    from loris.distributed.launch import LaunchPlan, strip_launch_flags, torchrun_command

    plan = LaunchPlan(args.nproc, args.nnodes, args.rdzv_endpoint, args.rdzv_id)
    cmd = torchrun_command(plan, strip_launch_flags(args.argv))
    print("launching:", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loris", description="Fine-tune open LLMs fast, export everywhere.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="fine-tune SmolLM2-135M-Instruct (bundled) on a scored task and show before/after"
    )
    demo.add_argument(
        "task",
        nargs="?",
        default="sft",
        choices=["sft", "grpo", "dpo"],
        help="sft: LoRA SFT to rewrite dates as ISO 8601 (about 5 min on 2 CPU cores); grpo: GRPO on "
        "'what is a + b?' with a verifiable reward (about 6 min); dpo: DPO on preference pairs (about "
        "1-2 min). "
        "Default: %(default)s",
    )
    demo.add_argument(
        "--model", help="another model folder, .gguf file or Hub id (default: the bundled SmolLM2)"
    )
    demo.add_argument(
        "--output-dir",
        default=None,
        help="where the adapter, merged model and plots go (default: loris-demo for sft, "
        "loris-demo-grpo for grpo, loris-demo-dpo for dpo)",
    )
    demo.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="training steps (default: 60 for sft, 30 for grpo, 12 for dpo; 2 with --quick)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="every stage in a few steps, in about a minute (the tests use it)",
    )
    demo.set_defaults(func=cmd_demo)
    from loris.chat_cli import add_chat_parser

    add_chat_parser(sub)
    add_export_parser(sub)
    train = sub.add_parser(
        "train",
        help="fine-tuning from a YAML recipe (method: sft, dpo, orpo, cpo, simpo, kto; model, lora, data, "
        "train, save)",
    )
    train.add_argument("config", help="the recipe YAML (see examples/demo_sft.yaml, examples/sums_dpo.yaml)")
    train.add_argument("--check", action="store_true", help="validate the config and exit without training")
    train.add_argument(
        "--max-steps", type=int, default=None, help="override train.max_steps (default: the recipe's)"
    )
    train.add_argument("--output-dir", default=None, help="override train.output_dir (default: the recipe's)")
    train.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="start this many processes per machine with torchrun, one per GPU (default: one process, "
        "no torchrun)",
    )
    train.add_argument(
        "--nnodes", type=int, default=1, help="machines taking part (torchrun --nnodes; default: %(default)s)"
    )
    train.add_argument(
        "--rdzv-endpoint",
        default=None,
        help="HOST:PORT every machine meets at (torchrun, several machines; default: none, one machine)",
    )
    train.add_argument(
        "--rdzv-id",
        default="loris",
        help="run id shared by the machines (torchrun --rdzv-id; default: %(default)s)",
    )
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
