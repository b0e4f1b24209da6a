"""`tuneforge ab report` over request-log rows written by the real RequestLog (large samples are
written directly; the server path is covered in tests/serve and test_guardrails)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import load_config
from tuneforge.errors import AbError
from tuneforge.monitor.ab import KEEP, PROMOTE, ROLL_BACK, ab_report, parse_duration
from tuneforge.serve.requestlog import LogRecord, RequestLog, log_path, user_hash
from tuneforge.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
import judge_server  # noqa: E402 - the stand-in judge of the eval tests

runner = CliRunner()
VERSIONS = {"production": "1", "canary": "2"}


def _traffic(log: RequestLog, rng: np.random.Generator, n: int, *, t0: float, share: float = 0.5,
             err: dict[str, float] | None = None, thumbs_up: dict[str, float] | None = None,
             feedback_share: float = 0.0, valid_json: dict[str, float] | None = None,
             latency: dict[str, float] | None = None, users: int = 100) -> list[LogRecord]:
    """``n`` routed requests for `support`, split at random, one per second from ``t0``."""
    err = err or {"production": 0.0, "canary": 0.0}
    latency = latency or {"production": 0.5, "canary": 0.5}
    out = []
    for i in range(n):
        variant = "canary" if rng.random() < share else "production"
        failed = rng.random() < err[variant]
        if valid_json is None:
            response = "Sure, here it is."
        else:
            response = '{"category": "billing"}' if rng.random() < valid_json[variant] else "billing, I think"
        rec = LogRecord(
            f"req-{t0:.0f}-{i}", t0 + i, "chat", "k", user_hash(f"user-{rng.integers(users)}"), "support",
            f"support@{VERSIONS[variant]}", VERSIONS[variant], variant, status=500 if failed else 200,
            prompt="Classify: my invoice is wrong", response=None if failed else response, prompt_tokens=10,
            completion_tokens=0 if failed else 6, latency_s=None if failed else float(rng.lognormal(np.log(latency[variant]), 0.3)),
            cost=0.001, messages=json.dumps([{"role": "user", "content": "Classify: my invoice is wrong"}]),
        )
        log.write(rec)
        out.append(rec)
        if thumbs_up is not None and not failed and rng.random() < feedback_share:
            log.write_feedback(rec.request_id, "k", float(rng.random() < thumbs_up[variant]))
    return out


def _ws_log() -> tuple[Workspace, RequestLog]:
    ws = Workspace.from_env()
    return ws, RequestLog(log_path(ws))


def test_a_canary_with_more_errors_is_rolled_back_and_the_stats_match_the_rows(tmp_path: Path) -> None:
    ws, log = _ws_log()
    rows = _traffic(log, np.random.default_rng(1), 1200, t0=time.time() - 2000,
                    err={"production": 0.02, "canary": 0.15}, latency={"production": 0.4, "canary": 0.6})
    log.close()
    report = ab_report(ws, load_config(None, []), "support")
    assert report.control == "production" and report.primary_metric == "error_rate"
    stats = {s.variant: s for s in report.variants}
    for variant, s in stats.items():
        mine = [r for r in rows if r.variant == variant]
        ok = [r.latency_s for r in mine if r.status == 200]
        assert s.requests == len(mine) and s.versions == [VERSIONS[variant]]
        assert s.users == len({r.user_hash for r in mine})
        assert s.errors == sum(r.status == 500 for r in mine)
        assert s.error_rate == pytest.approx(s.errors / len(mine))
        assert s.latency_p50_s == pytest.approx(float(np.percentile(ok, 50)))
        assert s.latency_p95_s == pytest.approx(float(np.percentile(ok, 95)))
        assert s.completion_tokens == sum(r.completion_tokens for r in mine)
        assert s.cost == pytest.approx(0.001 * len(mine)) and s.json_valid is None
    diffs = {d.metric: d for d in report.diffs["canary"]}
    assert diffs["error_rate"].verdict == "worse" and diffs["latency_s"].verdict == "worse"
    assert diffs["error_rate"].comparison.cs_low > 0  # the interval excludes no difference
    (rec,) = report.recommendations
    assert rec.variant == "canary" and rec.action == ROLL_BACK and "error_rate" in rec.reason
    assert any("judge scores skipped" in n for n in report.notes)

    out = tmp_path / "ab.json"
    res = runner.invoke(app, ["ab", "report", "support", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "roll back" in res.output and "error_rate" in res.output
    data = json.loads(out.read_text())
    assert data["recommendations"][0]["action"] == ROLL_BACK
    assert {d["metric"]: d["verdict"] for d in data["diffs"]["canary"]}["error_rate"] == "worse"


def test_better_feedback_promotes_the_canary() -> None:
    ws, log = _ws_log()
    _traffic(log, np.random.default_rng(2), 1500, t0=time.time() - 3000, feedback_share=0.6,
             thumbs_up={"production": 0.5, "canary": 0.75})
    log.close()
    report = ab_report(ws, load_config(None, []), "support")
    assert report.primary_metric == "feedback"
    stats = {s.variant: s for s in report.variants}
    assert 0.5 < stats["canary"].feedback_rate < 0.7 and stats["canary"].feedback_mean > stats["production"].feedback_mean
    diffs = {d.metric: d for d in report.diffs["canary"]}
    assert diffs["feedback"].verdict == "better"
    assert report.recommendations[0].action == PROMOTE


def test_too_little_data_keeps_collecting_and_since_limits_the_window() -> None:
    ws, log = _ws_log()
    now = time.time()
    # a day ago the canary failed a lot; in the last hour there is little, equal traffic
    _traffic(log, np.random.default_rng(3), 400, t0=now - 86400, err={"production": 0.0, "canary": 0.5})
    _traffic(log, np.random.default_rng(4), 60, t0=now - 100, err={"production": 0.05, "canary": 0.05})
    log.close()
    cfg = load_config(None, [])
    assert ab_report(ws, cfg, "support").recommendations[0].action == ROLL_BACK
    recent = ab_report(ws, cfg, "support", since=now - 3600)
    assert sum(s.requests for s in recent.variants) == 60
    rec = recent.recommendations[0]
    assert rec.action == KEEP and rec.more_requests is not None and rec.more_requests > 0
    res = runner.invoke(app, ["ab", "report", "support", "--since", "1h"])
    assert res.exit_code == 0 and "keep collecting" in res.output and "more routed request" in res.output


def test_json_schema_judge_shadow_and_pinned_requests(tmp_path: Path) -> None:
    ws, log = _ws_log()
    t0 = time.time() - 1000
    rows = _traffic(log, np.random.default_rng(5), 300, t0=t0,
                    valid_json={"production": 1.0, "canary": 0.3})
    for i in range(7):  # mirrored to the candidate, and requests pinned to a version: not compared
        log.write(LogRecord(f"s{i}-shadow-support@3", t0 + i, "chat", "k", None, "support", "support@3", "3",
                            "shadow:candidate", shadow=True, response="x"))
    for i in range(3):
        log.write(LogRecord(f"p{i}", t0 + i, "chat", "k", None, "support@2", "support@2", "2", "pinned"))
    log.close()
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["category"],
                                  "properties": {"category": {"enum": ["billing", "bug"]}}}))
    judge = judge_server.start()
    try:
        cfg = load_config(None, ["eval.suites=[{name: golden, path: g.jsonl, schema: " + str(schema) + "}]",
                                 f"eval.judge.url={judge.url}", "ab.judge_sample=6"])
        report = ab_report(ws, cfg, "support")
    finally:
        judge.stop()
    assert report.primary_metric == "schema_valid"
    assert report.shadow_requests == {"candidate": 7} and report.other_requests == 3
    stats = {s.variant: s for s in report.variants}
    for variant, s in stats.items():
        mine = [r for r in rows if r.variant == variant and r.status == 200]
        rate = sum(r.response.startswith("{") for r in mine) / len(mine)
        assert s.json_valid == pytest.approx(rate) and s.schema_valid == pytest.approx(rate)
        assert s.judge_n == 6 and 2 <= s.judge_mean <= 9  # the stand-in scores JSON 9, prose 2
    assert stats["production"].judge_mean == 9 and stats["canary"].judge_mean < 9
    assert len(judge.requests) == 12
    verdicts = {d.metric: d.verdict for d in report.diffs["canary"]}
    assert verdicts["json_valid"] == "worse" and verdicts["schema_valid"] == "worse"
    assert report.recommendations[0].action == ROLL_BACK


def test_guardrail_breach_in_the_report_recommends_rollback() -> None:
    ws, log = _ws_log()
    _traffic(log, np.random.default_rng(6), 80, t0=time.time() - 200, latency={"production": 0.3, "canary": 2.0})
    log.close()
    cfg = load_config(None, ["guardrails.p95_latency_s_max=1.0", "guardrails.min_requests=10"])
    report = ab_report(ws, cfg, "support")
    assert report.guardrails is not None and report.guardrails.breached
    assert report.recommendations[0].action == ROLL_BACK and "p95_latency_s" in report.recommendations[0].reason


def test_errors_name_what_and_how_to_fix() -> None:
    ws = Workspace.from_env()
    cfg = load_config(None, [])
    with pytest.raises(AbError, match="no request log"):
        ab_report(ws, cfg, "support")
    log = RequestLog(log_path(ws))
    _traffic(log, np.random.default_rng(7), 30, t0=time.time() - 100)
    log.close()
    with pytest.raises(AbError, match="no requests for other") as exc:
        ab_report(ws, cfg, "other")
    assert "tuneforge serve route other" in (exc.value.fix or "")
    with pytest.raises(AbError, match="no variant named 'gold'"):
        ab_report(ws, load_config(None, ["ab.control=gold"]), "support")
    assert parse_duration("30m") == 1800 and parse_duration("2d") == 172800 and parse_duration("45") == 45
    for bad in ("soon", "-1h", "0"):
        with pytest.raises(AbError, match="invalid duration"):
            parse_duration(bad)
    res = runner.invoke(app, ["ab", "report", "support", "--since", "yesterday"])
    assert res.exit_code != 0 and "invalid duration" in str(res.exception)
