"""The one interface every engine implements, so the gateway never knows which engine runs.

The gateway renders prompts itself with the chat template recorded in each adapter's contract
(the template the adapter was trained with), so engines receive text, never chat messages: the
same bytes reach the local engine and vLLM, and a template mismatch between training and serving
cannot happen inside an engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter to make resident: ``name`` is what requests use (e.g. ``support@3``)."""

    name: str
    path: Path
    checksum: str | None = None  # sha256 over the adapter files, verified before loading when given


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_mode: bool = False  # response_format json_object: constrain/validate output to a JSON object
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: str  # already rendered with the adapter's chat template (or a raw completion prompt)
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None  # an AdapterSpec.name; None = the base model
    add_special_tokens: bool = False  # the rendered template already holds BOS etc.
    # The gateway's encoding of ``prompt`` (it counts tokens for the context check and usage anyway);
    # engines encode the prompt themselves only when this is None.
    prompt_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenerationEvent:
    """One increment of one choice. The last event of a choice has ``finish_reason`` set."""

    index: int  # choice index, 0..n-1
    text: str  # new text since the previous event of this choice (stop strings already removed)
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0  # set on every event
    completion_tokens: int = 0  # cumulative for this choice
    logprobs: tuple[TokenLogprob, ...] = ()
    queue_time_s: float | None = None  # set on the first event of a request: time waiting for a slot

    @property
    def empty(self) -> bool:
        """Carries nothing for the client. An engine may send one first to say it accepted the
        request, so the gateway can start a streamed response while the prompt is prefilled
        (failures after it reach a streaming client in-band rather than as an HTTP status)."""
        return not self.text and not self.token_ids and self.finish_reason is None and not self.logprobs


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    loaded_adapters: tuple[str, ...]


class EngineError(Exception):
    """An engine-side failure the gateway maps to an HTTP status (``status``: 400, 404, 413, 503...)."""

    def __init__(self, message: str, *, status: int = 500, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


@runtime_checkable
class Engine(Protocol):
    """Lifecycle: ``await start()`` once (loads the base), then any number of concurrent calls."""

    name: str  # "local" or "vllm"
    base_model: str  # the base model's served name

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Stop accepting work, let in-flight requests finish (bounded), free resources."""
        ...

    def ready(self) -> bool: ...

    @property
    def max_context(self) -> int: ...

    def count_tokens(self, text: str, *, add_special_tokens: bool = False) -> int: ...

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]: ...

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        """Make an adapter resident. Raises EngineError (400) on a contract/checksum mismatch or
        unreadable files; a failed load leaves the engine serving as before."""
        ...

    async def unload_adapter(self, name: str) -> None:
        """Unload once no in-flight request uses it (new requests for it are refused meanwhile)."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream events for all ``n`` choices, interleaved. Raises EngineError before the first event
        for bad input (unknown adapter: 404; prompt + max_tokens over the context: 400/413). The first
        event may be ``empty`` (accepted, nothing generated yet)."""
        ...

    def stats(self) -> EngineStats: ...
