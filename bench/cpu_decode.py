"""Single-stream decode on the CPU backend with the default model.

Prints a table and writes bench/results/cpu_decode.json: prefill time, decode tokens/s
(tokens after the first divided by the time after the first), and the process's peak RSS.

    python bench/cpu_decode.py [--model PATH] [--prompt-tokens 128] [--new-tokens 256]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import time
from pathlib import Path

import infire


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="auto", help='"auto" (GGUF blocks quantized), "float32"')
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_decode.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    engine = infire.Engine(model=args.model, device="cpu", dtype=args.dtype)
    load_s = time.perf_counter() - t0
    tok = engine.tokenizer
    base = tok.encode("The history of the city begins with a small settlement by the river. ")
    prompt = (base * (args.prompt_tokens // len(base) + 1))[: args.prompt_tokens]
    params = infire.SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(prompt, infire.SamplingParams(max_tokens=8, temperature=0.0))  # warm-up

    runs = []
    for _ in range(args.runs):
        start = time.perf_counter()
        first = None
        out = None
        for out in engine.stream(prompt, params):  # noqa: B007 (the last one is kept)
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        n = len(out.outputs[0].token_ids)
        runs.append({"ttft_s": first - start, "decode_tok_s": (n - 1) / (end - first)})
    best = max(runs, key=lambda r: r["decode_tok_s"])
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "bench": "cpu_decode",
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "model": os.path.basename(engine.model_path),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "load_s": round(load_s, 3),
        "runs": runs,
        "decode_tok_s": round(best["decode_tok_s"], 2),
        "ttft_ms": round(best["ttft_s"] * 1000, 1),
        "peak_rss_mb": round(rss_mb, 1),
        "dtype": args.dtype,
        "command": "python bench/cpu_decode.py --dtype " + args.dtype,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| machine | {result['machine']} |")
    print(f"| model | {result['model']} |")
    print(f"| load | {load_s:.2f} s |")
    print(f"| TTFT ({args.prompt_tokens}-token prompt) | {result['ttft_ms']} ms |")
    print(f"| decode | {result['decode_tok_s']} tok/s (target >= 25) |")
    print(f"| peak RSS | {result['peak_rss_mb']} MB (target < 1500) |")


if __name__ == "__main__":
    main()
