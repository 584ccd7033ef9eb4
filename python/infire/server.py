"""``infire.serve``: the OpenAI-compatible HTTP server (written in Rust; this is its entry)."""

from __future__ import annotations

import os

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

from . import _core, cuda_libs
from .errors import InvalidConfigError
from .model_resolution import resolve_model
from .options import (
    options_doc,
    options_json,
    server_option_list,
)


def serve(
    model: str | os.PathLike | None = None,
    *,
    models: list | None = None,
    config: str | os.PathLike | None = None,
    **options,
) -> None:
    """Loads the models and serves them until SIGTERM or SIGINT (blocks).

        One engine per model, one HTTP server: a request goes to the model its ``model`` field
        names (a served name or an alias; another name gets 404). Endpoints: ``GET /v1/models``
        (every model with its state and memory), ``POST /v1/completions``,
        ``POST /v1/chat/completions``, ``POST /v1/admin/models/{{name}}/sleep|wake|load|unload``,
        ``GET /health``, ``GET /metrics`` (Prometheus text, each series labelled by model). At
        log level ``info`` each request gets one access-log line.

        Args:
            model: one model, as for ``infire.Engine`` (default, when neither ``models`` nor
                ``config`` is given: SmolLM2-135M-Instruct).
            models: several models, each a path or name as ``model``, or a dict: ``{{"model":
                PATH, "served_model_name": NAME, "aliases": [NAME, ...], "memory": BYTES |
                "4GiB" | SHARE (0.25 or "25%": of the machine's memory on the CPU, of the card
                on CUDA), "on_demand": bool (loaded on its first request), **engine options}}``.
            config: a TOML file: ``[[models]]`` tables as the dicts of ``models``, and an
                optional ``[server]`` table of server options (keyword options override it).
    {server_options}
        Every other keyword option is an engine option, applied to every model (a model's own
        entry overrides it):
    {engine_options}
    """
    server_names = {o.name for o in server_option_list()}
    server, defaults = {}, {}
    entries = []
    if config is not None:
        node = _read_config(config)
        server.update(node.get("server", {}))
        entries += node.get("models", [])
    entries += list(models or [])
    if model is not None or not entries:
        entries.insert(0, model)
    for k, v in options.items():
        (server if k in server_names else defaults)[k] = v
    if isinstance(server.get("api_key"), list | tuple):
        server["api_key"] = ",".join(server["api_key"])
    specs = [_entry(e, defaults) for e in entries]
    if any(s.get("device", "auto") != "cpu" for s in specs):
        cuda_libs.preload()
    _core.serve(options_json(specs, "model"), server=options_json(server, "server"))


def _read_config(path: str | os.PathLike) -> dict:
    """A node's TOML file: ``[[models]]`` and ``[server]``."""
    if tomllib is None:
        raise InvalidConfigError("reading a node config needs Python 3.11 or later (tomllib)")
    try:
        with open(path, "rb") as f:
            node = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidConfigError(f"cannot read the node config {path}: {e}") from e
    unknown = set(node) - {"models", "server"}
    if unknown:
        raise InvalidConfigError(
            f"unknown table(s) in {path}: {', '.join(sorted(unknown))} (expected [[models]] "
            "and [server])"
        )
    return node


def _entry(e, defaults: dict) -> dict:
    """One model's entry, its path resolved and the engine defaults under its own options."""
    if e is None or isinstance(e, str | os.PathLike):
        e = {"model": e}
    if not isinstance(e, dict):
        raise InvalidConfigError(f"a model must be a path, a name or a dict, got {e!r}")
    entry = {**defaults, **e}
    entry["model"] = str(resolve_model(entry.get("model")))
    return entry


serve.__doc__ = serve.__doc__.format(
    server_options=options_doc(server_option_list()),
    engine_options=options_doc(),
)
