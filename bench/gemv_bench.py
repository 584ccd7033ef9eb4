"""The decode projections at one row: the fused GEMV kernels against cuBLAS.

    python bench/gemv_bench.py [--out bench/results/gemv_h200.json]

Llama-3.1-8B shapes, bf16. Each case is captured in a CUDA graph as a chain of launches over
enough copies of the weights (>= 400 MB) that every launch reads its weight from HBM, as in a
decode step; the time per launch is the graph's CUDA-event time over the launch count (median
of 10 replays), so there are no host gaps and each kernel's ramp and tail count.

Two tables:
- per projection: `gemv_*_m1` (the fused variant the engine runs for that projection, with the
  engine's CTA split) against `torch.nn.functional.linear` (cuBLAS) of the same shape;
- per layer: the four projections with their neighbours, unfused as the engine runs them with
  cuBLASLt (add_rms_norm, qkv, o_proj, add_rms_norm, gate_up, silu_mul, down; here the
  projections through torch/cuBLAS, the element-wise kernels Infire's own) against fused
  (gemv_norm_store qkv, gemv_plain_add o_proj, gemv_norm_silu gate_up, gemv_plain_add down).

Bandwidth counts weight bytes only. The card's copy bandwidth is measured in the same run.
The 2-8-row variants were timed by this script before they were removed (they lost to cuBLAS:
bench/results/gemv_rows1to8_h200.json, kernels/cuda/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:  # cuda.core >= 0.4 exports the API at the top level; older releases under .experimental
    from cuda.core import LaunchConfig, launch
except ImportError:
    from cuda.core.experimental import LaunchConfig, launch

sys.path.insert(0, str(Path(__file__).parent))
from attention_bench import card, load, torch_stream  # noqa: E402
from cuda_bench import time_graph  # noqa: E402

HIDDEN, INTER, VOCAB, QKV = 4096, 14336, 128256, 6144
EPS = 1e-5
# (name, n, k, GEMV variant the engine uses)
PROJECTIONS = [
    ("qkv", QKV, HIDDEN, "norm_store"),
    ("o_proj", HIDDEN, HIDDEN, "plain_add"),
    ("gate_up", 2 * INTER, HIDDEN, "norm_silu"),
    ("down", HIDDEN, INTER, "plain_add"),
    ("lm_head", VOCAB, HIDDEN, "norm_f32"),
]
# --what-if: (name, n, k, variant, weight read from L2)
WHAT_IF = [
    ("o_proj from L2", HIDDEN, HIDDEN, "plain_add", True),
    ("qkv from L2", QKV, HIDDEN, "norm_store", True),
    ("gate_up without SiLU", 2 * INTER, HIDDEN, "norm_store", False),
]
MIN_BYTES = 400e6


def cols_per_cta(n: int, sm_count: int, ctas_per_sm: int = 4, group: int = 4) -> int:
    """The engine's split (`gemv_cols_per_cta`): a multiple of `group` columns (4; the
    tensor-core FP8 GEMV's 32-row tiles), so that the grid fits the GPU at once."""
    return group * math.ceil(n / (sm_count * ctas_per_sm * group))


class Gemv:
    """The engine's one-row GEMV entry points (`gemv_<variant>_m1`), launched as it does."""

    def __init__(self, sm_count: int):
        self.sm_count = sm_count
        self.kernels = {}

    def launch(self, variant, w, x, nw, out):
        n, k = w.shape
        if variant not in self.kernels:
            self.kernels[variant] = load("gemv", f"gemv_{variant}_m1")
        cols = cols_per_cta(n, self.sm_count)
        cfg = LaunchConfig(grid=math.ceil(n / cols), block=256)
        args = (w.data_ptr(), x.data_ptr(), nw.data_ptr(), 0, out.data_ptr())
        args += (np.int32(1), np.int32(n), np.int32(k), np.int32(cols), np.float32(EPS))
        launch(torch_stream(), cfg, self.kernels[variant], *args)


def bench_projection(gemv, name, n, k, variant, copy_bw, from_l2=False) -> dict:
    """One projection of one row: cuBLAS, and the GEMV. `from_l2`: one copy of the weight,
    launched again and again, so that it is read from L2 where it fits there."""
    bf16 = torch.bfloat16
    nbytes = n * k * 2
    copies = 1 if from_l2 else max(2, math.ceil(MIN_BYTES / nbytes))
    ws = [torch.randn(n, k, device="cuda", dtype=bf16) / math.sqrt(k) for _ in range(copies)]
    nw = torch.ones(k, device="cuda", dtype=bf16)
    reps = 64 if from_l2 else 4
    x = torch.randn(1, k, device="cuda", dtype=bf16)
    out_t = torch.float32 if variant.endswith("f32") else bf16
    out_n = n // 2 if variant.endswith("silu") else n
    out = torch.zeros(1, out_n, device="cuda", dtype=out_t)
    lin = torch.empty(1, n, device="cuda", dtype=bf16)

    def cublas():
        for _ in range(reps):
            for w in ws:
                F.linear(x, w, out=lin)

    def fused():
        for _ in range(reps):
            for w in ws:
                gemv.launch(variant, w, x, nw, out)

    t_cublas = time_graph(cublas, reps * copies)
    t, floor = time_graph(fused, reps * copies), nbytes / copy_bw
    print(
        f"| {name} [{n}x{k}] {variant} | 1 | {nbytes / 1e6:.1f} | {floor * 1e6:.1f} "
        f"| {t_cublas * 1e6:.1f} ({nbytes / t_cublas / 1e12:.2f}) "
        f"| {t * 1e6:.1f} ({nbytes / t / 1e12:.2f}, {100 * floor / t:.0f} %) |"
    )
    return {
        "projection": name,
        "n": n,
        "k": k,
        "variant": variant,
        "rows": 1,
        "floor_s": floor,
        "cublas_s": t_cublas,
        "gemv_s": t,
        "from_l2": from_l2,
    }


def bench_layer(gemv, layers, copy_bw) -> dict:
    """One layer's four projections with their neighbours, unfused and fused, at one row."""
    m = 1
    bf16 = torch.bfloat16
    rms = load("rms_norm", "add_rms_norm")
    silu = load("silu_mul", "silu_mul")
    nw = (1 + 0.1 * torch.randn(HIDDEN, device="cuda")).to(bf16)
    res = torch.randn(m, HIDDEN, device="cuda", dtype=bf16)
    hid = torch.randn(m, HIDDEN, device="cuda", dtype=bf16)
    normed = torch.empty(m, HIDDEN, device="cuda", dtype=bf16)
    qkv = torch.empty(m, QKV, device="cuda", dtype=bf16)
    attn = torch.randn(m, HIDDEN, device="cuda", dtype=bf16)
    gu = torch.empty(m, 2 * INTER, device="cuda", dtype=bf16)
    act = torch.empty(m, INTER, device="cuda", dtype=bf16)

    def add_norm():
        params = (res.data_ptr(), hid.data_ptr(), nw.data_ptr(), normed.data_ptr())
        cfg = LaunchConfig(grid=m, block=256)
        launch(torch_stream(), cfg, rms, *params, np.int32(HIDDEN), np.float32(EPS))

    def unfused():
        for lw in layers:
            add_norm()
            F.linear(normed, lw["qkv"], out=qkv)
            F.linear(attn, lw["o_proj"], out=hid)
            add_norm()
            F.linear(normed, lw["gate_up"], out=gu)
            cfg = LaunchConfig(grid=(math.ceil(INTER / 2048), m), block=256)
            launch(torch_stream(), cfg, silu, gu.data_ptr(), act.data_ptr(), np.int32(INTER))
            F.linear(act, lw["down"], out=hid)

    def fused():
        for lw in layers:
            gemv.launch("norm_store", lw["qkv"], res, nw, qkv)
            gemv.launch("plain_add", lw["o_proj"], attn, nw, res)
            gemv.launch("norm_silu", lw["gate_up"], res, nw, act)
            gemv.launch("plain_add", lw["down"], act, nw, res)

    t_unfused = time_graph(unfused, len(layers))
    t_fused = time_graph(fused, len(layers))
    floor = sum(w.numel() * 2 for w in layers[0].values()) / copy_bw
    print(
        f"| qkv + o + gate_up + down | {m} | {floor * 1e6:.1f} | {t_unfused * 1e6:.1f} "
        f"| {t_fused * 1e6:.1f} ({100 * floor / t_fused:.0f} % of the floor) |"
    )
    return {"rows": m, "floor_s": floor, "unfused_s": t_unfused, "fused_s": t_fused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="also time o_proj and qkv with their weights in L2 (what an L2 prefetch could "
        "give) and gate_up storing both halves (the SiLU epilogue's cost)",
    )
    args = parser.parse_args()
    sm_count, copy_bw, gpu = card()
    gemv = Gemv(sm_count)
    result = {"gpu": gpu, "date": str(date.today()), "copy_bandwidth": copy_bw}

    print(
        "\n| projection | rows | weight MB | floor µs | cuBLAS µs (TB/s) "
        "| GEMV µs (TB/s, % of floor) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    result["projections"] = []
    for name, n, k, variant in PROJECTIONS:
        result["projections"].append(bench_projection(gemv, name, n, k, variant, copy_bw))
        torch.cuda.empty_cache()
    if args.what_if:
        for name, n, k, variant, from_l2 in WHAT_IF:
            row = bench_projection(gemv, name, n, k, variant, copy_bw, from_l2)
            result["projections"].append(row)
            torch.cuda.empty_cache()

    layers = [
        {
            name: torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k)
            for name, n, k, _ in PROJECTIONS[:4]
        }
        for _ in range(4)
    ]
    print("\n| one layer's projections | rows | floor µs | unfused (cuBLAS) µs | fused GEMV µs |")
    print("| --- | --- | --- | --- | --- |")
    result["layer"] = [bench_layer(gemv, layers, copy_bw)]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
