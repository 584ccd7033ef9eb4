"""Infire: an LLM inference engine with a Rust core.

>>> import infire
>>> engine = infire.Engine()  # the default model, SmolLM2-135M-Instruct (infire.LLM is the same)
>>> params = infire.SamplingParams(max_tokens=32, temperature=0.0)
>>> engine.chat([{"role": "user", "content": "What is the capital of France?"}], params)
"""

from . import _core
from ._sampling import StructuredOutputsParams
from .engine import LLM, Engine, SamplingParams, Stream
from .errors import (
    EngineError,
    InfireError,
    InvalidConfigError,
    InvalidModelError,
    InvalidRequestError,
    ModelNotFoundError,
    TokenizerError,
    UnsupportedModelError,
)
from .model_resolution import default_model_path, resolve_model
from .outputs import CompletionOutput, RequestMetrics, RequestOutput
from .server import serve
from .tokenizer import BatchEncoding, Tokenizer

__version__ = _core.__version__


def load_tokenizer(model=None) -> Tokenizer:
    """Loads only the tokenizer of ``model`` (same forms as ``Engine(model=...)``)."""
    return Tokenizer(_core.load_tokenizer(resolve_model(model)))


__all__ = [
    "LLM",
    "BatchEncoding",
    "CompletionOutput",
    "Engine",
    "EngineError",
    "InfireError",
    "InvalidConfigError",
    "InvalidModelError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "Stream",
    "StructuredOutputsParams",
    "Tokenizer",
    "TokenizerError",
    "UnsupportedModelError",
    "default_model_path",
    "load_tokenizer",
    "resolve_model",
    "serve",
]
