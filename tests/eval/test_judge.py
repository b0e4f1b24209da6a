"""LLM-as-judge against a real local OpenAI-compatible server (the stand-in in judge_server.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from judge_server import JudgeServer

from tuneforge.config import TuneforgeConfig
from tuneforge.errors import EvalError
from tuneforge.eval import evaluate
from tuneforge.eval import judge as J

GOOD = json.dumps({"category": "bug", "priority": "high"})
BAD = "I think it is a bug, priority high."
PROMPT = [{"role": "user", "content": "Classify: the app crashes"}]


def _client(judge: JudgeServer, model: str) -> J.JudgeClient:
    return J.JudgeClient(judge.url, model, "sk-test", 10.0)


@pytest.mark.parametrize(("text", "score"), [("Score: 7", 7), ("score:10", 10), ("I'd give it 8/10.", 8),
                                             ("Rating of 3 because...", 3), ("9", 9), ("Score: 0", None),
                                             ("no idea", None)])
def test_parse_score(text: str, score: int | None) -> None:
    assert J.parse_score(text) == score


@pytest.mark.parametrize(("text", "verdict"), [("Verdict: A", "A"), ("verdict - b", "B"), ("[[B]]", "B"),
                                               ("Verdict: tie", "tie"), ("Answer A is better.", "A"), ("B", "B"),
                                               ("Both are fine", None)])
def test_parse_verdict(text: str, verdict: str | None) -> None:
    assert J.parse_verdict(text) == verdict


def test_rubric_scores_over_http(judge: JudgeServer) -> None:
    before = len(judge.requests)
    scores = J.rubric_scores(_client(judge, "fair-judge"), [PROMPT, PROMPT], [GOOD, GOOD], [GOOD, BAD])
    assert scores == [9, 2]
    sent = judge.requests[before]
    assert sent["body"]["temperature"] == 0 and sent["body"]["model"] == "fair-judge"
    assert sent["auth"] == "Bearer sk-test"


def test_pairwise_runs_both_orders_and_a_fair_judge_decides(judge: JudgeServer) -> None:
    before = len(judge.requests)
    items = J.pairwise(_client(judge, "fair-judge"), [PROMPT] * 3, [GOOD] * 3, [GOOD, BAD, GOOD], [BAD, GOOD, GOOD])
    assert len(judge.requests) - before == 6  # two requests per item, one per order
    assert [i.outcome for i in items] == ["win", "loss", "tie"]
    assert (items[0].first, items[0].second) == ("A", "B")  # candidate preferred as A and as B
    assert J.win_rate(items) == pytest.approx((1 + 0.5) / 3)


def test_a_position_biased_judge_yields_ties(judge: JudgeServer) -> None:
    items = J.pairwise(_client(judge, "biased-judge"), [PROMPT] * 2, [GOOD] * 2, [GOOD, BAD], [BAD, GOOD])
    # It always says A: the candidate wins as A and loses as B, so every comparison is a tie.
    assert [(i.first, i.second, i.outcome) for i in items] == [("A", "A", "tie")] * 2
    assert J.win_rate(items) == 0.5


def test_an_unreachable_judge_is_a_clear_error() -> None:
    with pytest.raises(EvalError) as err:
        J.JudgeClient("http://127.0.0.1:9/v1", "m", None, 2.0).complete("hi")
    assert "eval.judge.url" in err.value.render()


def test_evaluate_stores_the_judge_prompt_and_version(judge: JudgeServer, golden: Path, tiny_model_dir: Path,
                                                     eval_cfg: Callable[..., TuneforgeConfig], tmp_path: Path) -> None:
    cfg = eval_cfg(f"eval.judge.url={judge.url}", "eval.judge.model=fair-judge", "eval.judge.max_items=3",
                   "eval.gates=['judge_score >= 1', 'judge_win_rate >= 0.5']")
    r = evaluate(cfg, str(tiny_model_dir), suites=[str(golden)], baselines=[str(tiny_model_dir)], out=tmp_path / "o")
    j = json.loads(r.json_path.read_text())["judge"]
    assert j["prompt_version"] == J.PROMPT_VERSION and j["prompt"]["rubric"] == J.RUBRIC_PROMPT
    assert j["n"] == 3 and j["rubric"]["candidate"]["n"] + j["rubric"]["candidate"]["unparsed"] == 3
    # The tiny random model writes no JSON, so the fair rule scores every answer 2 and every pair is a tie.
    assert j["rubric"]["candidate"]["value"] == 2.0
    assert j["pairwise"]["ties"] == 3 and j["pairwise"]["win_rate"]["value"] == 0.5
    assert [g["passed"] for g in r.report["gates"]] == [True, True]


def test_no_judge_configured_is_reported_as_skipped(golden: Path, tiny_model_dir: Path,
                                                    eval_cfg: Callable[..., TuneforgeConfig], tmp_path: Path) -> None:
    r = evaluate(eval_cfg("eval.gates=['judge_win_rate >= 0.5']"), str(tiny_model_dir), suites=[str(golden)],
                 out=tmp_path / "o")
    assert "eval.judge.url" in r.report["judge"]["skipped"]
    gate = r.report["gates"][0]
    assert not gate["passed"] and gate["value"] is None and "judge skipped" in gate["note"]
    assert "skipped" in r.html_path.read_text()
