"""The ``infire`` command line.

infire generate "PROMPT" [--model M] [--max-tokens N] [--temperature T] [--chat] ...
infire serve [--model M] [--host H] [--port P] [--api-key KEY] ...  # OpenAI-compatible server
infire download            # fetch the default model into the cache, print its path
"""

from __future__ import annotations

import argparse
import sys

from .errors import InfireError
from .options import engine_option_list


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
    _add_engine_args(gen)

    _add_serve_parser(sub)

    sub.add_parser(
        "download",
        help="fetch the default model into the cache and print its path",
        description="Fetch the default model (SmolLM2-135M-Instruct) and print its path.",
    )
    return parser


def _add_serve_parser(sub) -> None:
    srv = sub.add_parser(
        "serve",
        help="serve the OpenAI-compatible HTTP API",
        description="Serve /v1/completions, /v1/chat/completions, /v1/models, /health and "
        "/metrics until SIGTERM or SIGINT.",
    )
    srv.add_argument("--model", default=None, help="as for `generate` (default: SmolLM2)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    srv.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free)")
    srv.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer KEY` on /v1 routes (default: $INFIRE_API_KEY)",
    )
    srv.add_argument(
        "--served-model-name", default=None, help="model name clients use (default: file stem)"
    )
    srv.add_argument(
        "--max-waiting", type=int, default=256, help="waiting sequences that trigger 429"
    )
    for flag, kind, help_text in [
        ("--shutdown-grace", float, "seconds running requests get to finish after SIGTERM"),
        ("--header-timeout", float, "seconds a client has to send its request headers"),
        ("--body-timeout", float, "seconds a client has to send its request body"),
        ("--max-connections", int, "open connections beyond which new ones get 503"),
    ]:
        srv.add_argument(flag, type=kind, default=None, help=f"{help_text} (default: the server's)")
    _add_engine_args(srv)


_ARG_TYPES = {"int": int, "optional_int": int, "float": float, "str": str}


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    """A flag for every engine option (``--max-num-seqs`` for ``max_num_seqs``; booleans as
    ``--name`` / ``--no-name``), from the Rust core's list. A flag left out is not passed on,
    so the option keeps the engine's default."""
    group = parser.add_argument_group("engine options")
    for o in engine_option_list():
        flag = "--" + o.name.replace("_", "-")
        # An option without a fixed default says in its help what it defaults to.
        shown = o.help if o.default is None else f"{o.help} (default: {o.default})"
        help_text = shown.replace("%", "%%")
        if o.type in ("bool", "optional_bool"):
            action = argparse.BooleanOptionalAction
            group.add_argument(flag, dest=o.name, action=action, default=None, help=help_text)
        else:
            kind = _ARG_TYPES[o.type]
            group.add_argument(flag, dest=o.name, type=kind, default=None, help=help_text)


def _engine_options(args: argparse.Namespace) -> dict:
    """The engine options given on the command line."""
    given = ((o.name, getattr(args, o.name)) for o in engine_option_list())
    return {name: value for name, value in given if value is not None}


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    try:
        serve(
            args.model,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            served_model_name=args.served_model_name,
            max_waiting=args.max_waiting,
            shutdown_grace=args.shutdown_grace,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            max_connections=args.max_connections,
            **_engine_options(args),
        )
    except KeyboardInterrupt:
        # SIGINT already drained the server (Rust handles the signal); Python sees it after.
        pass
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .engine import Engine, SamplingParams

    engine = Engine(model=args.model, **_engine_options(args))
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
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
        if args.command == "serve":
            return _serve(args)
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
