"""Serving benchmark: Poisson arrivals at chosen rates against a running `infire serve`.

For each rate, --requests streamed completions arrive with exponential gaps (seeded by the
rate's index in --rates); each generates --new-tokens tokens with ignore_eos from a prompt of
about --prompt-words words (or of --prompt-ids random token ids).
With --in-process MODEL the same arrivals (same seeds, same prompts) then run through
`infire.Engine.stream_async` in this process, so that the HTTP layer's cost shows as the
difference of the two TTFTs measured in one run. Both modes run their requests as tasks of one
asyncio event loop: the HTTP client is a small one over asyncio streams (standard library only,
so the bench runs wherever Python does; the server's own tests use the openai package), so no
client thread waits for the GIL between a chunk's arrival and its timestamp — with a thread
per request, GIL hand-offs between 64 client threads added milliseconds to both modes.
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
import resource
import shlex
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit


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


def make_prompts(args, rng: random.Random) -> list:
    """--requests prompts: text of --prompt-words words, or lists of --prompt-ids token ids."""
    if args.prompt_ids:
        return [
            [rng.randrange(100, 30000) for _ in range(args.prompt_ids)]
            for _ in range(args.requests)
        ]
    words = "the river city trade grain salt wool port market bridge tower road".split()
    return [
        " ".join(rng.choice(words) for _ in range(args.prompt_words)) for _ in range(args.requests)
    ]


def summarize(args, rate: float, results: list, wall: float, cpu: float | None) -> dict:
    """One table row from the requests' timings (exceptions count as errors)."""
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


def timings(start: float, times: list[float], end: float) -> dict:
    return {
        "ttft": times[0] - start if times else float("nan"),
        "itl": [b - a for a, b in zip(times, times[1:], strict=False)],
        "e2e": end - start,
        "chunks": len(times),
    }


async def response_body(reader: asyncio.StreamReader, chunked: bool):
    """The body of an HTTP/1.1 response as it arrives (chunked transfer coding undone)."""
    if not chunked:
        while data := await reader.read(1 << 16):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF


async def http_request(args, model: str, prompt) -> dict:
    """One streamed completion over HTTP/1.1; times are taken as its SSE events arrive."""
    url = urlsplit(args.url)
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": args.new_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
    ).encode()
    head = [
        "POST /v1/completions HTTP/1.1",
        f"Host: {url.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if args.api_key:
        head.append(f"Authorization: Bearer {args.api_key}")
    start, times = time.perf_counter(), []
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status = await reader.readline()
        if status.split()[1:2] != [b"200"]:
            raise RuntimeError(f"{status!r}: {(await reader.read(200))!r}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        pending = b""
        async for data in response_body(reader, chunked):
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                # One event per engine delta (new tokens), text or not: a token that ends
                # inside a UTF-8 sequence, or a special token, streams with empty text.
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    if json.loads(line[6:]).get("choices"):
                        times.append(time.perf_counter())
    finally:
        writer.close()
    return timings(start, times, time.perf_counter())


async def engine_request(args, engine, prompt) -> dict:
    """One streamed request through `infire.Engine.stream_async` in this process."""
    import infire

    params = infire.SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    start, times, seen = time.perf_counter(), [], 0
    async for out in engine.stream_async(prompt, params):
        if len(out.outputs[0].token_ids) > seen:
            seen = len(out.outputs[0].token_ids)
            times.append(time.perf_counter())
    return timings(start, times, time.perf_counter())


async def run_rate(args, send, rate: float, seed: int, cpu_of) -> dict:
    """--requests calls of `send(prompt)` as tasks started at Poisson arrival times of `rate`
    per second; `cpu_of()` reads the CPU seconds of the process to charge."""
    # A seed per rate: prompts repeated across rates would hit the prefix cache.
    rng = random.Random(seed)
    prompts = make_prompts(args, rng)

    async def call(prompt):
        try:
            return await send(prompt)
        except Exception as e:  # counted as an error
            return e

    cpu0 = cpu_of()
    t0 = time.perf_counter()
    tasks = []
    for p in prompts:
        tasks.append(asyncio.create_task(call(p)))
        await asyncio.sleep(rng.expovariate(rate))
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    cpu = cpu_of()
    return summarize(args, rate, results, wall, None if cpu is None else (cpu - cpu0) / wall)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def print_rows(title: str, rows: list[dict]) -> None:
    print(title)
    print(
        f"{'rate/s':>7} {'ok':>4} {'err':>4} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} "
        f"{'p99':>8} {'e2e p50':>8} {'p99':>7} {'tok/s':>7} {'CPU':>5}"
    )
    for r in rows:
        cpu = f"{r['server_cpu_cores']:.2f}" if r["server_cpu_cores"] is not None else "n/a"
        print(
            f"{r['rate_rps']:>7.2f} {r['requests'] - r['errors']:>4} {r['errors']:>4} "
            f"{r['ttft_ms_p50']:>7.1f}ms {r['ttft_ms_p99']:>6.1f}ms {r['itl_ms_p50']:>6.1f}ms "
            f"{r['itl_ms_p99']:>6.1f}ms {r['e2e_s_p50']:>7.2f}s {r['e2e_s_p99']:>6.2f}s "
            f"{r['output_tok_per_s']:>7.1f} {cpu:>5}"
        )


async def main_run(args) -> None:
    with urllib.request.urlopen(f"{args.url.rstrip('/')}/v1/models") as r:
        model = json.load(r)["data"][0]["id"]
    pid = args.server_pid or server_pid(urlsplit(args.url).port or 80)
    warm = [1, 2, 3] if args.prompt_ids else "warm up"
    for _ in range(args.warmup):
        await http_request(args, model, warm)
    rows = [
        await run_rate(
            args,
            lambda p: http_request(args, model, p),
            rate,
            i,
            lambda: cpu_seconds(pid) if pid else None,
        )
        for i, rate in enumerate(args.rates)
    ]
    print(f"model {model}, {args.requests} requests/rate, {args.new_tokens} new tokens each")
    print_rows("HTTP (infire serve):", rows)
    in_process = []
    if args.in_process:
        import infire

        engine = infire.Engine(
            args.in_process,
            device=args.device,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_num_seqs=args.max_num_seqs,
            async_scheduling=args.async_scheduling,
        )
        for _ in range(args.warmup):
            await engine_request(args, engine, warm)
        in_process = [
            await run_rate(
                args, lambda p: engine_request(args, engine, p), rate, i, own_cpu_seconds
            )
            for i, rate in enumerate(args.rates)
        ]
        print_rows("in process (infire.Engine.stream_async):", in_process)
        for h, p in zip(rows, in_process, strict=True):
            delta = h["ttft_ms_p50"] - p["ttft_ms_p50"]
            print(f"rate {h['rate_rps']:g}/s: HTTP adds {delta:+.2f} ms to TTFT p50")
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
                "prompt_ids": args.prompt_ids,
                "results": rows,
                "in_process": in_process,
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
    ap.add_argument("--prompt-ids", type=int, default=0, help="token-id prompts of this length")
    ap.add_argument("--in-process", default=None, help="model to rerun the rates in process")
    ap.add_argument("--device", default="auto", help="for --in-process")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.4, help="--in-process")
    ap.add_argument("--max-num-seqs", type=int, default=64, help="for --in-process")
    ap.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="for --in-process (default: the engine's, on for CUDA)",
    )
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    asyncio.run(main_run(args))


if __name__ == "__main__":
    main()
