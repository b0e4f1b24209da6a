"""The ``local`` engine: the base model in this process (transformers + PEFT), continuous batching.

One scheduler thread owns the model (see ``_scheduler``); this class is the asyncio face of it.
Requests are tokenized here, queued for the scheduler, and their events come back through an
asyncio queue filled with ``call_soon_threadsafe``, so the event loop never runs a forward pass.

``json_mode`` steers rather than constrains: the first token must open a JSON object, stop tokens
are refused until the object closes, and the choice ends (``stop``) right after the closing brace.
The text is therefore a balanced object, though not guaranteed to parse.

Give the engine a process of its own where speed matters: torch's OpenMP runtime keeps a thread
pool for every thread that has run torch work, and once the pools hold more threads than there are
cores it stops spinning between parallel regions. A batch-1 decode step is hundreds of small
regions; on 2 cores it measured about a third slower with another thread's pool alive (e.g. after
training on the main thread of the same notebook).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from tuneforge.serve.engines._adapters import AdapterTable, verify
from tuneforge.serve.engines._prompt import PromptEncoder, PromptSide, prompt_ids
from tuneforge.serve.engines._scheduler import DONE, Scheduler, Submission
from tuneforge.serve.engines.base import (
    AdapterSpec,
    EngineError,
    EngineStats,
    GenerationEvent,
    GenerationRequest,
)
from tuneforge.workspace import Workspace


class LocalEngine(PromptSide):
    name = "local"

    def __init__(self, base: str, *, workspace: Workspace | None = None, dtype: str = "auto", max_batch: int = 32,
                 max_loaded_adapters: int = 8, max_context: int | None = None, drain_timeout_s: float = 30.0,
                 max_prefill_tokens: int = 8192) -> None:
        if max_batch < 1 or max_loaded_adapters < 1:
            raise ValueError("max_batch and max_loaded_adapters must be at least 1")
        self.base_ref = base
        self.base_model = base
        self.workspace = workspace
        self.dtype = dtype
        self.max_batch = max_batch
        self.drain_timeout_s = drain_timeout_s
        self.max_prefill_tokens = max_prefill_tokens
        self.contract: Any = None
        self.tokenizer: Any = None
        self._requested_context = max_context
        self._context = 0
        self._adapters = AdapterTable(max_loaded_adapters)
        self._scheduler: Scheduler | None = None
        self._prompts: PromptEncoder | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._scheduler is not None:
            return
        self._scheduler = await asyncio.to_thread(self._load_base)
        self._scheduler.start()

    def _load_base(self) -> Scheduler:
        from tuneforge.models import load_contract, load_model, load_tokenizer, resolve_model

        ws = self.workspace or Workspace.from_env()
        resolved = resolve_model(self.base_ref, ws)
        tokenizer = load_tokenizer(resolved)
        model = load_model(resolved, self.dtype)
        model.eval()
        self.contract = load_contract(resolved, tokenizer)
        self.tokenizer = tokenizer
        self.base_model = resolved.name
        self._prompts = PromptEncoder(tokenizer)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self._context = min(limit, self._requested_context or limit)
        stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in self.contract.stop_tokens}
        if tokenizer.eos_token_id is not None:
            stop_ids.add(tokenizer.eos_token_id)
        stop_ids.discard(tokenizer.unk_token_id)
        stop_ids.discard(None)
        return Scheduler(model, tokenizer, stop_ids, max_batch=self.max_batch,
                         max_prefill_tokens=self.max_prefill_tokens)

    async def stop(self) -> None:
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.shutdown, self.drain_timeout_s)

    def ready(self) -> bool:
        return self._scheduler is not None and self._scheduler.alive()

    def stats(self) -> EngineStats:
        s = self._scheduler
        return EngineStats(running=sum(not r.done for r in list(s.running)) if s else 0, waiting=s.waiting() if s else 0,
                           loaded_adapters=self._adapters.names())

    def _live(self) -> Scheduler:
        if self._scheduler is None or not self._scheduler.alive():
            raise EngineError("the engine is not running", status=503, code="engine_not_ready")
        return self._scheduler

    # -- adapters ----------------------------------------------------------------------------

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        scheduler = self._live()

        async def install() -> None:
            await asyncio.to_thread(verify, adapter, self.contract)
            victim = self._adapters.pick_victim()
            if victim is not None:
                await self._detach(scheduler, victim)
            await asyncio.wrap_future(scheduler.call(lambda: scheduler.attach(adapter.name, str(adapter.path))))

        await self._adapters.load(adapter, install)

    async def unload_adapter(self, name: str) -> None:
        scheduler = self._live()
        await self._adapters.drain(name)
        await self._detach(scheduler, name)

    async def _detach(self, scheduler: Scheduler, name: str) -> None:
        try:
            await asyncio.wrap_future(scheduler.call(lambda: scheduler.detach(name)))
        finally:
            self._adapters.remove(name)

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        scheduler = self._live()
        ids = prompt_ids(self._prompts, request, self._context)
        adapter = request.adapter
        if adapter is not None:
            self._adapters.acquire(adapter)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def on_end() -> None:
            if adapter is not None:
                self._adapters.release(adapter)

        sub = Submission(request, ids, emit, on_end)
        try:
            scheduler.submit(sub)
        except EngineError:
            on_end()
            raise
        try:
            while True:
                item = await queue.get()
                if item is DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            if not sub.ended:
                sub.cancelled = True  # the client went away: the scheduler drops its rows
                scheduler.wake()
