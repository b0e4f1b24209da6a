"""What every engine checks before generating: the sampling parameters, and the prompt's token ids
against the context (the same rules and messages whichever engine serves)."""

from __future__ import annotations

from typing import Any

from tuneforge.serve.engines.base import EngineError, GenerationRequest


class PromptEncoder:
    """Token ids of rendered prompts with the base model's tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        # The Rust tokenizer encodes without touching padding/truncation state, so the event loop
        # can count tokens while a scheduler thread decodes.
        self._encoder = getattr(tokenizer, "backend_tokenizer", None)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self._encoder is not None:
            return list(self._encoder.encode(text, add_special_tokens=add_special_tokens).ids)
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))


class PromptSide:
    """An engine's ``max_context``, ``count_tokens`` and ``encode``, from the ``PromptEncoder`` and the
    context it sets when it starts."""

    _prompts: PromptEncoder | None
    _context: int

    @property
    def max_context(self) -> int:
        return self._context

    def count_tokens(self, text: str, *, add_special_tokens: bool = False) -> int:
        return len(self.encode(text, add_special_tokens=add_special_tokens))

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return started(self._prompts).encode(text, add_special_tokens)


def started(prompts: PromptEncoder | None) -> PromptEncoder:
    if prompts is None:
        raise EngineError("the engine has not started", status=503, code="engine_not_ready")
    return prompts


def check_params(request: GenerationRequest) -> None:
    p = request.params
    problems = [
        (p.max_tokens < 1, "max_tokens", "max_tokens must be at least 1"),
        (p.n < 1, "n", "n must be at least 1"),
        (p.temperature < 0, "temperature", "temperature must be 0 or more"),
        (not 0 < p.top_p <= 1, "top_p", "top_p must be in (0, 1]"),
        (p.top_logprobs < 0 or p.top_logprobs > 20, "top_logprobs", "top_logprobs must be between 0 and 20"),
    ]
    for bad, param, message in problems:
        if bad:
            raise EngineError(message, status=400, code="invalid_request_error", param=param)


def prompt_ids(prompts: PromptEncoder | None, request: GenerationRequest, context: int) -> list[int]:
    """The request's prompt ids once its parameters, length and room in the context are valid."""
    check_params(request)
    ids = (list(request.prompt_ids) if request.prompt_ids is not None
           else started(prompts).encode(request.prompt, request.add_special_tokens))
    if not ids:
        raise EngineError("the prompt is empty", status=400, code="invalid_request_error", param="prompt")
    max_tokens = request.params.max_tokens
    if len(ids) + max_tokens > context:
        raise EngineError(
            f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}, over this model's context of "
            f"{context} tokens; shorten the messages or lower max_tokens",
            status=400, code="context_length_exceeded", param="messages")
    return ids
