"""Serving benchmark: Poisson arrivals at chosen rates against a running `infire serve`.

For each rate, --requests streamed completions arrive with exponential gaps (seeded by the
rate's index in --rates); each generates --new-tokens tokens with ignore_eos from a prompt of
about --prompt-words words.
Reports TTFT, inter-token latency (ITL) and end-to-end latency p50/p99, output-token
throughput, errors, and the server process's CPU use (cores, from /proc/<pid>/stat) over each
run, after --warmup unmeasured requests. Prints a table and writes
bench/results/serve_<tag>.json.

    infire serve --port 8000 &
    python bench/serve.py --rates 0.5 1 --requests 30 --machine "2-core x86-64 build machine"
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai


def server_pid(port: int) -> int | None:
    """The pid of the process listening on `port` (Linux: /proc/net/tcp and fd links)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


async def one_request(client, model: str, prompt: str, new_tokens: int) -> dict:
    start = time.perf_counter()
    times = []
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=new_tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
    end = time.perf_counter()
    return {
        "ttft": times[0] - start if times else float("nan"),
        "itl": [b - a for a, b in zip(times, times[1:], strict=False)],
        "e2e": end - start,
        "chunks": len(times),
    }


async def run_rate(args, client, model: str, rate: float, pid: int | None, seed: int) -> dict:
    # A seed per rate: prompts repeated across rates would hit the prefix cache.
    rng = random.Random(seed)
    words = "the river city trade grain salt wool port market bridge tower road".split()
    prompts = [
        " ".join(rng.choice(words) for _ in range(args.prompt_words)) for _ in range(args.requests)
    ]
    cpu0 = cpu_seconds(pid) if pid else None
    t0 = time.perf_counter()
    tasks = []
    for p in prompts:
        tasks.append(asyncio.create_task(one_request(client, model, p, args.new_tokens)))
        await asyncio.sleep(rng.expovariate(rate))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(pid) - cpu0) / wall if pid else None
    ok = [r for r in results if isinstance(r, dict)]
    itl = [x for r in ok for x in r["itl"]]
    ms = 1e3
    return {
        "rate_rps": rate,
        "requests": args.requests,
        "errors": len(results) - len(ok),
        "ttft_ms_p50": pct([r["ttft"] for r in ok], 50) * ms,
        "ttft_ms_p99": pct([r["ttft"] for r in ok], 99) * ms,
        "itl_ms_p50": pct(itl, 50) * ms,
        "itl_ms_p99": pct(itl, 99) * ms,
        "e2e_s_p50": pct([r["e2e"] for r in ok], 50),
        "e2e_s_p99": pct([r["e2e"] for r in ok], 99),
        "achieved_rps": len(results) / wall,
        "output_tok_per_s": len(ok) * args.new_tokens / wall,
        "mean_e2e_s": statistics.fmean(r["e2e"] for r in ok) if ok else float("nan"),
        "server_cpu_cores": cpu,
        "wall_s": wall,
    }


async def main_async(args) -> None:
    base = args.url.rstrip("/")
    client = openai.AsyncOpenAI(
        base_url=f"{base}/v1",
        api_key=args.api_key or "unused",
        max_retries=0,
        timeout=600,
    )
    model = (await client.models.list()).data[0].id
    port = urlsplit(base).port or 80
    pid = args.server_pid or server_pid(port)
    for _ in range(args.warmup):
        await one_request(client, model, "warm up", args.new_tokens)
    rows = [await run_rate(args, client, model, r, pid, i) for i, r in enumerate(args.rates)]
    header = (
        f"{'rate/s':>7} {'ok':>4} {'err':>4} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} "
        f"{'p99':>8} {'e2e p50':>8} {'p99':>7} {'tok/s':>7} {'CPU':>5}"
    )
    print(f"model {model}, {args.requests} requests/rate, {args.new_tokens} new tokens each")
    print(header)
    for r in rows:
        cpu = f"{r['server_cpu_cores']:.2f}" if r["server_cpu_cores"] is not None else "n/a"
        print(
            f"{r['rate_rps']:>7.2f} {r['requests'] - r['errors']:>4} {r['errors']:>4} "
            f"{r['ttft_ms_p50']:>7.1f}ms {r['ttft_ms_p99']:>6.1f}ms {r['itl_ms_p50']:>6.1f}ms "
            f"{r['itl_ms_p99']:>6.1f}ms {r['e2e_s_p50']:>7.2f}s {r['e2e_s_p99']:>6.2f}s "
            f"{r['output_tok_per_s']:>7.1f} {cpu:>5}"
        )
    out = Path(args.out or Path(__file__).parent / "results" / f"serve_{args.tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "bench": "serve",
                "command": shlex.join(["python", "bench/serve.py", *args.argv]),
                "machine": args.machine,
                "model": model,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "prompt_words": args.prompt_words,
                "new_tokens": args.new_tokens,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=os.environ.get("INFIRE_API_KEY"))
    ap.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--requests", type=int, default=30, help="requests per rate")
    ap.add_argument("--prompt-words", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured requests first")
    ap.add_argument("--server-pid", type=int, default=None, help="default: found by port")
    ap.add_argument("--machine", required=True, help="named in the JSON, e.g. '8-core x86-64'")
    ap.add_argument("--tag", default="cpu", help="results file: bench/results/serve_<tag>.json")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
