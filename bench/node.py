"""Node benchmark: several models in one `infire serve`, sleep/wake, and traffic classes.

Three parts, each against a server this script starts (`python -m infire serve --config`):

1. throughput: the same model served under two names, each with half the memory (`--memory`
   per model: "50%" of the card on CUDA, bytes on the CPU), a closed loop of `--concurrency`
   requests split between the two names; against one name alone with the same load.
2. wake: `POST /v1/admin/models/{name}/sleep` then `/wake`, timed (`--wakes` times), against
   the copy ceiling measured in the same run: on the CPU (where a wake starts a new engine),
   reading the weights file from the page cache into memory; on CUDA (where a sleep keeps the
   engine and its weights in pinned host memory), a plain pinned host-to-device copy of as many
   bytes as the wake copied back (torch, in this process), beside the wake's own copy.
3. classes: interactive requests at a fixed rate (`--rate`, streamed, TTFT measured) alone,
   then again while `--batch-concurrency` batch requests (a key bound to `batch`) keep every
   slot busy; batch throughput under that load against batch alone.

Prints a table and writes bench/results/node_<tag>.json.

    python bench/node.py --model-dir PATH --device cpu --machine "2-core x86-64 build machine"
    python bench/node.py --model-dir /models/llama-3.1-8b --device cuda --memory 45% \
        --alone-memory 90% --tag h100
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict | None, key: str, stream: bool = False):
    """One POST; returns (status, seconds to the first body byte, seconds in all, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.monotonic()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    conn.request("POST", path, body=json.dumps(body or {}), headers=headers)
    r = conn.getresponse()
    first = None
    chunks = []
    while True:
        line = r.readline() if stream else r.read()
        if first is None and (not stream or line.startswith(b"data: {")):
            first = time.monotonic() - t0
        if not line or not stream:
            chunks.append(line)
            break
        chunks.append(line)
    conn.close()
    text = b"".join(chunks).decode()
    data = None if stream else json.loads(text)
    return r.status, first, time.monotonic() - t0, data


class Server:
    def __init__(self, config: str, keys: str) -> None:
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "infire",
            "serve",
            "--config",
            config,
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "RUST_LOG": "warn"}
        self.proc = subprocess.Popen(cmd + ["--api-key", keys], env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("the server did not start in 600 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def config(args, names: list[str], memory: str) -> str:
    entries = "".join(
        f'[[models]]\nmodel = "{args.model_dir}"\nserved_model_name = "{n}"\n'
        f'device = "{args.device}"\nmemory = "{memory}"\nmax_model_len = {args.max_model_len}\n'
        + (f'dtype = "{args.dtype}"\n' if args.dtype else "")
        for n in names
    )
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(entries)
    f.close()
    return f.name


def body(model: str, i: int, tokens: int, stream: bool = False) -> dict:
    return {
        "model": model,
        "prompt": f"Request {i}: write a long story about the sea.",
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": stream,
    }


def closed_loop(port: int, models: list[str], args) -> float:
    """Output tokens per second of `--concurrency` clients, each sending `--per-client`
    requests, spread over `models`."""

    def client(c: int) -> None:
        for j in range(args.per_client):
            s, _, _, _ = post(
                port, "/v1/completions", body(models[c % len(models)], j, args.tokens), "root"
            )
            assert s == 200

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return args.concurrency * args.per_client * args.tokens / (time.monotonic() - t0)


def wake_times(port: int, args) -> dict:
    """Seconds of each sleep and wake, and the copy ceiling beside them."""
    out: dict = {"sleep_s": [], "wake_s": []}
    memory = {}
    for _ in range(args.wakes):
        s, _, _, data = post(port, "/v1/admin/models/a/sleep", None, "root")
        assert s == 200, data
        out["sleep_s"].append(data["seconds"])
        s, _, _, data = post(port, "/v1/admin/models/a/wake", None, "root")
        assert s == 200, data
        out["wake_s"].append(data["seconds"])
        memory = data["memory"]
    if args.device == "cuda":
        copied = memory["wake_copied_bytes"]
        out["sleep_freed_bytes"] = memory["sleep_freed_bytes"]
        out["wake_copied_bytes"] = copied
        out["wake_copy_bytes_per_s"] = copied / memory["wake_copy_s"]
        out["copy_ceiling_bytes_per_s"] = pinned_copy_rate(copied)
    else:
        out["copy_ceiling_bytes_per_s"] = file_read_rate(args)
    return out


def pinned_copy_rate(nbytes: int) -> float:
    """Bytes per second of the best of three pinned host-to-device copies of `nbytes`."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.monotonic()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.monotonic() - t0)
    del host, dev
    torch.cuda.empty_cache()
    return nbytes / best


def file_read_rate(args) -> float:
    """Bytes per second reading the model's weights from the page cache."""
    model = Path(args.model_dir)
    files = [model] if model.is_file() else sorted(model.glob("*.safetensors"))
    t0 = time.monotonic()
    size = 0
    for f in files:
        size += len(f.read_bytes())
    return size / (time.monotonic() - t0)


def classes(port: int, args) -> dict:
    """Interactive TTFT at `--rate` alone and under batch load; batch tokens/s alone and
    under the interactive load."""

    def interactive(n: int) -> list[float]:
        ttfts, threads = [], []

        def one(i: int) -> None:
            s, first, _, _ = post(
                port, "/v1/completions", body("a", i, 16, True), "ik", stream=True
            )
            assert s == 200
            ttfts.append(first)

        for i in range(n):
            threads.append(threading.Thread(target=one, args=(i,)))
            threads[-1].start()
            time.sleep(1 / args.rate)
        for t in threads:
            t.join()
        return ttfts

    def batch(stop: threading.Event, tokens: list[int]) -> None:
        i = 0
        while not stop.is_set():
            s, _, _, _ = post(port, "/v1/completions", body("a", i, args.tokens), "bk")
            assert s == 200
            tokens.append(args.tokens)
            i += 1

    def batch_rate(seconds: float, with_interactive: bool) -> tuple[float, list[float]]:
        stop, tokens = threading.Event(), []
        threads = [
            threading.Thread(target=batch, args=(stop, tokens))
            for _ in range(args.batch_concurrency)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(2)
        ttfts = interactive(args.interactive) if with_interactive else time.sleep(seconds) or []
        stop.set()
        for t in threads:
            t.join()
        return sum(tokens) / (time.monotonic() - t0), ttfts

    alone = interactive(args.interactive)
    batch_alone, _ = batch_rate(args.interactive / args.rate, False)
    batch_loaded, loaded = batch_rate(0, True)
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else xs[0]  # noqa: E731
    return {
        "ttft_p50_alone_s": q(alone, 50),
        "ttft_p99_alone_s": q(alone, 99),
        "ttft_p50_loaded_s": q(loaded, 50),
        "ttft_p99_loaded_s": q(loaded, 99),
        "batch_tokens_per_s_alone": batch_alone,
        "batch_tokens_per_s_loaded": batch_loaded,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--memory", default="1GiB", help="each model's budget when two share the node")
    p.add_argument("--alone-memory", default="2GiB", help="the budget of the model alone")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--per-client", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--wakes", type=int, default=3)
    p.add_argument("--rate", type=float, default=2.0, help="interactive requests per second")
    p.add_argument("--interactive", type=int, default=10)
    p.add_argument("--batch-concurrency", type=int, default=8)
    p.add_argument("--machine", default="")
    p.add_argument("--tag", default="cpu")
    args = p.parse_args()

    out = {
        "date": datetime.date.today().isoformat(),
        "machine": args.machine,
        "command": " ".join(sys.argv),
    }
    keys = "root,ik=interactive,bk=batch"
    two = Server(config(args, ["a", "b"], args.memory), keys)
    try:
        out["two_models_tokens_per_s"] = closed_loop(two.port, ["a", "b"], args)
        out["one_of_two_tokens_per_s"] = closed_loop(two.port, ["a"], args)
        out.update(wake_times(two.port, args))
    finally:
        two.stop()
    one = Server(config(args, ["a"], args.alone_memory), keys)
    try:
        out["one_model_tokens_per_s"] = closed_loop(one.port, ["a"], args)
        out.update(classes(one.port, args))
    finally:
        one.stop()
    for k, v in out.items():
        print(f"{k:32} {v}")
    path = Path(__file__).parent / "results" / f"node_{args.tag}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
