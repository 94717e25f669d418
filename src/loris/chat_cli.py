"""`loris chat MODEL_OR_ADAPTER`: an interactive chat that streams replies, using the model's template.

Reads one user message per line from stdin (so it can be piped); ``/reset`` forgets the
conversation, ``/exit`` or end of input quits.
"""

from __future__ import annotations

import argparse
import sys


def add_chat_parser(sub) -> None:
    chat = sub.add_parser("chat", help="chat with a model or a saved adapter (streaming, chat template)")
    chat.add_argument("model", help="model folder, .gguf file, Hub id, or a saved LoRA adapter folder")
    chat.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest reply, in tokens (default: %(default)s)"
    )
    chat.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 = greedy (default: %(default)s)",
    )
    chat.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default: %(default)s)"
    )
    chat.add_argument(
        "--min-p",
        type=float,
        default=0.0,
        help="drop tokens below this fraction of the top token's probability; 0 = off (default: %(default)s)",
    )
    chat.add_argument("--system", default=None, help="a system message (default: none)")
    chat.add_argument(
        "--load-in-4bit", action="store_true", help="quantize the linear weights to NF4 (default: 16-bit)"
    )
    chat.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from loris import FastLanguageModel
    from loris.generation.fast import stream_chat
    from loris.generation.params import SamplingParams

    model, tok = FastLanguageModel.from_pretrained(args.model, load_in_4bit=args.load_in_4bit)
    if getattr(tok, "chat_template", None) is None:
        raise SystemExit(
            f"{args.model}'s tokenizer has no chat template: set one with "
            "loris.chat_templates.get_chat_template(tokenizer, 'chatml') and save it beside the model."
        )
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, min_p=args.min_p, max_tokens=args.max_new_tokens
    )
    base = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(base)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = list(base)
            print("(conversation cleared)", flush=True)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("assistant> ", end="", flush=True)
        reply = []
        for piece in stream_chat(model, tok, messages, params):
            reply.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0
