"""Request traces of ``infire serve`` through its real OTLP/HTTP exporter, into a real receiver
(``otlp_receiver``): a client's ``traceparent`` is the parent, the span carries the GenAI
attributes and the engine's times, and its ``queue``/``prefill``/``decode`` children match
them; an unsampled parent records nothing; a bad endpoint is a clear start-up error."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("opentelemetry.proto", reason="opentelemetry-proto is not installed")
from otlp_receiver import OtlpReceiver  # noqa: E402

MODEL = "smol"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, path: str, body: dict, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, json.dumps(body).encode(), headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def traced(default_model_path):
    receiver = OtlpReceiver()
    port = _free_port()
    cmd = [sys.executable, "-m", "infire", "serve", "--model", default_model_path]
    cmd += ["--port", str(port), "--served-model-name", MODEL, "--max-model-len", "512"]
    cmd += ["--otlp-traces-endpoint", receiver.url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_SERVICE_NAME"] = "infire-test"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stderr=log, env=env)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health/ready")
            if conn.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.2)
    yield port, receiver
    proc.kill()
    proc.wait(timeout=30)
    receiver.close()


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def test_a_chat_span_continues_the_clients_trace_with_the_engines_times(traced):
    port, receiver = traced
    trace_id, parent, header = _traceparent()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}
    status, text = _post(port, "/v1/chat/completions", body, {"traceparent": header})
    assert status == 200, text
    usage = json.loads(text)["usage"]
    spans = receiver.wait_for(trace_id, 4)
    (root,) = [s for s in spans if s["parent"] == parent]
    assert root["service"] == "infire-test"
    assert root["name"] == f"chat {MODEL}" and root["kind"] == 2  # SERVER
    a = root["attributes"]
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == MODEL
    assert a["gen_ai.request.max_tokens"] == 6
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert a["http.response.status_code"] == 200
    assert a["gen_ai.response.finish_reasons"] in (["length"], ["stop"])
    children = {s["name"]: s for s in spans if s["parent"] == root["span_id"]}
    assert set(children) == {"queue", "prefill", "decode"}
    for name, key in [
        ("queue", "time_in_queue"),
        ("prefill", "time_in_model_prefill"),
        ("decode", "time_in_model_decode"),
    ]:
        child = children[name]
        assert child["kind"] == 1 and child["trace_id"] == trace_id
        # The engine's clock, inside the request's span.
        assert root["start"] <= child["start"] <= child["end"] <= root["end"]
        seconds = (child["end"] - child["start"]) / 1e9
        assert abs(seconds - a[f"gen_ai.latency.{key}"]) < 1e-3, (name, seconds, a)
    assert children["queue"]["end"] == children["prefill"]["start"]
    assert children["prefill"]["end"] == children["decode"]["start"]
    ttft = a["gen_ai.latency.time_to_first_token"]
    assert a["gen_ai.latency.time_in_queue"] <= ttft <= a["gen_ai.latency.e2e"]
    assert a["gen_ai.latency.e2e"] <= (root["end"] - root["start"]) / 1e9


def test_streams_start_their_own_trace_and_unsampled_parents_record_nothing(traced):
    port, receiver = traced
    unsampled_id, _, header = _traceparent()
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 5, "ignore_eos": True}
    status, _ = _post(port, "/v1/completions", body, {"traceparent": header[:-2] + "00"})
    assert status == 200
    before = {s["trace_id"] for s in receiver.spans}
    status, text = _post(port, "/v1/completions", {**body, "stream": True})
    assert status == 200 and text.rstrip().endswith("data: [DONE]")
    deadline = time.monotonic() + 30
    while not [s for s in receiver.spans if s["trace_id"] not in before and not s["parent"]]:
        assert time.monotonic() < deadline, receiver.spans
        time.sleep(0.1)
    (root,) = [s for s in receiver.spans if s["trace_id"] not in before and not s["parent"]]
    assert root["name"] == f"text_completion {MODEL}"
    assert root["attributes"]["gen_ai.usage.output_tokens"] == 5
    assert len(receiver.wait_for(root["trace_id"], 4)) == 4
    # The unsampled request ended before the streamed one began: its spans would be here.
    assert receiver.trace(unsampled_id) == []
    assert receiver.bad_requests == []


def test_an_https_endpoint_is_a_clear_start_up_error(default_model_path):
    cmd = [sys.executable, "-m", "infire", "serve", "--model", default_model_path]
    cmd += ["--port", "0", "--otlp-traces-endpoint", "https://collector:4318"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "http://" in done.stderr and "OTLP" in done.stderr, done.stderr
