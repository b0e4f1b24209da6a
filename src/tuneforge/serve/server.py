"""Build a gateway from tuneforge.yaml and run it with uvicorn.

``build_app`` wires config to engine, catalog, keys, router and request log; ``run`` serves in the
foreground (Ctrl-C / SIGTERM: stop accepting, finish in-flight requests within
``serve.shutdown_timeout_s``, stop the engine, exit); ``ServerThread`` runs the same server in a
background thread for tests and notebooks.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.workspace import Workspace

LOCAL_ONLY = "127.0.0.1"


class ServeError(TuneforgeError):
    """The gateway cannot start as configured."""


@dataclass(frozen=True)
class ServeInfo:
    url: str
    host: str
    port: int
    auth: bool
    keys: int
    engine: str
    models: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_engine(kind: str, base: str, ws: Workspace, cfg: Any) -> Any:
    if kind == "local":
        from tuneforge.serve.engines.local import LocalEngine

        return LocalEngine(base, workspace=ws, dtype=cfg.model.dtype, max_batch=cfg.serve.max_batch,
                           max_loaded_adapters=cfg.serve.max_loaded_adapters,
                           drain_timeout_s=cfg.serve.shutdown_timeout_s)
    if kind == "vllm":
        try:
            from tuneforge.serve.engines.vllm import VllmEngine  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ServeError(f"the vllm engine is not available here ({exc})", where="serve.engine",
                             fix="run `make vllm-env` (or point serve.vllm.python at a vLLM install), or use --engine local") from None
        return VllmEngine(base, workspace=ws, cfg=cfg)
    raise ServeError(f"unknown engine '{kind}'", where="serve.engine", fix="use local or vllm")


def make_catalog(cfg: Any, ws: Workspace, base_name: str, base_ref: str) -> Any:
    from tuneforge.serve.catalog import Catalog, MultiSource, RegistrySource, StaticSource

    sources: list[Any] = []
    from tuneforge.registry import Registry

    registry = Registry.from_config(cfg, ws) if hasattr(cfg, "registry") else Registry(ws, cfg.tracking.uri)
    sources.append(RegistrySource(registry, cfg.serve.models))
    if cfg.serve.adapters:
        sources.append(StaticSource({n: Path(p).expanduser() for n, p in cfg.serve.adapters.items()}))
    return Catalog(base_name, base_ref, MultiSource(sources) if sources else None)


def build_app(cfg: Any, ws: Workspace | None = None, *, engine: Any = None, engine_kind: str | None = None,
              base: str | None = None, auth: bool | None = None, environ: dict[str, str] | None = None) -> Any:
    """The FastAPI app for ``cfg`` (``engine`` overrides the configured one, e.g. in tests)."""
    from tuneforge.models import resolve_model
    from tuneforge.serve.app import ServeSettings, create_app
    from tuneforge.serve.auth import KeyStore
    from tuneforge.serve.requestlog import RequestLog
    from tuneforge.serve.routing import Policy, Router, load_persisted, routes_path

    ws = ws or Workspace.from_env()
    s = cfg.serve
    if auth is not None:
        cfg = cfg.model_copy(update={"serve": s.model_copy(update={"auth": auth})})
        s = cfg.serve
    base_ref = base or cfg.model.base
    resolved = resolve_model(base_ref, ws, revision=cfg.model.revision)
    keys = KeyStore.from_config(s, environ)
    if s.auth and len(keys) == 0:
        raise ServeError(
            "auth is on but no API key is configured", where="serve.keys / $TUNEFORGE_API_KEY",
            fix="set TUNEFORGE_API_KEY (and TUNEFORGE_ADMIN_KEY for admin), add serve.keys with "
                "`tuneforge serve hash-key`, or pass --no-auth for local use",
        )
    catalog = make_catalog(cfg, ws, resolved.name, base_ref)
    policies = {}
    for name, route in s.routes.items():
        try:
            policies[name] = Policy(dict(route.weights), dict(route.shadow), route.sticky)
        except ValueError as exc:
            raise ServeError(str(exc), where=f"serve.routes.{name}", fix="use non-negative weights") from None
    routes_file = routes_path(ws.root)
    policies.update(load_persisted(routes_file))  # runtime changes (`tuneforge serve route`) win
    request_log = RequestLog.open(ws, s.request_log, cfg.data.pii.entities) if s.request_log.enabled else None
    settings = ServeSettings(
        keys=keys, base_dir=resolved.path, max_concurrent_requests=s.max_concurrent_requests,
        price_per_1k_prompt_tokens=s.price_per_1k_prompt_tokens,
        price_per_1k_completion_tokens=s.price_per_1k_completion_tokens,
        registry_poll_s=s.registry_poll_s, shutdown_timeout_s=s.shutdown_timeout_s, routes_file=routes_file,
        guardian=_guardian(cfg, ws),
    )
    engine = engine or make_engine(engine_kind or s.engine, base_ref, ws, cfg)
    return create_app(settings, engine, catalog, router=Router(policies), request_log=request_log)


def _guardian(cfg: Any, ws: Workspace) -> Any:
    """The canary guardrail check (tuneforge.monitor.guardrails), when guardrails are configured."""
    if getattr(cfg, "guardrails", None) is None:
        return None
    from tuneforge.monitor.guardrails import Guardian

    return Guardian.from_config(cfg, ws)


def bind_host(cfg: Any, host: str | None, auth: bool) -> tuple[str, list[str]]:
    chosen = host or cfg.serve.host
    if not auth and chosen != LOCAL_ONLY:
        return LOCAL_ONLY, [f"auth is off: binding to {LOCAL_ONLY} only (not {chosen})"]
    if not auth:
        return LOCAL_ONLY, [f"auth is off: binding to {LOCAL_ONLY} only"]
    return chosen, []


def free_port(host: str = LOCAL_ONLY) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _uvicorn_config(app: Any, host: str, port: int, cfg: Any) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=int(cfg.serve.shutdown_timeout_s) or None, lifespan="on")


def run(cfg: Any, *, host: str | None = None, port: int | None = None, engine_kind: str | None = None,
        base: str | None = None, auth: bool | None = None, on_ready: Any = None) -> None:
    """Serve in the foreground until interrupted."""
    import uvicorn

    use_auth = cfg.serve.auth if auth is None else auth
    bound, notes = bind_host(cfg, host, use_auth)
    # Bound before the model loads and before "serving ..." is announced: a port in use is an error at
    # once, and port 0 becomes the port actually listened on.
    sock = reserve_port(bound, cfg.serve.port if port is None else port)
    chosen_port = int(sock.getsockname()[1])
    try:
        app = build_app(cfg, engine_kind=engine_kind, base=base, auth=use_auth)
        if on_ready is not None:
            gw = app.state.gateway
            on_ready(ServeInfo(f"http://{bound}:{chosen_port}/v1", bound, chosen_port, use_auth,
                               len(gw.settings.keys), engine_kind or cfg.serve.engine, gw.catalog.all_names(), notes))
        # uvicorn re-raises Ctrl-C once its graceful shutdown has completed; that is a clean exit here.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(_uvicorn_config(app, bound, chosen_port, cfg)).run(sockets=[sock])
    finally:
        sock.close()


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a clear error when that address cannot be had.

    Bound but not yet listening: until uvicorn has started (the engine loads first), a client is
    refused at once instead of waiting in the accept queue of a server that is not answering yet.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", where="--host / --port",
                         fix="stop the process using that port, or choose another with --port "
                         "(0 = any free port); --host must be an address of this machine") from None
    return sock


class ServerThread:
    """The gateway on 127.0.0.1 in a background thread; ``stop()`` shuts it down gracefully."""

    def __init__(self, app: Any, cfg: Any, *, port: int | None = None) -> None:
        import uvicorn

        self.app = app
        self.port = port or free_port()
        self.server = uvicorn.Server(_uvicorn_config(app, LOCAL_ONLY, self.port, cfg))
        self._thread = threading.Thread(target=self.server.run, name="tuneforge-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOCAL_ONLY}:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during startup (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout}s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
