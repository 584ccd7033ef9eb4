"""The orchestrator contract of the single-node server: `/health` answers 503 while the model
loads (the port is bound first) and 200 once it serves; `/health/live` and `/health/ready` as
Kubernetes probes expect; the model's fingerprint in `Engine.fingerprint`, `/v1/models` and
every response's `system_fingerprint`."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import infire
from infire import _core


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        text = r.read().decode()
        headers = {k.lower(): v for k, v in r.getheaders()}
        return r.status, headers, json.loads(text) if text else {}
    finally:
        conn.close()


def _start(model: str, port: int, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "infire", "serve", "--model", model, "--port", str(port)]
    cmd += ["--served-model-name", "smol", "--max-model-len", "512"]
    return subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def startup(default_model_path):
    """A server started on a copy of the default model (so its fingerprint is not cached yet
    and is hashed during the load), with every probe answer seen from the first one on."""
    tmp = tempfile.mkdtemp(prefix="infire-health-")
    model = os.path.join(tmp, os.path.basename(default_model_path))
    shutil.copyfile(default_model_path, model)
    port = _free_port()
    proc = _start(model, port)
    seen: list[tuple[float, str, int, dict]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited during startup"
        try:
            answers = [(p, *_call(port, "GET", p)[::2]) for p in ("/health", "/health/live")]
            ready = _call(port, "GET", "/health/ready")
            completion = _call(port, "POST", "/v1/completions", {"model": "smol", "prompt": "a"})
        except OSError:
            time.sleep(0.01)
            continue
        now = time.monotonic()
        seen += [(now, p, s, b) for p, s, b in answers]
        seen += [(now, "/health/ready", ready[0], ready[2])]
        seen += [(now, "/v1/completions", completion[0], completion[2])]
        if answers[0][1] == 200:
            break
    yield {"port": port, "model": model, "seen": seen}
    _stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)


def test_health_is_503_while_loading_then_200(startup):
    health = [(s, b) for _, p, s, b in startup["seen"] if p == "/health"]
    assert health[0] == (503, {"status": "loading"}), health[:3]
    assert health[-1][0] == 200
    # Once ready, it stays ready: no 503 after the first 200.
    statuses = [s for s, _ in health]
    assert 503 not in statuses[statuses.index(200) :]


def test_probes_while_loading(startup):
    # The first round of probes, all sent while /health said "loading" (a later round may
    # straddle the moment the engine becomes ready).
    first = startup["seen"][0][0]
    by_path = {p: (s, b) for t, p, s, b in startup["seen"] if t == first}
    assert by_path["/health"] == (503, {"status": "loading"})
    # The process is alive while it loads; it is not ready, and requests get a clear 503.
    assert by_path["/health/live"][0] == 200
    assert by_path["/health/ready"] == (503, {"status": "loading"})
    status, body = by_path["/v1/completions"]
    assert status == 503 and "loading" in body["error"]["message"]


def test_probes_once_serving(startup):
    port = startup["port"]
    for path in ("/health", "/health/live", "/health/ready"):
        assert _call(port, "GET", path)[0] == 200, path


def test_fingerprint_in_models_and_every_response(startup):
    port, model = startup["port"], startup["model"]
    fingerprint = _core.fingerprint(model)
    assert fingerprint.startswith("fp_") and len(fingerprint) == 67
    status, _, models = _call(port, "GET", "/v1/models")
    assert status == 200 and models["data"][0]["fingerprint"] == fingerprint
    status, _, completion = _call(
        port, "POST", "/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2}
    )
    assert status == 200 and completion["system_fingerprint"] == fingerprint
    chat = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    status, _, answer = _call(port, "POST", "/v1/chat/completions", chat)
    assert status == 200 and answer["system_fingerprint"] == fingerprint
    # The load hashed the copy and kept the result beside it.
    with open(model + ".infire-fingerprint.json") as f:
        cached = json.load(f)
    assert cached["fingerprint"] == fingerprint


def test_streams_carry_the_fingerprint(startup):
    port, model = startup["port"], startup["model"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": "smol", "prompt": "Hi", "max_tokens": 3, "stream": True}
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode())
    events = conn.getresponse().read().decode().split("\n\n")
    conn.close()
    chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert chunks and all(c["system_fingerprint"] == _core.fingerprint(model) for c in chunks)


def test_engine_fingerprint(engine, default_model_path):
    assert engine.fingerprint == _core.fingerprint(default_model_path)


def test_fingerprint_cache_goes_to_the_cache_dir_when_the_model_is_read_only(
    default_model_path, tmp_path, monkeypatch
):
    model = tmp_path / "model.gguf"
    os.symlink(default_model_path, model)
    # A directory where the cache file would go: writing it fails (even for root, who may
    # write into read-only directories).
    os.mkdir(str(model) + ".infire-fingerprint.json")
    monkeypatch.setenv("INFIRE_CACHE_DIR", str(tmp_path / "cache"))
    fingerprint = _core.fingerprint(str(model))
    assert fingerprint == _core.fingerprint(default_model_path)
    cached = list((tmp_path / "cache" / "fingerprints").iterdir())
    assert len(cached) == 1 and json.loads(cached[0].read_text())["fingerprint"] == fingerprint


def test_fingerprint_of_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(infire.ModelNotFoundError, match="nothing-here"):
        _core.fingerprint(str(tmp_path / "nothing-here"))
