"""`tuneforge monitor` on real text: request-log rows written by RequestLog, embedded with the bundled MiniLM."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import load_config
from tuneforge.monitor.monitor import load_history, read_window, run_monitor, watch
from tuneforge.serve.requestlog import LogRecord, RequestLog, log_path
from tuneforge.workspace import Workspace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_tickets"
runner = CliRunner()


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart dataset, generated as `make demo` does (its data/ is not in the repository)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("support_tickets_generate", EXAMPLE / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    out = tmp_path_factory.mktemp("support-tickets")
    gen.generate(out)
    return out


def _read(example: Path, name: str) -> list[dict]:
    """The example's well-formed chat rows (tickets.jsonl also holds broken rows for the data stage)."""
    rows = []
    for line in (example / name).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        msgs = row.get("messages") if isinstance(row, dict) else None
        if isinstance(msgs, list) and msgs and all(isinstance(m.get("content"), str) for m in msgs) \
                and msgs[-1]["role"] == "assistant" and any(m["role"] == "user" for m in msgs):
            rows.append(row)
    return rows


@pytest.fixture
def reference(example: Path, tmp_path: Path) -> Path:
    """300 support tickets as the training data the monitored model learnt from."""
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _read(example, "tickets.jsonl")[:300]))
    return path


def _overrides(example: Path, reference: Path, *extra: str) -> list[str]:
    # The golden suite's schema turns on the schema_valid check (its baseline: the reference answers here).
    suite = f"eval.suites=[{{name: golden, path: {example / 'golden.jsonl'}, schema: {example / 'schema.json'}}}]"
    return ["pipeline.name=support", suite, f"monitor.reference={reference}", "monitor.window=60",
            "monitor.min_samples=30", "monitor.max_samples=100", "monitor.permutations=200", *extra]


def log_requests(rows: list[dict], *, responses: list[str] | None = None, model: str = "support",
                 start: float | None = None, version: str = "1", store_text: bool = True) -> list[str]:
    """Write one logged chat request per conversation row (prompt turns as sent, the answer as served)."""
    log = RequestLog(log_path(Workspace.from_env()), store_text=store_text)
    t0 = start if start is not None else time.time() - len(rows)
    ids = []
    for i, row in enumerate(rows):
        turns = [m for m in row["messages"] if m["role"] != "assistant"]
        answer = responses[i] if responses else row["messages"][-1]["content"]
        rid = f"req-{model}-{t0:.0f}-{i}"
        log.write(LogRecord(
            request_id=rid, time=t0 + i, endpoint="chat", key_id="k", user_hash=None, model_requested=model,
            model_served=f"{model}@{version}", version=version, variant="production", prompt="(rendered)",
            response=answer, prompt_tokens=10, completion_tokens=10, messages=json.dumps(turns)))
        ids.append(rid)
    log.close()
    return ids


def test_same_distribution_traffic_raises_no_alarm(example: Path, reference: Path, tmp_path: Path) -> None:
    held_out = _read(example, "tickets.jsonl")[600:660]  # tickets the reference does not contain
    log_requests(held_out)
    out = tmp_path / "result.json"
    res = runner.invoke(app, ["monitor", *sum((["--set", o] for o in _overrides(example, reference)), []), "--json", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    checks = {c["name"]: c for c in result["checks"]}
    assert result["alarm"] is False
    assert {c["status"] for c in checks.values()} == {"ok"}
    assert checks["prompt_embedding"]["p_value"] > 0.01 and checks["prompt_embedding"]["n"] == 60
    assert checks["prompt_length"]["value"] < 0.2
    # Without an eval report, the baseline is the reference answers (all JSON).
    assert checks["json_valid"]["baseline"] == 1.0 and checks["json_valid"]["value"] == 1.0
    assert checks["schema_valid"]["baseline"] == 1.0 and checks["schema_valid"]["value"] == 1.0
    assert checks["refusal_rate"]["value"] == 0.0
    ws = Workspace.from_env()
    assert len(load_history(ws, "support")) == 1
    assert "<svg" in (ws.root / "monitor" / "report.html").read_text()


def test_shifted_traffic_alarms_on_embedding_length_validity_and_refusals(example: Path, reference: Path) -> None:
    general = _read(example, "general.jsonl")[:60]  # arithmetic and trivia questions: not support tickets
    answers = [r["messages"][-1]["content"] if i % 4 else "I'm sorry, I can't help with that."
               for i, r in enumerate(general)]
    log_requests(general, responses=answers)
    cfg = load_config(None, _overrides(example, reference))
    result = run_monitor(cfg)
    checks = {c.name: c for c in result.checks}
    assert result.alarm and result.version is None and result.window["requests"] == 60
    assert checks["prompt_embedding"].alarm and checks["prompt_embedding"].p_value < 0.01
    assert checks["prompt_length"].alarm and checks["prompt_length"].value > 0.2
    assert checks["json_valid"].alarm and checks["json_valid"].value == 0.0
    assert checks["schema_valid"].alarm and checks["schema_valid"].value == 0.0
    assert checks["refusal_rate"].alarm and checks["refusal_rate"].value == pytest.approx(0.25)
    assert result.retrain is None  # on_drift defaults to alert

    # The CLI exits 1 on an alarm (for cron), and every run lands in the history and the report.
    res = runner.invoke(app, ["monitor", *sum((["--set", o] for o in _overrides(example, reference)), [])])
    assert res.exit_code == 1, res.output
    assert "ALARM" in res.output and "prompt_embedding" in res.output
    history = load_history(Workspace.from_env(), "support")
    assert len(history) == 2 and all(h["alarm"] for h in history)
    page = (Workspace.from_env().root / "monitor" / "report.html").read_text()
    assert page.count("<polyline") >= 4 and "alarm" in page


def test_feedback_trend_alarms_even_when_the_log_keeps_no_text(example: Path, reference: Path) -> None:
    # serve.request_log.store_text=false: no prompts or answers, so only the feedback check can run.
    tickets = _read(example, "tickets.jsonl")[600:640]
    now = time.time()
    older = log_requests(tickets[:20], start=now - 100, store_text=False)
    newer = log_requests(tickets[20:], start=now - 50, store_text=False)
    log = RequestLog(log_path(Workspace.from_env()))
    for rid in older:
        log.write_feedback(rid, "k", 1.0)
    for rid in newer:
        log.write_feedback(rid, "k", 0.25)
    log.close()
    cfg = load_config(None, _overrides(example, reference, "monitor.window=20", "monitor.min_samples=10",
                                       "monitor.thresholds.feedback_drop_max=0.3"))
    result = run_monitor(cfg, now=now)
    fb = result.check("feedback")
    assert fb is not None and fb.alarm and result.alarm
    assert fb.value == pytest.approx(0.25) and fb.baseline == pytest.approx(1.0) and fb.n == 20
    assert {c.name: c.status for c in result.checks if c.name != "feedback"} == {
        "prompt_embedding": "skipped", "prompt_length": "skipped", "json_valid": "skipped", "schema_valid": "skipped",
        "refusal_rate": "skipped"}

    # Ratings going up is no alarm, and neither is a window with fewer ratings than min_samples.
    calm = load_config(None, _overrides(example, reference, "monitor.window=20", "monitor.min_samples=10",
                                        "monitor.thresholds.feedback_drop_max=0.3"))
    assert not run_monitor(calm, now=now - 60).alarm  # the window is then the older, well-rated requests
    few = load_config(None, _overrides(example, reference, "monitor.window=20", "monitor.min_samples=50",
                                       "monitor.thresholds.feedback_drop_max=0.3"))
    runs: list = []
    assert watch(few, iterations=2, every_s=1, on_result=runs.append, sleep=lambda _s: None) == 2
    assert len(runs) == 2 and not runs[1].alarm and runs[1].check("feedback").status == "skipped"
    assert len(load_history(Workspace.from_env(), "support")) == 4


def test_window_is_the_newest_non_shadow_requests_of_the_model_within_since(example: Path) -> None:
    now = 10_000.0
    rows = _read(example, "tickets.jsonl")[:10]
    log_requests(rows[:6], start=now - 600)  # t = now-600 .. now-595
    log_requests(rows[6:], start=now - 10)  # t = now-10 .. now-7
    log_requests(rows[:2], model="other", start=now - 5)
    log = RequestLog(log_path(Workspace.from_env()))
    log.write(LogRecord(request_id="shadow", time=now - 1, endpoint="chat", key_id="k", user_hash=None,
                        model_requested="support", model_served="support@2", version="2", variant="candidate",
                        shadow=True))
    log.close()
    ws = Workspace.from_env()
    current, previous = read_window(ws, "support", window=5, now=now)
    assert [r["time"] for r in current] == [now - 7, now - 8, now - 9, now - 10, now - 595]
    assert [r["time"] for r in previous] == [now - 596, now - 597, now - 598, now - 599, now - 600]
    current, previous = read_window(ws, "support", window=5, since_s=60, now=now)
    assert len(current) == 4 and len(previous) == 5
    assert read_window(ws, "support", window=5, now=now - 300)[0][0]["time"] == now - 595


def test_missing_reference_is_a_clear_error(example: Path, tmp_path: Path) -> None:
    log_requests(_read(example, "tickets.jsonl")[:3])
    res = runner.invoke(app, ["monitor", "--set", "pipeline.name=support"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2
    assert "no reference data" in text and "monitor.reference" in text
    res = runner.invoke(app, ["monitor", "--set", "pipeline.name=support",
                              "--set", f"monitor.reference={tmp_path / 'nope.jsonl'}"])
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())
    # A misspelt model has no traffic at all: that is an error, not "no drift".
    res = runner.invoke(app, ["monitor", "--set", "monitor.model=suport"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "no requests of suport" in text and "in the log: support" in text


def test_config_refuses_a_test_that_could_never_alarm_and_bad_patterns() -> None:
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot give a p-value below"):
        load_config(None, ["monitor.permutations=60"])  # smallest p-value 1/61 > alpha 0.01
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_config(None, ['monitor.refusal_patterns=["("]'])
    assert load_config(None, ["monitor.permutations=60", "monitor.thresholds.embedding_alpha=0.05"])
