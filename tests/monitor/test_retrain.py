"""The retrain trigger on the tiny model: drifted traffic → curated logged rows → pipeline → canary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.config import load_config
from tuneforge.errors import MonitorError
from tuneforge.monitor.monitor import load_history, run_monitor
from tuneforge.monitor.retrain import curate_logged, retrain
from tuneforge.pipeline import GateFailed, run_pipeline
from tuneforge.registry import Registry
from tuneforge.serve.requestlog import LogRecord, RequestLog, log_path
from tuneforge.workspace import Workspace

SYSTEM = "Reply with a JSON object with key category."
CATS = ["billing", "bug", "account"]


def _ticket(i: int) -> str:
    return f"Ticket {i}: my {CATS[i % 3]} issue number {i * 13} again"


def _rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _ticket(i)},
                          {"role": "assistant", "content": json.dumps({"category": CATS[i % 3]})}]}
            for i in range(n)]


@pytest.fixture
def overrides(tmp_path: Path, tiny_model_dir: Path) -> list[str]:
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(40)))
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"messages": r["messages"][:2], "expected": r["messages"][2]["content"]})
                              + "\n" for r in _rows(46)[40:]))
    return [
        f"model.base={tiny_model_dir}", f"data.inputs=[{{path: {data}}}]", "data.split.seed=1",
        f"data.decontaminate.eval_sets=[{golden}]", "data.decontaminate.ngram=5",
        # No warmup: the single step must change the adapter, or v2 would be v1's content again.
        "train.max_steps=1", "train.warmup_ratio=0", "train.batch_size=4", "train.precision=fp32", "train.save_every_steps=null",
        "tracking.enabled=false",
        f"eval.suites=[{{name: golden, path: {golden}}}]", "eval.max_new_tokens=4", "eval.batch_size=8",
        "eval.dtype=float32", "eval.bootstrap_resamples=100", "eval.gates=[json_valid <= 0.5]",
        "pipeline.name=support",
        "monitor.window=30", "monitor.min_samples=10", "monitor.max_samples=40", "monitor.permutations=200",
        "monitor.retrain.min_rows=5", "monitor.retrain.canary=20",
    ]


def _log(questions: list[str], answers: list[str], version: str = "1") -> list[str]:
    log = RequestLog(log_path(Workspace.from_env()))
    ids = []
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        rid = f"req-{i}"
        turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
        log.write(LogRecord(request_id=rid, time=1000.0 + i, endpoint="chat", key_id="k", user_hash=None,
                            model_requested="support", model_served=f"support@{version}", version=version,
                            variant="production", prompt="(rendered)", response=a, messages=json.dumps(turns)))
        ids.append(rid)
    # A shadow request and a failed one are never training data.
    log.write(LogRecord(request_id="req-shadow", time=2000.0, endpoint="chat", key_id="k", user_hash=None,
                        model_requested="support", model_served="support@2", version="2", variant="candidate",
                        shadow=True, prompt="(rendered)", response='{"category": "bug"}',
                        messages=json.dumps([{"role": "user", "content": "shadow question"}])))
    log.write(LogRecord(request_id="req-error", time=2001.0, endpoint="chat", key_id="k", user_hash=None,
                        model_requested="support", model_served="support@1", version="1", variant="production",
                        status=500, error="engine died", prompt="(rendered)",
                        messages=json.dumps([{"role": "user", "content": "failed question"}])))
    log.close()
    return ids


def _code_questions(n: int) -> list[str]:
    topics = ["reverse a list", "read a CSV file", "sort a dictionary by value", "start a thread",
              "parse JSON", "open a socket", "write a unit test", "format a date"]
    langs = ["Python", "Rust", "Go", "TypeScript"]
    return [f"How do I {topics[i % len(topics)]} in {langs[i % len(langs)]} without extra libraries? ({i})"
            for i in range(n)]


def test_drift_triggers_a_retrain_that_enters_as_canary_and_leaves_production(overrides: list[str]) -> None:
    cfg = load_config(None, [*overrides, "monitor.on_drift=retrain"])
    first = run_pipeline(cfg)
    ws = Workspace.from_env()
    registry = Registry.from_config(cfg, ws)
    registry.promote("support", 1, "production", reason="v1 passed its gates")
    v1_dataset = first.dataset

    questions = _code_questions(24)
    questions[3] = "Please email the fix to jane.doe@example.com, my Python build is broken"
    questions[5] = _ticket(42)  # a golden-set prompt: decontamination must keep it out of training
    answers = [json.dumps({"category": "bug"})] * len(questions)
    ids = _log(questions, answers)
    log = RequestLog(log_path(ws))
    rated_down = set(ids[16:])
    for rid in ids:  # users liked the first 16 answers and disliked the rest
        log.write_feedback(rid, "k", 0.0 if rid in rated_down else 1.0)
    # ... and one of them sent the answer they wanted instead: that row trains on the correction.
    corrected = ids[20]
    rated_down.discard(corrected)
    correction = json.dumps({"category": "account", "note": "corrected by the user"})
    log.write_feedback(corrected, "k", 0.0, correction=correction)
    log.close()

    result = run_monitor(cfg, ws)
    assert result.version == "support@1" and result.reference["source"] == v1_dataset
    assert result.check("prompt_embedding").alarm
    # The validity baseline is the served version's attached eval report (the tiny model writes no JSON).
    assert result.baseline.startswith("eval report of support@1")
    assert result.check("json_valid").baseline == 0.0 and not result.check("json_valid").alarm
    assert result.retrain is not None and result.retrain["status"] == "ran", result.retrain
    assert result.retrain["version"] == "support@2" and result.retrain["logged_rows"] == 17
    assert result.retrain["feedback_filtered"] is True

    # The new version is the canary at the configured share; production stays on v1.
    assert registry.aliases("support") == {"production": 1, "staging": 2, "canary": 2}
    routes = json.loads((ws.root / "serve" / "routes.json").read_text())
    assert routes["support"]["weights"] == {"production": 80.0, "canary": 20.0}

    # Training data of v2: the original rows plus the positively rated requests, curated by the data stage.
    dataset = Path(result.retrain["dataset"])
    kept = "".join((dataset / f"{s}.jsonl").read_text() for s in ("train", "val", "test"))
    rejected = (dataset / "rejected.jsonl").read_text()
    assert _ticket(0) in kept and questions[0] in kept
    assert not any(questions[int(rid.split("-")[1])] in kept for rid in rated_down)
    assert "shadow question" not in kept and "failed question" not in kept
    assert "jane.doe@example.com" not in kept and "<EMAIL>" in kept
    assert _ticket(42) not in kept and "contaminated" in rejected
    logged = [json.loads(line) for line in Path(result.retrain["logged_file"]).read_text().splitlines()]
    assert len(logged) == 17
    answer_of = {m["messages"][-2]["content"]: m["messages"][-1]["content"] for m in logged}
    assert answer_of[questions[0]] == answers[0] and answer_of[questions[20]] == correction
    assert "corrected by the user" in kept
    history = load_history(ws, "support")
    assert history[-1]["retrain"]["version"] == "support@2" and history[-1]["alarm"] is True

    # The alarm persists (the canary serves little traffic yet), but a second retrain waits for the cooldown.
    again = run_monitor(cfg, ws)
    assert again.alarm and again.retrain is not None and again.retrain["status"] == "cooldown"
    assert [v.version for v in registry.versions("support")] == [1, 2]
    assert "retrain triggers" in (ws.root / "monitor" / "report.html").read_text()


def test_failed_gate_registers_nothing_and_too_little_traffic_is_refused(overrides: list[str]) -> None:
    cfg = load_config(None, overrides)
    run_pipeline(cfg)
    ws = Workspace.from_env()
    _log(_code_questions(3), ['{"category": "bug"}'] * 3)
    with pytest.raises(MonitorError, match="too few logged rows"):
        retrain(cfg, ws)

    _log(_code_questions(12), ['{"category": "bug"}'] * 12)
    assert len(curate_logged(cfg, ws, "support").rows) == 3 + 12  # unrated: every answered request counts
    strict = load_config(None, [*overrides, "eval.gates=[json_valid >= 0.9]"])
    with pytest.raises(GateFailed):
        retrain(strict, ws)
    registry = Registry.from_config(cfg, ws)
    assert [v.version for v in registry.versions("support")] == [1]
    assert "canary" not in registry.aliases("support")
    assert not (ws.root / "serve" / "routes.json").exists()
