"""``infire.Engine``: the Python face of the Rust engine."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from . import _core
from .errors import InvalidRequestError
from .model_resolution import resolve_model
from .options import engine_options_json, options_doc
from .outputs import RequestOutput
from .progress import make_bar
from .tokenizer import Tokenizer, _template_kwargs, _text_messages

SamplingParams = _core.SamplingParams

Prompt = str | list[int] | dict
"""A prompt in any of vLLM's forms: text, token ids, ``{"prompt": text}`` or
``{"prompt_token_ids": ids}``."""
_END = object()  # the last item a stream_async pump thread hands over
Message = dict  # {"role": str, "content": str | list of {"type": "text", "text": str}}


class Engine:
    """An LLM engine for one model.

        Args:
            model: a local ``.gguf`` file, a Hugging Face model directory, a hub id (needs
                ``huggingface_hub``), or ``None`` for the default model (SmolLM2-135M-Instruct,
                downloaded on first use).
            **options: engine options, by name (see below; ``infire generate --help`` lists them
                too). Options left out take their defaults, some of which depend on the device.

        Engine options:
    {options}
    """

    def __init__(self, model: str | os.PathLike | None = None, **options) -> None:
        self.model_path = resolve_model(model)
        self._core = _core.Engine(self.model_path, engine_options_json(options))
        self.device = self._core.device
        """``"cpu"`` or ``"cuda"``: where the model runs."""
        self.device_name = self._core.device_name
        """The GPU's name (e.g. ``"NVIDIA H200"``), or ``"cpu"``."""
        self.fingerprint = self._core.fingerprint
        """The model files' content fingerprint, ``fp_<sha256 hex>``: sha256 over the config,
        weights, tokenizer and chat template (cached beside the model), the server's
        ``system_fingerprint``."""
        self._tokenizer = Tokenizer(self._core.tokenizer)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model_path!r}, device={self.device!r}, "
            f"max_model_len={self.max_model_len})"
        )

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer, callable as a Hugging Face one (see ``infire.Tokenizer``)."""
        return self._tokenizer

    def get_tokenizer(self) -> Tokenizer:
        """The model's tokenizer (vLLM's ``LLM.get_tokenizer()``)."""
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._core.max_model_len

    def stats(self) -> dict:
        """Load and KV-cache usage: ``num_running``, ``num_waiting``, ``kv_blocks_total``,
        ``kv_blocks_used``, ``prefix_cache_hit_rate``, ``num_preemptions``; the cache's
        capacity ``kv_cache_tokens`` and element type ``kv_cache_dtype`` (``"bfloat16"``,
        ``"fp8_e4m3"``, ...); the weights' ``quantization`` (``"fp8"``, ``"q8_0"``,
        ``"q4_0"`` or ``None``); the tokens structured outputs' grammars forced
        (jump-forward) ``structured_forced_tokens`` and the forward steps that saved
        ``structured_steps_saved``."""
        return self._core.stats()

    def abort(self, request_id: str) -> None:
        """Aborts a request (from any thread); its stream ends with ``finish_reason="abort"``.
        Unknown or finished requests are ignored."""
        self._core.abort(str(request_id))

    def sleep(self, level: int = 1) -> dict:
        """Frees the model's GPU memory and keeps the engine (as vLLM's ``LLM.sleep(level=1)``):
        the weights go to pinned host memory, the KV pool goes (the prefix cache is lost),
        compiled kernels and CUDA graphs stay. Requests running end with an error; requests
        made while asleep wait for :meth:`wake`. Returns ``seconds``, ``device_bytes`` (freed),
        ``copied_bytes`` and ``copy_seconds``. CUDA only: on the CPU it raises
        ``UnsupportedModelError`` and changes nothing."""
        return self._core.sleep(level)

    def wake(self) -> dict:
        """Brings the memory back after :meth:`sleep`, at the same addresses (nothing is
        recaptured); the same keys as :meth:`sleep`. A no-op when awake."""
        return self._core.wake()

    def wake_up(self) -> dict:
        """:meth:`wake`, by vLLM's name."""
        return self.wake()

    @property
    def is_sleeping(self) -> bool:
        return self._core.is_sleeping

    def shutdown(self) -> None:
        """Stops the engine and frees its memory (its share of the card included); requests
        still running fail. The engine serves nothing after it. An engine that failed (its
        requests raise ``EngineError`` naming why) has freed its memory already, on its own
        thread right after failing its requests; ``shutdown`` then waits for that and ends
        the thread."""
        self._core.shutdown()

    def get_default_sampling_params(self) -> SamplingParams:
        """Sampling parameters used when none are given (from ``generation_config.json``)."""
        return self._core.default_sampling_params()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | Callable | None = None,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generates completions for each prompt, all scheduled together (vLLM's
        ``LLM.generate``).

        A prompt is a string, a list of token ids, ``{"prompt": text}`` or
        ``{"prompt_token_ids": ids}``; ``prompts`` is one prompt or a list of them.
        ``sampling_params`` is one ``SamplingParams`` for all prompts or one per prompt.
        ``use_tqdm``: a progress bar on stderr (``True`` / ``False``, or a tqdm-like callable);
        ``None`` shows it for more than 8 prompts. ``priority`` (one int per prompt, lower runs
        first) orders admission; default 0. Returns one finished ``RequestOutput`` per prompt,
        in order. The GIL is released while the engine works, so other Python threads run
        meanwhile.
        """
        prompt_list = _prompt_list(prompts)
        params = self._params_list(sampling_params, len(prompt_list))
        priorities = _priorities(priority, len(prompt_list))
        raw = self._run(prompt_list, params, priorities, use_tqdm)
        return [RequestOutput._from_core(d) for d in raw]

    async def generate_async(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """:meth:`generate` for asyncio (no progress bar): waits in a worker thread, not in
        the event loop."""
        return await asyncio.to_thread(self.generate, prompts, sampling_params, False, priority)

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | Callable | None = None,
        chat_template_kwargs: dict | None = None,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> list[RequestOutput]:
        """Applies the model's chat template to one conversation (a list of messages) or to a
        list of conversations, then generates as :meth:`generate` does (vLLM's ``LLM.chat``).

        ``chat_template_kwargs`` become variables of the template (e.g. Qwen3's
        ``{"enable_thinking": False}``); ``tools`` (OpenAI tool definitions) reach it as
        ``tools``, for models whose template describes them (the reply is plain text: tool
        calls are not parsed out of it)."""
        conversations = _conversation_list(messages)
        rendered = [
            self.apply_chat_template(c, add_generation_prompt, chat_template_kwargs, tools)
            for c in conversations
        ]
        ids = [self.tokenizer.encode(text, add_special_tokens=False) for text in rendered]
        params = self._params_list(sampling_params, len(ids))
        raw = self._run(ids, params, [0] * len(ids), use_tqdm)
        return [RequestOutput._from_core(d, prompt=p) for d, p in zip(raw, rendered, strict=True)]

    def _run(self, prompts: list, params: list, priorities: list[int], use_tqdm) -> list[dict]:
        """Runs the requests with the progress bar ``use_tqdm`` asks for."""
        bar = make_bar(use_tqdm, len(prompts))
        if bar is None:
            return self._core.generate(prompts, params, priorities)
        try:
            return self._core.generate(prompts, params, priorities, lambda: bar.update(1))
        finally:
            bar.close()

    def stream(
        self, prompt: Prompt, sampling_params: SamplingParams | None = None, priority: int = 0
    ) -> Stream:
        """Returns an iterator of the request's cumulative output, one item each time it
        grows; the last one has ``finished=True``. Closing or dropping the iterator aborts the
        request. Its ``request_id`` can be passed to :meth:`abort` from any thread."""
        params = self._params_list(sampling_params, 1)[0]
        prompts = _prompt_list(prompt)
        if len(prompts) != 1:
            raise InvalidRequestError(f"stream takes one prompt, got {len(prompts)}")
        return Stream(self._core.stream(prompts[0], params, priority))

    async def stream_async(
        self, prompt: Prompt, sampling_params: SamplingParams | None = None, priority: int = 0
    ) -> AsyncIterator[RequestOutput]:
        """:meth:`stream` for asyncio. Cancelling the consumer aborts the request.

        Each stream has a thread of its own that waits on the engine (without the GIL) and
        hands outputs to the event loop, so any number of streams advance together; a shared
        executor would cap them at its worker count."""
        stream = self.stream(prompt, sampling_params, priority)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody listens any more
                pass

        def pump() -> None:
            try:
                for out in stream:
                    put(out)
                put(_END)
            except BaseException as e:  # handed to the consumer, raised there
                put(e)

        threading.Thread(target=pump, name="infire-stream", daemon=True).start()
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.close()

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict | None = None,
        tools: list[dict] | None = None,
    ) -> str:
        """Renders one conversation with the model's chat template (see :meth:`chat`)."""
        return self._core.apply_chat_template(
            _text_messages(messages),
            add_generation_prompt,
            _template_kwargs(tools, chat_template_kwargs, {}),
        )

    def _params_list(self, sampling_params, n: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [self.get_default_sampling_params()] * n
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * n
        params = list(sampling_params)
        if len(params) != n or not all(isinstance(p, SamplingParams) for p in params):
            raise InvalidRequestError(
                f"sampling_params must be one SamplingParams or a list of {n} of them"
            )
        return params


Engine.__doc__ = Engine.__doc__.format(options=options_doc())

LLM = Engine
"""vLLM's name for the engine: ``infire.LLM(model, **options)`` is ``infire.Engine``."""


class Stream(Iterator[RequestOutput]):
    """Iterator of one request's cumulative ``RequestOutput``; closing it (or dropping it)
    aborts the request if it is still running."""

    def __init__(self, core_stream) -> None:
        self._core = core_stream
        self.request_id: str = core_stream.request_id

    def __next__(self) -> RequestOutput:
        return RequestOutput._from_core(next(self._core))

    def close(self) -> None:
        """Aborts the request if it is still running."""
        self._core.close()


def _priorities(priority, n: int) -> list[int]:
    if priority is None:
        return [0] * n
    priorities = list(priority)
    if len(priorities) != n or not all(isinstance(p, int) for p in priorities):
        raise InvalidRequestError(f"priority must be a list of {n} ints")
    return priorities


def _prompt_list(prompts) -> list[str | list[int]]:
    """Every prompt of ``prompts`` (one prompt or a list) as text or token ids."""
    if isinstance(prompts, (str, dict)):
        return [_one_prompt(prompts)]
    if not isinstance(prompts, (list, tuple)):
        raise InvalidRequestError(
            "prompts must be a prompt (str, list of token ids, {'prompt': ...} or "
            f"{{'prompt_token_ids': ...}}) or a list of prompts, got {type(prompts).__name__}"
        )
    if any(isinstance(t, int) for t in prompts):
        return [list(prompts)]  # one prompt of token ids (the core checks each id)
    return [_one_prompt(p) for p in prompts]


def _one_prompt(p) -> str | list[int]:
    """One prompt in any of vLLM's forms, as text or token ids."""
    if isinstance(p, str):
        return p
    if isinstance(p, list):
        return p  # token ids (the core checks each id)
    if isinstance(p, dict):
        keys = set(p)
        if keys == {"prompt"} and isinstance(p["prompt"], str):
            return p["prompt"]
        if keys == {"prompt_token_ids"} and isinstance(p["prompt_token_ids"], (list, tuple)):
            return list(p["prompt_token_ids"])
        raise InvalidRequestError(
            "a prompt dict must be {'prompt': str} or {'prompt_token_ids': [int, ...]}, got "
            f"one with keys {sorted(map(str, keys))}"
        )
    raise InvalidRequestError(
        "a prompt must be a string, a list of token ids, {'prompt': ...} or "
        f"{{'prompt_token_ids': ...}}, got {type(p).__name__}"
    )


def _conversation_list(messages) -> list[list[Message]]:
    messages = list(messages)
    if messages and isinstance(messages[0], dict):
        return [messages]
    return [list(c) for c in messages]
