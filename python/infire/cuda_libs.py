"""Makes the CUDA libraries of NVIDIA's pip wheels visible to the Rust core.

The core opens libnvrtc and libcublasLt by their sonames at run time. When they come from pip
(``nvidia-cuda-nvrtc``, ``nvidia-cublas``, which torch also installs) they sit in
``site-packages/nvidia/cu13/lib``, off the loader's path: loading them here first, by full
path, lets the core's later ``dlopen("libnvrtc.so.13")`` find them. The headers NVRTC needs
(``cuda_bf16.h``, from ``nvidia-cuda-runtime``) are passed on through ``INFIRE_CUDA_INCLUDE``.
A system CUDA toolkit needs none of this; nothing here fails when no wheel is found.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

# libnvrtc opens its builtins library by soname too, so it goes first.
_LIBS = ("libnvrtc-builtins.so.13.*", "libnvrtc.so.13", "libcublasLt.so.13")
_done = False


def _wheel_roots() -> list[Path]:
    """``nvidia/cu13`` directories on ``sys.path`` (the CUDA 13 wheels' layout)."""
    roots = []
    for entry in sys.path:
        root = Path(entry or ".") / "nvidia" / "cu13"
        if root.is_dir():
            roots.append(root)
    return roots


def preload() -> None:
    """Loads the wheels' CUDA libraries once and points NVRTC at their headers."""
    global _done
    if _done:
        return
    _done = True
    roots = _wheel_roots()
    for pattern in _LIBS:
        for path in (p for root in roots for p in sorted((root / "lib").glob(pattern))):
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            break
    if "INFIRE_CUDA_INCLUDE" not in os.environ:
        for root in roots:
            if (root / "include" / "cuda_bf16.h").is_file():
                os.environ["INFIRE_CUDA_INCLUDE"] = str(root / "include")
                break
