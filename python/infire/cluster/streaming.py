"""Reading the server's SSE stream from the ingress: has a replica's stream produced a token
yet? Until it has, the request can be sent to another replica without the client seeing a
thing; after, a failure must end the stream with an error event."""

from __future__ import annotations

import json


def _event_has_token(data: str) -> bool:
    """Whether one event's data carries generated text, a finish or the end of the stream
    (the role-only chunk that opens a chat stream does not)."""
    if data == "[DONE]":
        return True
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    if "error" in chunk:
        return True
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or choice.get("finish_reason"):
            return True
    return bool(chunk.get("usage"))


def first_token_seen(stream: bytes) -> bool:
    """Whether the complete events in ``stream`` (so far) include one with a token."""
    text = stream.decode("utf-8", errors="replace")
    events = text.split("\n\n")[:-1]  # the last piece may be an incomplete event
    for event in events:
        for line in event.splitlines():
            if line.startswith("data:") and _event_has_token(line[5:].strip()):
                return True
    return False
