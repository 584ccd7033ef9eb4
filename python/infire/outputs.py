"""Request outputs, shaped as vLLM's ``RequestOutput`` and ``CompletionOutput``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    """One generated sequence of a request.

    ``text`` and ``token_ids`` are cumulative: while streaming they hold everything produced
    so far. ``logprobs`` is a list with one ``{token_id: logprob}`` dict per generated token
    (the top ``SamplingParams.logprobs`` tokens plus the sampled one), or ``None``.
    ``finish_reason`` is ``"stop"``, ``"length"``, ``"abort"`` or ``None`` while running.
    ``stop_reason`` is what stopped it, as in vLLM: the stop string or stop token id, or
    ``None`` for an end-of-sequence token, the length limit, or while running.
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None
    stop_reason: str | int | None = None

    def finished(self) -> bool:
        """Whether the sequence has ended (vLLM's ``CompletionOutput.finished()``)."""
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Times of a request, in seconds since the epoch (``time.time()``)."""

    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    """The result (or, while streaming, the progress) of one request.

    ``outputs`` holds one ``CompletionOutput`` per sequence (``SamplingParams.n``).
    ``num_cached_tokens`` counts prompt tokens whose KV came from the prefix cache.
    ``prompt_logprobs`` (when asked for) has one entry per prompt token: ``None`` for the
    first, then ``{token_id: logprob}`` with the top tokens and the prompt's own token.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    prompt_logprobs: list[dict[int, float] | None] | None = None

    @classmethod
    def _from_core(cls, d: dict, prompt: str | None = None) -> RequestOutput:
        return cls(
            request_id=d["request_id"],
            prompt=d["prompt"] if d["prompt"] is not None else prompt,
            prompt_token_ids=d["prompt_token_ids"],
            outputs=[CompletionOutput(**o) for o in d["outputs"]],
            finished=d["finished"],
            num_cached_tokens=d["num_cached_tokens"],
            metrics=RequestMetrics(**d["metrics"]),
            prompt_logprobs=d["prompt_logprobs"],
        )
