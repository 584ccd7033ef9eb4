"""The HTTP side of bench/node.py: an `infire serve` process, POSTs that time the first
chunk of a stream, and threads whose errors are collected (stdlib only)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict | None, key: str, stream: bool = False):
    """One POST; returns (status, seconds to the first body chunk, seconds in all, JSON)."""
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
    if stream and b'"error"' in b"".join(chunks):
        return 500, first, time.monotonic() - t0, text
    return r.status, first, time.monotonic() - t0, data


class Server:
    def __init__(self, config: str, keys: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "infire", "serve", "--config", config]
        env = {**os.environ, "RUST_LOG": "warn"}
        cmd += ["--port", str(self.port), "--api-key", keys]
        self.proc = subprocess.Popen(cmd, env=env)
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

    def metric(self, name: str) -> float:
        """The sum of a series of /metrics over its labels."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


def run_threads(target, n: int) -> list[str]:
    """Runs `target(i)` on `n` threads; returns the errors they raised."""
    errors: list[str] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except Exception as e:  # noqa: BLE001 - reported after the join
            errors.append(repr(e))

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
