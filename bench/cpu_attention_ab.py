"""Prompt reading (pp512, pp4096) of two Infire builds on the CPU, alternating rounds.

Each build is a ``python/`` directory holding a built ``infire`` package (``maturin develop``
puts ``_core.abi3.so`` there); each measurement runs in a fresh process with that directory
first on ``PYTHONPATH``, the same thread count and prompt as ``bench/cpu_vs_llamacpp.py``.
Rounds alternate between the builds so that a change in the machine's load hits both.

    python bench/cpu_attention_ab.py --before OLD/python --after NEW/python \
        [--threads 2] [--prompts 512,4096] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from cpu_vs_llamacpp import load_average

CHILD = """
import json, sys, time
import infire
model, threads, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
engine = infire.Engine(model=model, device="cpu", num_threads=threads)
ids = engine.tokenizer.encode("The history of the city begins with a small settlement. " * 600)
greedy = dict(temperature=0.0, ignore_eos=True)
engine.generate(ids[:64], infire.SamplingParams(max_tokens=8, **greedy))  # warm-up
rows = {"module": infire.__file__}
for n in prompts:
    t = time.perf_counter()
    engine.generate(ids[:n], infire.SamplingParams(max_tokens=1, **greedy))
    rows[f"pp{n}"] = n / (time.perf_counter() - t)
print(json.dumps(rows))
"""


def measure(python_dir: str, model: str, threads: int, prompts: list[int]) -> dict:
    env = dict(os.environ, PYTHONPATH=python_dir)
    cmd = [sys.executable, "-c", CHILD, model, str(threads), json.dumps(prompts)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    row = json.loads(out.strip().splitlines()[-1])
    # The build measured must be the one asked for, not one installed in site-packages.
    assert row["module"].startswith(os.path.abspath(python_dir)), row["module"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", default="512,4096")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    prompts = [int(p) for p in args.prompts.split(",")]
    if args.model is None:
        from infire.model_resolution import default_model_path

        args.model = str(default_model_path())
    for r in range(args.rounds):
        for name in ("before", "after"):
            load = load_average()
            row = measure(getattr(args, name), args.model, args.threads, prompts)
            rates = ", ".join(f"pp{n} {row[f'pp{n}']:.1f} tok/s" for n in prompts)
            print(f"round {r + 1} {name}: {rates} (load average before: {load})", flush=True)


if __name__ == "__main__":
    main()
