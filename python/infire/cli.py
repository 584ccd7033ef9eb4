"""The ``infire`` command line.

infire generate "PROMPT" [--model M] [--max-tokens N] [--temperature T] [--chat] ...
infire download            # fetch the default model into the cache, print its path
"""

from __future__ import annotations

import argparse
import sys

from .errors import InfireError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infire",
        description="Infire: LLM inference with a Rust core.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate text from a prompt, streamed to stdout",
        description="Generate a completion for PROMPT and stream it to stdout as it is produced.",
    )
    gen.add_argument("prompt", help="the prompt text (with --chat: the user message)")
    gen.add_argument(
        "--model",
        default=None,
        help="a .gguf file, a Hugging Face model directory or hub id "
        "(default: SmolLM2-135M-Instruct, downloaded on first use)",
    )
    gen.add_argument("--chat", action="store_true", help="apply the model's chat template")
    gen.add_argument("--system", default=None, help="system message (with --chat)")
    gen.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate")
    gen.add_argument(
        "--temperature", type=float, default=0.0, help="0 for greedy decoding (default 0)"
    )
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    gen.add_argument("--top-k", type=int, default=-1, help="keep the k most likely tokens")
    gen.add_argument("--min-p", type=float, default=0.0, help="minimum relative probability")
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None, help="seed of the sampling stream")
    gen.add_argument("--max-model-len", type=int, default=None, help="context length")

    sub.add_parser(
        "download",
        help="fetch the default model into the cache and print its path",
        description="Fetch the default model (SmolLM2-135M-Instruct) and print its path.",
    )
    return parser


def _generate(args: argparse.Namespace) -> int:
    from .engine import Engine, SamplingParams

    engine = Engine(model=args.model, max_model_len=args.max_model_len)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    if args.chat:
        messages = []
        if args.system is not None:
            messages.append({"role": "system", "content": args.system})
        messages.append({"role": "user", "content": args.prompt})
        text = engine.apply_chat_template(messages)
        prompt = engine.tokenizer.encode(text, add_special_tokens=False)
    else:
        prompt = args.prompt
    shown = 0
    for out in engine.stream(prompt, params):
        text = out.outputs[0].text
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "download":
            from .model_resolution import default_model_path

            print(default_model_path())
            return 0
    except InfireError as e:
        print(f"infire: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
