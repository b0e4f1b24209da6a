"""The local engine's scheduler: one thread that owns the model and runs continuous batching.

Each iteration drops cancelled rows, runs queued commands (adapter attach/detach, which touch the
model and so must not race a forward pass), admits waiting requests and prefills them together,
then runs one decode step for every running row at once. A request therefore starts as soon as a
slot is free, never after an unrelated long one, and rows for different adapters share the step
through PEFT's per-row ``adapter_names``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import random
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneforge.serve.engines._batch import BatchCache
from tuneforge.serve.engines._row_adapters import RowAdapters
from tuneforge.serve.engines._sampling import TextState, json_start_ids, pick
from tuneforge.serve.engines.base import EngineError, FinishReason, GenerationEvent, GenerationRequest

DONE = object()  # sentinel sent after the last event of a request
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Submission:
    """A request inside the engine. ``emit`` is thread-safe; ``on_end`` runs exactly once."""

    request: GenerationRequest
    prompt_ids: list[int]
    emit: Callable[[object], None]
    on_end: Callable[[], None]
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    open_choices: int = 0
    queue_time_s: float | None = None
    sent_first: bool = False
    ended: bool = False

    def end(self, error: Exception | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self.emit(error if error is not None else DONE)
        self.on_end()


@dataclass
class Row:
    """One choice of one request: a row of the running batch."""

    sub: Submission
    index: int
    generator: Any
    text: TextState
    last: int = 0
    generated: int = 0
    done: bool = False

    @property
    def adapter(self) -> str:
        return self.sub.request.adapter or BASE


class Scheduler:
    def __init__(self, model: Any, tokenizer: Any, stop_ids: set[int], *, max_batch: int,
                 max_prefill_tokens: int = 8192) -> None:
        self.base = model
        self.peft: Any = None  # PeftModel once the first adapter is attached
        self._rows = RowAdapters()
        # The adapter this scheduler last made active for a single-adapter step; None when unknown (PEFT
        # moves its active adapter itself when adapters come and go).
        self._active: str | None = None
        self.tokenizer = tokenizer
        self.stop_ids = sorted(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.running: list[Row] = []
        self.batch = BatchCache()
        self._waiting: collections.deque[Submission] = collections.deque()
        self._commands: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._abort = False
        self._json_ids: Any = None
        self._thread = threading.Thread(target=self._run, name="tuneforge-local-engine", daemon=True)

    # -- called from other threads -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, sub: Submission) -> None:
        with self._cv:
            if self._stopping:
                raise EngineError("the engine is shutting down", status=503, code="engine_stopping")
            self._waiting.append(sub)
            self._cv.notify()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the scheduler thread between steps."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cv:
            if not self._thread.is_alive():
                future.set_exception(EngineError("the engine is not running", status=503))
                return future
            self._commands.append((fn, future))
            self._cv.notify()
        return future

    def shutdown(self, timeout: float) -> None:
        """Stop admitting, let running rows finish for up to ``timeout`` seconds, end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort = True
            self.wake()
            self._thread.join()

    # -- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        while self._iterate():
            pass

    def _iterate(self) -> bool:
        import torch

        with self._cv:
            while not (self._waiting or self.running or self._commands or self._stopping):
                self._cv.wait()
            commands, self._commands = self._commands, []
            if self._stopping:
                while self._waiting:
                    self._waiting.popleft().end(EngineError("the engine is shutting down", status=503,
                                                            code="engine_stopping"))
        if self._abort:
            self._fail_running(EngineError("the engine stopped before this request finished", status=503,
                                           code="engine_stopping"))
        self._drop(lambda r: r.sub.cancelled)
        for fn, future in commands:
            try:
                with torch.no_grad():
                    future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - the caller gets it; serving goes on
                future.set_exception(exc)
        if self._stopping and not self.running:
            return False
        admitted = self._admit()
        try:
            with torch.inference_mode():
                if admitted:
                    self._prefill(admitted)
                if self.running:
                    self._decode()
        except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the server
            self._fail_running(EngineError(f"generation failed: {type(exc).__name__}: {exc}", status=500))
            for sub in admitted:
                sub.end(EngineError(f"generation failed: {type(exc).__name__}: {exc}", status=500))
        return True

    def _admit(self) -> list[Submission]:
        out: list[Submission] = []
        slots = self.max_batch - len(self.running)
        budget = self.max_prefill_tokens
        with self._cv:
            while self._waiting:
                sub = self._waiting[0]
                if sub.cancelled:
                    self._waiting.popleft().end()
                    continue
                n = sub.request.params.n
                cost = n * len(sub.prompt_ids)
                # The first request always fits an empty engine, whatever its size.
                if (n > slots or cost > budget) and (out or self.running):
                    break
                self._waiting.popleft()
                out.append(sub)
                slots -= n
                budget -= cost
        return out

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str]) -> Any:
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "past_key_values": cache,
                  "use_cache": True, "logits_to_keep": 1}
        if self.peft is None:
            return self.base(**kwargs).logits[:, -1, :].float()
        model = self.peft.get_base_model()  # the LoRA-injected model itself, past PeftModel's per-call hooks
        first = adapters[0]
        if first != BASE and all(a == first for a in adapters):
            # One adapter for every row: PEFT's plain LoRA path, without the per-row split and scatter of a
            # mixed batch; switching the active adapter walks the model, so only when it changes.
            if self._active != first:
                self.peft.set_adapter(first, inference_mode=True)
                self._active = first
            return model(**kwargs).logits[:, -1, :].float()
        with self._rows.serving(adapters):
            return model(**kwargs).logits[:, -1, :].float()

    def _prefill(self, subs: list[Submission]) -> None:
        import torch
        from transformers import DynamicCache

        rows: list[Row] = []
        now = time.monotonic()
        for sub in subs:
            p = sub.request.params
            sub.queue_time_s = now - sub.submitted
            sub.open_choices = p.n
            for i in range(p.n):
                gen = torch.Generator()
                gen.manual_seed(p.seed + i if p.seed is not None else random.getrandbits(63))
                rows.append(Row(sub, i, gen, TextState(tuple(s for s in p.stop if s), json_mode=p.json_mode)))
        width = max(len(r.sub.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.sub.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.sub.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache, [r.adapter for r in rows])
        self.batch.append(cache, mask)
        self.running.extend(rows)
        self._advance(rows, logits)
        self._drop(lambda r: r.done)

    def _decode(self) -> None:
        import torch

        rows = self.running
        ids = torch.tensor([[r.last] for r in rows], dtype=torch.long)
        positions = self.batch.lengths().unsqueeze(1)
        mask = torch.cat([self.batch.mask, self.batch.mask.new_ones((len(rows), 1))], dim=1)
        logits = self._forward(ids, mask, positions, self.batch.cache, [r.adapter for r in rows])
        self.batch.grow()
        self._advance(rows, logits)
        self._drop(lambda r: r.done)

    def _advance(self, rows: list[Row], logits: Any) -> None:
        import torch

        stop_ids = torch.tensor(self.stop_ids, dtype=torch.long)
        for i, row in enumerate(rows):
            if row.done or row.sub.cancelled:
                continue
            p = row.sub.request.params
            banned = stop_ids if row.text.json_open() else None
            allowed = self._json_start() if p.json_mode and not row.text.ids else None
            choice = pick(logits[i], p, row.generator, self.tokenizer, banned=banned, allowed=allowed)
            token = choice.token_id
            row.last = token
            row.generated += 1
            finish: FinishReason | None = None
            if token in self.stop_ids:
                text, finish = row.text.flush(), "stop"
            else:
                text, hit = row.text.add(self.tokenizer, token)
                if hit:
                    finish = "stop"
                elif row.generated >= p.max_tokens:
                    text, finish = text + row.text.flush(), "length"
            self._emit(row, text, token, finish, choice.logprob)

    def _emit(self, row: Row, text: str, token: int, finish: FinishReason | None, logprob: Any) -> None:
        sub = row.sub
        event = GenerationEvent(
            index=row.index, text=text, token_ids=(token,), finish_reason=finish,
            prompt_tokens=len(sub.prompt_ids), completion_tokens=row.generated,
            logprobs=(logprob,) if logprob is not None else (),
            queue_time_s=None if sub.sent_first else sub.queue_time_s,
        )
        sub.sent_first = True
        sub.emit(event)
        if finish is not None:
            row.done = True
            sub.open_choices -= 1
            if sub.open_choices == 0:
                sub.end()

    def _drop(self, gone: Callable[[Row], bool]) -> None:
        keep = [i for i, r in enumerate(self.running) if not gone(r)]
        if len(keep) == len(self.running):
            return
        for r in self.running:
            if gone(r) and r.sub.cancelled:
                r.sub.end()
        self.running = [self.running[i] for i in keep]
        self.batch.keep(keep)

    def _fail_running(self, error: EngineError) -> None:
        for r in self.running:
            r.sub.end(error)
        self.running = []
        self.batch = BatchCache()

    def _json_start(self) -> Any:
        import torch

        if self._json_ids is None:
            self._json_ids = torch.tensor(json_start_ids(self.tokenizer), dtype=torch.long)
        return self._json_ids

    # -- adapter commands (run on this thread through ``call``) ------------------------------

    def attach(self, name: str, path: str) -> None:
        from peft import PeftModel

        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name, is_trainable=False,
                                                      autocast_adapter_dtype=False)
            else:
                self.peft.load_adapter(path, adapter_name=name, is_trainable=False, autocast_adapter_dtype=False)
            self.peft.eval()
            self._rows.install(self.peft)
            self._active = None
        except Exception as exc:
            self._forget(name)
            raise EngineError(f"adapter {name} at {path} cannot be loaded onto the base: {type(exc).__name__}: "
                              f"{str(exc)[:300]}", status=400, code="adapter_invalid") from None

    def detach(self, name: str) -> None:
        self._forget(name)

    def _forget(self, name: str) -> None:
        if self.peft is None or name not in self.peft.peft_config:
            return
        self._active = None
        if len(self.peft.peft_config) == 1:
            # Removing the LoRA layers (not just the weights) makes base-only steps plain forwards again.
            self._rows.remove()
            self.base = self.peft.unload()
            self.peft = None
        else:
            with warnings.catch_warnings():  # PEFT warns that the active adapter moved; rows pick theirs
                warnings.simplefilter("ignore", UserWarning)
                self.peft.delete_adapter(name)
            self._rows.install(self.peft)
