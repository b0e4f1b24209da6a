"""`tuneforge serve` / `serve route` / `logs` commands, and graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from serve_helpers import ADMIN_KEY, API_KEY
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.serve.requestlog import LogRecord, RequestLog, log_path
from tuneforge.workspace import Workspace

runner = CliRunner()


def test_logs_lists_and_exports_jsonl(tmp_path: Path) -> None:
    log = RequestLog(log_path(Workspace.from_env()))
    for i in range(5):
        log.write(LogRecord(f"req-{i}", 1000.0 + i, "chat", "env", "u1", "support", f"support@{1 + i % 2}", "1",
                            "production", prompt="p", response="r", prompt_tokens=4, completion_tokens=2))
    log.close()
    r = runner.invoke(app, ["logs", "--limit", "3"])
    assert r.exit_code == 0, r.output
    assert "req-4" in r.output and "req-2" in r.output and "req-1" not in r.output
    out = tmp_path / "log.jsonl"
    r = runner.invoke(app, ["logs", "--limit", "0", "--model", "support@2", "--export", str(out)])
    assert r.exit_code == 0 and "wrote 2" in r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["request_id"] for x in rows] == ["req-1", "req-3"] and rows[0]["key_id"] == "env"


def test_logs_export_never_overwrites_a_file(tmp_path: Path) -> None:
    log = RequestLog(log_path(Workspace.from_env()))
    log.write(LogRecord("req-0", 1000.0, "chat", "env", "u1", "support", "support@1", "1", "production",
                        prompt="p", response="r", prompt_tokens=4, completion_tokens=2))
    log.close()
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"kept": true}\n')
    r = runner.invoke(app, ["logs", "--export", str(mine)])
    assert r.exit_code != 0 and "would be overwritten" in str(r.exception)
    assert mine.read_text() == '{"kept": true}\n'


def test_serve_on_a_port_in_use_or_out_of_range_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    env = {**os.environ, "TUNEFORGE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "tuneforge.cli", "serve", "--no-auth", "--port", str(port)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in p.stderr and "--port" in p.stderr
    assert "serving" not in p.stdout  # nothing announced before the socket is ours
    r = runner.invoke(app, ["serve", "--no-auth", "--port", "70000"])
    assert r.exit_code == 2 and "65535" in r.output  # typer: the valid range, before anything starts


def test_logs_without_a_log_says_how_to_get_one() -> None:
    r = runner.invoke(app, ["logs"])
    assert r.exit_code != 0 and "no request log" in str(r.exception)


def test_serve_route_applies_on_the_running_server_and_persists(start_server: Any, registered: Any,
                                                                monkeypatch: Any) -> None:
    srv = start_server()
    monkeypatch.setenv("TUNEFORGE_ADMIN_KEY", ADMIN_KEY)
    r = runner.invoke(app, ["serve", "route", "support", "production=90", "canary=10", "--shadow", "canary=5",
                            "--url", srv.url])
    assert r.exit_code == 0, r.output
    got = httpx.get(srv.url + "/admin/routes", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert got["support"] == {"weights": {"production": 90.0, "canary": 10.0}, "shadow": {"canary": 5.0},
                              "sticky": True}
    saved = json.loads((Workspace.from_env().root / "serve" / "routes.json").read_text())
    assert saved["support"]["weights"] == {"canary": 10.0, "production": 90.0}
    # the server persisted it too, so a restart keeps it
    server_saved = json.loads((srv.app.state.gateway.settings.routes_file).read_text())
    assert server_saved["support"]["shadow"] == {"canary": 5.0}
    monkeypatch.setenv("TUNEFORGE_ADMIN_KEY", API_KEY)  # not an admin key
    r = runner.invoke(app, ["serve", "route", "support", "production=100", "--url", srv.url])
    assert r.exit_code != 0 and "403" in str(r.exception)
    r = runner.invoke(app, ["serve", "route", "support", "production", "--url", srv.url])
    assert r.exit_code != 0 and "VARIANT=NUMBER" in str(r.exception)
    httpx.delete(srv.url + "/admin/routes/support", headers={"authorization": f"Bearer {ADMIN_KEY}"})


def test_hash_key_prints_a_key_and_its_digest() -> None:
    from tuneforge.serve.auth import hash_key

    r = runner.invoke(app, ["serve", "hash-key", "my-key"])
    assert r.exit_code == 0 and hash_key("my-key") in r.output


def test_graceful_shutdown_finishes_in_flight_requests(start_server: Any, registered: Any) -> None:
    srv = start_server("serve.shutdown_timeout_s=120")
    gw = srv.app.state.gateway
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
    result: dict[str, Any] = {}

    def call() -> None:
        result["resp"] = client.completions.create(model="support@1", prompt="x", max_tokens=40, temperature=0)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 30
    while gw.inflight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gw.inflight == 1
    srv.stop()
    t.join(60)
    assert result["resp"].usage.completion_tokens == 40
    assert not gw.engine.ready()  # the engine stopped after the request finished
    try:
        httpx.get(srv.url + "/healthz", timeout=2)
        raise AssertionError("the server still accepts connections")
    except httpx.ConnectError:
        pass


def test_serve_command_no_auth_binds_localhost_and_stops_on_sigint(tiny_model_dir: Path, serve_ws: Workspace,
                                                                   registered: Any) -> None:
    # The session workspace already holds the MLflow store, so the registry opens it without migrating.
    env = {**os.environ, "TUNEFORGE_HOME": str(serve_ws.root), "COLUMNS": "200"}
    env.pop("TUNEFORGE_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "serve", "--no-auth", "--host", "0.0.0.0", "--port", "0",
         "--model", str(tiny_model_dir), "--set", "model.dtype=float32"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        url = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving "):
                url = line.split()[1]
            if line.startswith("models: "):
                break
        assert url, "".join(lines)
        text = "".join(lines)
        assert url.startswith("http://127.0.0.1:") and "auth: off" in text and "binding to 127.0.0.1" in text
        base = url.removesuffix("/v1")
        while time.monotonic() < deadline:  # the URL is printed before the engine has loaded
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            time.sleep(0.1)
        resp = httpx.post(url + "/completions", json={"model": tiny_model_dir.name, "prompt": "hi",
                                                      "max_tokens": 2})
        assert resp.status_code == 200 and resp.json()["model"] == tiny_model_dir.name
        assert "support@production" in text  # registered models are served too
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest
