"""Engine options shared by ``infire.Engine`` and ``infire.serve``: checked here for a clear
Python error, then handed to the Rust core as one dict."""

from __future__ import annotations

from . import cuda_libs
from .errors import InvalidConfigError


def engine_options(
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_model_len: int | None = None,
    seed: int = 0,
    kv_cache_tokens: int | None = None,
    max_num_batched_tokens: int = 2048,
    max_num_seqs: int = 64,
    block_size: int = 16,
    enable_prefix_caching: bool = True,
    gpu_memory_utilization: float = 0.9,
    async_scheduling: bool | None = None,
) -> dict:
    """The options dict for ``_core.Engine`` / ``_core.serve``; see ``infire.Engine``."""
    for name, value in [
        ("max_model_len", max_model_len),
        ("kv_cache_tokens", kv_cache_tokens),
        ("max_num_batched_tokens", max_num_batched_tokens),
        ("max_num_seqs", max_num_seqs),
        ("block_size", block_size),
    ]:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidConfigError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(device, str):
        raise InvalidConfigError(f"device must be a string, got {device!r}")
    if not isinstance(dtype, str):
        raise InvalidConfigError(f"dtype must be a string, got {dtype!r}")
    if isinstance(gpu_memory_utilization, bool) or not isinstance(
        gpu_memory_utilization, int | float
    ):
        raise InvalidConfigError(
            f"gpu_memory_utilization must be a number, got {gpu_memory_utilization!r}"
        )
    if async_scheduling is not None and not isinstance(async_scheduling, bool):
        raise InvalidConfigError(
            f"async_scheduling must be a bool or None, got {async_scheduling!r}"
        )
    if device != "cpu":
        cuda_libs.preload()
    return {
        "device": device,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "seed": seed,
        "kv_cache_tokens": kv_cache_tokens,
        "max_num_batched_tokens": max_num_batched_tokens,
        "max_num_seqs": max_num_seqs,
        "block_size": block_size,
        "enable_prefix_caching": enable_prefix_caching,
        "gpu_memory_utilization": float(gpu_memory_utilization),
        "async_scheduling": async_scheduling,
    }
