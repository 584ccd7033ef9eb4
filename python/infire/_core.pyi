"""The Rust core (``infire._core``), built from ``rust/src/python/``. The public Python API
wraps these: ``infire.Engine`` / ``infire.LLM``, ``infire.SamplingParams`` (this class itself),
``infire.Tokenizer``, ``infire.serve``."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__version__: str

class SamplingParams:
    """How to pick each new token and when to stop, with vLLM's names and defaults. Values
    out of range raise ``infire.InvalidRequestError`` (a ``ValueError``) naming the field.
    Immutable: ``clone()``, ``copy.copy`` and ``copy.deepcopy`` give equal copies; it pickles.

    Args:
        n: sequences to generate per prompt (1 to 64); they share the prompt's KV cache.
        max_tokens: most tokens to generate (default 16, as vLLM); ``None``: up to the
            context length.
        temperature: 0 is greedy; otherwise logits are divided by it (default 1.0).
        top_p: keep the smallest set of tokens whose probability reaches it (default 1.0: all).
        top_k: keep the k most likely tokens; -1 or 0 keeps all (default -1).
        min_p: drop tokens below ``min_p`` times the most likely one's probability (default 0).
        seed: seed of the request's random stream; ``None``: the engine's seed + arrival order.
        stop: a string or a list of strings that end generation (left out of the text).
        stop_token_ids: token ids that end generation (kept in ``token_ids``).
        ignore_eos: keep generating past end-of-sequence tokens (default False).
        repetition_penalty: > 1 discourages tokens seen in the prompt or output (default 1).
        presence_penalty: in [-2, 2], subtracted from logits of tokens already generated.
        frequency_penalty: in [-2, 2], subtracted once per occurrence in the output.
        logprobs: top log-probabilities to return per generated token (at most 20).
        prompt_logprobs: top log-probabilities to return per prompt token (at most 20).
        min_tokens: generate at least this many tokens: until then end-of-sequence and stop
            token ids cannot be picked and stop strings are not looked for (default 0).
        include_stop_str_in_output: keep the stop string that ended generation in the text.
        skip_special_tokens: leave special tokens out of the text (default True).
        structured_outputs: hold the output to a shape: an ``infire.StructuredOutputsParams``
            or a dict with one of its keys (``json``: a JSON Schema as str, dict or pydantic
            class; ``regex``; ``choice``; ``grammar``: Lark; ``json_object=True``). A schema
            llguidance refuses raises ``InvalidRequestError`` when the request is submitted.
    """

    def __init__(
        self,
        n: int = 1,
        max_tokens: int | None = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool = False,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        min_tokens: int = 0,
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
        structured_outputs: Any = None,
    ) -> None: ...
    @property
    def n(self) -> int: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def min_tokens(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def top_k(self) -> int: ...
    @property
    def min_p(self) -> float: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def stop(self) -> list[str]:
        """The stop strings (always a list, also when one string was given)."""
    @property
    def stop_token_ids(self) -> list[int]: ...
    @property
    def include_stop_str_in_output(self) -> bool: ...
    @property
    def skip_special_tokens(self) -> bool: ...
    @property
    def ignore_eos(self) -> bool: ...
    @property
    def repetition_penalty(self) -> float: ...
    @property
    def presence_penalty(self) -> float: ...
    @property
    def frequency_penalty(self) -> float: ...
    @property
    def logprobs(self) -> int | None: ...
    @property
    def prompt_logprobs(self) -> int | None: ...
    @property
    def structured_outputs(self) -> Any:
        """An ``infire.StructuredOutputsParams``, or ``None``."""
    def clone(self) -> SamplingParams:
        """An equal copy (vLLM's ``SamplingParams.clone()``)."""
    def to_dict(self) -> dict[str, Any]:
        """Every field by name: ``SamplingParams(**p.to_dict()) == p``."""
    def __copy__(self) -> SamplingParams: ...
    def __deepcopy__(self, memo: Any) -> SamplingParams: ...
    def __eq__(self, other: object) -> bool: ...

class Tokenizer:
    """The model's tokenizer and chat template, as the core exposes them (``infire.Tokenizer``
    wraps it with Hugging Face's call shapes)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens``, BOS/EOS where the model adds them."""
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``."""
    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        chat_template_kwargs: str | None = None,
    ) -> str:
        """Renders messages (``role`` and ``content`` strings) with the chat template;
        ``chat_template_kwargs`` is a JSON object of extra template variables."""
    @property
    def vocab_size(self) -> int:
        """One past the largest token id."""
    @property
    def eos_token_ids(self) -> list[int]:
        """The ids that end a generation (EOS first)."""
    @property
    def bos_token_id(self) -> int | None: ...
    @property
    def chat_template(self) -> str | None:
        """The chat template's Jinja source."""
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, id: int) -> str | None: ...

class Stream:
    """Iterator over one request's cumulative outputs (dicts ``infire.RequestOutput`` is built
    from). Dropping or closing it aborts the request."""

    @property
    def request_id(self) -> str: ...
    def __iter__(self) -> Stream: ...
    def __next__(self) -> dict[str, Any]: ...
    def close(self) -> None:
        """Aborts the request if it is still running."""

class Engine:
    """A handle on the engine loop thread of one model (``infire.Engine`` wraps it)."""

    def __init__(self, model: str, options: str = "{}") -> None:
        """Loads ``model`` (a local path) with ``options``, a JSON object of engine options."""
    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``."""
    @property
    def device_name(self) -> str: ...
    @property
    def fingerprint(self) -> str:
        """The model files' content fingerprint, ``fp_<sha256 hex>``."""
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def kv_cache_tokens(self) -> int: ...
    def stats(self) -> dict[str, int | float | str | None]:
        """``num_running``, ``num_waiting``, ``kv_blocks_total``, ``kv_blocks_used``,
        ``prefix_cache_hit_rate``, ``num_preemptions``, ``kv_cache_tokens``,
        ``kv_cache_dtype``, ``quantization``, ``structured_forced_tokens``,
        ``structured_steps_saved``."""
    def default_sampling_params(self) -> SamplingParams:
        """The model's sampling defaults (``generation_config.json``)."""
    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        chat_template_kwargs: str | None = None,
    ) -> str: ...
    def generate(
        self,
        prompts: list[str | list[int]],
        params: list[SamplingParams],
        priorities: list[int],
        progress: Callable[[], Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Runs every prompt to completion (all accepted or none); ``progress`` is called as
        each request finishes."""
    def stream(
        self, prompt: str | list[int], params: SamplingParams, priority: int = 0
    ) -> Stream: ...
    def abort(self, request_id: str) -> None: ...
    def sleep(self, level: int = 1) -> dict[str, float | int]:
        """Frees the weights' and the KV pool's device memory with the engine alive (CUDA);
        ``seconds``, ``device_bytes``, ``copied_bytes``, ``copy_seconds``."""
    def wake(self) -> dict[str, float | int]:
        """Brings the memory back after ``sleep``; the same keys."""
    @property
    def is_sleeping(self) -> bool: ...
    def shutdown(self) -> None: ...

def fingerprint(path: str) -> str:
    """The content fingerprint of the model at ``path``: ``fp_`` + sha256 over its config,
    weights, tokenizer and chat template, cached beside the model."""

def prefix_block_hashes(token_ids: list[int], block_size: int, max_blocks: int = ...) -> list[int]:
    """The chain hashes of the first ``max_blocks`` full blocks of ``token_ids``, as the
    engine's prefix cache keys them."""

def load_tokenizer(path: str) -> Tokenizer:
    """Loads only the tokenizer of a local model."""

def serve(models: str, server: str = "{}") -> None:
    """Serves the OpenAI-compatible API of a node of models until SIGTERM or SIGINT (see
    ``infire.serve``): ``models`` is a JSON list of model entries (path, names, memory budget,
    engine options), ``server`` the server's options as a JSON object."""

def engine_args_schema() -> str:
    """Every engine option (name, type, default, help) as a JSON list."""

def server_args_schema() -> str:
    """Every server option (name, type, default, help) as a JSON list."""

def quantize_rows(format: str, dtype: str, data: bytes, cols: int) -> bytes:
    """The ggml blocks ``quantization=format`` ("q8_0", "q4_0") makes of rows of ``cols``
    little-endian ``dtype`` ("BF16", "F16", "F32") values (for tests)."""

def cuda_device_count() -> int:
    """CUDA devices this build can use (0 without a driver or GPU)."""

def kernel_names() -> list[str]:
    """The CUDA kernel files (``kernels/cuda/*.cu`` stems)."""

def kernel_source(name: str) -> str:
    """The full source NVRTC compiles for kernel file ``name``."""

def compile_kernel(
    name: str,
    arch: str,
    defines: dict[str, Any] | None = None,
    dtype: str = "bfloat16",
    target: str = "cubin",
) -> bytes:
    """Compiles kernel file ``name`` with NVRTC for ``arch`` to a cubin or PTX."""
