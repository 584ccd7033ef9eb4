"""``infire.serve``: the OpenAI-compatible HTTP server (written in Rust; this is its entry)."""

from __future__ import annotations

import os

from . import _core
from .model_resolution import resolve_model
from .options import engine_options


def serve(
    model: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_waiting: int = 256,
    *,
    device: str = "auto",
    dtype: str = "auto",
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    kv_cache_tokens: int | None = None,
    max_num_batched_tokens: int = 2048,
    max_num_seqs: int = 64,
    block_size: int = 16,
    enable_prefix_caching: bool = True,
    seed: int = 0,
    async_scheduling: bool | None = None,
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
        The other options are ``infire.Engine``'s.
    """
    if api_key is None:
        api_key = os.environ.get("INFIRE_API_KEY") or None
    options = engine_options(
        device=device,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        async_scheduling=async_scheduling,
        max_model_len=max_model_len,
        kv_cache_tokens=kv_cache_tokens,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        block_size=block_size,
        enable_prefix_caching=enable_prefix_caching,
        seed=seed,
    )
    _core.serve(
        resolve_model(model),
        host=host,
        port=port,
        api_key=api_key,
        served_model_name=served_model_name,
        max_waiting=max_waiting,
        options=options,
    )
