"""Infire's CUDA kernels, compiled with NVRTC as the engine compiles them.

For tests and inspection: ``compile("decode_attention", "sm_90a", {"HEAD_DIM": 128, ...})``
returns the cubin (or PTX with ``target="ptx"``) that the engine would load, so a test can
launch a kernel through ``cuda.core`` against a torch reference. NVRTC needs no GPU.
"""

from __future__ import annotations

from . import _core, cuda_libs


def names() -> list[str]:
    """The kernel files (stems of ``kernels/cuda/*.cu``)."""
    return list(_core.kernel_names())


def source(name: str) -> str:
    """The full source NVRTC compiles for ``name`` (``common.cuh`` first)."""
    return _core.kernel_source(name)


def compile(
    name: str,
    arch: str,
    defines: dict | None = None,
    dtype: str = "bfloat16",
    target: str = "cubin",
) -> bytes:
    """Compiles kernel file ``name`` for ``arch`` (``"sm_90a"``, ``"sm_80"``...).

    ``defines`` become ``-D`` options (``None`` values give a bare ``-DNAME``); ``dtype`` is
    ``"bfloat16"`` or ``"float16"``; ``target`` is ``"cubin"`` or ``"ptx"``.
    """
    cuda_libs.preload()
    return _core.compile_kernel(name, arch, defines, dtype, target)
