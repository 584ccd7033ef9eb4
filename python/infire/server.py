"""``infire.serve``: the OpenAI-compatible HTTP server (written in Rust; this is its entry)."""

from __future__ import annotations

import os

from . import _core
from .model_resolution import resolve_model
from .options import (
    engine_options_json,
    options_doc,
    options_json,
    server_option_list,
)


def serve(model: str | os.PathLike | None = None, **options) -> None:
    """Loads ``model`` and serves it until SIGTERM or SIGINT (blocks).

        Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
        ``GET /health``, ``GET /metrics`` (Prometheus text). At log level ``info`` each request
        gets one access-log line (method, path, status, model, prompt and output tokens, time to
        first token, total time).

        Args:
            model: as for ``infire.Engine`` (default: SmolLM2-135M-Instruct).
    {server_options}
    {engine_options}
    """
    server_names = {o.name for o in server_option_list()}
    server = {k: v for k, v in options.items() if k in server_names}
    engine = {k: v for k, v in options.items() if k not in server_names}
    _core.serve(
        resolve_model(model),
        options=engine_options_json(engine),
        server=options_json(server, "server"),
    )


serve.__doc__ = serve.__doc__.format(
    server_options=options_doc(server_option_list()),
    engine_options=options_doc(),
)
