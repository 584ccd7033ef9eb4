"""Offline throughput on the CPU backend: 64 requests submitted together versus the same
requests one by one, on the default model.

Prompts are sampled with seed 0 (lengths uniform in [--min-prompt, --max-prompt] tokens of
natural text), every request generates --new-tokens tokens with ignore_eos. Prints a table and
writes bench/results/cpu_throughput.json.

    python bench/cpu_throughput.py [--requests 64] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import time
from pathlib import Path

from cpu_decode import cpu_name

import infire


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="auto", help='"auto" (GGUF blocks quantized), "float32"')
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--min-prompt", type=int, default=16)
    ap.add_argument("--max-prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_throughput.json"))
    args = ap.parse_args()

    engine = infire.Engine(model=args.model, device="cpu", dtype=args.dtype)
    text = (
        "The history of the city begins with a small settlement by the river, where traders "
        "met to exchange grain, salt and wool. Over the centuries it grew into a busy port. "
    ) * 40
    corpus = engine.tokenizer.encode(text)
    rng = random.Random(0)
    prompts = []
    for _ in range(args.requests):
        n = rng.randint(args.min_prompt, args.max_prompt)
        start = rng.randint(0, len(corpus) - n)
        prompts.append(corpus[start : start + n])
    params = infire.SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(prompts[:2], params)  # warm-up

    t = time.perf_counter()
    batched = engine.generate(prompts, params)
    batched_s = time.perf_counter() - t

    t = time.perf_counter()
    single = [engine.generate(p, params)[0] for p in prompts]
    single_s = time.perf_counter() - t

    same = sum(
        a.outputs[0].token_ids == b.outputs[0].token_ids
        for a, b in zip(batched, single, strict=True)
    )
    out_tokens = args.requests * args.new_tokens
    result = {
        "bench": "cpu_throughput",
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "model": os.path.basename(engine.model_path),
        "requests": args.requests,
        "prompt_tokens": sum(map(len, prompts)),
        "new_tokens_per_request": args.new_tokens,
        "batched_s": round(batched_s, 2),
        "one_by_one_s": round(single_s, 2),
        "batched_output_tok_s": round(out_tokens / batched_s, 1),
        "one_by_one_output_tok_s": round(out_tokens / single_s, 1),
        "gain": round(single_s / batched_s, 2),
        "identical_greedy_outputs": same,
        "dtype": args.dtype,
        "command": "python bench/cpu_throughput.py --dtype " + args.dtype,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    head = f"{args.requests} requests, {result['prompt_tokens']} prompt tokens"
    print(f"| {head} | time | output tok/s |")
    print("| --- | --- | --- |")
    print(f"| together | {batched_s:.2f} s | {result['batched_output_tok_s']} |")
    print(f"| one by one | {single_s:.2f} s | {result['one_by_one_output_tok_s']} |")
    print(f"gain {result['gain']}x (target >= 3x); same greedy outputs: {same}/{args.requests}")


if __name__ == "__main__":
    main()
