"""``OpenAIIngress``: the cluster's HTTP front. It speaks the OpenAI API (``/v1/models``,
``/v1/completions``, ``/v1/chat/completions``, streaming included) and the probes (``/health``,
``/health/live``, ``/health/ready``), and hands each generation to its model's deployment with
the routing facts the router keys on (see ``router``).

Nothing accepted is lost: a request whose replica fails before its first token (the replica or
its node died, its server was unreachable) is sent again, to a replica the router picks anew, up
to ``max_tries`` times; a stream that already sent tokens ends with an explicit SSE error event;
every other request ends with a whole answer or an OpenAI-shaped error.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import _core
from . import tracing
from .config import node_path
from .streaming import first_token_seen

logger = logging.getLogger("ray.serve")

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
# OpenTelemetry's GenAI operation of each generation path.
OPERATIONS = {"/v1/completions": "text_completion", "/v1/chat/completions": "chat"}
# Blocks of the prompt the router keys on: enough for any shared head of a conversation.
MAX_AFFINITY_BLOCKS = 256


def error(status: int, message: str, kind: str = "invalid_request_error", **extra) -> Response:
    """An OpenAI-shaped error response."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    headers = {"retry-after": "5"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers, **extra)


def error_event(message: str) -> bytes:
    """The SSE event that ends a stream cut after it sent tokens (never a silent cut)."""
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return f"data: {json.dumps(body)}\n\n".encode()


class OpenAIIngress:
    """The ingress deployment. ``models`` maps each model's name to its spec (a dict) and
    ``handles`` to its deployment's handle; ``options`` holds ``max_tries``,
    ``first_token_timeout_s`` and ``otlp_traces_endpoint``."""

    def __init__(self, models: dict, handles: dict, options: dict) -> None:
        from .. import load_tokenizer

        self.models = models
        self.handles = handles
        self.max_tries = int(options.get("max_tries", 3))
        self.first_token_timeout_s = float(options.get("first_token_timeout_s", 120.0))
        # Tokenizers for the routing keys only: the replicas tokenize again for themselves.
        self.tokenizers = {name: load_tokenizer(node_path(m["path"])) for name, m in models.items()}
        self.counts = {"accepted": 0, "completed": 0, "failed": 0, "retried": 0, "cut": 0}
        self.tracer = tracing.setup(options.get("otlp_traces_endpoint"), "infire-ingress")

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        if path in ("/health", "/health/live"):
            return JSONResponse({"status": "ok"})
        if path == "/health/ready":
            return await self._ready()
        if path == "/v1/models" and method == "GET":
            return JSONResponse({"object": "list", "data": [self._card(n) for n in self.models]})
        if path.startswith("/v1/models/") and method == "GET":
            name = path.removeprefix("/v1/models/")
            if name not in self.models:
                return error(404, f"The model `{name}` does not exist.", "not_found_error")
            return JSONResponse(self._card(name))
        if path == "/ingress/counts":
            return JSONResponse(self.counts)
        if path in GENERATION_PATHS:
            if method != "POST":
                return error(405, f"method {method} is not allowed on {path}")
            return await self._traced_generation(request, path)
        return error(404, f"no route for {path}", "not_found_error")

    def _card(self, name: str) -> dict:
        spec = self.models[name]
        return {
            "id": name,
            "object": "model",
            "owned_by": "infire",
            "fingerprint": spec.get("fingerprint"),
        }

    async def _ready(self) -> Response:
        """200 when every model's deployment answers a call within 5 s."""
        try:
            calls = [h.info.remote() for h in self.handles.values()]
            await asyncio.wait_for(asyncio.gather(*calls), timeout=5)
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            return error(503, f"not ready: {e!r}", "server_error")
        return JSONResponse({"status": "ok"})

    def _routing(self, name: str, path: str, req: dict, headers) -> dict:
        """The facts the router keys on: the prompt's block hashes (as the engine hashes
        them), the session, the region and a pinned fingerprint."""
        routing = {
            "session": headers.get("x-session-affinity"),
            "region": headers.get("x-infire-region"),
            "fingerprint": headers.get("x-infire-fingerprint"),
            "block_hashes": [],
        }
        try:
            ids = self._prompt_ids(name, path, req)
        except Exception:  # noqa: BLE001 - a bad prompt: the replica answers it with a 400
            ids = None
        if ids:
            block_size = int(self.models[name].get("engine", {}).get("block_size", 16))
            routing["block_hashes"] = _core.prefix_block_hashes(
                ids, block_size, MAX_AFFINITY_BLOCKS
            )
        return routing

    def _prompt_ids(self, name: str, path: str, req: dict) -> list[int] | None:
        tok = self.tokenizers[name]
        if path == "/v1/chat/completions":
            return tok.apply_chat_template(
                req["messages"],
                add_generation_prompt=req.get("add_generation_prompt", True),
                chat_template_kwargs=req.get("chat_template_kwargs"),
            )
        prompt = req.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return prompt
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]
        return tok.encode(prompt) if isinstance(prompt, str) else None

    async def _traced_generation(self, request: Request, path: str) -> Response:
        """``_generation`` in a SERVER span (when tracing), ended once the answer was sent."""
        trace = tracing.client_carrier(request.headers)
        if self.tracer is None:
            return await self._generation(request, path, trace, None)
        from opentelemetry.trace import SpanKind, Status, StatusCode

        span = self.tracer.start_span(
            OPERATIONS[path],
            context=tracing.context_of(trace),
            kind=SpanKind.SERVER,
            attributes={"gen_ai.operation.name": OPERATIONS[path], "url.path": path},
        )
        try:
            response = await self._generation(request, path, tracing.carrier_of(span), span)
        except BaseException as e:
            span.set_status(Status(StatusCode.ERROR, repr(e)))
            span.end()
            raise
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status_code}"))
        if not isinstance(response, StreamingResponse):
            span.end()  # else the relay ends it with the stream
        return response

    async def _generation(self, request: Request, path: str, trace: dict, span) -> Response:
        body = await request.body()
        try:
            req = json.loads(body)
        except ValueError as e:
            return error(400, f"invalid request body: {e}")
        if not isinstance(req, dict):
            return error(400, "invalid request body: expected a JSON object")
        name = req.get("model")
        if name not in self.handles:
            return error(404, f"The model `{name}` does not exist.", "not_found_error")
        if span is not None:
            span.update_name(f"{OPERATIONS[path]} {name}")
            span.set_attribute("gen_ai.request.model", name)
        routing = self._routing(name, path, req, request.headers)
        pin, held = routing["fingerprint"], self.models[name].get("fingerprint") or ""
        if pin and not (pin == held or (len(pin) >= 15 and held.startswith(pin))):
            # No replica of this deployment holds it: say so now rather than wait.
            return error(400, f"no replica of {name!r} holds fingerprint {pin} (it serves {held})")
        payload = {"path": path, "body": body, "routing": routing, "trace": trace}
        self.counts["accepted"] += 1
        opened = await self._open(name, payload, bool(req.get("stream")))
        if isinstance(opened, Response):
            self.counts["failed"] += 1
            return opened
        head, held, rest = opened
        headers = {"x-infire-replica": head.get("replica", "")}
        if span is not None:
            span.set_attribute("infire.replica", head.get("replica", ""))
        if not req.get("stream") or head["status"] != 200:
            self.counts["completed" if head["status"] == 200 else "failed"] += 1
            return Response(
                b"".join(held), head["status"], headers, media_type=head["content_type"]
            )
        relay = self._relay(held, rest, span)
        return StreamingResponse(relay, headers=headers, media_type="text/event-stream")

    async def _open(self, name: str, payload: dict, stream: bool):
        """Sends the request until a replica has produced its first token (the whole answer
        when not streamed): ``(head, chunks so far, the generator)``, or an error response
        after ``max_tries`` replicas failed before that."""
        last = None
        for attempt in range(self.max_tries):
            gen = self.handles[name].options(stream=True).generate.remote(payload)
            try:
                head, held = await asyncio.wait_for(
                    _until_committed(gen, stream), timeout=self.first_token_timeout_s
                )
                return head, held, gen
            except asyncio.TimeoutError:
                gen.cancel()
                return error(
                    503,
                    f"no replica of {name!r} produced a first token within "
                    f"{self.first_token_timeout_s:.0f} s",
                    "server_error",
                )
            except Exception as e:  # noqa: BLE001 - the replica failed before the first token
                gen.cancel()
                last = e
                self.counts["retried"] += attempt + 1 < self.max_tries
                logger.warning("infire ingress: try %d of %s failed: %r", attempt + 1, name, e)
        return error(
            503,
            f"{self.max_tries} replicas of {name!r} failed before answering; last: {last!r}",
            "server_error",
        )

    async def _relay(self, held: list[bytes], rest, span):
        """The stream's chunks: those held until the first token, then the rest as they come;
        an error event if the replica fails now. Ends the request's span (when tracing)."""
        try:
            for chunk in held:
                yield chunk
            try:
                async for chunk in rest:
                    yield chunk
                self.counts["completed"] += 1
            except Exception as e:  # noqa: BLE001 - the replica died mid-stream
                self.counts["cut"] += 1
                logger.warning("infire ingress: a stream was cut: %r", e)
                if span is not None:
                    span.set_attribute("infire.stream_cut", repr(e))
                yield error_event(f"the replica serving this stream failed: {e!r}")
                yield b"data: [DONE]\n\n"
        finally:
            if span is not None:
                span.end()


async def _until_committed(gen, stream: bool) -> tuple[dict, list[bytes]]:
    """Reads the replica's head and then its chunks until the request is committed to it: the
    whole body when not streamed (or an error status), the first token when streamed."""
    head = await gen.__anext__()
    held: list[bytes] = []
    if not stream or head["status"] != 200:
        async for chunk in gen:
            held.append(chunk)
        return head, held
    text = b""
    async for chunk in gen:
        held.append(chunk)
        text += chunk
        if first_token_seen(text):
            break
    return head, held
