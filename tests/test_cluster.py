"""`infire.cluster` end to end on a local Ray cluster of two simulated nodes (regions "eu" and
"us", via `ray.cluster_utils.Cluster`), one default-model replica on each, on the CPU: answers
equal the single-node engine's, prefix and session affinity, region preference, fingerprint
pinning, probes, one trace across ingress, router, replica and engine (into a real OTLP
receiver), a rolling update, and killing a node under load loses no accepted request. The node
is killed last: the tests run in file order. A replica given other model files:
`test_cluster_health.py`."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import threading
import time
from collections import Counter

import pytest

ray = pytest.importorskip("ray", reason="infire[cluster] (ray[serve]) is not installed")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import infire  # noqa: E402
from infire import _core  # noqa: E402
from infire.cluster import from_dict  # noqa: E402

pytest.importorskip("opentelemetry.proto", reason="opentelemetry-proto is not installed")
from otlp_receiver import OtlpReceiver  # noqa: E402

MODEL = "smol"
# Ray Serve's own pydantic models warn on import; they are not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, path: str, body: dict, headers: dict | None = None):
    """One request: (status, headers, parsed body or SSE events)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", path, json.dumps(body).encode(), headers or {})
        r = conn.getresponse()
        text = r.read().decode()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    if body.get("stream") and r.status == 200:
        return r.status, hdrs, [e[6:] for e in text.split("\n\n") if e.startswith("data: ")]
    return r.status, hdrs, json.loads(text)


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _chat(messages, **extra) -> dict:
    return {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0, **extra}


@pytest.fixture(scope="module")
def cluster(default_model_path):
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "labels": {"region": "eu"}},
    )
    worker = nodes.add_node(num_cpus=1, labels={"region": "us"})
    ray.init(address=nodes.address, log_to_driver=False)
    port = _free_port()
    receiver = OtlpReceiver()
    config = from_dict(
        {
            "cluster": {
                "address": nodes.address,
                "port": port,
                "first_token_timeout_s": 120,
                "otlp_traces_endpoint": receiver.url,
            },
            "models": [
                {
                    "name": MODEL,
                    "path": default_model_path,
                    "replicas": 2,
                    "num_cpus": 1,
                    "max_replicas_per_node": 1,
                    "health_check_period_s": 2,
                    "engine": {"max_model_len": 1024},
                }
            ],
        }
    )
    from infire.cluster import up

    up(config)
    yield {"port": port, "nodes": nodes, "worker": worker, "config": config, "receiver": receiver}
    serve.shutdown()
    ray.shutdown()
    nodes.shutdown()
    receiver.close()


def test_answers_equal_single_node(cluster, engine):
    port = cluster["port"]
    params = infire.SamplingParams(max_tokens=12, temperature=0)
    for prompt in ("The capital of France is", "1, 2, 3, 4,"):
        status, _, body = _post(
            port,
            "/v1/completions",
            {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0},
        )
        assert status == 200, body
        assert body["choices"][0]["text"] == engine.generate(prompt, params)[0].outputs[0].text
        assert body["system_fingerprint"] == engine.fingerprint


def test_streamed_chat_equals_the_whole_answer(cluster):
    port = cluster["port"]
    messages = [{"role": "user", "content": "Name a fruit."}]
    status, _, whole = _post(port, "/v1/chat/completions", _chat(messages))
    assert status == 200
    status, _, events = _post(port, "/v1/chat/completions", _chat(messages, stream=True))
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]


def test_models_and_probes(cluster, default_model_path):
    port = cluster["port"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/models")
    models = json.loads(conn.getresponse().read())
    conn.close()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["fingerprint"] == _core.fingerprint(default_model_path)
    for path in ("/health", "/health/live", "/health/ready"):
        assert _get(port, path) == 200, path
    status, _, body = _post(port, "/v1/completions", {"model": "nope", "prompt": "x"})
    assert status == 404 and "nope" in body["error"]["message"]


def test_prefix_affinity_keeps_conversations_on_one_replica(cluster):
    port = cluster["port"]
    topics = ["rivers", "mountains", "bread", "trains", "owls", "glass"]
    replicas: dict[str, list[str]] = {t: [] for t in topics}
    history = {t: [{"role": "user", "content": f"Tell me three facts about {t}."}] for t in topics}
    for _ in range(3):
        for t in topics:
            status, headers, body = _post(port, "/v1/chat/completions", _chat(history[t]))
            assert status == 200
            replicas[t].append(headers["x-infire-replica"])
            history[t].append(body["choices"][0]["message"])
            history[t].append({"role": "user", "content": "And one more?"})
    # Each later turn resends the conversation: it must land where its prefix is cached.
    later = [r for t in topics for r in replicas[t][1:]]
    hits = sum(r == replicas[t][0] for t in topics for r in replicas[t][1:])
    assert hits / len(later) >= 0.9, replicas


def test_session_header_and_region_preference(cluster):
    port = cluster["port"]
    seen = Counter()
    for i in range(4):
        headers = {"x-session-affinity": "user-42"}
        body = {"model": MODEL, "prompt": f"Session turn {i}", "max_tokens": 2}
        status, hdrs, _ = _post(port, "/v1/completions", body, headers)
        assert status == 200
        seen[hdrs["x-infire-replica"]] += 1
    assert len(seen) == 1  # one session, one replica
    by_region = {}
    for region in ("eu", "us"):
        for i in range(3):
            body = {"model": MODEL, "prompt": f"Region {region} {i} says", "max_tokens": 2}
            status, hdrs, _ = _post(port, "/v1/completions", body, {"x-infire-region": region})
            assert status == 200
            by_region.setdefault(region, set()).add(hdrs["x-infire-replica"])
    # Each region's requests stay on that region's replica, and the two differ.
    assert len(by_region["eu"]) == 1 and len(by_region["us"]) == 1
    assert by_region["eu"] != by_region["us"]


def test_pinned_fingerprints_route(cluster, default_model_path):
    port = cluster["port"]
    fingerprint = _core.fingerprint(default_model_path)
    body = {"model": MODEL, "prompt": "Pinned", "max_tokens": 2}
    for pin in (fingerprint, fingerprint[:20]):
        status, _, answer = _post(port, "/v1/completions", body, {"x-infire-fingerprint": pin})
        assert status == 200 and answer["system_fingerprint"] == fingerprint
    other = "fp_" + "0" * 64
    status, _, answer = _post(port, "/v1/completions", body, {"x-infire-fingerprint": other})
    assert status == 400 and other in answer["error"]["message"]


def test_one_trace_spans_ingress_router_replica_and_engine(cluster):
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{client_span}-01"}
    messages = [{"role": "user", "content": "Trace me."}]
    body = _chat(messages, stream=True)
    status, hdrs, events = _post(cluster["port"], "/v1/chat/completions", body, headers)
    assert status == 200 and events[-1] == "[DONE]"
    # ingress, route, replica, the server's request span and its queue, prefill, decode
    spans = cluster["receiver"].wait_for(trace_id, 7)
    assert len(spans) == 7, spans

    def child_of(parent: dict | None, name: str) -> dict:
        parent_id = parent["span_id"] if parent else client_span
        (span,) = [s for s in spans if s["parent"] == parent_id and s["name"] == name]
        return span

    ingress = child_of(None, f"chat {MODEL}")
    assert ingress["service"] == "infire-ingress" and ingress["kind"] == 2
    assert ingress["attributes"]["infire.replica"] == hdrs["x-infire-replica"]
    route = child_of(ingress, "route")
    assert route["attributes"]["infire.route.replica"] == hdrs["x-infire-replica"]
    replica = child_of(route, f"replica {MODEL}")
    assert replica["service"] == "infire-replica"
    assert replica["attributes"]["infire.replica"] == hdrs["x-infire-replica"]
    server = child_of(replica, f"chat {MODEL}")
    assert server["service"] == "infire" and server["attributes"]["gen_ai.usage.output_tokens"] > 0
    for phase in ("queue", "prefill", "decode"):
        assert server["start"] <= child_of(server, phase)["end"] <= server["end"]
    assert ingress["start"] <= route["start"] <= replica["start"] <= server["start"]
    assert server["end"] <= replica["end"] <= ingress["end"]


def _other_model(default_model_path: str, directory) -> str:
    """A copy of the default model with another value in its last weight block's quants: same
    shape, another model (another fingerprint)."""
    other = directory / os.path.basename(default_model_path)
    shutil.copyfile(default_model_path, other)
    with open(other, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 0x11]))
    return str(other)


def test_a_rolling_update_never_sends_a_pinned_session_to_the_other_version(
    cluster, default_model_path, tmp_path_factory
):
    """Serve's own rolling update from the default model to another version: while replicas
    of both run, requests pinned to either version are answered by that version only (or
    refused, or wait), never by the other."""
    import dataclasses

    from infire.cluster.app import build_app, pin_fingerprints

    port, config = cluster["port"], cluster["config"]
    old = _core.fingerprint(default_model_path)
    spec = dataclasses.replace(
        config.models[0],
        path=_other_model(default_model_path, tmp_path_factory.mktemp("v2")),
        fingerprint=None,
    )
    updated = pin_fingerprints(dataclasses.replace(config, models=[spec]))
    new = updated.models[0].fingerprint
    assert new != old
    answers: dict[str, Counter] = {old: Counter(), new: Counter()}
    done = threading.Event()

    def pinned(pin: str) -> None:
        body = {"model": MODEL, "prompt": "Which version?", "max_tokens": 1}
        headers = {"x-infire-fingerprint": pin}
        while not done.is_set():
            try:
                status, _, answer = _post(port, "/v1/completions", body, headers)
            except OSError:
                answers[pin]["no answer"] += 1
                continue
            served = answer.get("system_fingerprint") if status == 200 else status
            answers[pin][served] += 1

    threads = [threading.Thread(target=pinned, args=(pin,)) for pin in (old, new)]
    for t in threads:
        t.start()
    time.sleep(2)
    # `serve.run` returns once the update is done: in a thread, while the pins keep asking.
    redeploy = threading.Thread(
        target=serve.run, args=(build_app(updated),), kwargs={"name": config.app_name}
    )
    redeploy.start()
    redeploy.join(timeout=240)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, answers
        app = serve.status().applications[config.app_name]
        replicas = app.deployments[f"model-{MODEL}"].replica_states
        if app.status.value == "RUNNING" and replicas.get("RUNNING") == 2 and len(replicas) == 1:
            break
        time.sleep(1)
    time.sleep(3)
    done.set()
    for t in threads:
        t.join(timeout=300)
    # Each pin was answered by its own version and never by the other; the old version
    # answered before the update finished and the new one after it started.
    assert answers[old][new] == 0 and answers[new][old] == 0, answers
    assert answers[old][old] > 0 and answers[new][new] > 0, answers
    body = {"model": MODEL, "prompt": "Which version?", "max_tokens": 1}
    for _ in range(4):
        status, _, answer = _post(port, "/v1/completions", body)
        assert status == 200 and answer["system_fingerprint"] == new


def test_killing_a_node_under_load_loses_no_request(cluster):
    port = cluster["port"]
    results: list[tuple[bool, int, object]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        stream = i % 2 == 0
        body = {"model": MODEL, "prompt": f"Story {i}: once upon a time", "max_tokens": 256}
        body.update(temperature=0, stream=stream, ignore_eos=True)
        result = _post(port, "/v1/completions", body)
        with lock:
            results.append((stream, result[0], result[2]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # every request admitted, none finished (256 tokens each)
    cluster["nodes"].remove_node(cluster["worker"], allow_graceful=False)
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 12
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/ingress/counts")
    counts = json.loads(conn.getresponse().read())
    conn.close()
    # The killed replica had requests in flight: retried (not yet answering) or cut.
    assert counts["retried"] + counts["cut"] >= 1, counts
    for stream, status, body in results:
        if not stream:
            # Not yet sent to the client: retried on the surviving replica, complete.
            assert status == 200, body
            assert body["usage"]["completion_tokens"] == 256
        else:
            # A stream ends with its answer or an explicit error event, never silently.
            assert status == 200 and body[-1] == "[DONE]", body
            last = json.loads(body[-2])
            assert "error" in last or last["choices"][0]["finish_reason"] == "length", last
