"""Whether two revisions' CUDA kernels compile to the same machine code.

    python kernels/cuda/cubin_diff.py BASE [HEAD]      # HEAD: a revision, or the working tree

Compiles every kernel file of both (`common.cuh` first, as the engine embeds them) with NVRTC
and the engine's options, for sm_80, sm_89 and sm_90a, bf16 and f16, and two model shapes, and
compares the cubins byte for byte. For a change meant to move or re-spell kernel code without
changing it (helpers moved between files, a constant turned into a -D default), identical cubins
are the proof that needs no GPU; where they differ, the change needs the GPU tests. Files
present on one side only are listed. Exits 1 where any cubin differs.

NVRTC and the CUDA headers come from the `nvidia-cuda-nvrtc` and `nvidia-cuda-runtime` wheels,
through check_nvrtc.py's binding and options (without its ptxas report).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from check_nvrtc import DTYPES, MIN_ARCH, QUICK_SHAPES, Nvrtc, options, wheel_nvrtc

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ["sm_80", "sm_89", "sm_90a"]
# (HEAD_DIM, NUM_HEADS, NUM_KV_HEADS): Llama-3-8B and SmolLM2-135M.
SHAPES = [*QUICK_SHAPES, (64, 9, 3)]
_NVRTC: Nvrtc | None = None  # one per worker process


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


def compile_cubin(job: tuple[str, str, str, str, tuple[int, int, int]]) -> str:
    """The sha256 of the cubin, or 'error: ...'."""
    global _NVRTC
    name, src, arch, dtype, shape = job
    if _NVRTC is None:
        _NVRTC = wheel_nvrtc()
    opts = [o for o in options(_NVRTC, arch, dtype, shape) if not o.startswith("--ptxas")]
    ok, log, _, cubin = _NVRTC.compile_both(src, name, opts)
    if not ok:
        first = log.strip().splitlines()[:1]
        return f"error: {first[0] if first else 'compile failed'}"
    return hashlib.sha256(cubin).hexdigest()


def jobs(srcs: dict[str, str]) -> list[tuple]:
    out = []
    for name, src in srcs.items():
        for arch in ARCHS:
            if arch < MIN_ARCH.get(name, arch):
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
    for job, x, y in zip(ja, ha, hb, strict=True):
        name, _, arch, dtype, shape = job
        same = x == y and not x.startswith("error")
        differ += not same
        if not same:
            print(f"DIFFERS {name}.cu {arch} {dtype} {shape}: {x[:16]} vs {y[:16]}")
    print(f"{len(ja) - differ} of {len(ja)} cubins identical ({len(common)} files)")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
