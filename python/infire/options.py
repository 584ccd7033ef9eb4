"""Engine and server options: two lists, kept in Rust (``rust/src/engine/args.rs``,
``rust/src/server/args.rs``), with each option's name, type, default and help.
``infire.Engine``, ``infire.serve`` and the command line take their options from them, and hand
what the user set to the Rust core as JSON, where it is checked (an unknown name or a value of
the wrong type is an ``InvalidConfigError``)."""

from __future__ import annotations

import functools
import json
import textwrap
from dataclasses import dataclass
from typing import Any

from . import _core, cuda_libs
from .errors import InvalidConfigError


@dataclass(frozen=True)
class Option:
    """One engine or server option as the Rust core describes it."""

    name: str
    type: str  # int, optional_int, float, str, optional_str, bool, optional_bool
    default: Any
    help: str


@functools.cache
def engine_option_list() -> tuple[Option, ...]:
    """Every engine option, in the order the Rust core declares them."""
    return tuple(Option(**o) for o in json.loads(_core.engine_args_schema()))


@functools.cache
def server_option_list() -> tuple[Option, ...]:
    """Every server option, in the order the Rust core declares them."""
    return tuple(Option(**o) for o in json.loads(_core.server_args_schema()))


def engine_options_json(options: dict) -> str:
    """The JSON the Rust core takes for ``options`` (only the options the user set: the core
    fills in the defaults). Loads the CUDA libraries first unless the engine runs on the CPU."""
    if options.get("device", "auto") != "cpu":
        cuda_libs.preload()
    return options_json(options, "engine")


def options_json(options: dict, what: str) -> str:
    """``options`` as the JSON object the Rust core takes."""
    try:
        return json.dumps(options, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidConfigError(f"{what} options must be numbers, strings or bools: {e}") from e


def options_doc(options=None, indent: str = "        ") -> str:
    """The ``Args`` entries of ``options`` (default: every engine option), for docstrings."""
    lines = []
    for o in options if options is not None else engine_option_list():
        # An option without a fixed default says in its help what it defaults to.
        text = (
            f"{o.name}: {o.help}"
            if o.default is None
            else f"{o.name} (default {o.default!r}): {o.help}"
        )
        lines.append(
            textwrap.fill(text, 96, initial_indent=indent, subsequent_indent=indent + "    ")
        )
    return "\n".join(lines)
