"""Decode (tg128) of two Infire builds on the CPU, alternating rounds.

Each build is a ``python/`` directory holding a built ``infire`` package (``maturin develop``
puts ``_core.abi3.so`` there); each measurement runs in a fresh process with that directory
first on ``PYTHONPATH``: a 16-token prompt, then 128 greedy tokens, tokens after the first over
the time after the first, best of ``--runs`` in the process. Rounds alternate between the
builds so that a change in the machine's load hits both.

    python bench/cpu_decode_ab.py --before OLD/python --after NEW/python \
        [--threads 2] [--rounds 4] [--runs 3] [--model FILE] \
        [--before-env NAME=VALUE] [--after-env NAME=VALUE]

One build against itself with a setting changed: the same directory for both sides and
``--before-env`` (e.g. ``INFIRE_CPU_SPIN_US=0``: the CPU backend's regions on rayon).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from cpu_vs_llamacpp import load_average

CHILD = """
import json, sys, time
import infire
model, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = infire.Engine(model=model, device="cpu", num_threads=threads)
prompt = engine.tokenizer.encode("The history of the city begins with a small settlement by")
params = infire.SamplingParams(max_tokens=128, temperature=0.0, ignore_eos=True)
engine.generate(prompt, infire.SamplingParams(max_tokens=8, temperature=0.0))  # warm-up
best = 0.0
for _ in range(runs):
    first, out = None, None
    for out in engine.stream(prompt, params):
        first = first or time.perf_counter()
    n = len(out.outputs[0].token_ids)
    best = max(best, (n - 1) / (time.perf_counter() - first))
print(json.dumps({"module": infire.__file__, "tg128": best}))
"""


def measure(python_dir: str, model: str, threads: int, runs: int, extra_env: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=python_dir)
    env.update(kv.split("=", 1) for kv in extra_env)
    cmd = [sys.executable, "-c", CHILD, model, str(threads), str(runs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    row = json.loads(out.strip().splitlines()[-1])
    # The build measured must be the one asked for, not one installed in site-packages.
    assert row["module"].startswith(os.path.abspath(python_dir)), row["module"]
    return row["tg128"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--before-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the before side only (repeatable), e.g. "
        "INFIRE_CPU_SPIN_US=0 to compare one build with its spin pool off",
    )
    ap.add_argument("--after-env", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    if args.model is None:
        from infire.model_resolution import default_model_path

        args.model = str(default_model_path())
    results = {"before": [], "after": []}
    for r in range(args.rounds):
        # Alternate which build goes first, so that neither always follows the other.
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for name in order:
            env = getattr(args, f"{name}_env")
            tg = measure(getattr(args, name), args.model, args.threads, args.runs, env)
            results[name].append(tg)
            print(f"round {r} {name}: tg128 {tg:.1f} tok/s (load {load_average()})", flush=True)
    for name, xs in results.items():
        print(
            f"{name}: tg128 median {statistics.median(xs):.1f}, "
            f"range {min(xs):.1f}-{max(xs):.1f} tok/s over {len(xs)} rounds"
        )


if __name__ == "__main__":
    main()
