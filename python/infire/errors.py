"""Exceptions raised by Infire.

Every error from the Rust core arrives as one of these classes. Each subclasses
:class:`InfireError` and the built-in class that fits, so ``except ValueError`` catches bad
input and ``except RuntimeError`` catches engine failures.
"""


class InfireError(Exception):
    """Base class of every Infire error."""


class ModelNotFoundError(InfireError, FileNotFoundError):
    """The model path does not exist, or the default model could not be fetched."""


class InvalidModelError(InfireError, ValueError):
    """The model files exist but are malformed: truncated, corrupted or inconsistent."""


class UnsupportedModelError(InfireError, ValueError):
    """The model is well formed but uses an architecture or format Infire does not run."""


class TokenizerError(InfireError, ValueError):
    """The tokenizer or chat template could not be built or applied."""


class InvalidRequestError(InfireError, ValueError):
    """A request cannot be served: over-long prompt, invalid sampling parameter, ..."""


class InvalidConfigError(InfireError, ValueError):
    """An engine option that cannot work (e.g. a KV cache smaller than one block)."""


class EngineError(InfireError, RuntimeError):
    """The engine failed while running a request."""
