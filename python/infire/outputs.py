"""Request outputs, shaped as vLLM's ``RequestOutput`` and ``CompletionOutput``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    """One generated sequence of a request.

    ``text`` and ``token_ids`` are cumulative: while streaming they hold everything produced
    so far. ``logprobs`` is a list with one ``{token_id: logprob}`` dict per generated token
    (the top ``SamplingParams.logprobs`` tokens plus the sampled one), or ``None``.
    ``finish_reason`` is ``"stop"``, ``"length"`` or ``None`` while running.
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None


@dataclass
class RequestOutput:
    """The result (or, while streaming, the progress) of one request."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False

    @classmethod
    def _from_core(cls, d: dict, prompt: str | None = None) -> RequestOutput:
        return cls(
            request_id=d["request_id"],
            prompt=d["prompt"] if d["prompt"] is not None else prompt,
            prompt_token_ids=d["prompt_token_ids"],
            outputs=[CompletionOutput(**o) for o in d["outputs"]],
            finished=d["finished"],
        )
