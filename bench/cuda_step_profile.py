"""Where a single-stream decode step of the Llama-3.1-8B-shaped model spends its time.

Two parts, for the kernel notes (kernels/cuda/NOTES.md):

    python bench/cuda_step_profile.py gemm     # cuBLAS (through torch) floor of the step's GEMMs,
                                               # then the step's GEMMs at 1..256 rows
    ncu --clock-control none --launch-skip 3000 --launch-count 400 --csv \\
        --metrics gpu__time_duration.sum,dram__bytes_read.sum \\
        python bench/cuda_step_profile.py decode [--batch 256 --prompt-len 1024]
                                                  # every kernel of ~one decode step
    ncu --profile-from-start off --launch-skip 400 --launch-count 600 ... \\
        python bench/cuda_step_profile.py decode --batch 256 --prompt-len 100 \\
        --prompt-len-max 1024 --decode-only     # decode steps of a batch of mixed lengths
    python bench/cuda_step_profile.py timeline [--quantization fp8] [--batch 64]
                                                  # the kernels of decode steps as they ran

`gemm` times `F.linear` on one row for each weight shape of the model (QKV, O, gate/up, down,
LM head), in CUDA graphs of back-to-back launches over copies of each weight so that no launch
reads it from L2 and no host gap is timed (events around single launches timed the launch:
their first run summed to 7.2 ms of GEMMs for a 4.9 ms step), and prints
the GEMM time of one decode step next to the bytes it must read and the card's copy
bandwidth; then, for batched decode steps of --rows rows, the step's GEMM time against its
floor (per GEMM the larger of weight bytes / copy bandwidth and FLOPs / the 8192^3 rate),
which shows where decode turns compute-bound and how close cuBLAS gets there. `decode` loads
the checkpoint that bench/cuda_bench.py writes and decodes one sequence, so that ncu sees a
steady stream of decode steps after the first few thousand kernels.

`timeline` decodes under torch's profiler (CUPTI kernel records, which also see the engine's
launches and its CUDA graphs' kernels, since both share the device's primary context: written
without a GPU at hand, so its first run is also the check of that), and
splits the record into steps at each `embedding` launch. Unlike ncu, which replays every kernel
alone with cold caches, these are the durations in the running step, overlap from programmatic
dependent launch included; the step's period minus the union of its kernels' intervals is the
time the GPU had no kernel running. Prints, for the median decode step, each kernel's time and
launches, the period, the busy time and the idle time; writes bench/results/timeline_<tag>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cuda_bench import (  # noqa: E402
    LLAMA_3_1_8B,
    copy_bandwidth,
    gemm_rate,
    time_graph,
    write_checkpoint,
)

HIDDEN = LLAMA_3_1_8B["hidden_size"]
INTER = LLAMA_3_1_8B["intermediate_size"]
HEAD_DIM = HIDDEN // LLAMA_3_1_8B["num_attention_heads"]
KV = LLAMA_3_1_8B["num_key_value_heads"] * HEAD_DIM
LAYERS = LLAMA_3_1_8B["num_hidden_layers"]
VOCAB = LLAMA_3_1_8B["vocab_size"]

# (name, out features, in features, times per step)
SHAPES = [
    ("qkv", HIDDEN + 2 * KV, HIDDEN, LAYERS),
    ("o_proj", HIDDEN, HIDDEN, LAYERS),
    ("gate_up", 2 * INTER, HIDDEN, LAYERS),
    ("down", HIDDEN, INTER, LAYERS),
    ("lm_head", VOCAB, HIDDEN, 1),
]


def time_linear(n: int, k: int, rows: int = 1) -> float:
    """Seconds of one `F.linear(x[rows, k], w[n, k])`, bf16, in a CUDA graph of back-to-back
    launches over enough weight copies (>= 400 MB) that each reads its weight from HBM, as in
    a decode step."""
    copies = max(2, math.ceil(400e6 / (2 * n * k)))
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(rows, n, device="cuda", dtype=torch.bfloat16)

    def chain():
        for _ in range(4):
            for w in ws:
                torch.nn.functional.linear(x, w, out=out)

    return time_graph(chain, 4 * copies)


def gemm_floor(rows_list: list[int]) -> None:
    bw = copy_bandwidth()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s")
    print("| GEMM | n × k | µs | GB/s | per step µs |\n| --- | --- | --- | --- | --- |")
    total = 0.0
    total_bytes = 0
    for name, n, k, times in SHAPES:
        t = time_linear(n, k)
        nbytes = 2 * n * k
        total += t * times
        total_bytes += nbytes * times
        gbs = nbytes / t / 1e9
        print(f"| {name} | {n} × {k} | {t * 1e6:.1f} | {gbs:.0f} | {t * times * 1e6:.0f} |")
    print(
        f"GEMMs of one decode step: {total * 1e3:.2f} ms for {total_bytes / 1e9:.2f} GB "
        f"({total_bytes / total / 1e12:.2f} TB/s); at copy bandwidth: "
        f"{total_bytes / bw * 1e3:.2f} ms"
    )
    # Batched decode: where a step turns from reading weights to computing. Floor per GEMM =
    # max(weight bytes / copy bandwidth, FLOPs / the 8192^3 rate).
    rate = gemm_rate()
    print(f"\nbf16 GEMM rate (8192^3): {rate / 1e12:.0f} TFLOP/s")
    names = " | ".join(f"{name} µs (of floor)" for name, *_ in SHAPES)
    print(f"| rows | decode-step GEMMs ms | floor ms | of floor | TFLOP/s | {names} |")
    print("| --- |" + " --- |" * (4 + len(SHAPES)))
    for rows in rows_list:
        step = floor = flops = 0.0
        each = []
        for _, n, k, times in SHAPES:
            t = time_linear(n, k, rows=rows)
            f = max(2 * n * k / bw, 2 * rows * n * k / rate)
            step += t * times
            floor += f * times
            flops += 2 * rows * n * k * times
            each.append(f"{t * 1e6:.1f} ({f / t:.0%})")
        print(
            f"| {rows} | {step * 1e3:.2f} | {floor * 1e3:.2f} | {floor / step:.0%} "
            f"| {flops / step / 1e12:.0f} | {' | '.join(each)} |"
        )


def make_engine(model_dir: Path, batch: int, args):
    import infire

    write_checkpoint(model_dir, LLAMA_3_1_8B)
    options = {"quantization": args.quantization, "kv_cache_dtype": args.kv_cache_dtype}
    return infire.Engine(
        str(model_dir),
        device="cuda",
        max_num_seqs=max(batch, 8),
        max_num_batched_tokens=8192,
        **{k: v for k, v in options.items() if v is not None},
    )


def make_prompts(batch: int, prompt_len: int, args, salt: int = 0) -> list[list[int]]:
    longest = max(prompt_len, args.prompt_len_max or prompt_len)
    lens = torch.randint(
        prompt_len, longest + 1, (batch,), generator=torch.Generator().manual_seed(0)
    )
    return [
        [1000 + (i * 7919 + j + salt) % 100000 for j in range(n)]
        for i, n in enumerate(lens.tolist())
    ]


def decode(model_dir: Path, batch: int, prompt_len: int, new_tokens: int, args) -> None:
    import infire

    engine = make_engine(model_dir, batch, args)
    params = infire.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    prompts = make_prompts(batch, prompt_len, args)
    if args.decode_only:
        # The prompts once for one token, so that the profiled run finds them in the prefix
        # cache and is all decode steps but its first; ncu --profile-from-start off then sees
        # only that run.
        engine.generate(prompts, infire.SamplingParams(temperature=0.0, max_tokens=1))
        torch.cuda.profiler.start()
    outs = engine.generate(prompts, params)
    torch.cuda.profiler.stop()
    m = outs[0].metrics
    n = len(outs[0].outputs[0].token_ids)
    print(f"decode: {(n - 1) / (m.finished_time - m.first_token_time):.1f} steps/s at {batch}")


def kernel_records(trace_path: str) -> list[tuple[float, float, str]]:
    """(start µs, duration µs, name) of every kernel in a torch profiler chrome trace, in start
    order."""
    events = json.load(open(trace_path))["traceEvents"]
    kernels = [
        (float(e["ts"]), float(e["dur"]), e["name"]) for e in events if e.get("cat") == "kernel"
    ]
    return sorted(kernels)


def split_steps(kernels: list[tuple[float, float, str]]) -> list[list[tuple[float, float, str]]]:
    """The kernels cut into engine steps, each beginning at an `embedding` launch; the last
    (unfinished: its period is unknown) is dropped."""
    starts = [i for i, (_, _, name) in enumerate(kernels) if name.startswith("embedding")]
    return [kernels[a:b] for a, b in zip(starts, starts[1:], strict=False)]


def step_summary(step, period: float) -> dict:
    """Per-kernel time and launches of one step, its period, and the union of its kernels'
    intervals (time with at least one kernel running)."""
    per_name: dict[str, list[float]] = collections.defaultdict(list)
    busy, end = 0.0, -math.inf
    for start, dur, name in step:
        per_name[short_name(name)].append(dur)
        lo, hi = max(start, end), start + dur
        if hi > lo:
            busy += hi - lo
        end = max(end, hi)
    return {
        "period_us": period,
        "busy_us": busy,
        "kernels": {n: {"us": sum(d), "launches": len(d)} for n, d in per_name.items()},
    }


def short_name(name: str) -> str:
    """A kernel's name without its template arguments and parameter list."""
    return name.split("(")[0].split("<")[0].strip()


def timeline(model_dir: Path, args) -> None:
    from torch.profiler import ProfilerActivity, profile

    import infire

    torch.cuda.init()
    engine = make_engine(model_dir, args.batch, args)
    params = infire.SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    engine.generate(make_prompts(args.batch, args.prompt_len, args, salt=1), params)  # warm-up
    prompts = make_prompts(args.batch, args.prompt_len, args, salt=2)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        outs = engine.generate(prompts, params)
    m = outs[0].metrics
    tok_s = (len(outs[0].outputs[0].token_ids) - 1) / (m.finished_time - m.first_token_time)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        kernels = kernel_records(f.name)
    steps = split_steps(kernels)
    if len(steps) < 4:
        names = collections.Counter(short_name(n) for _, _, n in kernels).most_common(8)
        sys.exit(f"{len(kernels)} kernel records, {len(steps)} steps; most frequent: {names}")
    # The first steps prefill (and warm); the decode steps after them are alike.
    decode_steps = steps[len(steps) // 4 :]
    periods = [b[0][0] - a[0][0] for a, b in zip(decode_steps, decode_steps[1:], strict=False)]
    summaries = [step_summary(s, p) for s, p in zip(decode_steps, periods, strict=False)]
    median = sorted(summaries, key=lambda s: s["period_us"])[len(summaries) // 2]
    names = sorted(median["kernels"], key=lambda n: -median["kernels"][n]["us"])
    label = f"{args.quantization or 'bf16'}, kv {args.kv_cache_dtype or 'bf16'}"
    print(f"card: {torch.cuda.get_device_name()}; {label}; batch {args.batch}")
    print(f"decode {tok_s:.1f} tok/s per sequence; {len(summaries)} decode steps recorded")
    print("| kernel | launches | µs in the step | share |\n| --- | --- | --- | --- |")
    for n in names:
        k = median["kernels"][n]
        share = k["us"] / median["period_us"]
        print(f"| {n} | {k['launches']} | {k['us']:.1f} | {share:.1%} |")
    idle = median["period_us"] - median["busy_us"]
    print(
        f"period {median['period_us']:.1f} µs (median step; steps "
        f"{statistics.median(periods):.1f} µs median), kernels running {median['busy_us']:.1f} "
        f"µs, no kernel running {idle:.1f} µs"
    )
    out = Path(__file__).parent / "results" / f"timeline_{args.tag}.json"
    out.write_text(
        json.dumps(
            {
                "card": torch.cuda.get_device_name(),
                "config": label,
                "batch": args.batch,
                "prompt_len": args.prompt_len,
                "decode_tok_s": tok_s,
                "median_step": median,
                "periods_us": periods,
            },
            indent=1,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["gemm", "decode", "timeline"])
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/llama8b-random"))
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--prompt-len-max", type=int, help="decode: prompt lengths uniform in [--prompt-len, this]"
    )
    ap.add_argument(
        "--decode-only",
        action="store_true",
        help="decode: prefill the prompts in a first run, profile (cudaProfilerStart) the second",
    )
    ap.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[1, 16, 64, 128, 192, 256],
        help="gemm: batched decode sizes to time",
    )
    ap.add_argument("--quantization", choices=["fp8"], default=None)
    ap.add_argument("--kv-cache-dtype", choices=["fp8"], default=None)
    ap.add_argument("--tag", default="run", help="timeline: bench/results/timeline_<tag>.json")
    args = ap.parse_args()
    if args.part == "gemm":
        gemm_floor(args.rows)
    elif args.part == "timeline":
        timeline(args.model_dir, args)
    else:
        decode(args.model_dir, args.batch, args.prompt_len, args.new_tokens, args)


if __name__ == "__main__":
    main()
