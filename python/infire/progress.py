"""The progress bar of offline batches (``generate`` / ``chat`` with ``use_tqdm``), written to
stderr in tqdm's shape: ``Processed prompts:  40%|████      | 40/100 [00:02<00:03, 17.1 it/s]``.

``use_tqdm`` is vLLM's argument: ``True`` / ``False``, or a callable making a tqdm-like bar
(``tqdm.tqdm`` itself works: it is called with ``total``, ``desc`` and ``unit`` and must have
``update(n)`` and ``close()``). ``None`` (the default) shows the bar for more than
:data:`AUTO_THRESHOLD` prompts.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .errors import InvalidRequestError

AUTO_THRESHOLD = 8
"""Prompts beyond which ``use_tqdm=None`` shows a bar (a handful finishes too soon to need one)."""

_WIDTH = 25  # characters of the bar itself
_REDRAW_S = 0.1  # least time between two redraws (the last state is always drawn)


class ProgressBar:
    """A text progress bar over ``total`` items, redrawn in place on ``stream``."""

    def __init__(
        self, total: int, desc: str = "Processed prompts", unit: str = "it", stream: TextIO = None
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self._stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()
        self._drawn = 0.0
        self._drawn_n = -1
        self._draw()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._drawn >= _REDRAW_S or self.n >= self.total:
            self._draw()

    def close(self) -> None:
        if self._drawn_n != self.n:
            self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self) -> None:
        self._drawn, self._drawn_n = time.monotonic(), self.n
        elapsed = self._drawn - self._start
        frac = self.n / self.total if self.total else 1.0
        full = int(frac * _WIDTH)
        bar = "█" * full + " " * (_WIDTH - full)
        rate = self.n / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.n) / rate if rate > 0 else 0.0
        line = (
            f"\r{self.desc}: {frac:4.0%}|{bar}| {self.n}/{self.total} "
            f"[{_clock(elapsed)}<{_clock(remaining)}, {rate:.2f} {self.unit}/s]"
        )
        self._stream.write(line)
        self._stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def make_bar(use_tqdm: Any, total: int, desc: str = "Processed prompts") -> Any | None:
    """The bar ``use_tqdm`` asks for over ``total`` prompts, or ``None`` for none."""
    if use_tqdm is None:
        use_tqdm = total > AUTO_THRESHOLD
    if use_tqdm is False:
        return None
    if use_tqdm is True:
        return ProgressBar(total, desc=desc)
    if callable(use_tqdm):
        return use_tqdm(total=total, desc=desc, unit="it")
    raise InvalidRequestError(f"use_tqdm must be a bool or a tqdm-like callable, got {use_tqdm!r}")
