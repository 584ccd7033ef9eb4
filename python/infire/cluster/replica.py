"""``InfireReplica``: one replica of a model's deployment. It runs the Infire server (the same
engine and HTTP layer as ``infire serve``, so answers through the cluster are the single-node
server's, byte for byte) as a child process on a local port, with ``RAYON_NUM_THREADS`` set to
the replica's CPU share, and forwards the ingress's requests to it.

Health: Ray calls ``check_health`` periodically; it fails when the child exited, when the model
it loaded or the model files on disk have another fingerprint than the deployment's, or when a
one-token generation does not complete in time (forward progress, not just a live process).
Serve also calls it once after the constructor, before the replica takes any traffic, and counts
a failure there as a failed start: a replica that loaded other files constructs, fails that
first check, is stopped and started again, and never serves a request.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import aiohttp
import ray

from .. import _core
from . import tracing
from .config import node_path

# How long the child may take to load its model.
STARTUP_TIMEOUT_S = 600.0
# How long the one-token health generation may take.
HEALTH_GENERATION_TIMEOUT_S = 30.0


class ReplicaUnavailable(RuntimeError):
    """The replica's server could not be reached: the request never started there."""


def node_region() -> str | None:
    """This node's region: its Ray node label ``region`` (``ray start --labels region=...``),
    else ``$INFIRE_REGION``."""
    try:
        labels = ray.get_runtime_context().get_node_labels()
    except Exception:  # noqa: BLE001 - not in a Ray worker: no labels
        labels = {}
    region = labels.get("region") or os.environ.get("INFIRE_REGION")
    return region[0] if isinstance(region, list) else region


def _replica_id() -> str:
    """This replica's id in Ray Serve (``""`` outside a replica)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not a Serve replica
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _engine_flags(options: dict) -> list[str]:
    """Command-line flags for engine options (``--no-x`` for a false boolean)."""
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def _get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


class InfireReplica:
    """A model's replica (see the module docs). ``spec`` is the model's entry of the cluster
    config as a dict (``ModelSpec.to_dict``)."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.region = node_region()
        self.replica_id = _replica_id()
        # The files this node holds under the model's path, and the fingerprint the deployment
        # expects of them (pinned where `cluster up` ran).
        self.path = node_path(spec["path"])
        self.expected = spec.get("fingerprint")
        self.port = _free_port()
        self._trace_url = tracing.endpoint_url(spec.get("otlp_traces_endpoint"))
        self._tracer = tracing.setup(self._trace_url, "infire-replica")
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix=f"infire-{self.name}-", suffix=".log")
        self._proc = self._start_child()
        self._wait_ready()
        status, models = _get_json(f"{self.base}/v1/models")
        self.fingerprint = models["data"][0]["fingerprint"]
        self._session: aiohttp.ClientSession | None = None

    def _start_child(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "infire", "serve", "--model", self.path]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--served-model-name", self.name, *_engine_flags(self.spec.get("engine", {}))]
        if self._trace_url:
            cmd += ["--otlp-traces-endpoint", self._trace_url]
        env = dict(os.environ)
        env.setdefault("OTEL_SERVICE_NAME", "infire")
        env["RAYON_NUM_THREADS"] = str(max(1, int(self.spec.get("num_cpus", 1))))
        env.pop("INFIRE_API_KEY", None)

        def die_with_parent() -> None:
            # The child must not outlive a replica that Ray kills (Linux: PR_SET_PDEATHSIG).
            try:
                import ctypes

                ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
            except OSError:
                pass

        return subprocess.Popen(
            cmd, stdout=self._log, stderr=self._log, env=env, preexec_fn=die_with_parent
        )

    def _log_tail(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()[-2000:]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + float(self.spec.get("startup_timeout_s", STARTUP_TIMEOUT_S))
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"the Infire server of {self.name!r} exited {self._proc.returncode}: "
                    f"{self._log_tail()}"
                )
            try:
                if _get_json(f"{self.base}/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Infire server of {self.name!r} did not become ready in time")

    def record_replica_metadata(self) -> dict:
        """What the router keys on: this replica's model fingerprint and region."""
        return {"fingerprint": self.fingerprint, "region": self.region, "replica": self.replica_id}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
            )
        return self._session

    async def check_health(self) -> None:
        """Raises unless the server runs, the model it loaded is the deployment's, the files
        still have the fingerprint it loaded (a restart would load them), and a one-token
        generation completes."""
        if self._proc.poll() is not None:
            raise RuntimeError(f"the Infire server exited {self._proc.returncode}")
        if self.expected and self.fingerprint != self.expected:
            raise RuntimeError(
                f"model {self.name!r} at {self.path}: fingerprint {self.fingerprint} is not "
                f"the deployment's {self.expected}; this replica serves nothing"
            )
        on_disk = await asyncio.to_thread(_core.fingerprint, self.path)
        if on_disk != self.fingerprint:
            raise RuntimeError(
                f"the model files at {self.path} changed: fingerprint {on_disk}, "
                f"serving {self.fingerprint}"
            )
        body = {"model": self.name, "prompt": "ok", "max_tokens": 1, "temperature": 0}
        timeout = aiohttp.ClientTimeout(total=HEALTH_GENERATION_TIMEOUT_S)
        async with self._http().post(
            f"{self.base}/v1/completions", json=body, timeout=timeout
        ) as r:
            answer = await r.json()
            if r.status != 200 or answer["usage"]["completion_tokens"] < 1:
                raise RuntimeError(f"the health generation failed: {r.status} {answer}")

    async def generate(self, payload: dict):
        """Forwards one request (``payload``: ``path``, ``body``, and its trace context) to the
        server. Yields ``{"status", "content_type"}`` first, then the body in chunks as they
        come (SSE events for a stream). Raises ``ReplicaUnavailable`` when the server cannot be
        reached."""
        trace = payload.get("route_trace") or payload.get("trace") or {}
        span = None
        if self._tracer is not None:
            span = self._tracer.start_span(
                f"replica {self.name}",
                context=tracing.context_of(trace),
                attributes={
                    "infire.replica": self.replica_id,
                    "infire.fingerprint": self.fingerprint,
                },
            )
            trace = tracing.carrier_of(span)
        try:
            async for part in self._forward(payload, trace):
                yield part
        finally:
            if span is not None:
                span.end()

    async def _forward(self, payload: dict, trace: dict):
        try:
            response = await self._http().post(
                f"{self.base}{payload['path']}",
                data=payload["body"],
                headers={"content-type": "application/json", **trace},
            )
        except aiohttp.ClientConnectionError as e:
            unreachable = f"the Infire server of {self.name!r} is unreachable: {e}"
            raise ReplicaUnavailable(unreachable) from e
        async with response:
            yield {
                "status": response.status,
                "content_type": response.content_type,
                "replica": self.replica_id,
            }
            async for chunk in response.content.iter_any():
                yield chunk

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
