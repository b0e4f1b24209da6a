"""Each metric on hand-checked examples."""

from __future__ import annotations

import json

import pytest

from tuneforge.eval import metrics as M

SCHEMA = {"type": "object", "properties": {"category": {"enum": ["billing", "bug"]}, "n": {"type": "integer"}},
          "required": ["category"], "additionalProperties": False}


def test_exact_match_normalises_case_space_and_trailing_punctuation() -> None:
    assert M.exact_match("  The Answer is  42. ", "the answer is 42") == 1.0
    assert M.exact_match("The answer is 43", "the answer is 42") == 0.0


def test_exact_match_compares_json_answers_as_values() -> None:
    assert M.exact_match('{"b": 2, "a": 1}', '{"a":1,"b":2}') == 1.0
    assert M.exact_match('{"a": 1, "b": 3}', '{"a":1,"b":2}') == 0.0
    assert M.exact_match('Sure! {"a": 1, "b": 2}', '{"a":1,"b":2}') == 0.0  # prose is not an exact match


def test_json_valid_accepts_a_fenced_object_and_rejects_prose() -> None:
    assert M.json_valid('{"a": 1}') == 1.0
    assert M.json_valid('```json\n{"a": 1}\n```') == 1.0
    assert M.json_valid('Here it is: {"a": 1}') == 0.0
    assert M.json_valid('{"a": 1') == 0.0


def test_schema_valid() -> None:
    assert M.schema_valid('{"category": "bug", "n": 3}', SCHEMA) == 1.0
    assert M.schema_valid('{"category": "sales"}', SCHEMA) == 0.0  # not in the enum
    assert M.schema_valid('{"category": "bug", "extra": 1}', SCHEMA) == 0.0  # additionalProperties
    assert M.schema_valid('{"n": 3}', SCHEMA) == 0.0  # required key missing
    assert M.schema_valid("not json", SCHEMA) == 0.0
    assert M.schema_valid('{"category": "bug"}', None) is None  # no schema: not applicable


def test_field_accuracy_counts_matching_fields() -> None:
    expected = json.dumps({"category": "bug", "priority": "high", "product": "api", "sentiment": "negative"})
    reply = json.dumps({"category": "bug", "priority": "low", "product": "api", "sentiment": "negative"})
    assert M.field_accuracy(reply, expected) == 0.75
    assert M.field_scores(reply, expected) == {"category": 1.0, "priority": 0.0, "product": 1.0, "sentiment": 1.0}
    # Only the configured fields count; a JSON object inside prose still earns field credit.
    assert M.field_accuracy(f"Sure: {reply} hope this helps", expected, ["category", "priority"]) == 0.5
    assert M.field_accuracy("no json here", expected) == 0.0
    assert M.field_accuracy("anything", "plain text answer") is None


def test_rouge_l_by_hand() -> None:
    # LCS of "the cat on the mat" with "the cat sat on the mat" is 5 tokens: P = 5/5, R = 5/6, F = 10/11.
    assert M.rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert M.rouge_l("dogs bark", "the cat sat") == 0.0
    assert M.rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)


def test_chrf_bounds_and_order() -> None:
    assert M.chrf("the invoice is wrong", "the invoice is wrong") == pytest.approx(1.0)
    assert M.chrf("zzzz qqqq", "abcd efgh") == 0.0
    close = M.chrf("the invoice is wrong", "the invoices are wrong")
    far = M.chrf("the weather is nice", "the invoices are wrong")
    assert 0.0 < far < close < 1.0


def test_semantic_similarity_with_bundled_minilm() -> None:
    emb = M.Embedder()
    same, para, other = emb.similarities(
        ["The payment failed.", "My card was declined at checkout.", "My card was declined at checkout."],
        ["The payment failed.", "The payment did not go through.", "Penguins live in Antarctica."])
    assert same == pytest.approx(1.0, abs=1e-4)
    assert para > 0.4 > other
