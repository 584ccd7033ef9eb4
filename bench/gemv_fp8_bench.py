"""The one-row FP8 GEMVs against the bf16 one, kernel by kernel, and variants of their shape.

    python bench/gemv_fp8_bench.py [--out bench/results/gemv_fp8_h100.json]

Why: single-stream FP8 decode of the Llama-3.1-8B shape ran at ~68 % of its roofline where bf16
runs at ~89 %, with either FP8 GEMV (`*_fp8_m1` of gemv.cu, `*_fp8mma` of gemv_fp8_mma.cu),
although the tensor-core one issues half the instructions a weight (kernels/cuda/NOTES.md). One
reading: both FP8 kernels hold half the bytes of W in flight that the bf16 one holds (bf16:
4 rows x 2 vectors x 16 B a thread at 4 CTAs an SM, 128 KB an SM; `*_fp8_m1`: one vector a row,
64 KB; `*_fp8mma`: U x MT x 2 vectors a lane, 32 KB a CTA, and o_proj and down have 128 CTAs
for 132 SMs), so at the latency of a loaded HBM they stream at a lower rate. This times each
kernel alone, per projection of the model, as gemv_bench.py does (a CUDA graph of launches over
enough weight copies that every launch reads HBM), with the engine's entry points and variants
compiled with the -D overrides the files take:

- `FP8_M1_UNROLL`, `FP8_M1_CTAS` (gemv.cu): vectors of W in flight per row and thread, CTAs an SM;
- `FP8_MMA_MT`, `FP8_MMA_U`, `FP8_MMA_CTAS` (gemv_fp8_mma.cu): 16-row mma tiles per warp step,
  chunks in flight per warp, CTAs an SM;
- `FP8_GEMV_GROUP`, `FP8_GEMV_CTAS`, `FP8_GEMV_XCACHE`, `FP8_GEMV_ROWSCALE` (gemv_fp8.cu, the
  reworked one-row kernel): rows a group, CTAs an SM, xin kept in registers, a per-row matrix's
  scales applied once per output (not bitwise `*_fp8_m1`'s then).

Each row prints the kernel's time, its weight bytes over that time, that against the card's
copy bandwidth measured in the same run, and how its output compares with `*_fp8_m1`'s on the
same inputs (gemv_fp8.cu's: bitwise equal but for rare last-bit differences its header
explains; the tensor-core one sums in another order).
Variants that fail to compile or launch are reported and skipped. The engine runs the
defaults; a variant that wins is a change to the kernel file.

Its first run (H100, 2026-12-08; bench/RESULTS.md, FP8 run 5) refuted that reading: every
variant with more bytes in flight lost (an L2 prefetch variant too, since removed from the
kernel), and the table led to the one-row dispatch by shape
(`Fp8OneRow`, backend/cuda/kernels/gemv.rs). Its SASS then showed `*_fp8_m1` bound by
instruction issue (7.9-10.7 instructions a byte of W against the bf16 GEMV's 2.8-4.3,
kernels/cuda/NOTES.md), which gemv_fp8.cu answers; `INFIRE_FP8_GEMV=v2` runs it in the engine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import torch

try:  # cuda.core >= 0.4 exports the API at the top level; older releases under .experimental
    from cuda.core import LaunchConfig, launch
except ImportError:
    from cuda.core.experimental import LaunchConfig, launch

sys.path.insert(0, str(Path(__file__).parent))
from attention_bench import card, load, torch_stream  # noqa: E402
from cuda_bench import time_graph  # noqa: E402
from gemv_bench import MIN_BYTES, PROJECTIONS, cols_per_cta  # noqa: E402

EPS = 1e-5
# (label, kernel file, defines, CTAs an SM the launch assumes, columns a CTA takes at a time).
# The variants of run 5 that lost (more bytes in flight: FP8_M1_UNROLL 2 and 4, FP8_MMA_U 3 and
# 4, 16-row mma tiles, one CTA an SM) are in bench/results/gemv_fp8_h100.json, not rerun.
VARIANTS = [
    ("bf16 m1", "gemv", {}, 4, 4),
    ("fp8 m1 (U1, 4/SM)", "gemv", {}, 4, 4),
    ("fp8 mma (MT2 U2, 2/SM)", "gemv_fp8_mma", {}, 2, 32),
    ("fp8 v2 (G8, 3/SM)", "gemv_fp8", {}, 3, 8),
    ("fp8 v2 G8 2/SM", "gemv_fp8", {"FP8_GEMV_CTAS": 2}, 2, 8),
    ("fp8 v2 G4 4/SM", "gemv_fp8", {"FP8_GEMV_GROUP": 4, "FP8_GEMV_CTAS": 4}, 4, 4),
    ("fp8 v2 G8 without xin kept", "gemv_fp8", {"FP8_GEMV_XCACHE": 0}, 3, 8),
    ("fp8 v2 G8 scales per output", "gemv_fp8", {"FP8_GEMV_ROWSCALE": 1}, 3, 8),
]
# The FP8 variant every other FP8 variant's output is compared with (same codes, scales, x).
BASELINE = "fp8 m1 (U1, 4/SM)"


def occupancy(kernel, fallback: int) -> int:
    """CTAs of 256 threads an SM holds for `kernel` (cuda.core's occupancy query where it has
    one; else the launch bound the variant was compiled with)."""
    try:
        return int(kernel.occupancy.max_active_blocks_per_multiprocessor(256, 0))
    except Exception:  # noqa: BLE001 (older cuda.core: no occupancy API)
        return fallback


_MODULES: dict = {}


def kernel_of(file: str, func: str, defines: dict):
    """`func` of `file` compiled with `defines`, one compile per (file, defines)."""
    key = (file, tuple(sorted(defines.items())))
    if key not in _MODULES:
        _MODULES[key] = load(file, None, **defines)
    return _MODULES[key].get_kernel(func)


def entry(file: str, label: str, variant: str) -> str:
    if file == "gemv_fp8_mma":
        return f"gemv_{variant}_fp8mma"
    if file == "gemv_fp8":
        return f"gemv_{variant}_fp8v2_m1"
    return f"gemv_{variant}_m1" if label.startswith("bf16") else f"gemv_{variant}_fp8_m1"


def bench(label, file, defines, ctas, group, sm_count, copy_bw, outputs) -> list[dict]:
    """Times `label` on each projection, and compares its output with the baseline's in
    `outputs` (projection -> output of BASELINE on the same inputs; filled by the baseline)."""
    rows = []
    for name, n, k, variant in PROJECTIONS[:4]:
        torch.manual_seed(zlib.crc32(name.encode()))  # the same inputs for every variant
        try:
            kernel = kernel_of(file, entry(file, label, variant), defines)
        except Exception as e:  # noqa: BLE001 (a variant that does not compile is reported)
            print(f"| {label} | {name} | does not compile: {str(e).splitlines()[0][:120]} |")
            return rows
        per_sm = occupancy(kernel, ctas)
        cols = cols_per_cta(n, sm_count, per_sm, group)
        grid = math.ceil(n / cols)
        dense = label.startswith("bf16")
        nbytes = n * k * (2 if dense else 1) + (0 if dense else n * 4)
        copies = max(2, math.ceil(MIN_BYTES / nbytes))
        if dense:
            ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k)]
            ws += [torch.empty_like(ws[0]).copy_(ws[0]) for _ in range(copies - 1)]
        else:
            codes = torch.randint(0, 0x7E, (n, k), dtype=torch.uint8, device="cuda")
            ws = [codes] + [codes.clone() for _ in range(copies - 1)]
        scales = torch.rand(n, device="cuda") * 1e-3 + 1e-4  # unused by bf16
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        nw = torch.ones(k, device="cuda", dtype=torch.bfloat16)
        out_n = n // 2 if variant.endswith("silu") else n
        out = torch.zeros(1, out_n, device="cuda", dtype=torch.bfloat16)
        tail = (x.data_ptr(), nw.data_ptr(), 0, out.data_ptr(), np.int32(1), np.int32(n))
        tail += (np.int32(k), np.int32(cols), np.float32(EPS))
        cfg = LaunchConfig(grid=grid, block=256)

        def launch_one(w, tail=tail, cfg=cfg, kernel=kernel, dense=dense, scales=scales):
            if dense:
                launch(torch_stream(), cfg, kernel, w.data_ptr(), *tail)
            else:
                head = (w.data_ptr(), scales.data_ptr(), np.int32(0), np.int32(31))
                launch(torch_stream(), cfg, kernel, *head, np.int32(1), *tail)

        def chain(ws=ws, launch_one=launch_one):
            for _ in range(4):
                for w in ws:
                    launch_one(w)

        try:
            t = time_graph(chain, 4 * copies)
        except Exception as e:  # noqa: BLE001
            print(f"| {label} | {name} | launch failed: {str(e).splitlines()[0][:120]} |")
            torch.cuda.synchronize()
            return rows
        floor = nbytes / copy_bw
        check = "" if dense else compare(label, name, outputs, out, partial(launch_one, ws[0]))
        print(
            f"| {label} | {name} [{n}x{k}] | {per_sm}/SM, {grid} CTAs | {nbytes / 1e6:.1f} "
            f"| {t * 1e6:.1f} | {nbytes / t / 1e12:.2f} | {100 * floor / t:.1f} % | {check} |",
            flush=True,
        )
        rows.append(
            {
                "variant": label,
                "defines": defines,
                "projection": name,
                "n": n,
                "k": k,
                "ctas_per_sm": per_sm,
                "grid": grid,
                "bytes": nbytes,
                "seconds": t,
                "of_copy": floor / t,
                "check": check,
            }
        )
        del ws
        torch.cuda.empty_cache()
    return rows


def compare(label, name, outputs, out, launch_once) -> str:
    """One launch into a zeroed `out` (the add epilogue accumulates), against the baseline's:
    'bitwise equal', or the largest difference over the largest baseline value."""
    out.zero_()
    launch_once()
    torch.cuda.synchronize()
    if label == BASELINE:
        outputs[name] = out.clone()
        return "baseline"
    ref = outputs.get(name)
    if ref is None:
        return "no baseline"
    if torch.equal(out, ref):
        return "bitwise equal"
    diff = (out.float() - ref.float()).abs().max() / ref.float().abs().max()
    return f"max diff {diff.item():.2e} of max"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default=None, help="variants whose label contains this")
    args = parser.parse_args()
    sm_count, copy_bw, gpu = card()
    result = {"gpu": gpu, "date": str(date.today()), "copy_bandwidth": copy_bw, "rows": []}
    print("\n| variant | projection | occupancy | weight MB | µs | TB/s | of copy | against m1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    outputs: dict = {}
    for label, file, defines, ctas, group in VARIANTS:
        if args.only and args.only not in label and label != BASELINE:
            continue
        rows = bench(label, file, defines, ctas, group, sm_count, copy_bw, outputs)
        result["rows"] += rows
    totals = {}
    for r in result["rows"]:
        s = totals.setdefault(r["variant"], [0.0, 0.0, 0])
        s[0] += r["seconds"]
        s[1] += r["bytes"] / copy_bw
        s[2] += 1
    print("\n| variant | one layer's 4 projections, µs | of copy |")
    print("| --- | --- | --- |")
    for label, (t, floor, count) in totals.items():
        if count == 4:
            print(f"| {label} | {t * 1e6:.1f} | {100 * floor / t:.1f} % |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
