"""``infire.Engine``: the Python face of the Rust engine."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence

from . import _core
from .errors import InvalidRequestError
from .model_resolution import resolve_model
from .options import engine_options_doc, engine_options_json
from .outputs import RequestOutput

SamplingParams = _core.SamplingParams
Tokenizer = _core.Tokenizer

Prompt = str | list[int]
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

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (``encode``, ``decode``, ``apply_chat_template``)."""
        return self._core.tokenizer

    @property
    def max_model_len(self) -> int:
        return self._core.max_model_len

    def stats(self) -> dict:
        """Load and KV-cache usage: ``num_running``, ``num_waiting``, ``kv_blocks_total``,
        ``kv_blocks_used``, ``prefix_cache_hit_rate``, ``num_preemptions``."""
        return self._core.stats()

    def abort(self, request_id: str) -> None:
        """Aborts a request (from any thread); its stream ends with ``finish_reason="abort"``.
        Unknown or finished requests are ignored."""
        self._core.abort(str(request_id))

    def get_default_sampling_params(self) -> SamplingParams:
        """Sampling parameters used when none are given (from ``generation_config.json``)."""
        return self._core.default_sampling_params()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generates completions for each prompt, all scheduled together.

        A prompt is a string or a list of token ids; ``prompts`` is one prompt or a list.
        ``sampling_params`` is one ``SamplingParams`` for all prompts or one per prompt.
        ``priority`` (one int per prompt, lower runs first) orders admission; default 0.
        Returns one finished ``RequestOutput`` per prompt, in order. The GIL is released while
        the engine works, so other Python threads run meanwhile.
        """
        prompt_list = _prompt_list(prompts)
        params = self._params_list(sampling_params, len(prompt_list))
        raw = self._core.generate(prompt_list, params, _priorities(priority, len(prompt_list)))
        return [RequestOutput._from_core(d) for d in raw]

    async def generate_async(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """:meth:`generate` for asyncio: waits in a worker thread, not in the event loop."""
        return await asyncio.to_thread(self.generate, prompts, sampling_params, priority)

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Applies the model's chat template to one conversation (a list of messages) or to a
        list of conversations, then generates as :meth:`generate` does."""
        conversations = _conversation_list(messages)
        rendered = [self.apply_chat_template(c, add_generation_prompt) for c in conversations]
        ids = [self.tokenizer.encode(text, add_special_tokens=False) for text in rendered]
        params = self._params_list(sampling_params, len(ids))
        raw = self._core.generate(ids, params, [0] * len(ids))
        return [RequestOutput._from_core(d, prompt=p) for d, p in zip(raw, rendered, strict=True)]

    def stream(
        self, prompt: Prompt, sampling_params: SamplingParams | None = None, priority: int = 0
    ) -> Stream:
        """Returns an iterator of the request's cumulative output, one item each time it
        grows; the last one has ``finished=True``. Closing or dropping the iterator aborts the
        request. Its ``request_id`` can be passed to :meth:`abort` from any thread."""
        params = self._params_list(sampling_params, 1)[0]
        prompt = _prompt_list(prompt)[0]
        return Stream(self._core.stream(prompt, params, priority))

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
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> str:
        """Renders one conversation with the model's chat template."""
        return self._core.apply_chat_template(_text_messages(messages), add_generation_prompt)

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


Engine.__doc__ = Engine.__doc__.format(options=engine_options_doc())


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


def _prompt_list(prompts) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    for p in prompts:
        if not (isinstance(p, str) or (isinstance(p, list) and all(isinstance(t, int) for t in p))):
            raise InvalidRequestError(
                f"a prompt must be a string or a list of token ids, got {type(p).__name__}"
            )
    return prompts


def _conversation_list(messages) -> list[list[Message]]:
    messages = list(messages)
    if messages and isinstance(messages[0], dict):
        return [messages]
    return [list(c) for c in messages]


def _text_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Checks messages and flattens OpenAI text parts into one string per message."""
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidRequestError(f"a message must be a dict with 'role' and 'content': {m!r}")
        content = m["content"]
        if isinstance(content, list):  # OpenAI text parts
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text"):
                    raise InvalidRequestError(f"only text content parts are supported: {part!r}")
                texts.append(part.get("text", ""))
            content = "".join(texts)
        if not isinstance(m["role"], str) or not isinstance(content, str):
            raise InvalidRequestError(f"message role and content must be strings: {m!r}")
        out.append({"role": m["role"], "content": content})
    return out
