"""Fixtures for gateway tests: a session workspace with two tiny adapters registered as
``support`` v1 (alias production) and v2 (alias canary), and servers running the real LocalEngine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import ENV, make_adapter

from tuneforge.config import TuneforgeConfig, load_config
from tuneforge.workspace import Workspace


@pytest.fixture(scope="session")
def serve_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.from_env(tmp_path_factory.mktemp("serve-home"))


@pytest.fixture(scope="session")
def make_cfg(tiny_model_dir: Path) -> Callable[..., TuneforgeConfig]:
    def make(*overrides: str) -> TuneforgeConfig:
        return load_config(None, [f"model.base={tiny_model_dir}", "model.dtype=float32",
                                  "serve.registry_poll_s=0.2", "serve.shutdown_timeout_s=5", *overrides])

    return make


@pytest.fixture(scope="session")
def registered(serve_ws: Workspace, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two tiny adapters registered as support@1 (alias production) and support@2 (alias canary)."""
    from tuneforge.registry import Registry

    registry = Registry(serve_ws, gated_aliases=[])
    paths = {}
    for seed in (1, 2):
        path = make_adapter(tiny_model_dir, tmp_path_factory.mktemp(f"adapter-{seed}") / "a", seed, serve_ws)
        mv = registry.register(path, "support")
        paths[mv.version] = path
    registry.promote("support", 1, "production", force=True, reason="test")
    registry.promote("support", 2, "canary", force=True, reason="test")
    return {"registry": registry, "paths": paths}


@pytest.fixture
def start_server(serve_ws: Workspace, make_cfg: Callable[..., TuneforgeConfig],
                 registered: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    """Start a gateway (real LocalEngine on the tiny model, the registered support versions) on
    127.0.0.1; stopped at teardown."""
    from tuneforge.serve.server import ServerThread, build_app

    running: list[ServerThread] = []

    def start(*overrides: str, engine: Any = None, environ: dict[str, str] | None = None,
              ws: Workspace | None = None) -> ServerThread:
        cfg = make_cfg(*overrides)
        app = build_app(cfg, ws or serve_ws, engine=engine, environ=ENV if environ is None else environ)
        server = ServerThread(app, cfg).start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()
