"""Safetensors quantized at load on the CPU against the GGUF file: load time, peak RSS and
decode speed of the default model in four forms, each in a fresh process, rounds alternating.

- `gguf`: the default model's GGUF (Q4_1 projections, Q8_0 embeddings / LM head, kept
  quantized);
- `hf`: the same weights written as a bf16 Hugging Face directory (`tests/default_model_hf.py`)
  and loaded unquantized (f32 weights);
- `hf-q8_0`, `hf-q4_0`: that directory with `quantization="q8_0"` / `"q4_0"`.

Decode is tg128-like: a 16-token prompt, 128 greedy tokens, tokens after the first over the
time after the first, best of `--runs` per process.

    python bench/cpu_quant_load.py [--rounds 2] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import infire

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from default_model_hf import bf16_bytes, read_default_model, write_hf_dir  # noqa: E402

CHILD = """
import json, sys, time, infire
model, quantization, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
opts = {"quantization": quantization} if quantization != "none" else {}
t0 = time.perf_counter()
engine = infire.Engine(model=model, device="cpu", num_threads=threads, **opts)
load_s = time.perf_counter() - t0
prompt = engine.tokenizer.encode("The history of the city begins with a small settlement by")
params = infire.SamplingParams(max_tokens=128, temperature=0.0, ignore_eos=True)
engine.generate(prompt, infire.SamplingParams(max_tokens=8, temperature=0.0))
best = 0.0
for _ in range(runs):
    start, first, out = time.perf_counter(), None, None
    for out in engine.stream(prompt, params):
        first = first or time.perf_counter()
    n = len(out.outputs[0].token_ids)
    best = max(best, (n - 1) / (time.perf_counter() - first))
# VmHWM, not ru_maxrss: that would carry this script's own peak across the exec.
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
rss = int(status["VmHWM"].split()[0]) / 1000
print(json.dumps({"load_s": load_s, "decode_tok_s": best, "peak_rss_mb": rss}))
"""


def measure(model: str, quantization: str, threads: int, runs: int) -> dict:
    cmd = [sys.executable, "-c", CHILD, model, quantization, str(threads), str(runs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_quant_load.json"))
    args = ap.parse_args()
    gguf = str(infire.default_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        tensors, config, tokenizer_files = read_default_model(gguf)
        bf16 = {n: ("BF16", list(w.shape), bf16_bytes(w)) for n, w in tensors.items()}
        hf = str(write_hf_dir(Path(tmp) / "bf16", bf16, config, tokenizer_files))
        variants = {
            "gguf": (gguf, "none"),
            "hf": (hf, "none"),
            "hf-q8_0": (hf, "q8_0"),
            "hf-q4_0": (hf, "q4_0"),
        }
        rows = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (model, q) in variants.items():
                r = measure(model, q, args.threads, args.runs)
                rows[name].append(r)
                print(name, {k: round(v, 2) for k, v in r.items()}, flush=True)
    load = os.getloadavg()
    result = {
        "bench": "cpu_quant_load",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{os.cpu_count()} cores, load average at the end {load[0]:.1f}",
        "threads": args.threads,
        "rows": rows,
        "command": f"python bench/cpu_quant_load.py --rounds {args.rounds} --runs {args.runs}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| weights | load s | decode tok/s (per round) | peak RSS MB |")
    print("|---|---|---|---|")
    for name, rs in rows.items():
        dec = " / ".join(f"{r['decode_tok_s']:.1f}" for r in rs)
        load_s = min(r["load_s"] for r in rs)
        rss = max(r["peak_rss_mb"] for r in rs)
        print(f"| {name} | {load_s:.2f} | {dec} | {rss:.0f} |")


if __name__ == "__main__":
    main()
