"""The FastAPI app: OpenAI-compatible endpoints over one engine, plus health, metrics and admin.

``create_app`` builds everything from its arguments (no module state), so tests can run several
apps in one process. The engine starts in the app's lifespan and stops at shutdown after
in-flight requests (and shadow requests) have finished, bounded by ``shutdown_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.routing import Route

from tuneforge.serve.auth import KeyInfo, KeyStore
from tuneforge.serve.catalog import Catalog, Target
from tuneforge.serve.engines.base import (
    AdapterSpec,
    Engine,
    EngineError,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
)
from tuneforge.serve.errors import ApiError, bad_request
from tuneforge.serve.metrics import ServeMetrics
from tuneforge.serve.openai_schema import ChatCompletionRequest, CompletionRequest, RoutePolicyBody
from tuneforge.serve.ratelimit import RateLimiter
from tuneforge.serve.render import Renderer
from tuneforge.serve.requestlog import LogRecord, RequestLog, user_hash
from tuneforge.serve.routing import Policy, Router, load_persisted, persist
from tuneforge.serve.streaming import EventStreamResponse

log = logging.getLogger("tuneforge.serve")

USER_HEADER = "x-tuneforge-user"


@dataclass
class ServeSettings:
    keys: KeyStore
    base_dir: Path  # the base model's directory (its tokenizer and chat template)
    max_concurrent_requests: int = 64
    default_max_tokens: int = 256
    price_per_1k_prompt_tokens: float = 0.0
    price_per_1k_completion_tokens: float = 0.0
    registry_poll_s: float | None = 5.0
    shutdown_timeout_s: float = 30.0
    routes_file: Path | None = None  # where runtime policy changes are persisted
    guardian: Any = None  # tuneforge.monitor.guardrails.Guardian: rolls back a canary that breaches a guardrail


@dataclass
class _Outcome:
    """What one generation produced, per choice, plus timings."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    logprobs: dict[int, list[Any]] = field(default_factory=dict)
    prompt_tokens: int = 0
    queue_s: float | None = None
    ttft_s: float | None = None
    started: float = field(default_factory=time.perf_counter)
    last: float | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(self.tokens.values())

    def add(self, ev: GenerationEvent) -> tuple[float | None, int]:
        """Record an event; returns (seconds since the previous event, tokens it added)."""
        if ev.queue_time_s is not None and self.queue_s is None:
            self.queue_s = ev.queue_time_s
        self.prompt_tokens = ev.prompt_tokens or self.prompt_tokens
        if ev.empty:  # accepted, nothing generated: no token timings
            return None, 0
        now = time.perf_counter()
        gap = None if self.last is None else now - self.last
        if self.ttft_s is None:
            self.ttft_s = now - self.started
        self.last = now
        added = max(0, ev.completion_tokens - self.tokens.get(ev.index, 0))
        self.tokens[ev.index] = max(self.tokens.get(ev.index, 0), ev.completion_tokens)
        self.texts.setdefault(ev.index, []).append(ev.text)
        if ev.logprobs:
            self.logprobs.setdefault(ev.index, []).extend(ev.logprobs)
        if ev.finish_reason:
            self.finish[ev.index] = ev.finish_reason
        return gap, added

    def text(self, index: int) -> str:
        return "".join(self.texts.get(index, []))


class Gateway:
    """Everything one app needs, shared by its route handlers."""

    def __init__(self, settings: ServeSettings, engine: Engine, catalog: Catalog, router: Router,
                 request_log: RequestLog | None, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.engine = engine
        self.catalog = catalog
        self.router = router
        self.request_log = request_log
        self.metrics = metrics
        self.limiter = RateLimiter()
        self.renderer = Renderer()
        self.inflight = 0
        self.background: set[asyncio.Task[Any]] = set()
        self._load_locks: dict[str, asyncio.Lock] = {}
        self.accepting = True
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's loop, set at startup

    # -- admission ---------------------------------------------------------------------------

    def admit(self, authorization: str | None) -> KeyInfo:
        key = self.settings.keys.authenticate(authorization)
        if not self.accepting:
            raise ApiError(503, "The server is shutting down.", code="shutting_down")
        if not self.engine.ready():
            raise ApiError(503, f"The {self.engine.name} engine is not serving (starting, stopped or failed).",
                           code="engine_unavailable")
        if self.inflight >= self.settings.max_concurrent_requests:
            raise ApiError(503, f"The server is overloaded ({self.inflight} requests in flight); retry later.",
                           code="overloaded")
        self.limiter.admit(key)
        return key

    def route(self, model: str, user: str | None) -> tuple[Target, tuple[Target, ...]]:
        assigned: list[Any] = []

        def pick(name: str) -> str | None:
            a = self.router.assign(name, user)
            assigned.append(a)
            return a.variant if a else None

        target = self.catalog.resolve(model, pick)
        shadows: list[Target] = []
        if assigned and assigned[0] is not None and target.version is not None:
            for cand in assigned[0].shadows:
                shadow = self.catalog.lookup(target.version.model, cand, variant=f"shadow:{cand}")
                if shadow.served_name != target.served_name:
                    shadows.append(shadow)
        return target, tuple(shadows)

    async def template_dir(self, target: Target) -> Path:
        if target.version is None:
            return self.settings.base_dir
        known = self.catalog.cached_path(target.version)
        return known if known is not None else await asyncio.to_thread(self.catalog.local_path, target.version)

    async def ensure_loaded(self, target: Target) -> None:
        if target.version is None:
            return
        name = target.served_name
        lock = self._load_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self.engine.stats().loaded_adapters:
                return
            path = await self.template_dir(target)
            await self.engine.load_adapter(AdapterSpec(name, path, target.version.checksum))

    # -- generation --------------------------------------------------------------------------

    async def events(self, target: Target, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """The engine's events; an evicted adapter is reloaded once before the first event."""
        for attempt in (0, 1):
            await self.ensure_loaded(target)
            stream = self.engine.generate(request)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                return
            except EngineError as exc:
                if attempt == 0 and exc.status == 404 and target.version is not None:
                    continue
                raise
            yield first
            async for ev in stream:
                yield ev
            return

    def labels(self, target: Target) -> tuple[str, str, str]:
        version = str(target.version.version) if target.version else "base"
        model = target.version.model if target.version else self.catalog.base_name
        return model, version, target.variant

    def observe(self, target: Target, out: _Outcome, gap: float | None, added: int) -> None:
        if gap is not None and added > 0:
            self.metrics.of(*self.labels(target)).itl.observe(gap / added)

    def finish(self, *, rid: str, endpoint: str, key: KeyInfo, user: str | None, requested: str,
               target: Target | None, out: _Outcome | None, prompt: str | None, status: int,
               error: str | None = None, shadow: bool = False, messages: str | None = None) -> None:
        s = self.settings
        prompt_tokens = out.prompt_tokens if out else 0
        completion_tokens = out.completion_tokens if out else 0
        latency = (time.perf_counter() - out.started) if out else None
        finish_reasons = sorted(set(out.finish.values())) if out else []
        if target is not None and out is not None and status == 200:
            labels = self.labels(target)
            m = self.metrics.of(*labels)
            m.e2e.observe(latency or 0.0)
            if out.ttft_s is not None:
                m.ttft.observe(out.ttft_s)
            if out.queue_s is not None:
                m.queue.observe(out.queue_s)
            m.prompt_tokens.inc(prompt_tokens)
            m.generation_tokens.inc(completion_tokens)
            for reason in out.finish.values():
                self.metrics.success.labels(*labels, reason).inc()
        if not shadow:
            self.limiter.charge(key, prompt_tokens + completion_tokens)
        if self.request_log is None:
            return
        response = None
        if out is not None:
            response = out.text(0) if len(out.texts) <= 1 else json.dumps(
                [out.text(i) for i in sorted(out.texts)], ensure_ascii=False)
        rec = LogRecord(
            request_id=rid, time=time.time(), endpoint=endpoint, key_id=key.id, user_hash=user_hash(user),
            model_requested=requested, model_served=target.served_name if target else None,
            version=str(target.version.version) if target and target.version else ("base" if target else None),
            variant=target.variant if target else None, shadow=shadow, status=status, prompt=prompt,
            response=response, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            ttft_s=out.ttft_s if out else None, latency_s=latency, queue_s=out.queue_s if out else None,
            finish_reason=",".join(finish_reasons) or None,
            cost=prompt_tokens / 1000 * s.price_per_1k_prompt_tokens
            + completion_tokens / 1000 * s.price_per_1k_completion_tokens,
            error=error, messages=messages,
        )
        try:
            self.request_log.write(rec)
        except Exception:  # the log must never fail a request
            log.exception("request log write failed for %s", rid)

    def spawn_shadow(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def error_response(err: ApiError, rid: str) -> Any:
    return JSONResponse(err.body(), status_code=err.status, headers={**err.headers(), "x-request-id": rid})


class _RequestContext:
    """Request id, the error envelope and the request counter, as a plain ASGI middleware.

    Starlette's ``@app.middleware("http")`` runs every response through an extra task and memory
    stream, which cost a streamed token a scheduling hop; this passes ``send`` straight through.
    """

    def __init__(self, app: Any, gw: Gateway) -> None:
        self.app = app
        self.gw = gw

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = rid or f"req-{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        started = False

        async def send_with_id(message: Any) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # a streamed response failed after its headers went out: nothing to answer
                raise
            if isinstance(exc, ApiError):
                err = exc
            elif isinstance(exc, EngineError):
                err = _from_engine(exc, rid)
            else:
                log.exception("unhandled error in request %s", rid)
                err = ApiError(500, f"The server had an error processing request {rid}.", code="internal_error")
            await error_response(err, rid)(scope, receive, send_with_id)
        finally:
            route = scope.get("route")  # the route template, so label values stay few
            self.gw.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()


def _validate(model: type, body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise bad_request(f"Invalid value for '{param}': {err['msg']}", param=param) from None


async def _json_body(request: Any) -> Any:
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _sampling(gw: Gateway, body: Any, prompt_tokens: int, limit: int | None, *, json_mode: bool,
              logprobs: bool, top_logprobs: int) -> SamplingParams:
    ctx = gw.engine.max_context
    room = ctx - prompt_tokens
    if room <= 0 or (limit is not None and limit > room):
        asked = f" plus {limit} completion tokens" if limit else ""
        raise ApiError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                       f"{prompt_tokens + (limit or 0)} tokens ({prompt_tokens} in the prompt{asked}). Please "
                       "reduce the length of the prompt or the completion.",
                       code="context_length_exceeded", param="messages")
    return SamplingParams(
        max_tokens=limit or min(gw.settings.default_max_tokens, room), temperature=body.temperature,
        top_p=body.top_p, n=body.n, stop=body.stops(), seed=body.seed, json_mode=json_mode,
        logprobs=logprobs, top_logprobs=top_logprobs,
    )


def _from_engine(exc: EngineError, rid: str) -> ApiError:
    """Client errors keep the engine's message; server-side failures are not described to clients."""
    if exc.status >= 500 and exc.status != 503:
        log.error("engine error in request %s: %s", rid, exc)
        return ApiError(500, f"The server had an error processing request {rid}.", code="internal_error")
    return ApiError(exc.status, str(exc), code=exc.code, param=exc.param)


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _chat_logprobs(items: list[Any]) -> dict[str, Any]:
    return {"content": [
        {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
         "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())} for a, b in t.top]}
        for t in items
    ]}


def _completion_logprobs(items: list[Any]) -> dict[str, Any]:
    offsets, pos = [], 0
    for t in items:
        offsets.append(pos)
        pos += len(t.token)
    return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [dict(t.top) for t in items], "text_offset": offsets}


def create_app(settings: ServeSettings, engine: Engine, catalog: Catalog, *, router: Router | None = None,
               request_log: RequestLog | None = None, metrics: ServeMetrics | None = None) -> Any:
    gw = Gateway(settings, engine, catalog, router or Router(), request_log, metrics or ServeMetrics())

    routes_seen: dict[str, Any] = {}

    def sync_routes() -> None:
        """Apply policy changes other processes wrote to routes.json (`tuneforge run` deploying a
        canary, `monitor` retraining, `ab guard`), so the loop closes without a restart."""
        path = settings.routes_file
        if path is None:
            return
        text = path.read_text() if path.is_file() else "{}"
        if text == routes_seen.get("text"):
            return
        before = routes_seen.get("policies", {})
        policies = load_persisted(path)
        for name in before.keys() - policies.keys():
            gw.router.set_policy(name, None)
        for name, policy in policies.items():
            current = gw.router.policy(name)
            if current is None or current.to_dict() != policy.to_dict():
                gw.router.set_policy(name, policy)
                log.info("routes.json changed: %s → %s", name, policy.to_dict()["weights"])
        routes_seen.update(text=text, policies=policies)

    async def poll_registry() -> None:
        while True:
            await asyncio.sleep(settings.registry_poll_s or 5.0)
            try:
                if await asyncio.to_thread(catalog.refresh):
                    log.info("registry changed; now serving %s", ", ".join(catalog.all_names()))
            except Exception:  # a registry hiccup must not stop serving what is known
                log.exception("registry refresh failed")
            try:
                await asyncio.to_thread(sync_routes)
            except Exception:  # a half-edited routes.json keeps the policies already in force
                log.exception("routes.json could not be read; keeping the current policies")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        gw.loop = asyncio.get_running_loop()
        await engine.start()
        gw.metrics.watch_engine(engine)
        if settings.routes_file is not None:  # what the server started with is not a change
            routes_seen.update(text=settings.routes_file.read_text() if settings.routes_file.is_file() else "{}",
                               policies=load_persisted(settings.routes_file))
        poller = asyncio.create_task(poll_registry()) if settings.registry_poll_s else None
        guard = (asyncio.create_task(settings.guardian.watch(gw.router, settings.routes_file, catalog.refresh))
                 if settings.guardian is not None else None)
        try:
            yield
        finally:
            gw.accepting = False
            if poller:
                poller.cancel()
            if guard:
                guard.cancel()
            deadline = time.monotonic() + settings.shutdown_timeout_s
            while (gw.inflight or gw.background) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for task in list(gw.background):
                task.cancel()
            await engine.stop()
            if request_log is not None:
                request_log.close()

    app = FastAPI(title="tuneforge gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw

    app.add_middleware(_RequestContext, gw=gw)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Any) -> Any:
        return error_response(ApiError(404, f"Unknown endpoint {request.method} {request.url.path}.",
                                       code="unknown_url"), request.state.request_id)

    @app.exception_handler(405)
    async def bad_method(request: Request, exc: Any) -> Any:
        return error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}.",
                                       code="method_not_allowed"), request.state.request_id)

    # -- health and metrics ------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        if gw.accepting and engine.ready():
            return {"status": "ready", "engine": engine.name, "models": catalog.all_names()}
        raise ApiError(503, f"The {engine.name} engine is not serving.", code="engine_unavailable")

    @app.get("/metrics")
    async def metrics_endpoint() -> Any:
        body, ctype = gw.metrics.render()
        return Response(body, media_type=ctype)

    # -- models ------------------------------------------------------------------------------

    def model_cards() -> list[dict[str, Any]]:
        snap = catalog.snapshot
        created = int(time.time())
        base = catalog.base_name
        cards = [{"id": base, "object": "model", "created": created, "owned_by": "tuneforge", "root": catalog.base_ref,
                  "parent": None}]
        if catalog.base_ref != base:
            cards.append({**cards[0], "id": catalog.base_ref})
        for name in sorted(snap.versions):
            versions = snap.versions[name]
            aliases = snap.aliases.get(name, {})
            policy = gw.router.policy(name)
            routing = policy.to_dict() if policy else {"weights": {catalog.default_variant(name): 100.0},
                                                      "shadow": {}, "sticky": True}
            cards.append({"id": name, "object": "model", "created": created, "owned_by": "tuneforge",
                          "root": base, "parent": base,
                          "tuneforge": {"versions": sorted(versions), "aliases": aliases, "routing": routing}})

            def lineage(v: Any) -> dict[str, Any]:
                return {"model": v.model, "version": v.version, "dataset_fingerprint": v.dataset_fingerprint,
                        "eval_summary": v.eval_summary, "checksum": v.checksum}

            for number in sorted(versions):
                v = versions[number]
                cards.append({"id": v.name, "object": "model", "created": v.created or created,
                              "owned_by": "tuneforge", "root": base, "parent": base, "tuneforge": lineage(v)})
            for alias, number in sorted(aliases.items()):
                v = versions.get(number)
                if v is None:
                    continue
                cards.append({"id": f"{name}@{alias}", "object": "model", "created": v.created or created,
                              "owned_by": "tuneforge", "root": base, "parent": base,
                              "tuneforge": {**lineage(v), "alias": alias}})
        return cards

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        settings.keys.authenticate(request.headers.get("authorization"))
        return {"object": "list", "data": model_cards()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Any:
        settings.keys.authenticate(request.headers.get("authorization"))
        for card in model_cards():
            if card["id"] == model_id:
                return card
        from tuneforge.serve.errors import model_not_found

        raise model_not_found(model_id, catalog.all_names())

    # -- generation endpoints ----------------------------------------------------------------

    async def generate(request: Request, *, chat: bool) -> Any:
        rid = request.state.request_id
        key = gw.admit(request.headers.get("authorization"))
        body = _validate(ChatCompletionRequest if chat else CompletionRequest, await _json_body(request))
        user = body.user or request.headers.get(USER_HEADER)
        target, shadows = gw.route(body.model, user)
        # kept with the log row so a conversation can be rebuilt for retraining
        messages = json.dumps([m.model_dump(exclude_none=True) for m in body.messages],
                              ensure_ascii=False) if chat else None

        json_mode = False
        logprobs, top = False, 0
        if chat:
            fmt = body.response_format
            if fmt is not None and fmt.type == "json_schema":
                raise bad_request(f"response_format json_schema is not supported by the {engine.name} engine; "
                                  "use json_object.", param="response_format")
            json_mode = fmt is not None and fmt.type == "json_object"
            logprobs, top = body.logprobs, body.top_logprobs or 0
            limit = body.token_limit()
        else:
            if body.suffix:
                raise bad_request("suffix is not supported.", param="suffix")
            logprobs, top = body.logprobs is not None, body.logprobs or 0
            limit = body.max_tokens

        async def prepare(t: Target) -> tuple[str, GenerationRequest]:
            if chat:
                directory = await gw.template_dir(t)
                tpl = gw.renderer.cached(directory) or await asyncio.to_thread(
                    gw.renderer.template_for, directory, adapter=t.version is not None)
                prompt = gw.renderer.render_chat(tpl, [m.model_dump(exclude_none=True) for m in body.messages])
                special = False
            else:
                prompt, special = body.text(), True
            ids = tuple(engine.encode(prompt, add_special_tokens=special))  # once: the engine reuses them
            n_prompt = len(ids)
            params = _sampling(gw, body, n_prompt, limit, json_mode=json_mode, logprobs=logprobs,
                               top_logprobs=top)
            adapter = t.served_name if t.version is not None else None
            return prompt, GenerationRequest(rid, prompt, params, adapter, add_special_tokens=special,
                                             prompt_ids=ids)

        prompt, gen_request = await prepare(target)
        endpoint = "chat" if chat else "completions"
        for shadow in shadows:
            gw.spawn_shadow(run_shadow(shadow, prepare, rid, endpoint, key, user, body.model))

        gw.inflight += 1
        out = _Outcome()
        stream = gw.events(target, gen_request)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            gw.inflight -= 1
            status = exc.status if isinstance(exc, EngineError) else 500
            gw.finish(rid=rid, endpoint=endpoint, key=key, user=user, requested=body.model, target=target,
                      out=None, prompt=prompt, status=status, error=str(exc), messages=messages)
            raise
        headers = {"x-tuneforge-variant": target.variant,
                   "x-tuneforge-version": str(target.version.version) if target.version else "base"}
        created = int(time.time())
        obj_id = ("chatcmpl-" if chat else "cmpl-") + rid.removeprefix("req-")
        fmt_logprobs = _chat_logprobs if chat else _completion_logprobs

        if not body.stream:
            status, error = 200, None
            try:
                if first is not None:
                    gw.observe(target, out, *out.add(first))
                    async for ev in stream:
                        gw.observe(target, out, *out.add(ev))
            except asyncio.CancelledError:
                status, error = 499, "cancelled: client gone or shutdown timeout"
                raise
            except BaseException as exc:
                status = exc.status if isinstance(exc, EngineError) else 500
                error = str(exc)
                raise
            finally:
                gw.inflight -= 1
                gw.finish(rid=rid, endpoint=endpoint, key=key, user=user, requested=body.model, target=target,
                          out=out, prompt=prompt, status=status, error=error, messages=messages)
            choices = []
            for i in range(body.n):
                lp = fmt_logprobs(out.logprobs.get(i, [])) if logprobs else None
                if chat:
                    choices.append({"index": i, "message": {"role": "assistant", "content": out.text(i)},
                                    "logprobs": lp, "finish_reason": out.finish.get(i, "stop")})
                else:
                    text = (body.text() if body.echo else "") + out.text(i)
                    choices.append({"index": i, "text": text, "logprobs": lp,
                                    "finish_reason": out.finish.get(i, "stop")})
            usage = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                     "total_tokens": out.prompt_tokens + out.completion_tokens}
            return JSONResponse({"id": obj_id, "object": "chat.completion" if chat else "text_completion",
                                 "created": created, "model": target.served_name, "choices": choices,
                                 "usage": usage, "system_fingerprint": None}, headers=headers)

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        # What every chunk repeats is encoded once: a chunk then costs one small json.dumps
        head = "data: " + json.dumps({"id": obj_id, "object": "chat.completion.chunk" if chat else "text_completion",
                                      "created": created, "model": target.served_name}, ensure_ascii=False)
        head_bytes = (head[:-1] + ', "choices": ').encode()

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            out = head_bytes + json.dumps(choices, ensure_ascii=False).encode() + b', "system_fingerprint": null'
            if include_usage:
                out += b', "usage": ' + json.dumps(usage).encode()
            return out + b"}\n\n"

        def piece(ev: GenerationEvent) -> dict[str, Any]:
            lp = fmt_logprobs(list(ev.logprobs)) if logprobs and ev.logprobs else None
            if chat:
                return {"index": ev.index, "delta": {"content": ev.text} if ev.text else {},
                        "logprobs": lp, "finish_reason": ev.finish_reason}
            return {"index": ev.index, "text": ev.text, "logprobs": lp, "finish_reason": ev.finish_reason}

        async def sse() -> AsyncIterator[bytes]:
            status, error = 200, None
            try:
                if chat:  # the first delta of every choice carries the role
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None} for i in range(body.n)])
                elif body.echo:
                    yield chunk([{"index": i, "text": body.text(), "logprobs": None, "finish_reason": None}
                                 for i in range(body.n)])
                if first is not None:
                    gw.observe(target, out, *out.add(first))
                    if not first.empty:
                        yield chunk([piece(first)])
                    async for ev in stream:
                        gw.observe(target, out, *out.add(ev))
                        if not ev.empty:
                            yield chunk([piece(ev)])
                if include_usage:
                    yield chunk([], {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                                     "total_tokens": out.prompt_tokens + out.completion_tokens})
                yield b"data: [DONE]\n\n"
            except (asyncio.CancelledError, GeneratorExit):
                status, error = 499, "client disconnected"
                raise
            except Exception as exc:
                status = exc.status if isinstance(exc, EngineError) else 500
                log.exception("stream %s failed", rid)
                error = str(exc)
                failure = _from_engine(exc, rid) if isinstance(exc, EngineError) else ApiError(
                    500, f"The server had an error processing request {rid}.", code="internal_error")
                yield _sse(failure.body())
            finally:
                await release(status, error)

        released = False

        async def release(status: int = 499, error: str | None = "client gone before the stream started") -> None:
            # Runs from the stream's end, and again (a no-op then) when the response closes: that
            # second call is the one that counts when the client left before the stream started.
            nonlocal released
            if released:
                return
            released = True
            gw.inflight -= 1
            gw.finish(rid=rid, endpoint=endpoint, key=key, user=user, requested=body.model, target=target,
                      out=out, prompt=prompt, status=status, error=error, messages=messages)
            # last: inside a cancelled scope this await is itself cancelled, and the bookkeeping is done
            with contextlib.suppress(Exception):
                await stream.aclose()

        return EventStreamResponse(sse(), {**headers, "cache-control": "no-cache"}, on_close=release)

    async def run_shadow(target: Target, prepare: Any, rid: str, endpoint: str, key: KeyInfo,
                         user: str | None, requested: str) -> None:
        """Mirror a request to a candidate; its response is discarded, only logged."""
        out, prompt, status, error = _Outcome(), None, 200, None
        shadow_rid = f"{rid}-shadow-{target.served_name}"
        try:
            prompt, req = await prepare(target)
            req = dataclasses.replace(req, request_id=shadow_rid)
            async for ev in gw.events(target, req):
                out.add(ev)
        except asyncio.CancelledError:
            status, error = 499, "cancelled at shutdown"
            raise
        except Exception as exc:
            status = exc.status if isinstance(exc, EngineError | ApiError) else 500
            error = str(exc)
        finally:
            gw.finish(rid=shadow_rid, endpoint=endpoint, key=key, user=user, requested=requested,
                      target=target, out=out, prompt=prompt, status=status, error=error, shadow=True)

    async def chat_completions(request: Request) -> Any:
        return await generate(request, chat=True)

    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    # The two generation endpoints are plain Starlette routes at the head of the table: matched
    # first, and without FastAPI's dependency solving, which they do not use (about 50 µs of CPU
    # per request, measured driving the app in-process).
    app.router.routes[:0] = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                             Route("/v1/completions", completions, methods=["POST"])]

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Any:
        from tuneforge.serve.feedback import record_feedback

        key = settings.keys.authenticate(request.headers.get("authorization"))
        return await asyncio.to_thread(record_feedback, request_log, key, await _json_body(request))

    # -- admin -------------------------------------------------------------------------------

    def admin(request: Request) -> None:
        settings.keys.authenticate(request.headers.get("authorization"), scope="admin")

    @app.get("/admin/routes")
    async def get_routes(request: Request) -> Any:
        admin(request)
        return {name: p.to_dict() for name, p in gw.router.policies().items()}

    @app.put("/admin/routes/{name}")
    async def put_route(name: str, request: Request) -> Any:
        admin(request)
        body = _validate(RoutePolicyBody, await _json_body(request))
        if name not in catalog.snapshot.versions:
            from tuneforge.serve.errors import model_not_found

            raise model_not_found(name, catalog.model_names())
        for variant in [*body.weights, *body.shadow]:
            catalog.lookup(name, variant)  # 404 naming the variant when it is neither alias nor version
        try:
            policy = Policy(body.weights, body.shadow, body.sticky)
        except ValueError as exc:
            raise bad_request(str(exc), param="weights") from None
        gw.router.set_policy(name, policy)
        if settings.routes_file is not None:
            persist(settings.routes_file, gw.router.policies())
        return {name: policy.to_dict()}

    @app.delete("/admin/routes/{name}")
    async def delete_route(name: str, request: Request) -> Any:
        admin(request)
        gw.router.set_policy(name, None)
        if settings.routes_file is not None:
            persist(settings.routes_file, gw.router.policies())
        return {"deleted": name}

    @app.post("/admin/refresh")
    async def refresh(request: Request) -> Any:
        admin(request)
        changed = await asyncio.to_thread(catalog.refresh)
        return {"changed": changed, "models": catalog.all_names()}

    return app
