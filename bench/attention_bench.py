"""Decode attention alone: the bandwidth it reaches reading the paged KV cache.

    python bench/attention_bench.py [--out bench/results/attention_h200.json]

Llama-3.1-8B shape (32 heads, 8 kv heads, head_dim 128, bf16, 16-token blocks in shuffled
order), one query row per sequence at the given context length, for several batch sizes, and
batches of mixed lengths (uniform in a range, as in the offline throughput bench). Each kernel
runs with the splits the engine would choose (`rust/src/backend/cuda/decode_plan.rs`,
`decode_splits`), the combine pass included when it splits; in a large batch also unsplit
("batch splits off", the engine's rule before large batches were split). Times are CUDA-event
medians of single launches, with the L2 cache flushed before each (a 256 MiB write), so a small
cache is read from HBM as in the engine; bandwidth counts the K/V bytes the step must read. The
card's copy bandwidth is measured in the same run.

Kernels: `decode_attention` as the engine runs it (3 pipeline stages) and, on the uniform
cases, with 2 and 4 stages.
Its CUDA-core predecessor `paged_attention` was timed beside it by this script at commit
dbc67f5 (bench/results/attention_h200.json, kernels/cuda/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

try:  # cuda.core >= 0.4 exports the API at the top level; older releases under .experimental
    from cuda.core import Device, LaunchConfig, ObjectCode, launch
except ImportError:
    from cuda.core.experimental import Device, LaunchConfig, ObjectCode, launch

from infire import kernels

sys.path.insert(0, str(Path(__file__).parent))
from cuda_bench import copy_bandwidth  # noqa: E402

HEAD_DIM, NUM_HEADS, NUM_KV_HEADS, BLOCK = 128, 32, 8, 16
GROUP = NUM_HEADS // NUM_KV_HEADS
QKV_WIDTH = (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM
CASES = [(1, 1024), (1, 8192), (16, 1024), (64, 1024), (128, 1024), (256, 1024), (64, 4096)]
# (rows, shortest, longest context): lengths uniform in the range, seed 0.
MIXED_CASES = [(128, 100, 2048), (256, 100, 1100), (256, 100, 2048), (256, 1000, 8000)]
BATCH_SPLITS, BATCH_MIN_KEYS, NO_SPLIT_KEYS = 4, 256, 1 << 24
REPEATS = 30


class _TorchStream:
    def __init__(self, stream):
        self.stream = stream

    def __cuda_stream__(self):
        return (0, self.stream.cuda_stream)


def torch_stream():
    """torch's current stream (the capture stream inside `torch.cuda.graph`) for cuda.core."""
    return Device().create_stream(_TorchStream(torch.cuda.current_stream()))


def card() -> tuple[int, float, str]:
    """Makes torch's GPU cuda.core's current device, prints its name, SM count and copy
    bandwidth (measured now), and returns those three: (SMs, bytes/s, name)."""
    Device(torch.cuda.current_device()).set_current()
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    copy_bw = copy_bandwidth()
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, {sm_count} SMs, copy {copy_bw / 1e12:.2f} TB/s")
    return sm_count, copy_bw, gpu


def load(name: str, func: str | None, **extra_defines):
    """`func` of kernel file `name` compiled for this GPU (its module where `func` is None)."""
    major, minor = torch.cuda.get_device_capability()
    arch = "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"
    defines = {
        "HEAD_DIM": HEAD_DIM,
        "NUM_HEADS": NUM_HEADS,
        "NUM_KV_HEADS": NUM_KV_HEADS,
        "KV_BLOCK_SIZE": BLOCK,
        **extra_defines,
    }
    cubin = kernels.compile(name, arch=arch, defines=defines, dtype="bfloat16", target="cubin")
    module = ObjectCode.from_cubin(cubin)
    return module if func is None else module.get_kernel(func)


def engine_splits(lens: list[int], max_context: int, sm_count: int, batch_splits: int):
    """`decode_splits` and `step_min_split_keys` of decode_plan.rs, as (splits, fewest keys per
    split): for few rows, as many CTAs as the GPU holds (8 one-warp CTAs per SM), none shorter
    than 32 keys; for a large batch, `batch_splits` of at least 256 keys if the longest row is
    above 5/4 of the mean length, else no row split."""
    rows = len(lens)
    ctas, resident = rows * NUM_KV_HEADS, sm_count * 8
    if 2 * ctas > resident:
        splits = max(1, min(batch_splits, 1024 // rows))
        even = 4 * rows * max(lens) <= 5 * sum(lens)
        return splits, NO_SPLIT_KEYS if even and splits > 1 else BATCH_MIN_KEYS
    return max(1, min(resident // ctas, math.ceil(max_context / 32), 1024 // rows)), 32


def time_step(stream, kernel, combine, rows, splits, min_keys, flush, tensors) -> float:
    """Median seconds of one decode attention launch (and its combine when split), L2 flushed."""
    qkv, k, v, out, row_seq, row_pos, tables = tensors
    p_out = torch.empty(rows * splits * NUM_HEADS * HEAD_DIM, device="cuda")
    p_lse = torch.empty(rows * splits * NUM_HEADS, device="cuda")
    width = torch.tensor([tables.shape[1]], dtype=torch.int32, device="cuda")
    keys = torch.tensor([min_keys], dtype=torch.int32, device="cuda")
    ptrs = [t.data_ptr() for t in (qkv, k, v, out, row_seq, row_pos, tables, width)]
    params = ptrs + [np.int32(QKV_WIDTH), np.float32(HEAD_DIM**-0.5)]
    params += [p_out.data_ptr(), p_lse.data_ptr(), np.int32(splits), keys.data_ptr(), 0]
    params += [np.float32(1.0), np.float32(1.0)]  # the KV scales (unused by a cache of T)
    combine_params = (  # 0: no row list
        p_out.data_ptr(),
        p_lse.data_ptr(),
        out.data_ptr(),
        np.int32(splits),
        keys.data_ptr(),
        0,
        row_pos.data_ptr(),
    )

    def step():
        launch(stream, LaunchConfig(grid=(rows, NUM_KV_HEADS, splits), block=32), kernel, *params)
        if splits > 1:
            cfg = LaunchConfig(grid=(rows, NUM_HEADS), block=HEAD_DIM)
            launch(stream, cfg, combine, *combine_params)

    step()
    times = []
    for _ in range(REPEATS):
        flush.zero_()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sm_count, copy_bw, gpu = card()
    stream = torch_stream()

    # The engine's kernel, then other pipeline depths (3 in the engine); one warp per CTA.
    variants = {"decode_attention": load("decode_attention", "decode_attention")}
    for stages in (2, 4):
        variants[f"decode_attention/{stages}"] = load(
            "decode_attention", "decode_attention", DECODE_STAGES=stages
        )
    combine = load("decode_attention", "attention_combine")

    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    results = []
    uniform = [(rows, [context] * rows) for rows, context in CASES]
    gen = np.random.default_rng(0)
    mixed = [(rows, gen.integers(lo, hi + 1, size=rows).tolist()) for rows, lo, hi in MIXED_CASES]
    for rows, lens in uniform + mixed:
        blocks = [math.ceil(n / BLOCK) for n in lens]
        blocks_per_seq = max(blocks)
        num_blocks = sum(blocks)
        k = torch.randn(num_blocks, BLOCK, NUM_KV_HEADS, HEAD_DIM, device="cuda").bfloat16()
        v = torch.randn_like(k)
        order = torch.randperm(num_blocks, device="cuda").int()
        tables = torch.zeros(rows, blocks_per_seq, dtype=torch.int32, device="cuda")
        taken = 0
        for r, nb in enumerate(blocks):
            tables[r, :nb] = order[taken : taken + nb]
            taken += nb
        qkv = torch.randn(rows, QKV_WIDTH, device="cuda").bfloat16()
        out = torch.empty(rows, NUM_HEADS * HEAD_DIM, device="cuda").bfloat16()
        row_seq = torch.arange(rows, device="cuda", dtype=torch.int32)
        row_pos = torch.tensor(lens, device="cuda", dtype=torch.int32) - 1
        tensors = (qkv, k, v, out, row_seq, row_pos, tables)
        kv_bytes = 2 * sum(lens) * NUM_KV_HEADS * HEAD_DIM * 2
        max_context = blocks_per_seq * BLOCK
        is_mixed = min(lens) != max(lens)
        context = f"{min(lens)}-{max(lens)}" if is_mixed else str(lens[0])
        runs = [
            (name, kernel, engine_splits(lens, max_context, sm_count, BATCH_SPLITS))
            for name, kernel in variants.items()
            if not (is_mixed and "/" in name)
        ]
        unsplit = engine_splits(lens, max_context, sm_count, 1)
        if unsplit != runs[0][2]:
            runs.append(("batch splits off", variants["decode_attention"], unsplit))
        for name, kernel, (splits, min_keys) in runs:
            t = time_step(stream, kernel, combine, rows, splits, min_keys, flush, tensors)
            row = {
                "kernel": name,
                "rows": rows,
                "context": context,
                "splits": splits,
                "min_split_keys": min_keys,
                "kv_mib": kv_bytes / 2**20,
                "us": t * 1e6,
                "tb_per_s": kv_bytes / t / 1e12,
                "of_copy": kv_bytes / t / copy_bw,
            }
            results.append(row)
            print(
                f"{name:19s} rows {rows:4d} context {context:>9s} splits {splits:3d} "
                f"(>= {min_keys:8d} keys)  {row['us']:8.1f} us  {row['tb_per_s']:.2f} TB/s "
                f"= {100 * row['of_copy']:.0f} %"
            )
        del k, v
        torch.cuda.empty_cache()

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "gpu": gpu,
            "date": date.today().isoformat(),
            "command": "python bench/attention_bench.py",
            "copy_bytes_per_s": copy_bw,
            "results": results,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
