"""Gate expressions: parsing, checking names, pass/fail."""

from __future__ import annotations

import pytest

from tuneforge.errors import EvalError
from tuneforge.eval.gates import check_names, evaluate_gate, parse_gate, split_metric


def test_parse_absolute_and_relative_gates() -> None:
    g = parse_gate("json_valid >= 0.95")
    assert (g.metric, g.op, g.number, g.relative) == ("json_valid", ">=", 0.95, False)
    g = parse_gate("field_accuracy >= baseline + 0.20")
    assert (g.metric, g.op, g.offset, g.relative) == ("field_accuracy", ">=", 0.20, True)
    g = parse_gate("val_loss<baseline-.1")
    assert (g.op, g.offset) == ("<", pytest.approx(-0.1))
    assert parse_gate("forgetting_similarity_drop <= 0.05").number == 0.05
    assert parse_gate("golden.exact_match > 0").metric == "golden.exact_match"


@pytest.mark.parametrize("expr", ["json_valid => 0.9", "json_valid >= high", ">= 0.9", "json_valid >= baseline * 2"])
def test_unparseable_gates_say_how_to_write_one(expr: str) -> None:
    with pytest.raises(EvalError) as err:
        parse_gate(expr)
    assert "METRIC OP NUMBER" in err.value.render() and "eval.gates" in err.value.render()


def test_pass_fail_and_thresholds() -> None:
    assert evaluate_gate(parse_gate("json_valid >= 0.95"), 0.95, None).passed
    assert not evaluate_gate(parse_gate("json_valid > 0.95"), 0.95, None).passed
    r = evaluate_gate(parse_gate("field_accuracy >= baseline + 0.20"), 0.6, 0.4)
    assert r.passed and r.threshold == pytest.approx(0.6)  # 0.4 + 0.2 is not exactly 0.6 in floats
    assert not evaluate_gate(parse_gate("field_accuracy >= baseline + 0.20"), 0.59, 0.4).passed
    assert evaluate_gate(parse_gate("val_loss <= baseline - 0.1"), 1.0, 1.2).passed
    no_base = evaluate_gate(parse_gate("field_accuracy >= baseline"), 0.5, None)
    assert not no_base.passed and "baseline" in no_base.note
    skipped = evaluate_gate(parse_gate("judge_win_rate >= 0.5"), None, None, "judge skipped")
    assert not skipped.passed and skipped.note == "judge skipped"


def test_metric_names_resolve_to_the_primary_suite_unless_qualified() -> None:
    suites = ["golden", "chat"]
    assert split_metric("json_valid", suites, "golden") == ("golden", "json_valid")
    assert split_metric("chat.rouge_l", suites, "golden") == ("chat", "rouge_l")
    assert split_metric("field_accuracy.category", suites, "golden") == ("golden", "field_accuracy.category")
    assert split_metric("judge_win_rate", suites, "golden") == (None, "judge_win_rate")


def test_unknown_metric_lists_the_valid_names() -> None:
    valid = {"golden": {"json_valid", "rouge_l"}}
    check_names([parse_gate("json_valid >= 0.9"), parse_gate("judge_score >= 5")], ["golden"], "golden", valid)
    with pytest.raises(EvalError) as err:
        check_names([parse_gate("json_validity >= 0.9")], ["golden"], "golden", valid)
    text = err.value.render()
    assert "json_validity" in text and "json_valid, rouge_l" in text and "forgetting_similarity_drop" in text
