"""Guardrails: rules on the canary's recent traffic, and the automatic rollback (routing + audited registry
demotion + event) made by the running server and by `tuneforge ab guard`."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import load_config
from tuneforge.errors import RegistryError
from tuneforge.monitor.guardrails import check_guardrails, read_events
from tuneforge.registry import Registry
from tuneforge.serve.requestlog import LogRecord, RequestLog, log_path
from tuneforge.serve.routing import Policy, load_persisted, persist, routes_path
from tuneforge.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import ADMIN_KEY, API_KEY, ENV, make_adapter  # noqa: E402

runner = CliRunner()


def _row(i: int, variant: str, *, t: float, status: int = 200, version: str | None = None,
         response: str = '{"ok": true}', latency: float = 0.1) -> LogRecord:
    version = version or {"production": "1", "canary": "2"}[variant]
    return LogRecord(f"r-{variant}-{version}-{i}-{t:.0f}", t, "chat", "k", None, "support", f"support@{version}",
                     version, variant, status=status, response=response if status == 200 else None,
                     latency_s=latency if status == 200 else None)


def test_rules_limits_minimum_window_version_and_relative_mode() -> None:
    ws = Workspace.from_env()
    log = RequestLog(log_path(ws))
    now = time.time()
    for i in range(40):
        log.write(_row(i, "production", t=now - 10, status=500 if i % 20 == 0 else 200))  # 5% errors
        log.write(_row(i, "canary", t=now - 10, status=500 if i % 5 == 0 else 200,  # 20% errors
                       response="not json" if i % 2 else '{"a": 1}', latency=0.2 + i / 100))
        log.write(_row(i, "canary", t=now - 7200, status=500))  # outside the one-hour window
        log.write(_row(i, "canary", t=now - 10, version="3", status=500))  # another version of the alias
    fb = [log.write_feedback(f"r-canary-2-{i}-{now - 10:.0f}", "k", 0.0) for i in range(1, 4)]
    log.close()
    assert len(fb) == 3

    cfg = load_config(None, ["guardrails.error_rate_max=0.1", "guardrails.json_valid_min=0.9",
                             "guardrails.p95_latency_s_max=1.0", "guardrails.feedback_min=0.5",
                             "guardrails.min_requests=10"])
    res = check_guardrails(cfg, ws, "support", version=2, now=now)
    rules = {r.rule: r for r in res.rules}
    assert rules["error_rate"].n == 40 and rules["error_rate"].value == pytest.approx(0.2)
    assert rules["error_rate"].breached and rules["json_valid"].breached
    assert rules["json_valid"].n == 32 and rules["json_valid"].value == pytest.approx(16 / 32)
    assert not rules["p95_latency_s"].breached and rules["p95_latency_s"].value < 1.0
    assert not rules["feedback"].evaluated and not rules["feedback"].breached  # 3 < min_requests
    assert "error_rate 0.2 > 0.1 over 40" in res.reason()

    # relative: a margin over production's value in the same window (5% errors)
    rel = load_config(None, ["guardrails.error_rate_max=0.2", "guardrails.compare=relative",
                             "guardrails.min_requests=10"])
    r = check_guardrails(rel, ws, "support", version=2, now=now).rules[0]
    assert r.production == pytest.approx(0.05) and r.threshold == pytest.approx(0.25) and not r.breached
    tight = load_config(None, ["guardrails.error_rate_max=0.1", "guardrails.compare=relative",
                               "guardrails.min_requests=10"])
    assert check_guardrails(tight, ws, "support", version=2, now=now).breached
    # not enough requests yet: nothing is decided
    patient = load_config(None, ["guardrails.error_rate_max=0.1", "guardrails.min_requests=100"])
    assert not check_guardrails(patient, ws, "support", version=2, now=now).breached


@pytest.fixture(scope="session")
def two_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("guard-adapters")
    ws = Workspace(root / "ws")
    return (make_adapter(tiny_model_dir, root / "a1", 1, ws), make_adapter(tiny_model_dir, root / "a2", 2, ws))


@pytest.fixture(scope="session")
def _mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = Workspace(tmp_path_factory.mktemp("guard-mlflow"))
    Registry(ws).client.search_registered_models()  # creating the tables takes seconds: once per session
    return ws.mlflow_db


@pytest.fixture
def canary_ws(two_adapters: tuple[Path, Path], _mlflow_db: Path) -> tuple[Workspace, Registry]:
    """support@1 = production, support@2 = canary, split 50/50 in routes.json (as `tuneforge run` deploys)."""
    ws = Workspace.from_env()
    ws.ensure(ws.root)
    shutil.copyfile(_mlflow_db, ws.mlflow_db)
    registry = Registry(ws, gated_aliases=[])
    for path in two_adapters:
        registry.register(path, "support")
    registry.promote("support", 1, "production", reason="test")
    registry.promote("support", 2, "canary", reason="test: deploy canary")
    persist(routes_path(ws.root), {"support": Policy({"production": 50.0, "canary": 50.0})})
    return ws, registry


def _demotion(registry: Registry) -> Any:
    entries = [e for e in registry.history("support", "canary") if e.action == "demote"]
    assert len(entries) == 1
    return entries[0]


def test_the_server_rolls_back_a_canary_that_answers_invalid_json(
        canary_ws: tuple[Workspace, Registry], tiny_model_dir: Path) -> None:
    from tuneforge.serve.server import ServerThread, build_app

    ws, registry = canary_ws
    cfg = load_config(None, [f"model.base={tiny_model_dir}", "model.dtype=float32", "serve.registry_poll_s=1",
                             "serve.shutdown_timeout_s=5", "guardrails.json_valid_min=0.9",
                             "guardrails.min_requests=4", "guardrails.check_every_s=0.3"])
    app_ = build_app(cfg, ws, environ=ENV)
    with ServerThread(app_, cfg) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
        gw = srv.app.state.gateway
        seen: dict[str, int] = {"production": 0, "canary": 0}
        i = 0
        while seen["canary"] < 4 and i < 60:  # the random tiny model's replies are not JSON
            raw = client.chat.completions.with_raw_response.create(
                model="support", messages=[{"role": "user", "content": "Reply in JSON."}], max_tokens=4,
                user=f"user-{i}")
            seen[raw.headers["x-tuneforge-variant"]] += 1
            i += 1
        assert seen["canary"] >= 4 and seen["production"] > 0
        deadline = time.monotonic() + 30
        while gw.router.policy("support").weights.get("canary") and time.monotonic() < deadline:
            time.sleep(0.1)
        # routing first: all of support's traffic goes to production, on the router and in routes.json
        assert gw.router.policy("support").weights == {"production": 50.0}
        assert load_persisted(routes_path(ws.root))["support"].weights == {"production": 50.0}
        admin = httpx.get(srv.url + "/admin/routes", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
        assert admin["support"]["weights"] == {"production": 50.0}
        # then the registry: the canary alias is gone, audited with the reason
        assert "canary" not in registry.aliases("support")
        entry = _demotion(registry)
        assert entry.from_version == 2 and entry.to_version is None
        assert "json_valid" in entry.reason and "< 0.9" in entry.reason
        assert entry.evidence["guardrails"][0]["rule"] == "json_valid"
        assert entry.evidence["guardrails"][0]["n"] >= 4 and registry.verify_history() == []
        (event,) = read_events(ws)
        assert event.model == "support" and event.version == 2 and event.audit_id == entry.id
        # requests keep succeeding, all on production, including users the canary had
        for j in range(12):
            raw = client.chat.completions.with_raw_response.create(
                model="support", messages=[{"role": "user", "content": "again"}], max_tokens=2, user=f"user-{j}")
            assert raw.headers["x-tuneforge-variant"] == "production" and raw.parse().model == "support@1"
        deadline = time.monotonic() + 10
        while "support@canary" in gw.catalog.all_names() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "support@canary" not in gw.catalog.all_names()
        time.sleep(1)  # further checks find no canary share and do nothing
        assert len(read_events(ws)) == 1


def test_ab_guard_cli_rolls_back_from_outside_the_server(canary_ws: tuple[Workspace, Registry]) -> None:
    from tuneforge.serve.server import free_port

    ws, registry = canary_ws
    log = RequestLog(log_path(ws))
    now = time.time()
    for i in range(30):
        log.write(_row(i, "production", t=now - 5))
        log.write(_row(i, "canary", t=now - 5, status=500 if i % 3 == 0 else 200))
    log.close()
    nobody = f"http://127.0.0.1:{free_port()}"  # no server running: routes.json is changed for its next start

    res = runner.invoke(app, ["ab", "guard", "support", "--url", nobody])
    assert res.exit_code != 0 and "no guardrail is configured" in str(res.exception)

    lenient = ["--set", "guardrails.error_rate_max=0.5", "--set", "guardrails.min_requests=10"]
    res = runner.invoke(app, ["ab", "guard", "support", "--url", nobody, *lenient])
    assert res.exit_code == 0, res.output
    assert "ok" in res.output and "canary" in registry.aliases("support")

    strict = ["--set", "guardrails.error_rate_max=0.1", "--set", "guardrails.min_requests=10"]
    res = runner.invoke(app, ["ab", "guard", "support", "--url", nobody, *strict])
    assert res.exit_code == 1, res.output
    assert "BREACH" in res.output and "rolled back" in res.output
    assert "canary" not in registry.aliases("support") and registry.aliases("support")["production"] == 1
    entry = _demotion(registry)
    assert "error_rate 0.333 > 0.1 over 30" in entry.reason
    assert load_persisted(routes_path(ws.root))["support"].weights == {"production": 50.0}
    assert json.loads((ws.root / "monitor" / "guardrails.jsonl").read_text())["audit_id"] == entry.id
    # once rolled back there is no canary left to check
    res = runner.invoke(app, ["ab", "guard", "support", "--url", nobody, *strict])
    assert res.exit_code == 0 and "alias not set" in res.output
    assert registry.demote("support", "canary", "again") is None  # nothing left to demote
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.demote("support", "production", " ")
    assert registry.aliases("support")["production"] == 1
