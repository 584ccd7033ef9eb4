"""Request traces of the cluster through OpenTelemetry (OTLP/HTTP, protobuf), off unless an
endpoint is configured (``[cluster] otlp_traces_endpoint``, else
``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): without one nothing is imported and nothing exported.

A generation is one trace: the ingress's SERVER span (the child of the client's W3C
``traceparent`` when it sends one), the router's ``route`` span, the replica's span and, under
it, the Infire server's own spans (``queue``, ``prefill``, ``decode``; see the server's
``otel`` module). The trace context travels in the request's payload (``trace``) from the
ingress through the router to the replica, and as a ``traceparent`` header to the server. A
client's ``traceparent`` is passed on even when the cluster itself does not trace.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

_tracers: dict[str, object] = {}
_provider = None


def endpoint_url(configured: str | None) -> str | None:
    """The collector's URL: ``configured``, else the environment's; a URL with no path gets
    OTLP's ``/v1/traces`` (the server does the same)."""
    url = configured or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
    if url and urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/v1/traces"
    return url


def setup(configured: str | None, service: str):
    """This process's tracer for ``service`` (one per process, kept), or ``None`` when no
    endpoint is configured."""
    global _provider
    url = endpoint_url(configured)
    if url is None:
        return None
    if service in _tracers:
        return _tracers[service]
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if _provider is None:
        # A provider of our own, not the global one: Ray may install its own.
        _provider = TracerProvider(resource=Resource.create({"service.name": service}))
        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=url), schedule_delay_millis=500)
        _provider.add_span_processor(processor)
    _tracers[service] = _provider.get_tracer("infire.cluster")
    return _tracers[service]


def current():
    """The tracer ``setup`` made in this process, if any (the router runs in the ingress's)."""
    return next(iter(_tracers.values()), None)


def context_of(carrier: dict | None):
    """The OpenTelemetry context of a ``traceparent`` (and ``tracestate``) carrier."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier or {})


def carrier_of(span) -> dict:
    """The ``traceparent`` (and ``tracestate``) that make ``span`` the parent downstream."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    return carrier


def client_carrier(headers) -> dict:
    """The client's W3C trace headers, as they came."""
    return {k: headers[k] for k in ("traceparent", "tracestate") if headers.get(k)}


def flush() -> None:
    if _provider is not None:
        _provider.force_flush(5_000)
