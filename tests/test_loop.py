"""The whole loop on the tiny model, through a real server: production traffic shifts → `monitor`
detects drift → retrain on the logged, positively rated requests → gates → the new version enters as a
canary (the running server picks the policy up) → users dislike it → the guardrail rolls it back."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tuneforge.config import load_config
from tuneforge.monitor.guardrails import read_events
from tuneforge.monitor.monitor import run_monitor
from tuneforge.pipeline import run_pipeline
from tuneforge.registry import Registry
from tuneforge.serve.requestlog import log_path, read_feedback, read_log
from tuneforge.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent / "serve"))
from serve_helpers import API_KEY, ENV  # noqa: E402

SYSTEM = "Reply with a JSON object with key category."
CATS = ["billing", "bug", "account"]


def _ticket(i: int) -> str:
    return f"Ticket {i}: my {CATS[i % 3]} issue number {i * 13} again"


def _code_question(i: int) -> str:
    topics = ["reverse a list", "read a CSV file", "sort a dictionary by value", "start a thread",
              "parse JSON", "open a socket", "write a unit test", "format a date"]
    langs = ["Python", "Rust", "Go", "TypeScript"]
    return f"How do I {topics[i % len(topics)]} in {langs[i % len(langs)]} without extra libraries? ({i})"


@pytest.fixture
def overrides(tmp_path: Path, tiny_model_dir: Path) -> list[str]:
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": _ticket(i)},
        {"role": "assistant", "content": json.dumps({"category": CATS[i % 3]})}]}) + "\n" for i in range(40)))
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _ticket(i)}],
        "expected": json.dumps({"category": CATS[i % 3]})}) + "\n" for i in range(40, 46)))
    return [
        f"model.base={tiny_model_dir}", "model.dtype=float32", f"data.inputs=[{{path: {data}}}]",
        "data.split.seed=1",
        # No warmup: the one step must change the adapter, or the retrained version would be v1 again.
        "train.max_steps=1", "train.warmup_ratio=0", "train.batch_size=4", "train.precision=fp32",
        "train.save_every_steps=null", "tracking.enabled=false",
        f"eval.suites=[{{name: golden, path: {golden}}}]", "eval.max_new_tokens=4", "eval.batch_size=8",
        "eval.dtype=float32", "eval.bootstrap_resamples=100",
        # The random tiny model never writes JSON, so this is the gate it can pass.
        "eval.gates=[json_valid <= 0.5]", "pipeline.name=support",
        "monitor.window=40", "monitor.min_samples=10", "monitor.max_samples=40", "monitor.permutations=200",
        "monitor.on_drift=retrain", "monitor.retrain.min_rows=5", "monitor.retrain.canary=50",
        "serve.registry_poll_s=0.3", "serve.shutdown_timeout_s=5",
        "guardrails.feedback_min=0.5", "guardrails.min_requests=6", "guardrails.check_every_s=0.3",
    ]


def _wait(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_drift_retrain_canary_and_guardrail_rollback_end_to_end(overrides: list[str]) -> None:
    from tuneforge.serve.server import ServerThread, build_app

    cfg = load_config(None, overrides)
    first = run_pipeline(cfg)
    assert first.version == "support@1"
    ws = Workspace.from_env()
    registry = Registry.from_config(cfg, ws)
    registry.promote("support", 1, "production", reason="v1 passed its gates")

    with ServerThread(build_app(cfg, ws, environ=ENV), cfg) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
        auth = {"authorization": f"Bearer {API_KEY}"}

        def ask(question: str, user: str) -> tuple[str, str]:
            raw = client.chat.completions.with_raw_response.create(
                model="support", max_tokens=4, user=user,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
            assert raw.status_code == 200
            return raw.headers["x-request-id"], raw.headers["x-tuneforge-variant"]

        def rate(rid: str, thumbs: str) -> None:
            r = httpx.post(srv.url + "/v1/feedback", headers=auth, json={"request_id": rid, "thumbs": thumbs})
            assert r.status_code == 200, r.text

        # 1. Production traffic drifts from tickets to programming questions; users like the answers.
        for i in range(24):
            rid, variant = ask(_code_question(i), f"user-{i}")
            assert variant == "production"
            rate(rid, "up")
        rows = list(read_log(log_path(ws), model="support"))
        assert len(rows) == 24 and all(r["messages"][-1]["content"].startswith("How do I") for r in rows)

        # 2. monitor sees the drift and retrains; gates pass; v2 enters as the canary, production stays.
        result = run_monitor(cfg, ws)
        assert result.check("prompt_embedding").alarm
        assert result.retrain is not None and result.retrain["status"] == "ran", result.retrain
        assert result.retrain["version"] == "support@2" and result.retrain["logged_rows"] == 24
        assert registry.aliases("support") == {"production": 1, "staging": 2, "canary": 2}

        # 3. The running server picks the canary policy up from routes.json without a restart.
        gw = srv.app.state.gateway
        _wait(lambda: gw.router.policy("support") is not None
              and gw.router.policy("support").weights.get("canary") == 50.0, "the canary policy")
        _wait(lambda: "support@canary" in gw.catalog.all_names(), "the canary alias in the catalog")

        # 4. Users dislike the candidate's answers: the feedback guardrail rolls it back by itself.
        seen = {"production": 0, "canary": 0}
        for i in range(200):
            if seen["canary"] >= 8 or not gw.router.policy("support").weights.get("canary"):
                break
            rid, variant = ask(_ticket(100 + i), f"later-{i}")
            seen[variant] += 1
            rate(rid, "down" if variant == "canary" else "up")
        assert seen["canary"] >= 6 and seen["production"] > 0
        _wait(lambda: not gw.router.policy("support").weights.get("canary"), "the guardrail rollback")
        # routing moves first, then the registry alias and the event record follow (enforce's order)
        _wait(lambda: len(read_events(ws)) == 1, "the recorded guardrail event")

        assert "canary" not in registry.aliases("support")
        assert registry.aliases("support")["production"] == 1
        (demotion,) = [e for e in registry.history("support", "canary") if e.action == "demote"]
        assert demotion.from_version == 2 and "feedback" in demotion.reason
        assert registry.verify_history() == []
        (event,) = read_events(ws)
        assert event.version == 2 and event.audit_id == demotion.id
        routes = json.loads((ws.root / "serve" / "routes.json").read_text())
        assert "canary" not in routes["support"]["weights"]

        # 5. Traffic keeps flowing, all on production, including the users the canary had.
        for i in range(6):
            rid, variant = ask(_ticket(300 + i), f"later-{i}")
            assert variant == "production"
        canary_rids = {r["request_id"] for r in read_log(log_path(ws), model="support") if r["variant"] == "canary"}
        feedback = read_feedback(log_path(ws))
        assert canary_rids and all(feedback[rid].score == 0.0 for rid in canary_rids)
