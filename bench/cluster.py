"""Infire on a local Ray Serve cluster (CPU, default model): a multi-turn chat workload through
the cluster with prefix-affinity routing against Ray Serve's default power-of-two-choices
router, and the ingress's and router's added latency against a direct `infire serve`.

Workload: C conversations run at once, each T turns; every turn resends the conversation's
whole history (as chat clients do) and streams its answer. Each conversation has a system prompt
of its own (a persona and a task, about 90 tokens) and its own questions, so nothing but the
chat template's first tokens is shared between conversations; together they hold more tokens
than one replica's KV cache (`--kv-cache-tokens`, per replica; the direct server gets all the
replicas' worth). Between turns a user thinks (exponential, mean `--think-s`):
without it every client sends its next turn the moment its answer ends, when the replica that
answered it has just become the less loaded, and Ray's power of two follows conversations by
load alone. Per router it reports the
prefix-cache hit rate (the responses' `usage.prompt_tokens_details.cached_tokens` over their
prompt tokens), TTFT p50/p90 (to the first content token) and the whole run's time. The added
latency is TTFT p50 of single short requests, one at a time, through the cluster minus
directly to one `infire serve` on the same model; CPU per token is the machine's busy CPU time
(/proc/stat) over the tokens generated, so other work on the machine counts too.

    python bench/cluster.py --machine "2-core build machine (busy)" [--conversations 6]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

import ray
from ray import serve

import infire
from infire.cluster import from_dict, up

TOPICS = ["rivers", "mountains", "bread", "trains", "owls", "glass", "tea", "maps", "bees"]
NAMES = ["Ada", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
CITIES = ["Lisbon", "Oslo", "Kyoto", "Quito", "Nairobi", "Tallinn", "Perth", "Lyon", "Cusco"]
JOBS = ["a baker", "a ferry pilot", "a beekeeper", "a cartographer", "a glassblower", "a nurse"]
STYLES = ["short sentences", "a friendly tone", "plain words", "concrete examples", "humour"]
FOLLOW_UPS = [
    "Go on, tell me more.",
    "What would {name} find surprising about that?",
    "How does that work in {city}?",
    "Give me one example a child would understand.",
    "What is the most common mistake people make?",
    "Summarise that in two sentences.",
]


def system_prompt(i: int) -> str:
    """Conversation ``i``'s own persona and task (about 90 tokens)."""
    r = random.Random(i)
    name, city, job = r.choice(NAMES), r.choice(CITIES), r.choice(JOBS)
    return (
        f"You are the assistant of {name}, {job} in {city}, in conversation number {i}. "
        f"{name} is curious about {TOPICS[i % len(TOPICS)]} and asks follow-up questions. "
        f"Answer with {r.choice(STYLES)} and {r.choice(STYLES)}, mention {city} where it "
        f"helps, never invent statistics, and keep each answer under {r.randint(40, 90)} "
        f"words. Today {name} has {r.randint(2, 9)} free hours and a budget of "
        f"{r.randint(10, 99)} euros."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busy_jiffies() -> int:
    fields = open("/proc/stat").readline().split()[1:]
    return sum(int(x) for i, x in enumerate(fields) if i not in (3, 4))  # less idle, iowait


def stream_chat(port: int, model: str, messages: list, max_tokens: int) -> dict:
    """One streamed chat turn: its text, TTFT, and usage (prompt, cached)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    body.update(stream=True, stream_options={"include_usage": True})
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body).encode())
    r = conn.getresponse()
    assert r.status == 200, r.read()
    ttft, text, usage, buf = None, "", None, b""
    while chunk := r.read1(65536):
        buf += chunk
        *events, buf = buf.split(b"\n\n")
        for e in events:
            data = e.decode().removeprefix("data: ")
            if data == "[DONE]":
                continue
            c = json.loads(data)
            assert "error" not in c, c
            for choice in c.get("choices") or []:
                piece = choice["delta"].get("content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - start
                text += piece
            usage = c.get("usage") or usage
    conn.close()
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {
        "ttft": ttft or 0.0,
        "text": text,
        "prompt": usage["prompt_tokens"],
        "cached": cached,
        "completion": usage["completion_tokens"],
    }


def conversations(
    port: int, model: str, n: int, turns: int, max_tokens: int, think_s: float
) -> list[dict]:
    results, lock = [], threading.Lock()

    def run(i: int) -> None:
        r = random.Random(1000 + i)
        fill = {"name": r.choice(NAMES), "city": r.choice(CITIES)}
        history = [
            {"role": "system", "content": system_prompt(i)},
            {"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}, in detail."},
        ]
        for _ in range(turns):
            reply = stream_chat(port, model, history, max_tokens)
            history += [
                {"role": "assistant", "content": reply["text"]},
                {"role": "user", "content": r.choice(FOLLOW_UPS).format(**fill)},
            ]
            with lock:
                results.append(reply)
            time.sleep(r.expovariate(1 / think_s) if think_s > 0 else 0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(results: list[dict], seconds: float, jiffies: int) -> dict:
    ttfts = sorted(r["ttft"] for r in results)
    tokens = sum(r["completion"] for r in results)
    return {
        "requests": len(results),
        "hit_rate": sum(r["cached"] for r in results) / max(1, sum(r["prompt"] for r in results)),
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p90_ms": 1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
        "seconds": seconds,
        "cpu_ms_per_token": 1000 * jiffies / os.sysconf("SC_CLK_TCK") / max(1, tokens),
    }


def run_cluster(args, router: str, model_path: str) -> tuple[dict, int]:
    port = free_port()
    config = from_dict(
        {
            "cluster": {
                "address": "local",
                "port": port,
                "router": router,
                "saturation": args.saturation,
            },
            "models": [
                {
                    "name": "smol",
                    "path": model_path,
                    "replicas": args.replicas,
                    # One engine thread each; Ray's local cluster has as many CPUs as cores.
                    "num_cpus": min(1.0, (os.cpu_count() or 1) / args.replicas),
                    "max_ongoing_requests": 16,
                    "engine": {"max_model_len": 2048, "kv_cache_tokens": args.kv_cache_tokens},
                }
            ],
        }
    )
    up(config)
    results_warm = stream_chat(port, "smol", [{"role": "user", "content": "Hi"}], 4)
    assert results_warm["completion"] > 0
    j0, t0 = busy_jiffies(), time.perf_counter()
    results = conversations(
        port, "smol", args.conversations, args.turns, args.max_tokens, args.think_s
    )
    s = summary(results, time.perf_counter() - t0, busy_jiffies() - j0)
    return s, port


def single_ttft(port: int, n: int) -> float:
    ttfts = [
        stream_chat(port, "smol", [{"role": "user", "content": f"Say {i}."}], 4)["ttft"]
        for i in range(n)
    ]
    return 1000 * statistics.median(ttfts)


def direct_server(model_path: str, kv_cache_tokens: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "infire",
        "serve",
        "--model",
        model_path,
        "--port",
        str(port),
        "--served-model-name",
        "smol",
        "--max-model-len",
        "2048",
        "--kv-cache-tokens",
        str(kv_cache_tokens),
    ]
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env)
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the direct server did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--kv-cache-tokens", type=int, default=3072, help="per replica")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--think-s", type=float, default=2.0, help="mean pause between turns")
    # A replica serves about conversations / replicas at once: below that, affinity yields.
    p.add_argument("--saturation", type=int, default=12)
    p.add_argument("--single", type=int, default=10, help="single requests for added latency")
    p.add_argument("--machine", default="unnamed machine")
    p.add_argument("--out", default="bench/results/cluster_cpu.json")
    args = p.parse_args()
    model_path = str(infire.default_model_path())
    out = {"machine": args.machine, "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    for router in ("pow2", "affinity"):
        out[router], port = run_cluster(args, router, model_path)
        if router == "affinity":
            out["cluster_single_ttft_p50_ms"] = single_ttft(port, args.single)
        serve.shutdown()
        ray.shutdown()
    proc, port = direct_server(model_path, args.replicas * args.kv_cache_tokens)
    try:
        out["direct_single_ttft_p50_ms"] = single_ttft(port, args.single)
        j0, t0 = busy_jiffies(), time.perf_counter()
        results = conversations(
            port, "smol", args.conversations, args.turns, args.max_tokens, args.think_s
        )
        out["direct"] = summary(results, time.perf_counter() - t0, busy_jiffies() - j0)
    finally:
        proc.terminate()
        proc.wait()
    out["added_ttft_ms"] = out["cluster_single_ttft_p50_ms"] - out["direct_single_ttft_p50_ms"]
    out["hit_rate_ratio"] = out["affinity"]["hit_rate"] / max(1e-9, out["pow2"]["hit_rate"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
