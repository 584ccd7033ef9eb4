"""Whether two revisions' CUDA kernels compile to the same machine code.

    python kernels/cubin_diff.py BASE [HEAD]      # HEAD: a revision, or the working tree

Compiles every kernel file of both (`common.cuh` first, as the engine embeds them) with NVRTC
and the engine's options, for sm_80, sm_89 and sm_90a, bf16 and f16, and two model shapes, and
compares the cubins byte for byte. For a change meant to move or re-spell kernel code without
changing it (helpers moved between files, a constant turned into a -D default), identical cubins
are the proof that needs no GPU; where they differ, the change needs the GPU tests. Files
present on one side only are listed. Exits 1 where any cubin differs.

NVRTC and the CUDA headers come from the `nvidia-cuda-nvrtc` and `nvidia-cuda-runtime` wheels
(as for tests/test_kernel_compile.py).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nvidia

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ["sm_80", "sm_89", "sm_90a"]
DTYPES = ["INFIRE_DTYPE_BF16", "INFIRE_DTYPE_F16"]
# (HEAD_DIM, NUM_HEADS, NUM_KV_HEADS): Llama-3-8B and SmolLM2-135M.
SHAPES = [(128, 32, 8), (64, 9, 3)]
MIN_ARCH = {"gemv_fp8_mma": "sm_89"}


def _cu13() -> Path:
    for base in nvidia.__path__:
        for sub in ("cu13", "cuda_nvrtc"):
            if (Path(base) / sub / "lib").is_dir():
                return Path(base) / sub
    sys.exit("libnvrtc not found: pip install nvidia-cuda-nvrtc nvidia-cuda-runtime")


def _nvrtc():
    lib_dir = _cu13() / "lib"
    # NVRTC opens its builtins library by name at compile time: load it first, globally.
    ctypes.CDLL(str(next(lib_dir.glob("libnvrtc-builtins.so*"))), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(next(lib_dir.glob("libnvrtc.so*"))))


def _include_dir() -> Path:
    for base in nvidia.__path__:
        for header in Path(base).glob("*/include/cuda_bf16.h"):
            return header.parent
    sys.exit("cuda_bf16.h not found: pip install nvidia-cuda-runtime")


def sources(rev: str | None) -> dict[str, str]:
    """Kernel file stem -> the source NVRTC compiles (jit.rs's `source`), at `rev` or on disk."""

    def read(path: str) -> str:
        if rev is None:
            return (ROOT / path).read_text()
        return subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout

    if rev is None:
        names = sorted(p.stem for p in (ROOT / "kernels/cuda").glob("*.cu"))
    else:
        listing = subprocess.run(
            ["git", "ls-tree", "--name-only", rev, "kernels/cuda/"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        names = sorted(Path(p).stem for p in listing if p.endswith(".cu"))
    common = read("kernels/cuda/common.cuh")
    return {n: f'{common}\n#line 1 "{n}.cu"\n{read(f"kernels/cuda/{n}.cu")}' for n in names}


def compile_cubin(job: tuple[str, str, str, str, tuple[int, int, int]]) -> tuple[str, str]:
    """(key, sha256 of the cubin, or 'error: ...')."""
    name, src, arch, dtype, (hd, nh, nkv) = job
    lib = _nvrtc()
    opts = [
        f"--gpu-architecture={arch}",
        "-std=c++17",
        "-default-device",
        f"-D{dtype}",
        f"-DHEAD_DIM={hd}",
        "-DKV_BLOCK_SIZE=16",
        f"-DNUM_HEADS={nh}",
        f"-DNUM_KV_HEADS={nkv}",
        f"-I{_include_dir()}",
    ]
    prog = ctypes.c_void_p()
    lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(), 0, None, None)
    argv = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), argv)
    if rc != 0:
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        first = log.value.decode(errors="replace").strip().splitlines()[:1]
        return name, f"error: {first[0] if first else rc}"
    size = ctypes.c_size_t()
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetCUBIN(prog, cubin)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return name, hashlib.sha256(cubin.raw).hexdigest()


def jobs(srcs: dict[str, str]) -> list[tuple]:
    out = []
    for name, src in srcs.items():
        for arch in ARCHS:
            if arch < MIN_ARCH.get(name, "sm_80"):
                continue
            for dtype in DTYPES:
                for shape in SHAPES:
                    out.append((name, src, arch, dtype, shape))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("head", nargs="?", default=None, help="default: the working tree")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    a, b = sources(args.base), sources(args.head)
    for only, side in ((set(a) - set(b), args.base), (set(b) - set(a), args.head or "tree")):
        for name in sorted(only):
            print(f"{name}.cu: only in {side}")
    common = sorted(set(a) & set(b))
    ja, jb = jobs({n: a[n] for n in common}), jobs({n: b[n] for n in common})
    with ProcessPoolExecutor(args.workers) as pool:
        ha = list(pool.map(compile_cubin, ja))
        hb = list(pool.map(compile_cubin, jb))
    differ = 0
    for job, (_, x), (_, y) in zip(ja, ha, hb, strict=True):
        name, _, arch, dtype, shape = job
        same = x == y and not x.startswith("error")
        differ += not same
        if not same:
            print(f"DIFFERS {name}.cu {arch} {dtype} {shape}: {x[:16]} vs {y[:16]}")
    print(f"{len(ja) - differ} of {len(ja)} cubins identical ({len(common)} files)")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
