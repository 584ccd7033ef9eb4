"""Token selection on the GPU: the argmax and sample kernels (kernels/cuda/sampling.cu) over
Llama-3's vocabulary (128,256 f32 logits per row), per filter setting and row count.

    python bench/sampling_bench.py [--out bench/results/sampling_h200.json]

Each case is a chain of launches captured in a CUDA graph (time per launch = graph time over
the launch count, median of 10 replays), over copies of the logits that together exceed the
L2 cache, so that every launch reads its rows from HBM as in a decode step. No penalties, so a
launch leaves its logits as it found them. The floor is one read of the rows at the measured
copy bandwidth (counting read + write bytes, as the other benches). The sample kernel reads a
row once for its maximum (and, with top-k, its coarse histogram), once more for the top-p
histogram (top-p alone), once to gather the candidates into shared memory when they fit, and
otherwise three times per radix select and once for the draw; "/ row" is the kernel compiled
with no candidate room (SAMPLE_CANDIDATES=0), which always takes the passes over the row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from datetime import date
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

VOCAB = 128256
ROWS = [1, 8, 64, 256]
MIN_BYTES = 200e6
# (name, temperature, top_k, top_p, min_p)
SETTINGS = [
    ("temperature", 0.8, -1, 1.0, 0.0),
    ("top_p 0.95", 0.8, -1, 0.95, 0.0),
    ("top_k 50", 0.8, 50, 1.0, 0.0),
    ("min_p 0.05", 0.8, -1, 1.0, 0.05),
    ("top_k 50 + top_p 0.9", 0.8, 50, 0.9, 0.0),
]
PARAM_WORDS = 12


def params(rows: int, temperature: float, top_k: int, top_p: float, min_p: float):
    """The packed parameters of `rows` rows (backend/cuda/sampler.rs), no penalties."""
    f = lambda x: int(np.float32(x).view(np.uint32))  # noqa: E731
    words = np.zeros((rows, PARAM_WORDS), dtype=np.uint32)
    for r in range(rows):
        # temperature, top_p, min_p, top_k, penalties (off), penalty range, key, unused
        words[r, :7] = [f(temperature), f(top_p), f(min_p), top_k & 0xFFFFFFFF, f(1.0), 0, 0]
        words[r, 7:] = [0, 0, r * 7919 + 1, r, 0]
    return torch.from_numpy(words.view(np.int32)).cuda()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    _, copy_bw, gpu = card()
    argmax = load("sampling", "argmax")
    # The engine's kernel, and the same with no shared-memory candidates (every pass reads the
    # whole row): the A/B of the candidate path.
    samplers = {
        "": load("sampling", "sample"),
        " / row": load("sampling", "sample", SAMPLE_CANDIDATES=0),
    }
    entries = torch.zeros(2, dtype=torch.int32, device="cuda")
    results = []
    print(f"{'rows':>5} {'setting':<28} {'us':>8} {'floor us':>9} {'x floor':>8}")
    for rows in ROWS:
        row_bytes = rows * VOCAB * 4
        copies = max(1, math.ceil(MIN_BYTES / row_bytes))
        logits = [torch.randn(rows, VOCAB, device="cuda") * 3 for _ in range(copies)]
        out = torch.empty(rows, dtype=torch.int32, device="cuda")
        floor = 2 * row_bytes / copy_bw  # read + write bytes, as the copy figure counts them
        cfg = LaunchConfig(grid=rows, block=1024)
        vocab = np.int32(VOCAB)

        def chain_argmax(logits=logits, out=out, cfg=cfg, vocab=vocab):
            s = torch_stream()
            for lg in logits:
                launch(s, cfg, argmax, lg.data_ptr(), vocab, out.data_ptr())

        cases = [("argmax", chain_argmax)]
        for (name, t, k, p, m), (suffix, sample) in itertools.product(SETTINGS, samplers.items()):
            words = params(rows, t, k, p, m)

            def chain(logits=logits, out=out, cfg=cfg, vocab=vocab, words=words, sample=sample):
                s = torch_stream()
                for lg in logits:
                    args = (lg.data_ptr(), vocab, words.data_ptr(), entries.data_ptr())
                    launch(s, cfg, sample, *args, out.data_ptr())

            cases.append((name + suffix, chain))
        for name, build in cases:
            sec = time_graph(build, copies)
            results.append(
                {
                    "rows": rows,
                    "setting": name,
                    "us": round(sec * 1e6, 2),
                    "floor_us": round(floor * 1e6, 2),
                }
            )
            print(f"{rows:>5} {name:<28} {sec * 1e6:>8.1f} {floor * 1e6:>9.1f} {sec / floor:>8.1f}")
        del logits
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "gpu": gpu,
                    "date": date.today().isoformat(),
                    "command": "python bench/sampling_bench.py",
                    "copy_bytes_per_s": copy_bw,
                    "vocab": VOCAB,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
