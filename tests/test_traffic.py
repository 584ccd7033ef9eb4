"""Traffic classes end to end on the CPU: interactive requests sent while batch requests fill
every sequence slot finish first (batch sequences are preempted and recomputed, counted), the
batch requests still all complete, and no request is lost."""

from __future__ import annotations

import threading
import time

import pytest
from node_server import Node, complete, request
from prometheus_client.parser import text_string_to_metric_families

BATCH, INTERACTIVE = "bk", "ik"
SLOTS = 4


@pytest.fixture(scope="module")
def server(default_model_path):
    n = Node(
        "--model",
        default_model_path,
        "--served-model-name",
        "m",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        str(SLOTS),
        "--api-key",
        f"{BATCH}=batch",
        "--api-key",
        f"{INTERACTIVE}=interactive",
    )
    yield n
    n.stop()


def _metrics(base: str) -> dict:
    text = request(base, "GET", "/metrics").text
    return {
        (s.name, s.labels.get("class")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("model") == "m"
    }


def test_interactive_requests_finish_first_and_batch_still_completes(server):
    results, lock = [], threading.Lock()

    def run(kind: str, key: str, i: int, max_tokens: int) -> None:
        r = complete(
            server.base,
            "m",
            f"Request {i} of the {kind} kind: count to ten.",
            max_tokens=max_tokens,
            key=key,
            ignore_eos=True,
        )
        with lock:
            results.append((kind, time.monotonic(), r))

    batch = [threading.Thread(target=run, args=("batch", BATCH, i, 64)) for i in range(2 * SLOTS)]
    for t in batch:
        t.start()
    # Wait until batch work holds every slot, with more batch work queued behind it.
    deadline = time.monotonic() + 120
    while _metrics(server.base).get(("infire_num_requests_running", None), 0) < SLOTS:
        assert time.monotonic() < deadline, "the batch requests never filled the slots"
        time.sleep(0.05)
    interactive = [
        threading.Thread(target=run, args=("interactive", INTERACTIVE, i, 8)) for i in range(2)
    ]
    for t in interactive:
        t.start()
    for t in batch + interactive:
        t.join(timeout=600)
    # Every request completed in full: none lost.
    assert len(results) == 2 * SLOTS + 2
    for kind, _, r in results:
        assert r.status == 200, r.text
        want = 64 if kind == "batch" else 8
        assert r.json()["usage"]["completion_tokens"] == want
    last_interactive = max(t for k, t, _ in results if k == "interactive")
    first_batch = min(t for k, t, _ in results if k == "batch")
    assert last_interactive < first_batch, "interactive requests finish before any batch one"
    m = _metrics(server.base)
    assert m[("infire_batch_preemptions_total", None)] >= 1
    assert m[("infire_class_generation_tokens_total", "batch")] == 2 * SLOTS * 64
    assert m[("infire_class_generation_tokens_total", "interactive")] == 2 * 8
    assert m[("infire_class_time_to_first_token_seconds_count", "interactive")] == 2
    assert m[("infire_class_queue_time_seconds_count", "batch")] == 2 * SLOTS
