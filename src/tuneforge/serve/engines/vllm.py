"""The ``vllm`` engine: a managed vLLM OpenAI server subprocess behind the gateway.

The gateway keeps routing, auth, logging and metrics; vLLM only generates. Prompts arrive
rendered (see ``base``), so only vLLM's ``/v1/completions`` is used, streamed, one sub-request
per choice: vLLM refuses ``n > 1`` with greedy sampling, and per-choice streams give per-choice
token counts for free. Adapters are verified here (checksum, chat contract against the base)
before vLLM is asked to load them at runtime, so a refused adapter never reaches the server.

A monitor task checks the process and ``/health``. When the server dies, the engine reports
not ready (the gateway answers 503), fails in-flight requests with 503 at once, restarts the
server (bounded), loads the resident adapters again and reports ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tuneforge.serve.engines._adapters import AdapterTable, verify
from tuneforge.serve.engines._prompt import PromptEncoder, PromptSide, prompt_ids
from tuneforge.serve.engines._vllm_process import LaunchSpec, VllmProcess, find_python
from tuneforge.serve.engines.base import (
    AdapterSpec,
    EngineError,
    EngineStats,
    GenerationEvent,
    GenerationRequest,
    TokenLogprob,
)
from tuneforge.serve.server import ServeError
from tuneforge.workspace import Workspace

log = logging.getLogger("tuneforge.serve.vllm")

_END = object()  # one choice's stream finished
UNHEALTHY_CHECKS = 3  # consecutive failed /health answers from a live process before it is restarted
# Idle connections to vLLM are dropped before its server would close them (uvicorn's keep-alive
# timeout, 5 s by default), so a request never goes out on a connection the server is closing.
KEEPALIVE_S = 4.0


class VllmEngine(PromptSide):
    name = "vllm"

    def __init__(self, base: str, *, workspace: Workspace | None = None, cfg: Any = None) -> None:
        from tuneforge.config import TuneforgeConfig

        cfg = cfg or TuneforgeConfig()
        self.base_ref = base
        self.base_model = base
        self.workspace = workspace
        self.settings = cfg.serve.vllm
        # Checked now, so a wrong setting is a clean CLI error rather than a failed server startup.
        self.python = find_python(self.settings.python)
        self.revision = cfg.model.revision
        self.drain_timeout_s = cfg.serve.shutdown_timeout_s
        self.contract: Any = None
        self.tokenizer: Any = None
        self.process: VllmProcess | None = None
        self._prompts: PromptEncoder | None = None
        self._context = 0
        self._adapters = AdapterTable(cfg.serve.max_loaded_adapters)
        self._client: Any = None
        self._ready = False
        self._stopping = False
        self._monitor: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Queue[object]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.process is not None:
            return
        import aiohttp

        spec = await asyncio.to_thread(self._prepare)
        self.process = VllmProcess(spec)
        # aiohttp rather than httpx: relaying vLLM's stream is the gateway's per-token work, and
        # aiohttp reads an SSE chunk with about half the CPU. No connection limit: requests
        # queue in vLLM, where its scheduler sees them, not in our pool.
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=None, connect=30.0), read_bufsize=1 << 18,
        )
        try:
            await self._launch()
        except BaseException:
            await self._client.close()
            await asyncio.to_thread(self.process.kill)
            self.process = None
            raise
        self._ready = True
        self._monitor = asyncio.create_task(self._watch(), name="tuneforge-vllm-monitor")

    def _prepare(self) -> LaunchSpec:
        from tuneforge.models import load_contract, load_tokenizer, resolve_model

        ws = self.workspace or Workspace.from_env()
        resolved = resolve_model(self.base_ref, ws, revision=self.revision)
        self.tokenizer = load_tokenizer(resolved)
        self.contract = load_contract(resolved, self.tokenizer)
        self.base_model = resolved.name
        self._prompts = PromptEncoder(self.tokenizer)
        config = json.loads((resolved.path / "config.json").read_text())
        limit = int(config.get("max_position_embeddings") or self.settings.max_model_len)
        self._context = min(limit, self.settings.max_model_len)
        return LaunchSpec(self.python, resolved.path, resolved.name, self.settings, ws.root / "serve" / "vllm.log")

    async def _launch(self) -> None:
        """Start the server (in this thread, so it dies with it) and wait until /health answers."""
        proc = self._live_process()
        proc.launch()
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while True:
            if not proc.alive():
                raise ServeError(f"vLLM exited during startup. Last lines of {proc.spec.log_path}:\n"
                                 f"{proc.log_tail()}", where="serve.vllm",
                                 fix="see the log; the model directory, serve.vllm.extra_args and free memory "
                                 "are the usual causes")
            if await self._healthy(timeout=5.0):
                return
            if time.monotonic() > deadline:
                tail = proc.log_tail()
                await asyncio.to_thread(proc.kill)
                raise ServeError(f"vLLM did not become healthy within {self.settings.startup_timeout_s:.0f}s. "
                                 f"Last lines of {proc.spec.log_path}:\n{tail}", where="serve.vllm",
                                 fix="raise serve.vllm.startup_timeout_s, or see the log")
            await asyncio.sleep(0.5)

    async def _healthy(self, timeout: float) -> bool:
        import aiohttp

        proc = self.process
        if proc is None or not proc.alive():
            return False
        try:
            async with self._client.get(proc.url + "/health", timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def stop(self) -> None:
        self._stopping = True
        self._ready = False
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._monitor
            self._monitor = None
        deadline = time.monotonic() + self.drain_timeout_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._fail_inflight("the vllm engine stopped")
        if self._client is not None:
            await self._client.close()
        if self.process is not None:
            await asyncio.to_thread(self.process.kill)

    def ready(self) -> bool:
        return self._ready and self.process is not None and self.process.alive()

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._inflight), waiting=0, loaded_adapters=self._adapters.names())

    def _live_process(self) -> VllmProcess:
        if self.process is None:
            raise EngineError("the vllm engine has not started", status=503, code="engine_not_ready")
        return self.process

    def _check_ready(self) -> VllmProcess:
        if not self.ready():
            raise EngineError("the vllm engine is not serving (starting, restarting or stopped); retry shortly",
                              status=503, code="engine_unavailable")
        return self._live_process()

    # -- health and restart ------------------------------------------------------------------

    async def _watch(self) -> None:
        failures = 0
        while not self._stopping:
            await asyncio.sleep(self.settings.health_interval_s)
            proc = self.process
            if proc is None or proc.proc is None or self._stopping:
                return  # stopped on purpose (stop(), or the interpreter exiting)
            if proc.alive():
                failures = 0 if await self._healthy(timeout=10.0) else failures + 1
                if failures < UNHEALTHY_CHECKS:
                    continue
                reason = f"vLLM stopped answering /health ({failures} checks)"
            else:
                reason = f"vLLM exited with code {proc.proc.returncode if proc.proc else '?'}"
            failures = 0
            await self._recover(reason)
            if not self._ready:
                return

    async def _recover(self, reason: str) -> None:
        proc = self._live_process()
        self._ready = False
        log.error("%s; restarting it. Last lines of %s:\n%s", reason, proc.spec.log_path, proc.log_tail(10))
        self._fail_inflight(f"the vllm engine failed ({reason}) and is restarting; retry shortly")
        while not self._stopping:
            if not proc.may_restart(self.settings.restart_limit):
                log.error("vLLM restarted %d times within 10 minutes; giving up (the gateway answers 503)",
                          self.settings.restart_limit)
                await asyncio.to_thread(proc.kill)
                return
            await asyncio.to_thread(proc.kill)  # what is left of the old group, off the event loop
            try:
                await self._launch()
            except ServeError as exc:
                log.error("vLLM restart failed: %s", exc)
                continue
            await self._reload_adapters()
            self._ready = True
            log.warning("vLLM is serving again on port %d", proc.port)
            return

    async def _reload_adapters(self) -> None:
        for name in self._adapters.names():
            item = self._adapters.get(name)
            if item is None:
                continue
            try:
                await self._post_load(item.spec)
            except EngineError as exc:  # the gateway loads it again on its next request
                log.error("could not reload adapter %s after the restart: %s", name, exc)
                self._adapters.remove(name)

    def _fail_inflight(self, message: str) -> None:
        error = EngineError(message, status=503, code="engine_unavailable")
        for queue in list(self._inflight):
            queue.put_nowait(error)

    # -- adapters ----------------------------------------------------------------------------

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        self._check_ready()

        async def install() -> None:
            meta = await asyncio.to_thread(verify, adapter, self.contract)
            self._check_servable(adapter, meta)
            victim = self._adapters.pick_victim()
            if victim is not None:
                await self._post_unload(victim)
            await self._post_load(adapter)

        await self._adapters.load(adapter, install)

    def _check_servable(self, adapter: AdapterSpec, meta: dict[str, Any]) -> None:
        where = f"adapter {adapter.name} at {adapter.path}"
        serving = meta.get("serving") or {}
        if serving.get("vllm_lora") is False:
            raise EngineError(f"{where} cannot be served by vLLM: {serving.get('reason') or 'not a LoRA adapter'}",
                              status=400, code="adapter_invalid")
        try:
            rank = int(json.loads((Path(adapter.path) / "adapter_config.json").read_text()).get("r") or 0)
        except (OSError, ValueError):
            rank = 0
        if rank > self.settings.max_lora_rank:
            raise EngineError(f"{where} has rank {rank}, over serve.vllm.max_lora_rank={self.settings.max_lora_rank};"
                              " raise that setting (a vLLM --max-lora-rank value) or train a smaller rank",
                              status=400, code="adapter_invalid")

    async def _post_load(self, adapter: AdapterSpec) -> None:
        await self._admin("/v1/load_lora_adapter", {"lora_name": adapter.name,
                                                     "lora_path": str(Path(adapter.path).resolve())},
                          f"vLLM refused adapter {adapter.name} at {adapter.path}")

    async def _post_unload(self, name: str) -> None:
        try:
            await self._admin("/v1/unload_lora_adapter", {"lora_name": name}, f"vLLM could not unload {name}",
                              missing_ok=True)
        finally:
            self._adapters.remove(name)

    async def _admin(self, path: str, body: dict[str, Any], what: str, *, missing_ok: bool = False) -> None:
        import aiohttp

        proc = self._live_process()
        try:
            async with self._client.post(proc.url + path, json=body,
                                         timeout=aiohttp.ClientTimeout(total=120.0)) as resp:
                status, text = resp.status, await resp.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise EngineError(f"{what}: the vllm engine is unreachable ({exc.__class__.__name__})", status=503,
                              code="engine_unavailable") from None
        if status == 200 or (missing_ok and status == 404):
            return
        raise EngineError(f"{what}: {_error_message(text)}", status=400 if status < 500 else 503,
                          code="adapter_invalid" if status < 500 else "engine_unavailable")

    async def unload_adapter(self, name: str) -> None:
        self._live_process()
        await self._adapters.drain(name)
        await self._post_unload(name)

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        proc = self._check_ready()
        p = request.params
        ids = prompt_ids(self._prompts, request, self._context)
        adapter = request.adapter
        if adapter is not None:
            self._adapters.acquire(adapter)
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._inflight.add(queue)
        # queue_time_s stays unset: vLLM queues internally and does not report how long.
        tasks = [asyncio.create_task(self._choice(proc.url, request, ids, i, queue)) for i in range(p.n)]
        try:
            remaining = p.n
            while remaining:
                item = await queue.get()
                if item is _END:
                    remaining -= 1
                    continue
                if isinstance(item, EngineError) and item.status == 404 and adapter is not None:
                    # vLLM lost it (restarted behind our back): forget it, so the gateway loads it again
                    self._adapters.remove(adapter)
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, GenerationEvent)
                yield item
        finally:
            self._inflight.discard(queue)
            for task in tasks:
                task.cancel()
            # Closing the streams tells vLLM to abort what is still running.
            await asyncio.gather(*tasks, return_exceptions=True)
            if adapter is not None:
                self._adapters.release(adapter)

    async def _choice(self, url: str, request: GenerationRequest, ids: list[int], index: int,
                      queue: asyncio.Queue[object]) -> None:
        import aiohttp

        n_prompt = len(ids)
        try:
            body = _completion_body(request, ids, index, self.base_model)
            async with self._client.post(url + "/v1/completions", json=body) as resp:
                if resp.status != 200:
                    raise _http_error(resp.status, await resp.text(errors="replace"))
                if index == 0:  # accepted: the gateway can start its response during the prefill
                    queue.put_nowait(GenerationEvent(index=0, text="", prompt_tokens=n_prompt))
                # Whatever has arrived, split into lines here: one read per network chunk rather than
                # aiohttp's readline per line (two per SSE event), on every token's path.
                partial = b""
                async for received in resp.content.iter_any():
                    *lines, partial = (partial + received).split(b"\n")
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            continue  # read on to the end of the body, so the connection is kept for reuse
                        event = self._event(json.loads(data), index, n_prompt, request.params.top_logprobs)
                        if event is not None:
                            queue.put_nowait(event)
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except EngineError as exc:
            queue.put_nowait(exc)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            queue.put_nowait(EngineError(f"the vllm engine failed mid-request ({exc.__class__.__name__}); retry "
                                         "shortly", status=503, code="engine_unavailable"))

    def _event(self, chunk: dict[str, Any], index: int, n_prompt: int, top_k: int) -> GenerationEvent | None:
        if "error" in chunk:  # vLLM reports errors that happen after the stream started in-band
            raise _http_error(int(chunk["error"].get("code") or 500), json.dumps(chunk))
        choices = chunk.get("choices") or []
        if not choices:
            return None  # the trailing usage-only chunk
        c = choices[0]
        usage = chunk.get("usage") or {}
        finish = c.get("finish_reason")
        return GenerationEvent(
            index=index, text=c.get("text") or "", token_ids=tuple(c.get("token_ids") or ()),
            finish_reason=None if finish is None else ("length" if finish == "length" else "stop"),
            prompt_tokens=n_prompt, completion_tokens=int(usage.get("completion_tokens") or 0),
            logprobs=self._logprobs(c.get("logprobs"), top_k),
        )

    def _logprobs(self, lp: dict[str, Any] | None, top_k: int) -> tuple[TokenLogprob, ...]:
        """vLLM's completions logprobs (tokens as ``token_id:N``) as text decoded by our tokenizer,
        the same per-token decoding the local engine reports. vLLM adds the sampled token to the
        alternatives when it is not among the top ``top_k``; the alternatives are cut back to ``top_k``."""
        if not lp:
            return ()
        out = []
        tops = lp.get("top_logprobs") or [None] * len(lp.get("tokens") or [])
        for token, value, top in zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], tops, strict=False):
            alternatives = sorted((top or {}).items(), key=lambda kv: -kv[1])[:top_k]
            out.append(TokenLogprob(self._piece(token), float(value),
                                    tuple((self._piece(t), float(v)) for t, v in alternatives)))
        return tuple(out)

    def _piece(self, token: str) -> str:
        if token.startswith("token_id:"):
            return str(self.tokenizer.decode([int(token[9:])]))
        return token


def _completion_body(request: GenerationRequest, ids: list[int], index: int, base_model: str) -> dict[str, Any]:
    p = request.params
    body: dict[str, Any] = {
        # Token ids, not text: the gateway has tokenized the prompt already (with the same tokenizer
        # files vLLM loaded), so vLLM starts prefill without tokenizing it again.
        "model": request.adapter or base_model, "prompt": ids, "max_tokens": p.max_tokens,
        "temperature": p.temperature, "top_p": p.top_p, "n": 1, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}, "return_token_ids": True,
    }
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed + index  # distinct choices, each reproducible
    if p.json_mode:
        body["response_format"] = {"type": "json_object"}
    if p.logprobs:
        # Token ids, decoded here: two ids with the same text would collide as keys of vLLM's dict.
        body["logprobs"] = p.top_logprobs
        body["return_tokens_as_token_ids"] = True
    return body


def _error_message(text: str) -> str:
    try:
        err = json.loads(text).get("error") or {}
        return str(err.get("message") or text)
    except (ValueError, AttributeError):
        return text.strip()[:500]


def _http_error(status: int, text: str) -> EngineError:
    """vLLM's error answer as ours: its client errors stay client errors, the rest are 500s."""
    message = _error_message(text)
    param = None
    with contextlib.suppress(ValueError, AttributeError):
        param = (json.loads(text).get("error") or {}).get("param")
    if status == 404:
        return EngineError(message, status=404, code="model_not_found", param="model")
    if 400 <= status < 500:
        return EngineError(message, status=400, code="invalid_request_error", param=param)
    return EngineError(f"vLLM answered {status}: {message}", status=500, code="engine_error")

