"""Infire's CPU backend against llama.cpp's CPU build on the same GGUF, same machine, one run.

Builds llama.cpp's ``llama-bench`` once from the ``llama-cpp-python`` sdist (which vendors
llama.cpp), cached under ``~/.cache/infire-bench``, then measures both engines at each thread
count: decode (tg128: 128 tokens generated after a one-token prompt) and prefill (pp128, pp512,
pp4096: a prompt of that many tokens, tokens per second of reading it). Also measures the
machine's memory-read bandwidth (``cargo bench --bench cpu_matmul -- --ceiling-only``) and prints
the decode roofline, file bytes per token ÷ bandwidth, with each side's share of it.
Writes bench/results/cpu_vs_llamacpp.json.

    python bench/cpu_vs_llamacpp.py [--model PATH] [--threads 1,2] [--prompts 128,512,4096]
        [--rounds N]

Each side runs each test once a round (llama-bench ``-r 1``; Infire in a fresh process), the
two sides in alternating order from round to round; with several rounds the table gives each
side's median at its best thread count, and the ratio's median and range over the rounds
(single runs on a shared 2-core VM vary by ±10 %).

Infire's tg128 is timed as llama-bench times its own: the engine's timestamps of the first and
the last token of a `generate` call (``RequestOutput.metrics``), with nothing consuming tokens
as they come. The same 128 tokens streamed through a Python loop (``Engine.stream``: the
Python thread woken for each token, competing for the two cores) are reported beside it as
``tg128_stream``; until 2026-12-07 that was the tg128 figure.

Needs ``cmake`` and ``ninja`` on PATH (``pip install cmake ninja``) and a C/C++ compiler for the
first run; ``cargo`` for the bandwidth figure (``--no-ceiling`` skips it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
CACHE = Path(os.environ.get("INFIRE_BENCH_CACHE", Path.home() / ".cache" / "infire-bench"))
REPO = Path(__file__).resolve().parent.parent


def llama_bench_binary() -> Path:
    """``llama-bench``, built from the sdist on the first call and cached afterwards."""
    version = LLAMA_CPP_PYTHON.split("==")[1]
    build = CACHE / f"llama.cpp-{version}-build"
    binary = build / "bin" / "llama-bench"
    if binary.is_file():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
             "llama-cpp-python", LLAMA_CPP_PYTHON, "-d", str(CACHE)],
            check=True,
        )  # fmt: skip
    src = CACHE / f"llama_cpp_python-{version}"
    if not src.is_dir():
        with tarfile.open(sdist) as tf:
            tf.extractall(CACHE, filter="data")
    llama = src / "vendor" / "llama.cpp"
    flags = [
        "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-G", "Ninja",
    ]  # fmt: skip
    subprocess.run(["cmake", "-S", str(llama), "-B", str(build), *flags], check=True)
    jobs = str(os.cpu_count() or 1)
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-bench", "-j", jobs], check=True
    )
    return binary


def run_llama_bench(binary: Path, model: str, threads: list[int], prompts: list[int]) -> list:
    """llama-bench's JSON rows: one per (threads, test), ``avg_ts`` in tokens per second."""
    cmd = [
        str(binary), "-m", model, "-t", ",".join(map(str, threads)),
        "-p", ",".join(map(str, prompts)), "-n", "128", "-r", "1", "-o", "json",
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = []
    for r in json.loads(out):
        test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        rows.append({"threads": r["n_threads"], "test": test, "tok_s": r["avg_ts"]})
    return rows, " ".join(cmd)


INFIRE_CHILD = """
import json, sys, time
import infire
model, threads, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
engine = infire.Engine(model=model, device="cpu", num_threads=threads)
ids = engine.tokenizer.encode("The history of the city begins with a small settlement. " * 600)
greedy = dict(temperature=0.0, ignore_eos=True)
engine.generate(ids[:64], infire.SamplingParams(max_tokens=8, **greedy))  # warm-up
rows = []
for n in prompts:
    t = time.perf_counter()
    engine.generate(ids[:n], infire.SamplingParams(max_tokens=1, **greedy))
    rows.append({"test": f"pp{n}", "tok_s": n / (time.perf_counter() - t)})
(out,) = engine.generate(ids[:1], infire.SamplingParams(max_tokens=129, **greedy))
m = out.metrics
rows.append({"test": "tg128", "tok_s": 128 / (m.finished_time - m.first_token_time)})
first = end = None
for out in engine.stream(ids[:1], infire.SamplingParams(max_tokens=129, **greedy)):
    end = time.perf_counter()
    first = first or end
rows.append({"test": "tg128_stream", "tok_s": 128 / (end - first)})
print(json.dumps(rows))
"""


def run_infire(model: str, threads: int, prompts: list[int]) -> list:
    """Infire's rows at ``threads``, in a fresh process (its own thread pool)."""
    cmd = [sys.executable, "-c", INFIRE_CHILD, model, str(threads), json.dumps(prompts)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    return [dict(r, threads=threads) for r in rows]


def run_round(binary: Path, args, threads, prompts, infire_first: bool):
    """One round: llama-bench and Infire (every thread count), in the order given."""

    def llama():
        return run_llama_bench(binary, args.model, threads, prompts)

    def infire():
        return [r for t in threads for r in run_infire(args.model, t, prompts)]

    if infire_first:
        infire_rows = infire()
        llama_rows, llama_cmd = llama()
    else:
        llama_rows, llama_cmd = llama()
        infire_rows = infire()
    return llama_rows, infire_rows, llama_cmd


def read_bandwidth_gb_s(threads: int) -> float | None:
    """The memory-read ceiling at ``threads`` threads, from the cpu_matmul bench."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = ["cargo", "bench", "--bench", "cpu_matmul", "--", "--ceiling-only"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("{") and '"read_ceiling"' in line:
            row = json.loads(line)
            if row["threads"] == threads:
                return row["gb_s"]
    print(proc.stderr[-2000:], file=sys.stderr)
    return None


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a GGUF file (default: the default model)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompts", default="128,512,4096")
    ap.add_argument("--no-ceiling", action="store_true")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, the sides' order alternating")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu_vs_llamacpp.json"))
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    prompts = [int(p) for p in args.prompts.split(",")]
    if args.model is None:
        from infire.model_resolution import default_model_path

        args.model = str(default_model_path())

    binary = llama_bench_binary()
    load_before = load_average()
    started = time.time()
    llama, infire_rows = [], []
    for rnd in range(args.rounds):
        ll, inf, llama_cmd = run_round(binary, args, threads, prompts, infire_first=rnd % 2 == 1)
        llama += [dict(r, round=rnd) for r in ll]
        infire_rows += [dict(r, round=rnd) for r in inf]
        print(f"round {rnd + 1}/{args.rounds} done, load average {load_average()}", flush=True)
    ceiling = {} if args.no_ceiling else {t: read_bandwidth_gb_s(t) for t in threads}
    report(args, threads, prompts, llama, infire_rows, ceiling, llama_cmd, load_before, started)


def best(rows, test, rnd):
    """The row of ``test`` in round ``rnd`` at its best thread count."""
    hits = [r for r in rows if r["test"] == test and r["round"] == rnd]
    return max(hits, key=lambda r: r["tok_s"]) if hits else None


def summarize(infire_rows, llama, test, rounds) -> dict:
    """Per round, each side at its best thread count and their ratio; medians over rounds."""
    per_round = []
    for rnd in range(rounds):
        i, ll = best(infire_rows, test, rnd), best(llama, test, rnd)
        per_round.append(
            {"infire": i, "llama_cpp": ll, "ratio": round(i["tok_s"] / ll["tok_s"], 3)}
        )
    ratios = [r["ratio"] for r in per_round]
    return {
        "test": test,
        "rounds": per_round,
        "infire_median": statistics.median(r["infire"]["tok_s"] for r in per_round),
        "llama_cpp_median": statistics.median(r["llama_cpp"]["tok_s"] for r in per_round),
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "rounds_at_least_1": sum(r >= 1.0 for r in ratios),
    }


def report(args, threads, prompts, llama, infire_rows, ceiling, llama_cmd, load_before, started):
    """Prints the comparison (each side at its best thread count) and writes the JSON."""
    tests = ["tg128"] + [f"pp{n}" for n in prompts]
    rounds = args.rounds

    from cpu_decode import cpu_name  # imports infire, which the build step does not need

    file_bytes = os.path.getsize(args.model)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; load average before {load_before}")
    print(f"model: {os.path.basename(args.model)} ({file_bytes / 1e6:.1f} MB); {rounds} round(s)")
    print("| test | Infire tok/s | llama.cpp tok/s | ratio | rounds >= 1.0 |")
    print("| --- | --- | --- | --- | --- |")
    table = []
    for test in tests:
        t = summarize(infire_rows, llama, test, rounds)
        table.append(t)
        lo, hi = t["ratio_range"]
        print(
            f"| {test} | {t['infire_median']:.1f} | {t['llama_cpp_median']:.1f} | "
            f"{t['ratio_median']:.2f} ({lo:.2f}–{hi:.2f}) | {t['rounds_at_least_1']} of {rounds} |"
        )
    for t in threads:
        stream = [
            r["tok_s"] for r in infire_rows if r["test"] == "tg128_stream" and r["threads"] == t
        ]
        if stream:
            median = statistics.median(stream)
            print(f"Infire tg128 streamed through Python, {t} thread(s), median: {median:.1f}")
    roofline = {}
    for t, gbs in ceiling.items():
        if gbs is None:
            continue
        top = gbs * 1e9 / file_bytes
        i = statistics.median(
            r["tok_s"] for r in infire_rows if r["test"] == "tg128" and r["threads"] == t
        )
        ll = statistics.median(
            r["tok_s"] for r in llama if r["test"] == "tg128" and r["threads"] == t
        )
        roofline[t] = {"gb_s": gbs, "tok_s": round(top, 1)}
        print(
            f"roofline, {t} thread(s): {gbs:.1f} GB/s / {file_bytes / 1e6:.1f} MB per token = "
            f"{top:.0f} tok/s; Infire {i / top:.0%}, llama.cpp {ll / top:.0%}"
        )
    result = {
        "bench": "cpu_vs_llamacpp",
        "date": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(
            timespec="minutes"
        ),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "model": os.path.basename(args.model),
        "llama_cpp": LLAMA_CPP_PYTHON + " (vendored llama.cpp)",
        "llama_bench_command": llama_cmd,
        "rounds": rounds,
        "rows": {"infire": infire_rows, "llama_cpp": llama},
        "best": table,
        "roofline": roofline,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average after {result['load_average_after']}; JSON: {args.out}")


if __name__ == "__main__":
    main()
