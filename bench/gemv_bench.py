"""Times the `gemv` kernel (kernels/cuda/gemv.cu) on Llama-3.1-8B's four decode projections.

    python bench/gemv_bench.py [--dtype bfloat16|float16] [--rows 1 4] [--iters 50]

For each shape and row count: `gemv` (compiled through `infire.kernels.compile`, launched with
cuda.core on torch's stream, grid ceil(n / 8), block 256) and `torch.nn.functional.linear` on
the same inputs (cuBLASLt), each the median of --iters calls timed by CUDA events. Every call
reads the next of 4 copies of the weight, so no call finds its weight in L2 (50 MiB on the
H200; the smallest weight is 32 MiB). All calls are queued behind a `torch.cuda._sleep`, so
the events time the GPU, not Python's launch overhead. First measures the card's copy
bandwidth (a 2 GiB torch copy, bytes read + written, median of 20) as the ceiling. Prints a
markdown table: µs per call and GB/s = (weight + x + out bytes) / time.
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import torch
import torch.nn.functional as F

try:  # cuda.core >= 0.4 exports the API at the top level; older releases under .experimental
    from cuda.core import Device, LaunchConfig, ObjectCode, launch
except ImportError:
    from cuda.core.experimental import Device, LaunchConfig, ObjectCode, launch

from infire import kernels

# (name, n, k): out features, in features of the fused projections of Llama-3.1-8B.
SHAPES = [
    ("qkv", 6144, 4096),
    ("o_proj", 4096, 4096),
    ("gate_up", 28672, 4096),
    ("down", 4096, 14336),
]
COPIES = 4
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# The model constants every kernel file is compiled with (gemv uses none of them).
DEFINES = {"HEAD_DIM": 128, "NUM_HEADS": 32, "NUM_KV_HEADS": 8, "KV_BLOCK_SIZE": 16}
SLEEP_CYCLES = 200_000_000  # ~0.1 s at ~2 GHz: longer than queuing all the timed calls


class _TorchStream:
    """torch's current stream, seen by cuda.core through the __cuda_stream__ protocol."""

    def __init__(self, stream):
        self.stream = stream

    def __cuda_stream__(self):
        return (0, self.stream.cuda_stream)


def arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def time_calls(fn, iters: int) -> float:
    """Median µs of fn(i) for i < iters, each call between its own pair of CUDA events."""
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(iters)
    ]
    fn(0)  # warm-up
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    for i, (start, end) in enumerate(events):
        start.record()
        fn(i)
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def copy_bandwidth(dtype) -> float:
    """Device-to-device copy GB/s, bytes read + written, 2 GiB, median of 20."""
    n = 2**30 // torch.tensor([], dtype=dtype).element_size() * 2
    src = torch.empty(n, dtype=dtype, device="cuda")
    dst = torch.empty_like(src)
    us = time_calls(lambda i: dst.copy_(src), 20)
    return 2 * src.numel() * src.element_size() / us / 1e3


def bench_shape(name, n, k, rows_list, t, kernel, stream, ceiling, iters) -> None:
    """Prints one table row per row count for the [n x k] weight."""
    ws = [(torch.randn(n, k, device="cuda") * k**-0.5).to(t) for _ in range(COPIES)]
    config = LaunchConfig(grid=math.ceil(n / 8), block=256)
    elem = torch.tensor([], dtype=t).element_size()
    for rows in rows_list:
        x = torch.randn(rows, k, device="cuda").to(t)
        out = torch.empty(rows, n, dtype=t, device="cuda")
        sizes = (np.int32(rows), np.int32(n), np.int32(k))
        null = np.uint64(0)  # no bias
        args = [(x.data_ptr(), w.data_ptr(), null, out.data_ptr(), *sizes) for w in ws]

        def run_gemv(i, args=args):
            launch(stream, config, kernel, *args[i % COPIES])

        def run_torch(i, x=x):
            F.linear(x, ws[i % COPIES])

        run_gemv(0)
        torch.cuda.synchronize()
        err = (out.double() - F.linear(x, ws[0]).double()).norm() / out.double().norm()
        assert err < 2e-2, f"{name} rows={rows}: gemv differs from F.linear by {err:.2e}"

        bytes_moved = (n * k + rows * (k + n)) * elem
        us_gemv = time_calls(run_gemv, iters)
        us_torch = time_calls(run_torch, iters)
        floor = bytes_moved / ceiling / 1e3
        print(
            f"| {name} | {n} x {k} | {rows} | {floor:.1f} | {us_gemv:.1f} "
            f"| {bytes_moved / us_gemv / 1e3:.0f} | {floor / us_gemv:.0%} "
            f"| {us_torch:.1f} | {bytes_moved / us_torch / 1e3:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    t = DTYPES[args.dtype]

    device = Device(torch.cuda.current_device())
    device.set_current()
    cubin = kernels.compile("gemv", arch=arch(), defines=DEFINES, dtype=args.dtype)
    kernel = ObjectCode.from_cubin(cubin).get_kernel("gemv")
    stream = device.create_stream(_TorchStream(torch.cuda.current_stream()))

    print(f"{torch.cuda.get_device_name()}, {args.dtype}, {arch()}")
    ceiling = copy_bandwidth(t)
    print(f"copy bandwidth: {ceiling:.0f} GB/s (2 GiB torch copy, bytes read + written)\n")
    print(
        "| shape | [n x k] | rows | floor µs | gemv µs | gemv GB/s | floor / gemv "
        "| F.linear µs | F.linear GB/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, n, k in SHAPES:
        bench_shape(name, n, k, args.rows, t, kernel, stream, ceiling, args.iters)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
