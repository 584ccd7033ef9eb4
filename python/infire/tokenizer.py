"""``infire.Tokenizer``: the model's tokenizer (Rust), callable as a Hugging Face tokenizer.

Where vLLM code reaches for ``llm.get_tokenizer()`` it finds the calls it uses:
``tokenizer(text)``, ``encode``, ``decode``, ``batch_decode``, ``apply_chat_template``
(``tokenize=False`` for the text, ``True`` for ids), ``eos_token_id``, ``bos_token_id``,
``convert_tokens_to_ids``, ``vocab_size`` and ``len(tokenizer)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from . import _core
from .errors import InvalidRequestError


class BatchEncoding(dict):
    """What calling a tokenizer returns: ``input_ids`` and ``attention_mask``, as keys and as
    attributes (as Hugging Face's ``BatchEncoding``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Tokenizer:
    """The tokenizer and chat template of a model (``engine.tokenizer``,
    ``infire.load_tokenizer(model)``)."""

    def __init__(self, core: _core.Tokenizer) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_token_id={self.eos_token_id})"

    def __call__(
        self,
        text: str | Sequence[str],
        add_special_tokens: bool = True,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Encodes one text or a list of texts: ``{"input_ids": ..., "attention_mask": ...}``
        (lists of ints, or lists of such lists for a list of texts). Tensors, padding and
        truncation are not offered: an argument asking for them raises ``InvalidRequestError``.
        """
        unsupported = {k: v for k, v in kwargs.items() if v not in (None, False)}
        if return_tensors is not None or unsupported:
            asked = ["return_tensors"] * (return_tensors is not None) + sorted(unsupported)
            raise InvalidRequestError(
                f"Tokenizer() returns lists of token ids only; not supported: {', '.join(asked)}"
            )
        if isinstance(text, str):
            ids = self.encode(text, add_special_tokens=add_special_tokens)
            return BatchEncoding(input_ids=ids, attention_mask=[1] * len(ids))
        batch = [self.encode(t, add_special_tokens=add_special_tokens) for t in text]
        return BatchEncoding(input_ids=batch, attention_mask=[[1] * len(ids) for ids in batch])

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` (the default, as in Hugging Face)
        the model's BOS/EOS where its tokenizer adds them (as a prompt is encoded)."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text must be a string, got {type(text).__name__}")
        return self._core.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids`` (special tokens kept unless ``skip_special_tokens``)."""
        return self._core.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False
    ) -> list[str]:
        """:meth:`decode` of each sequence."""
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def apply_chat_template(
        self,
        conversation: Sequence[dict],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        tools: list[dict] | None = None,
        chat_template_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Renders ``conversation`` with the model's chat template, as Hugging Face does: the
        token ids (``tokenize=True``, the default) or the text (``tokenize=False``). ``tools``
        and any other keyword (e.g. Qwen3's ``enable_thinking=False``) reach the template as
        variables."""
        text = self._core.apply_chat_template(
            _text_messages(conversation),
            add_generation_prompt,
            _template_kwargs(tools, chat_template_kwargs, kwargs),
        )
        return self._core.encode(text, add_special_tokens=False) if tokenize else text

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list:
        """The id of a token (its vocabulary spelling) or of each token of a list; ``None``
        for a token the vocabulary lacks."""
        if isinstance(tokens, str):
            return self._core.token_to_id(tokens)
        return [self._core.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | None | list:
        """The vocabulary spelling of an id or of each id of a list."""
        if isinstance(ids, int):
            return self._core.id_to_token(ids)
        return [self._core.id_to_token(i) for i in ids]

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-sequence token id (the first of :attr:`eos_token_ids`)."""
        ids = self._core.eos_token_ids
        return ids[0] if ids else None

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends a generation according to the tokenizer."""
        return self._core.eos_token_ids

    @property
    def eos_token(self) -> str | None:
        eos = self.eos_token_id
        return None if eos is None else self._core.id_to_token(eos)

    @property
    def bos_token_id(self) -> int | None:
        return self._core.bos_token_id

    @property
    def bos_token(self) -> str | None:
        bos = self.bos_token_id
        return None if bos is None else self._core.id_to_token(bos)

    @property
    def vocab_size(self) -> int:
        """One past the largest token id."""
        return self._core.vocab_size

    def __len__(self) -> int:
        return self._core.vocab_size

    @property
    def chat_template(self) -> str | None:
        """The chat template's Jinja source, or ``None``."""
        return self._core.chat_template


def _template_kwargs(tools, chat_template_kwargs, extra: dict) -> str | None:
    """The template's extra variables as the JSON object the core takes, or ``None``."""
    merged = dict(chat_template_kwargs or {})
    if not isinstance(chat_template_kwargs or {}, dict):
        raise InvalidRequestError("chat_template_kwargs must be a dict")
    merged.update(extra)
    if tools is not None:
        merged["tools"] = tools
    if not merged:
        return None
    try:
        return json.dumps(merged, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"chat template variables must be JSON values: {e}") from e


def _text_messages(messages: Sequence[dict]) -> list[dict[str, str]]:
    """Checks messages and flattens OpenAI text parts into one string per message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequestError(
            f"a conversation must be a list of messages, got {type(messages).__name__}"
        )
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidRequestError(f"a message must be a dict with 'role' and 'content': {m!r}")
        content = m["content"]
        if content is None:
            content = ""
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
