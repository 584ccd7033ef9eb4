"""``StructuredOutputsParams`` (vLLM's name) and the rebuilding of a pickled ``SamplingParams``
(its ``__reduce__`` names ``_from_kwargs``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _core


@dataclass(frozen=True)
class StructuredOutputsParams:
    """What a request's output must match; set exactly one field.

    Args:
        json: a JSON Schema, as a ``str``, a ``dict`` or a pydantic model class.
        regex: a regular expression (Rust ``regex`` syntax) the whole output matches.
        choice: the output is exactly one of these strings.
        grammar: a Lark grammar (llguidance's dialect).
        json_object: ``True``: any JSON object.
    """

    json: Any = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


def _from_kwargs(kwargs: dict) -> _core.SamplingParams:
    return _core.SamplingParams(**kwargs)
