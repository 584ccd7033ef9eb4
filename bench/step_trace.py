"""Where the time of an engine run went, from its step trace.

    INFIRE_STEP_TRACE=/tmp/trace.jsonl python bench/cuda_bench.py throughput --out run.json
    python bench/step_trace.py /tmp/trace.jsonl --bench-json run.json [--out summary.json]

The engine writes one JSON line per step (fields: `rust/src/engine/trace.rs`), with the step's
device time and the device's idle time before it from CUDA events. This script cuts the trace
into runs (a run ends with a step after which the engine had no work left), and for the run
with the most steps prints:

- wall time, device time and device idle time (the device waiting for the host between steps);
- the steps the device waited longest for, and the longest launches (averages hide a stall of
  one step; two steps of the bench's run waited ~150 and ~120 ms before the wait's nap was
  fixed, kernels/cuda/NOTES.md);
- per kind of step (steps with prompt rows; decode-only steps by row count) the device time
  against its floor: the larger of (weight bytes + KV bytes read) / copy bandwidth and the
  linear layers' FLOPs / GEMM rate, per step. Prompt attention FLOPs are left out of the floor
  (the trace has no per-sequence prompt lengths), so the floor of steps with prompt rows is low
  by up to ~10 % at ~1,000-token prompts.

Ceilings come from the bench's JSON (its `ceilings`, measured in the same run by
bench/cuda_bench.py) or --copy-bw / --gemm-rate. Model constants default to the
Llama-3.1-8B shape the bench writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Llama-3.1-8B in bf16: weight bytes, KV bytes per token (2 x 32 layers x 8 heads x 128 x 2 B).
WEIGHT_BYTES = 16.06e9
KV_TOKEN_BYTES = 2 * 32 * 8 * 128 * 2
STALLS = 5  # steps listed per kind of outlier
DECODE_BUCKETS = [(1, 8), (9, 32), (33, 64), (65, 128), (129, 192), (193, 256), (257, 1 << 30)]


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runs(steps: list[dict]) -> list[list[dict]]:
    """Steps cut after each step that left the engine without work (`last`)."""
    out: list[list[dict]] = [[]]
    for s in steps:
        out[-1].append(s)
        if s["last"]:
            out.append([])
    return [r for r in out if r]


def ceilings(args) -> tuple[float, float]:
    bw, rate = args.copy_bw, args.gemm_rate
    if args.bench_json:
        data = json.loads(Path(args.bench_json).read_text())["ceilings"]
        bw = bw or data["copy_bytes_per_s"]
        rate = rate or data["bf16_gemm_flop_per_s"]
    if not (bw and rate):
        raise SystemExit("need --bench-json or both --copy-bw and --gemm-rate")
    return bw, rate


def floor_s(s: dict, bw: float, rate: float, weights: float, kv_token: float) -> float:
    real = s["tokens"] - s["padding"]
    memory = (weights + s["kv_tokens"] * kv_token) / bw
    compute = 2 * (weights / 2) * real / rate
    return max(memory, compute)


def kind(s: dict) -> str:
    if s["prefill_tokens"] > 0:
        return "with prompt rows"
    rows = s["decode_rows"]
    lo, hi = next(b for b in DECODE_BUCKETS if b[0] <= rows <= b[1])
    return f"decode {lo}-{hi} rows" if hi < 1 << 30 else f"decode {lo}+ rows"


def summarize(run: list[dict], bw: float, rate: float, weights: float, kv_token: float) -> dict:
    first, last = run[0], run[-1]
    wall = (last["t_collect"] + last["collect_us"] + last["apply_us"] - first["t_launch"]) / 1e6
    gpu = sum(s["gpu_ms"] or 0.0 for s in run) / 1e3
    # The first step's idle time is the pause before the run.
    idle = sum(s["idle_ms"] or 0.0 for s in run[1:]) / 1e3
    kinds: dict[str, dict] = {}
    order = ["with prompt rows"] + [
        kind({"prefill_tokens": 0, "decode_rows": b[0]}) for b in DECODE_BUCKETS
    ]
    for i, s in enumerate(run):
        k = kinds.setdefault(
            kind(s),
            {
                "steps": 0,
                "gpu_s": 0.0,
                "floor_s": 0.0,
                "idle_s": 0.0,
                "rows": 0,
                "padding": 0,
                "launch_us": 0,
                "apply_us": 0,
            },
        )
        k["steps"] += 1
        k["gpu_s"] += (s["gpu_ms"] or 0.0) / 1e3
        k["floor_s"] += floor_s(s, bw, rate, weights, kv_token)
        k["idle_s"] += (s["idle_ms"] or 0.0) / 1e3 if i else 0.0
        k["rows"] += s["tokens"] - s["padding"]
        k["padding"] += s["padding"]
        k["launch_us"] += s["launch_us"]
        k["apply_us"] += s["apply_us"]
    table = []
    for name in order:
        if name not in kinds:
            continue
        k = kinds[name]
        n = k["steps"]
        table.append(
            {
                "kind": name,
                "steps": n,
                "gpu_s": round(k["gpu_s"], 3),
                "gpu_ms_per_step": round(k["gpu_s"] / n * 1e3, 3),
                "floor_ms_per_step": round(k["floor_s"] / n * 1e3, 3),
                "of_floor": round(k["floor_s"] / k["gpu_s"], 3) if k["gpu_s"] else None,
                "idle_s": round(k["idle_s"], 3),
                "idle_ms_per_step": round(k["idle_s"] / n * 1e3, 3),
                "rows_per_step": round(k["rows"] / n, 1),
                "padding_per_step": round(k["padding"] / n, 1),
                "launch_us_per_step": round(k["launch_us"] / n),
                "apply_us_per_step": round(k["apply_us"] / n),
            }
        )

    def brief(s: dict) -> dict:
        keys = ["step", "tokens", "seqs", "decode_rows", "launch_us", "gpu_ms", "idle_ms"]
        return {k: s[k] for k in keys} | {"kind": kind(s)}

    waited = sorted(run[1:], key=lambda s: s["idle_ms"] or 0.0, reverse=True)[:STALLS]
    slow = sorted(run, key=lambda s: s["launch_us"], reverse=True)[:STALLS]
    return {
        "steps": len(run),
        "longest_idle_before": [brief(s) for s in waited],
        "longest_launches": [brief(s) for s in slow],
        "wall_s": round(wall, 3),
        "gpu_s": round(gpu, 3),
        "idle_s": round(idle, 3),
        "gpu_busy": round(gpu / wall, 3),
        "floor_s": round(sum(floor_s(s, bw, rate, weights, kv_token) for s in run), 3),
        "copy_bw": bw,
        "gemm_rate": rate,
        "kinds": table,
    }


def print_summary(r: dict) -> None:
    print(
        f"{r['steps']} steps, wall {r['wall_s']} s: device busy {r['gpu_s']} s "
        f"({r['gpu_busy']:.1%}), idle between steps {r['idle_s']} s; "
        f"sum of step floors {r['floor_s']} s "
        f"(copy {r['copy_bw'] / 1e12:.2f} TB/s, GEMM {r['gemm_rate'] / 1e12:.0f} TFLOP/s)"
    )
    cols = [
        "kind",
        "steps",
        "rows_per_step",
        "padding_per_step",
        "gpu_s",
        "gpu_ms_per_step",
        "floor_ms_per_step",
        "of_floor",
        "idle_ms_per_step",
        "launch_us_per_step",
        "apply_us_per_step",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for k in r["kinds"]:
        print("| " + " | ".join(str(k[c]) for c in cols) + " |")
    for title, key in [
        ("device idle before", "longest_idle_before"),
        ("launch", "longest_launches"),
    ]:
        print(
            f"longest {title}: "
            + "; ".join(
                f"step {s['step']} ({s['kind']}, {s['tokens']} rows, {s['seqs']} seqs): "
                f"idle {s['idle_ms']} ms, launch {s['launch_us'] / 1e3:.1f} ms, "
                f"device {s['gpu_ms']} ms"
                for s in r[key]
            )
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("trace", type=Path)
    p.add_argument("--bench-json", help="bench/cuda_bench.py --out JSON of the same run (ceilings)")
    p.add_argument("--copy-bw", type=float, help="bytes/s (read + written)")
    p.add_argument("--gemm-rate", type=float, help="FLOP/s")
    p.add_argument("--weight-bytes", type=float, default=WEIGHT_BYTES)
    p.add_argument("--kv-token-bytes", type=float, default=KV_TOKEN_BYTES)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    bw, rate = ceilings(args)
    all_runs = runs(load(args.trace))
    print(f"{len(all_runs)} runs in the trace, of {[len(r) for r in all_runs]} steps")
    longest = max(all_runs, key=len)
    summary = summarize(longest, bw, rate, args.weight_bytes, args.kv_token_bytes)
    print_summary(summary)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
