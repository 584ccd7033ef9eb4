"""A model whose engine dies does not take the node down (CPU): its engine is driven into a real
panic in its loop (`INFIRE_FAIL_AFTER_STEPS`, which every engine of the process reads: the
other model is given fewer steps than that), and then the model is `failed` (with the reason)
in `/v1/models` and the metrics, its requests get a 503 naming the failure, the other model
serves on, `/health` and `/health/ready` stay 200 naming the failed model, and an admin `load`
starts it again. A node whose only model fails is unhealthy as a whole (503) until an admin
`load` starts it again. A failed engine frees its memory on its own thread once its requests
have their error: the resident size falls, another model loads in the share it gave back, and
an admin `load` serves the same greedy outputs as before the failure."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from node_server import Node, admin, complete, request, write_config
from prometheus_client.parser import text_string_to_metric_families

ROOT = "root-key"
PROMPT = "The capital of France is"
MiB = 1 << 20
# Steps before an engine panics: a request of LONG tokens reaches it, SHORT ones do not.
FAIL_AFTER = 12
LONG, SHORT = 40, 3


def _model(path: str, name: str) -> str:
    return f"""
[[models]]
model = "{path}"
served_model_name = "{name}"
memory = "500MiB"
max_model_len = 512
"""


@pytest.fixture
def failing_env(monkeypatch):
    monkeypatch.setenv("INFIRE_FAIL_AFTER_STEPS", str(FAIL_AFTER))


def _node(path: str, names: str) -> Node:
    server = f'[server]\napi_key = "{ROOT}"\nnode_memory = {1200 * MiB}\n'
    n = Node("--config", write_config(server + "".join(_model(path, m) for m in names)))
    n.key = ROOT
    return n


def _samples(node: Node) -> dict:
    text = request(node.base, "GET", "/metrics").text
    return {
        (s.name, s.labels.get("model")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_a_failed_model_is_refused_alone_and_load_restarts_it(failing_env, default_model_path):
    node = _node(default_model_path, "ab")
    try:
        r = complete(node.base, "a", PROMPT, max_tokens=LONG, key=ROOT, ignore_eos=True)
        assert r.status >= 500 and "INFIRE_FAIL_AFTER_STEPS" in r.text, r.text

        models = node.models()
        assert (models["a"]["state"], models["b"]["state"]) == ("failed", "ready")
        assert "INFIRE_FAIL_AFTER_STEPS" in models["a"]["memory"]["last_error"]
        samples = _samples(node)
        assert samples[("infire_model_failed", "a")] == 1
        assert samples[("infire_model_failed", "b")] == 0
        assert samples[("infire_model_ready", "a")] == 0

        r = complete(node.base, "a", PROMPT, max_tokens=SHORT, key=ROOT)
        assert r.status == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "model_failed" and "INFIRE_FAIL_AFTER_STEPS" in err["message"]
        assert "/v1/admin/models/a/load" in err["message"]

        for path in ("/health", "/health/ready"):
            r = request(node.base, "GET", path)
            assert r.status == 200, (path, r.text)
            assert list(r.json()["failed"]) == ["a"], r.text
        assert request(node.base, "GET", "/health/live").status == 200
        for _ in range(2):
            r = complete(node.base, "b", PROMPT, max_tokens=SHORT, key=ROOT)
            assert r.status == 200, r.text

        r = admin(node.base, "a", "load", key=ROOT)
        assert r.status == 200 and r.json()["state"] == "ready", r.text
        r = complete(node.base, "a", PROMPT, max_tokens=SHORT, key=ROOT)
        assert r.status == 200, r.text
        assert node.models()["a"]["state"] == "ready"
        assert "failed" not in request(node.base, "GET", "/health").json()
        assert _samples(node)[("infire_model_failed", "a")] == 0
    finally:
        node.stop()


def test_a_node_whose_only_model_failed_is_unhealthy(failing_env, default_model_path):
    node = _node(default_model_path, "a")
    try:
        r = complete(node.base, "a", PROMPT, max_tokens=LONG, key=ROOT, ignore_eos=True)
        assert r.status >= 500, r.text
        for path in ("/health", "/health/ready", "/health/live"):
            r = request(node.base, "GET", path)
            assert r.status == 503 and "INFIRE_FAIL_AFTER_STEPS" in r.text, (path, r.text)
        # The metrics stay readable (they say why), and so does the admin API.
        assert _samples(node)[("infire_model_failed", "a")] == 1
        r = admin(node.base, "a", "load", key=ROOT)
        assert r.status == 200 and r.json()["state"] == "ready", r.text
        assert request(node.base, "GET", "/health").status == 200
    finally:
        node.stop()


def _text(r) -> str:
    assert r.status == 200, r.text
    return r.json()["choices"][0]["text"]


def _freed(node: Node, model: str, seconds: float = 30) -> str:
    """The failed model's memory once its loop is done freeing it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = node.models()[model]["memory"]["failed_memory"]
        if state != "releasing":
            return state
        time.sleep(0.05)
    return "releasing"


def test_a_failed_engine_frees_its_memory_for_the_next_load(failing_env, default_model_path):
    # The node holds one model: `b` (on demand) fits only in what the failed `a` gives back.
    server = f'[server]\napi_key = "{ROOT}"\nnode_memory = {800 * MiB}\n'
    models = _model(default_model_path, "a") + _model(default_model_path, "b")
    node = Node("--config", write_config(server + models + "on_demand = true\n"))
    node.key = ROOT
    try:
        before = _text(complete(node.base, "a", PROMPT, max_tokens=SHORT, key=ROOT))
        rss = node.rss()
        # Every request in flight at the panic ends with an error naming it; none hangs.
        with ThreadPoolExecutor(3) as pool:
            runs = pool.map(
                lambda i: complete(
                    node.base, "a", f"{PROMPT} {i}", max_tokens=LONG, key=ROOT, ignore_eos=True
                ),
                range(3),
            )
            for r in runs:
                assert r.status >= 500 and "INFIRE_FAIL_AFTER_STEPS" in r.text, r.text
        assert node.models()["a"]["state"] == "failed"
        assert _freed(node, "a") == "freed"
        freed = rss - node.rss()
        assert freed > 50 * MiB, f"the failed engine gave back {freed / MiB:.0f} MiB"

        # Its share is free: `b` loads without putting anything to sleep; `a` stays failed.
        assert _text(complete(node.base, "b", PROMPT, max_tokens=SHORT, key=ROOT)) == before
        states = {m: v["state"] for m, v in node.models().items()}
        assert states == {"a": "failed", "b": "ready"}, states

        # A load starts `a` again within the same budget (`b`, idle, goes to sleep for it).
        r = admin(node.base, "a", "load", key=ROOT)
        assert r.status == 200 and r.json()["state"] == "ready", r.text
        assert _text(complete(node.base, "a", PROMPT, max_tokens=SHORT, key=ROOT)) == before
        states = {m: v["state"] for m, v in node.models().items()}
        assert states == {"a": "ready", "b": "sleeping"}, states
        assert node.models()["a"]["memory"]["failed_memory"] is None
    finally:
        node.stop()
