"""``infire.serve``: the OpenAI-compatible HTTP server (written in Rust; this is its entry)."""

from __future__ import annotations

import os

from . import _core
from .model_resolution import resolve_model
from .options import engine_options_json


def serve(
    model: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_waiting: int = 256,
    shutdown_grace: float | None = None,
    header_timeout: float | None = None,
    body_timeout: float | None = None,
    max_connections: int | None = None,
    allow_unknown_fields: bool = False,
    log_level: str | None = None,
    log_format: str = "text",
    **options,
) -> None:
    """Loads ``model`` and serves it until SIGTERM or SIGINT (blocks).

    Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
    ``GET /health``, ``GET /metrics`` (Prometheus text).

    Args:
        model: as for ``infire.Engine`` (default: SmolLM2-135M-Instruct).
        host, port: where to listen (port 0 picks a free one; the address is printed to stderr).
        api_key: when set, ``/v1`` routes need ``Authorization: Bearer <api_key>``; default:
            the ``INFIRE_API_KEY`` environment variable, else no authentication.
        served_model_name: the ``model`` requests must name; default: the model file's stem.
        max_waiting: sequences waiting in the engine at which new requests get 429.
        shutdown_grace, header_timeout, body_timeout (seconds), max_connections: the
            server's limits; ``None`` keeps its defaults (``ServerConfig`` in
            ``rust/src/server/mod.rs``).
        allow_unknown_fields: ignore (and log) request fields the server does not know
            instead of answering 400 naming them, as OpenAI does.
        log_level: a ``RUST_LOG``-style filter (``"info"``, ``"debug"``,
            ``"info,infire::access=off"``); default: ``$RUST_LOG``, else ``"info"``. At
            ``info`` each request gets one access-log line (method, path, status, model,
            prompt and output tokens, time to first token, total time).
        log_format: ``"text"`` (default) or ``"json"`` (one JSON object per line).
        **options: the engine options of ``infire.Engine``.
    """
    if api_key is None:
        api_key = os.environ.get("INFIRE_API_KEY") or None
    _core.serve(
        resolve_model(model),
        host=host,
        port=port,
        api_key=api_key,
        served_model_name=served_model_name,
        max_waiting=max_waiting,
        options=engine_options_json(options),
        shutdown_grace=shutdown_grace,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=max_connections,
        allow_unknown_fields=allow_unknown_fields,
        log_level=log_level,
        log_format=log_format,
    )
