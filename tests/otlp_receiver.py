"""A small OTLP/HTTP trace receiver for the tracing tests: ``POST /v1/traces`` bodies decoded as
``ExportTraceServiceRequest`` (protobuf, with ``opentelemetry-proto``), as a collector would, and
kept as plain dicts."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attributes(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    """Receives spans on ``url`` until ``close``; ``spans`` holds them, newest last, each a dict:
    ``service``, ``name``, ``kind`` (1 internal, 2 server, ...), ``trace_id``, ``span_id``,
    ``parent`` (hex, ``""`` for a root), ``start``/``end`` (ns), ``attributes``, ``status``."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.bad_requests: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                kind = self.headers.get("content-type", "")
                if self.path != "/v1/traces" or kind != "application/x-protobuf":
                    receiver.bad_requests.append(f"{self.path} {kind}")
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                receiver._add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def _add(self, request) -> None:
        for rs in request.resource_spans:
            service = _attributes(rs.resource.attributes).get("service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    span = {
                        "service": service,
                        "name": s.name,
                        "kind": s.kind,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(),
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": _attributes(s.attributes),
                        "status": s.status.code,
                    }
                    with self._lock:
                        self.spans.append(span)

    def trace(self, trace_id: str) -> list[dict]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def wait_for(self, trace_id: str, count: int, timeout: float = 30.0) -> list[dict]:
        """The spans of ``trace_id`` once at least ``count`` have arrived (fails after
        ``timeout`` seconds with what did)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if len(spans) >= count:
                return spans
            time.sleep(0.1)
        raise AssertionError(f"{len(self.trace(trace_id))} of {count} spans arrived: {self.spans}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
