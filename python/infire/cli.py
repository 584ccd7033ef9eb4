"""The ``infire`` command line.

infire generate "PROMPT" [--model M] [--max-tokens N] [--temperature T] [--chat] ...
infire serve [--model M]... [--config node.toml] [--api-key KEY[=CLASS]]... ...  # OpenAI server
infire download            # fetch the default model into the cache, print its path
infire cluster up --config cluster.toml   # deploy on a Ray cluster (needs infire[cluster])
infire cluster status --config cluster.toml
"""

from __future__ import annotations

import argparse
import secrets
import sys

from .errors import InfireError
from .options import engine_option_list, server_option_list


class _Formatter(argparse.HelpFormatter):
    """Shows each flag's default after its help (flags whose default is "not given" say in
    their help what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False
        if "%(default)" in text or hidden or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infire",
        description="Infire: LLM inference with a Rust core.",
    )
    parser.add_argument("--version", action="version", version=f"infire {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate text from a prompt, streamed to stdout",
        description="Generate a completion for PROMPT and stream it to stdout as it is produced. "
        "Without --seed (or with --seed -1) each run draws a fresh random seed.",
        formatter_class=_Formatter,
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
    gen.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    gen.add_argument("--top-k", type=int, default=-1, help="keep the k most likely tokens")
    gen.add_argument("--min-p", type=float, default=0.0, help="minimum relative probability")
    gen.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="penalty on repeated tokens"
    )
    gen.add_argument(
        "-v", "--verbose", action="store_true", help="print the seed and token counts to stderr"
    )
    _add_engine_args(gen)

    _add_serve_parser(sub)
    _add_cluster_parser(sub)

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
        "/metrics until SIGTERM or SIGINT. Requests that set no seed draw from a random one "
        "unless --seed is given.",
        formatter_class=_Formatter,
    )
    srv.add_argument(
        "--model",
        action="append",
        default=None,
        help="as for `generate` (default: SmolLM2); repeat it to serve several models, each "
        "under its file's stem",
    )
    srv.add_argument(
        "--config",
        default=None,
        help="a node's TOML file: [[models]] tables (model, served_model_name, aliases, "
        "memory, on_demand, engine options) and a [server] table; see the README",
    )
    _add_options(srv, "server options", server_option_list(), repeated=("api_key",))
    _add_engine_args(srv)


def _add_cluster_parser(sub) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="run models on a Ray Serve cluster (needs infire[cluster])",
        description="Deploy the models of a cluster.toml on Ray Serve behind an OpenAI "
        "ingress, or show their state (see infire.cluster.config for the file's format).",
    )
    actions = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    for name, text in (
        ("up", "deploy (connects to a running Ray cluster, or starts a local one) and serve"),
        ("status", "show the application's and each model's replicas' state as JSON"),
    ):
        p = actions.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        p.add_argument("--config", required=True, help="the cluster.toml")
        p.add_argument("--address", default=None, help="Ray address (overrides the config)")


def _cluster(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    try:
        from . import cluster
    except ImportError as e:
        print(f"infire: error: {e}; install infire[cluster]", file=sys.stderr)
        return 2
    config = cluster.load(args.config)
    if args.address:
        config = dataclasses.replace(config, address=args.address)
    if args.cluster_command == "status":
        print(json.dumps(cluster.status(config), indent=2))
        return 0
    print(f"infire: deploying {len(config.models)} model(s) on Ray Serve", file=sys.stderr)
    url = cluster.up(config)
    print(f"infire: serving on {url} (Ctrl-C to stop)", file=sys.stderr)
    _wait_forever()
    return 0


def _wait_forever() -> None:
    import time

    from ray import serve

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


_ARG_TYPES = {"int": int, "optional_int": int, "float": float, "str": str, "optional_str": str}


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    """A flag for every engine option, from the Rust core's list (see `_add_options`)."""
    _add_options(parser, "engine options", engine_option_list())


def _add_options(
    parser: argparse.ArgumentParser, title: str, options, repeated: tuple[str, ...] = ()
) -> None:
    """A flag for every option of ``options`` (``--max-num-seqs`` for ``max_num_seqs``;
    booleans as ``--name`` / ``--no-name``; those named in ``repeated`` may be given several
    times, into a list). A flag left out is not passed on, so the option keeps the Rust core's
    default."""
    group = parser.add_argument_group(title)
    for o in options:
        flag = "--" + o.name.replace("_", "-")
        # An option without a fixed default says in its help what it defaults to.
        shown = o.help if o.default is None else f"{o.help} (default: {o.default})"
        help_text = shown.replace("%", "%%")
        if o.name == "seed":
            help_text += " (-1 or left out on the command line: a random seed)"
        if o.type in ("bool", "optional_bool"):
            action = argparse.BooleanOptionalAction
            group.add_argument(flag, dest=o.name, action=action, default=None, help=help_text)
        else:
            kind = _ARG_TYPES[o.type]
            action = "append" if o.name in repeated else "store"
            group.add_argument(
                flag, dest=o.name, type=kind, default=None, action=action, help=help_text
            )


def _version() -> str:
    from . import __version__

    return __version__


def _random_seed(args: argparse.Namespace) -> None:
    """Without ``--seed`` (or with a negative one), a fresh random seed, as llama.cpp and
    Ollama draw one per run; printed with ``--verbose``."""
    if args.seed is None or args.seed < 0:
        args.seed = secrets.randbits(63)
    if getattr(args, "verbose", False):
        print(f"infire: seed {args.seed}", file=sys.stderr)


def _given(args: argparse.Namespace, options) -> dict:
    """The options of ``options`` (engine or server) given on the command line."""
    given = ((o.name, getattr(args, o.name)) for o in options)
    return {name: value for name, value in given if value is not None}


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    _random_seed(args)
    try:
        models = args.model or []
        serve(
            models[0] if len(models) == 1 else None,
            models=models[1:] if len(models) == 1 else models,
            config=args.config,
            **_given(args, server_option_list()),
            **_given(args, engine_option_list()),
        )
    except KeyboardInterrupt:
        # SIGINT already drained the server (Rust handles the signal); Python sees it after.
        pass
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .engine import Engine, SamplingParams

    _random_seed(args)
    engine = Engine(model=args.model, **_given(args, engine_option_list()))
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
    shown, last = 0, None
    for out in engine.stream(prompt, params):
        text = out.outputs[0].text
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown, last = len(text), out
    sys.stdout.write("\n")
    if last is not None:
        _explain(args, last)
    return 0


def _explain(args: argparse.Namespace, out) -> None:
    """Token counts with ``--verbose``; a note on stderr when a plain prompt produced no text
    (an instruction-tuned model often ends at once on a bare question)."""
    c = out.outputs[0]
    if args.verbose:
        print(
            f"infire: {len(out.prompt_token_ids)} prompt tokens, {len(c.token_ids)} generated, "
            f"finish_reason={c.finish_reason}",
            file=sys.stderr,
        )
    if not c.text.strip():
        hint = "" if args.chat else "; for a chat model, try --chat to apply its chat template"
        print(
            f"infire: the model produced no text ({len(c.token_ids)} tokens, "
            f"finish_reason={c.finish_reason}){hint}",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "cluster":
            return _cluster(args)
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
