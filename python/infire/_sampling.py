"""Rebuilds a pickled ``SamplingParams`` (its ``__reduce__`` names this function)."""

from __future__ import annotations

from . import _core


def _from_kwargs(kwargs: dict) -> _core.SamplingParams:
    return _core.SamplingParams(**kwargs)
