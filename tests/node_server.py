"""Starting and talking to an `infire serve` node in a subprocess, for the node and traffic
tests (stdlib HTTP only)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status: int, text: str) -> None:
        self.status, self.text = status, text

    def json(self):
        return json.loads(self.text)


def request(
    base: str, method: str, path: str, body=None, key=None, timeout=300, headers=None
) -> Response:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(
            method, path, body=json.dumps(body) if body is not None else None, headers=headers
        )
        r = conn.getresponse()
        return Response(r.status, r.read().decode())
    finally:
        conn.close()


def complete(base: str, model: str, prompt: str, max_tokens=8, key=None, **extra) -> Response:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return request(base, "POST", "/v1/completions", {**body, **extra}, key=key)


def admin(base: str, model: str, action: str, key=None, headers=None) -> Response:
    return request(base, "POST", f"/v1/admin/models/{model}/{action}", key=key, headers=headers)


def write_config(text: str) -> str:
    f = tempfile.NamedTemporaryFile("w", prefix="node-", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


class Node:
    """A server process; `base` is its URL and `log()` what it wrote to stderr."""

    def __init__(self, *args: str, wait: bool = True) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "infire", "serve", "--port", str(self.port), *args]
        env = {k: v for k, v in os.environ.items() if k not in ("INFIRE_API_KEY", "RUST_LOG")}
        self.log_file = tempfile.NamedTemporaryFile(prefix="node-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stderr=self.log_file, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        if wait:
            self.wait_healthy()

    def wait_healthy(self, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                if request(self.base, "GET", "/health", timeout=5).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become healthy: {self.log()}")

    def log(self) -> str:
        with open(self.log_file.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def rss(self) -> int:
        """The server's resident memory in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb * 1024

    def models(self) -> dict:
        data = request(self.base, "GET", "/v1/models", key=getattr(self, "key", None)).json()
        return {m["id"]: m for m in data["data"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        os.unlink(self.log_file.name)


def run_to_exit(*args: str, seconds: float = 180) -> tuple[int, str]:
    """Runs `infire serve` expecting it to fail at start: its exit code and stderr."""
    cmd = [sys.executable, "-m", "infire", "serve", "--port", str(free_port()), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
    return p.returncode, p.stderr
