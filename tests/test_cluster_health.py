"""Through Ray Serve: a replica given a different model file fails its health check and gets no
traffic. A local Ray cluster of two simulated nodes (`ray.cluster_utils.Cluster`), one
default-model replica on each; the model's path is `$INFIRE_TEST_MODELS/<file>`, and each
node's environment points that at a store of its own. Under a steady load:

1. The worker's store holds another model from the start. Its replica loads it and fails its
   first health check (its fingerprint is not the deployment's): Serve never routes to it and
   starts it again, and again; `cluster up` returns once the head's replica runs.
2. The worker's store gets the deployment's file: its next start passes, both replicas run.
3. The worker's file is replaced by another model again, under its running replica (as when a
   node's store is updated behind the cluster's back). The replica fails its health checks
   (its files changed); Serve marks it unhealthy, stops routing to it and starts another, which
   loads the other file and fails its first health check, as in (1).

Every request of the load is answered, by a replica serving the deployment's fingerprint.

Why (1) is a failed start and not an unhealthy replica: Ray Serve 2.60 runs the replica's
`check_health` once inside its initialization, after the constructor
(`ray/serve/_private/replica.py`, `Replica.initialize`, called by
`ReplicaActor.initialize_and_get_metadata`: "A new replica should not be considered healthy
until it passes an initial health check. If an initial health check fails, consider it an
initialization failure." `await self.check_health()`). The controller then records "A replica
failed to start" and stops it (`deployment_state.py`, `_check_startup_replicas`:
`record_replica_startup_failure`, `_stop_replica`); once another replica of the deployment ran,
failures no longer count toward DEPLOY_FAILED (`check_curr_status` sets `_replica_has_started`;
`_terminally_failed`), so Serve starts it again for as long as it fails, and `serve.run`, which
waits for every replica, never returns (`infire.cluster.app._deploy` returns instead). A
replica that loaded the wrong file is thus never RUNNING; only one that was running when its
files changed is marked unhealthy (`DeploymentReplica.check_health`: 3 failures in a row,
`REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD`), as (3) shows.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="infire[cluster] (ray[serve]) is not installed")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from infire import _core  # noqa: E402
from infire.cluster import from_dict  # noqa: E402

MODEL = "smol"
DEPLOYMENT = f"model-{MODEL}"
# Ray Serve's own pydantic models warn on import; they are not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _complete(port: int, prompt: str, headers: dict | None = None) -> tuple[int, str, dict]:
    """One completion: (status, the replica that answered, the parsed body)."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body).encode(), headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("x-infire-replica", ""), json.loads(r.read())
    finally:
        conn.close()


def _put(path: str, source: str, other: bool) -> None:
    """Puts the model at `source` at `path` in one step (a rename, as a store is updated), or
    with `other` another model: the same file with another value in its last weight block's
    quants, so the same shape and another fingerprint."""
    staged = path + ".new"
    shutil.copyfile(source, staged)
    if other:
        with open(staged, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)[0]
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last ^ 0x11]))
    os.replace(staged, path)


class Load:
    """Clients sending completions one after another until stopped; every answer is kept."""

    def __init__(self, port: int, clients: int = 2) -> None:
        self.port = port
        self.answers: list[tuple[float, int, str, str | None]] = []
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            with self._lock:
                self.sent += 1
            try:
                status, replica, body = _complete(self.port, f"Client {i}, request {n}:")
                answer = (time.monotonic(), status, replica, body.get("system_fingerprint"))
            except OSError as e:  # no answer at all: lost
                answer = (time.monotonic(), 0, repr(e), None)
            with self._lock:
                self.answers.append(answer)
            n += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)


@pytest.fixture
def stores(tmp_path, default_model_path):
    """The head's model store, holding the default model, and the worker's, holding another."""
    head, worker = tmp_path / "head", tmp_path / "worker"
    head.mkdir()
    worker.mkdir()
    name = os.path.basename(default_model_path)
    os.symlink(default_model_path, head / name)
    _put(str(worker / name), default_model_path, other=True)
    return {"head": str(head), "worker": str(worker), "name": name, "file": str(worker / name)}


@pytest.fixture
def cluster(stores, default_model_path):
    nodes = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "labels": {"region": "head"},
            "env_vars": {"INFIRE_TEST_MODELS": stores["head"]},
        },
    )
    nodes.add_node(
        num_cpus=1, labels={"region": "worker"}, env_vars={"INFIRE_TEST_MODELS": stores["worker"]}
    )
    try:
        ray.init(address=nodes.address, log_to_driver=False)
        port = _free_port()
        config = _config(nodes.address, port, stores, default_model_path)
        from infire.cluster import up

        # `up` must return although the worker's replica never starts (see the module docs).
        deploying = threading.Thread(target=up, args=(config,), daemon=True)
        deploying.start()
        deploying.join(timeout=120)
        assert not deploying.is_alive(), "cluster up did not return"
        yield {"port": port, "config": config}
    finally:
        serve.shutdown()
        ray.shutdown()
        nodes.shutdown()


def _config(address: str, port: int, stores: dict, default_model_path: str):
    return from_dict(
        {
            "cluster": {"address": address, "port": port},
            "models": [
                {
                    "name": MODEL,
                    "path": "$INFIRE_TEST_MODELS/" + stores["name"],
                    # The deployment's version: the default model, as the head holds it.
                    "fingerprint": _core.fingerprint(default_model_path),
                    "replicas": 2,
                    "num_cpus": 1,
                    "max_replicas_per_node": 1,
                    "health_check_period_s": 1,
                    "health_check_timeout_s": 20,
                    "engine": {"max_model_len": 256},
                }
            ],
        }
    )


def _watch(app_name: str, seen: list, until, timeout_s: float) -> None:
    """Records Serve's status of the model's deployment every half second (`seen`: time,
    status, message, replica states) until `until(seen)` holds; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not until(seen):
        assert time.monotonic() < deadline, seen[-5:]
        dep = serve.status().applications[app_name].deployments[DEPLOYMENT]
        seen.append((time.monotonic(), dep.status.value, dep.message, dict(dep.replica_states)))
        time.sleep(0.5)


def _follow_the_replacement(app_name: str) -> tuple[list, float, float]:
    """Serve's status from the worker's file change on, until it marked the replica unhealthy,
    a replacement failed to start on the deployment's fingerprint and the unhealthy one is
    gone: (what was seen, when it was marked, when it was gone)."""
    seen: list = []

    def unhealthy(s):
        return any(status == "UNHEALTHY" and "health check" in msg for _, status, msg, _ in s)

    _watch(app_name, seen, unhealthy, timeout_s=45)
    marked = seen[-1][0]

    def failed_to_start(s):
        return any(t >= marked and _not_the_deployments(msg) for t, _, msg, _ in s)

    def gone(s):
        return [t for t, _, _, states in s if t > marked and "STOPPING" not in states]

    _watch(app_name, seen, failed_to_start, timeout_s=45)
    _watch(app_name, seen, gone, timeout_s=45)
    return seen, marked, gone(seen)[0]


def _not_the_deployments(message: str) -> bool:
    """Serve's message of a replica that failed its first health check on the fingerprint."""
    return "failed to start" in message and "is not the deployment's" in message


def _worker_replica(port: int, head: set) -> str:
    """The worker's replica, once the ingress's router knows it: the one that answers a request
    of the worker's region (until then, the head's replica answers it)."""
    for _ in range(20):
        status, replica, _ = _complete(port, "Where?", {"x-infire-region": "worker"})
        assert status == 200
        if replica not in head:
            return replica
        time.sleep(0.5)
    raise AssertionError("the worker's replica never answered")


def test_a_replica_given_another_model_file_fails_its_health_check_and_gets_no_traffic(
    cluster, stores, default_model_path
):
    port, app_name = cluster["port"], cluster["config"].app_name
    expected = _core.fingerprint(default_model_path)
    # (1) `up` returned with the head's replica running and the worker's failing to start.
    dep = serve.status().applications[app_name].deployments[DEPLOYMENT]
    assert _not_the_deployments(dep.message) and dep.replica_states.get("RUNNING") == 1, dep
    load = Load(port)
    try:
        time.sleep(4)
        first = list(load.answers)
        head = {r for _, _, r, _ in first}
        # (2) The deployment's file on the worker: its next start runs.
        _put(stores["file"], default_model_path, other=False)
        _watch(app_name, [], lambda s: s and s[-1][3] == {"RUNNING": 2}, timeout_s=45)
        worker = _worker_replica(port, head)
        # (3) Another model under the worker's running replica.
        _put(stores["file"], default_model_path, other=True)
        seen, marked, stopped = _follow_the_replacement(app_name)
        time.sleep(3)  # the load goes on while the replacement restarts
    finally:
        load.stop()

    assert len(head) == 1, head
    # Serve restarted it (a replica starting) and never ran the replacement: from the mark on,
    # the head's replica alone was running.
    after = [states for t, _, _, states in seen if t >= marked]
    assert any(s.get("STARTING", 0) == 1 for s in after), after
    assert all(s.get("RUNNING", 0) == 1 for s in after), after
    # Nothing lost: every request was answered, each by the deployment's version, and only by
    # the two replicas that loaded it (never by one that loaded the other file).
    assert len(load.answers) == load.sent and len(first) > 0
    assert all(status == 200 for _, status, _, _ in load.answers), load.answers
    assert {fp for *_, fp in load.answers} == {expected}
    assert {r for _, _, r, _ in load.answers} <= head | {worker}, load.answers
    # Once the unhealthy replica was gone, only the head's replica answered.
    late = [r for t, _, r, _ in load.answers if t > stopped]
    assert late and set(late) == head, late
    final = serve.status().applications[app_name].deployments[DEPLOYMENT]
    assert final.status.value == "UNHEALTHY" and final.replica_states.get("RUNNING") == 1
