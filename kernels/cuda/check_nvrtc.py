"""Compile every Infire CUDA kernel with NVRTC, without a GPU and without the Rust build.

A developer tool: it builds each program the way the runtime does (``common.cuh`` + ``"\\n"`` +
``<name>.cu``, the same options and ``-D`` constants), for several archs, dtypes and model
shapes, and reports per kernel function the registers, spills and static shared memory that
ptxas prints. A compile that fails, or whose log holds a warning, is printed in full and makes
the exit status 1.

NVRTC comes from the pip wheels ``nvidia-cuda-nvrtc==13.0.*`` (``libnvrtc.so.13``) and
``nvidia-cuda-runtime==13.0.*`` (``cuda_bf16.h`` and friends), both under
``site-packages/nvidia/cu13``; ``--cuda-home DIR`` uses a toolkit instead.

    python kernels/cuda/check_nvrtc.py                   # everything
    python kernels/cuda/check_nvrtc.py decode_attention  # one kernel file
    python kernels/cuda/check_nvrtc.py --quick           # sm_90a, bf16, head_dim 128, group 4
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import itertools
import re
import sys
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent

# (HEAD_DIM, NUM_HEADS, NUM_KV_HEADS): Llama-3-8B, SmolLM2 (64, 9/3), MHA, GQA 8 and 16, and
# the head sizes that only need to compile (80, 96, 256).
SHAPES = [
    (128, 32, 8),
    (64, 9, 3),
    (128, 32, 32),
    (128, 64, 8),
    (128, 64, 4),
    (64, 32, 4),
    (80, 32, 32),
    (96, 32, 8),
    (256, 16, 8),
]
QUICK_SHAPES = [(128, 32, 8)]
# Head sizes a kernel file rejects with a static_assert, by design: the tensor-core attention
# kernels keep Q and O in registers and K/V tiles in static shared memory, up to 128.
UNSUPPORTED_HEAD_DIMS = {"prefill_attention": {256}, "decode_attention": {256}}
ARCHS = ["sm_90a", "sm_80"]
# Kernel files that need a newer GPU than sm_80 (they #error below it), and the oldest arch.
MIN_ARCH = {"gemv_fp8_mma": "sm_89"}
DTYPES = {"bfloat16": "INFIRE_DTYPE_BF16", "float16": "INFIRE_DTYPE_F16"}
KV_BLOCK_SIZE = 16


def cu13_dir() -> Path:
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install 'nvidia-cuda-nvrtc==13.0.*' 'nvidia-cuda-runtime==13.0.*'")
    for base in spec.submodule_search_locations:
        if (Path(base) / "cu13").is_dir():
            return Path(base) / "cu13"
    sys.exit("no nvidia/cu13 in site-packages: install the 13.0 NVRTC and runtime wheels")


class Nvrtc:
    """The handful of NVRTC entry points needed, through ctypes."""

    def __init__(self, lib_path: Path, include_dir: Path):
        # NVRTC dlopens its builtins library by soname at compile time; a wheel's lib folder is
        # not on the loader's path, so load it first, globally, from beside libnvrtc.
        for builtins in sorted(lib_path.parent.glob("libnvrtc-builtins.so.*")):
            if ".alt." not in builtins.name:
                ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(str(lib_path))
        self.include_dir = include_dir
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        self.version = f"{major.value}.{minor.value}"

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise RuntimeError(f"nvrtc {what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def _get(self, prog, size_fn, get_fn) -> bytes:
        size = ctypes.c_size_t()
        self._check(size_fn(prog, ctypes.byref(size)), "size")
        buf = ctypes.create_string_buffer(size.value)
        self._check(get_fn(prog, buf), "get")
        return buf.raw[: size.value]

    def compile(self, source: str, name: str, options: list[str]) -> tuple[bool, str, bytes]:
        """Returns (ok, log, ptx) for one program."""
        ok, log, ptx, _ = self.compile_both(source, name, options)
        return ok, log, ptx

    def compile_both(
        self, source: str, name: str, options: list[str]
    ) -> tuple[bool, str, bytes, bytes]:
        """Returns (ok, log, ptx, cubin) for one program."""
        prog = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None
            ),
            "create",
        )
        try:
            opts = [o.encode() for o in options]
            arr = (ctypes.c_char_p * len(opts))(*opts)
            status = self.lib.nvrtcCompileProgram(prog, len(opts), arr)
            log = self._get(prog, self.lib.nvrtcGetProgramLogSize, self.lib.nvrtcGetProgramLog)
            log = log.rstrip(b"\0").decode(errors="replace")
            if status != 0:
                return False, log, b"", b""
            ptx = self._get(prog, self.lib.nvrtcGetPTXSize, self.lib.nvrtcGetPTX)
            cubin = self._get(prog, self.lib.nvrtcGetCUBINSize, self.lib.nvrtcGetCUBIN)
            if not cubin.startswith(b"\x7fELF"):
                return False, log + "\ncubin is not an ELF image", b"", b""
            return True, log, ptx, cubin
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def wheel_nvrtc() -> Nvrtc:
    """NVRTC and the CUDA headers of the pip wheels (site-packages/nvidia/cu13)."""
    base = cu13_dir()
    return Nvrtc(base / "lib" / "libnvrtc.so.13", base / "include")


def options(nvrtc: Nvrtc, arch: str, dtype: str, shape: tuple[int, int, int]) -> list[str]:
    head_dim, heads, kv_heads = shape
    return [
        f"--gpu-architecture={arch}",
        "-std=c++17",
        "-default-device",
        f"-I{nvrtc.include_dir}",
        "--ptxas-options=-v",
        f"-D{DTYPES[dtype]}",
        f"-DHEAD_DIM={head_dim}",
        f"-DNUM_HEADS={heads}",
        f"-DNUM_KV_HEADS={kv_heads}",
        f"-DKV_BLOCK_SIZE={KV_BLOCK_SIZE}",
    ]


PTXAS_FUNC = re.compile(r"Compiling entry function '(\w+)'")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def resources(log: str) -> dict[str, str]:
    """Kernel function -> 'regs R, stack F B, spill S/L B, smem M B' from the ptxas -v log."""
    out: dict[str, str] = {}
    func = None
    frame = ("?", "?", "?")
    for line in log.splitlines():
        if m := PTXAS_FUNC.search(line):
            func = m.group(1)
        elif func and (m := PTXAS_SPILL.search(line)):
            frame = m.groups()
        elif func and (m := PTXAS_REGS.search(line)):
            smem = PTXAS_SMEM.search(line)
            out[func] = (
                f"regs {m.group(1):>3}, stack {frame[0]} B, spill {frame[1]}/{frame[2]} B, "
                f"smem {smem.group(1) if smem else 0} B"
            )
            func = None
    return out


def has_warning(log: str) -> bool:
    return any("warning" in line.lower() for line in log.splitlines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="kernel file stems (default: all)")
    parser.add_argument("--quick", action="store_true", help="one arch, dtype and shape")
    parser.add_argument("--cuda-home", type=Path, help="use this toolkit's NVRTC and headers")
    args = parser.parse_args()

    if args.cuda_home:
        nvrtc = Nvrtc(args.cuda_home / "lib64" / "libnvrtc.so", args.cuda_home / "include")
    else:
        nvrtc = wheel_nvrtc()
    common = (KERNEL_DIR / "common.cuh").read_text()
    names = args.names or sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))
    archs, dtypes, shapes = ARCHS, list(DTYPES), SHAPES
    if args.quick:
        archs, dtypes, shapes = ["sm_90a"], ["bfloat16"], QUICK_SHAPES

    print(f"NVRTC {nvrtc.version}, include {nvrtc.include_dir}")
    failures = 0
    for name in names:
        source = common + "\n" + (KERNEL_DIR / f"{name}.cu").read_text()
        for arch, dtype, shape in itertools.product(archs, dtypes, shapes):
            if shape[0] in UNSUPPORTED_HEAD_DIMS.get(name, ()) or arch < MIN_ARCH.get(name, arch):
                continue
            tag = f"{name:<18} {arch:<6} {dtype:<8} hd={shape[0]:<3} heads={shape[1]}/{shape[2]}"
            ok, log, ptx = nvrtc.compile(source, name, options(nvrtc, arch, dtype, shape))
            entries = re.findall(rb"\.entry\s+(\w+)", ptx)
            if not ok or has_warning(log) or not entries:
                failures += 1
                print(f"FAIL {tag}\n{log}")
                continue
            for func, res in resources(log).items():
                print(f"ok   {tag}  {func:<24} {res}")
    print(f"{failures} failed" if failures else "all compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
