"""Tests for tuneforge.data._formats: detection, normalisation, every reject reason, text access."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.data._formats import FORMATS, detect_format, map_text, normalise, row_text
from tuneforge.data._readers import read_rows
from tuneforge.data._types import CHAT, PREFERENCE, TEXT, RawRow, Reject, RejectReason, Row


def raw(value: Any, line: int = 7) -> RawRow:
    return RawRow("in.jsonl", line, value=value)


def ok(value: Any, fmt: str = "auto", system_prompt: str | None = None) -> Row:
    result = normalise(raw(value), fmt, system_prompt)
    assert isinstance(result, Row), result
    assert (result.source, result.line) == ("in.jsonl", 7)
    return result


def bad(value: Any, fmt: str = "auto", system_prompt: str | None = None) -> Reject:
    result = normalise(raw(value), fmt, system_prompt)
    assert isinstance(result, Reject), result
    assert (result.source, result.line) == ("in.jsonl", 7)
    assert result.row == value  # the raw value is kept, so nothing is lost
    return result


def u(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def a(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def s(content: str) -> dict[str, str]:
    return {"role": "system", "content": content}


def test_formats_constant() -> None:
    assert FORMATS == ("alpaca", "chat", "sharegpt", "prompt_completion", "text", "preference")


def test_unknown_format_argument_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        normalise(raw({"text": "x"}), "jsonl")


# --- alpaca -----------------------------------------------------------------------------------


def test_alpaca_instruction_and_output() -> None:
    row = ok({"instruction": "Say hi", "output": "Hi!"}, "alpaca")
    assert row.kind == CHAT
    assert row.data == {"messages": [u("Say hi"), a("Hi!")]}
    assert row.meta == {"format": "alpaca"}
    assert row.origin == "domain"


def test_alpaca_input_joined_with_a_blank_line_and_system() -> None:
    row = ok({"instruction": "Translate", "input": "Bonjour", "output": "Hello", "system": "Be brief."})
    assert row.data["messages"] == [s("Be brief."), u("Translate\n\nBonjour"), a("Hello")]


@pytest.mark.parametrize("empty", ["", "   ", None])
def test_alpaca_blank_optional_fields_are_ignored(empty: str | None) -> None:
    row = ok({"instruction": "Q", "input": empty, "system": empty, "output": "A"}, "alpaca")
    assert row.data["messages"] == [u("Q"), a("A")]


def test_alpaca_content_is_kept_verbatim() -> None:
    row = ok({"instruction": "  indented\n", "output": "```\ncode\n```\n"})
    assert row.data["messages"] == [u("  indented\n"), a("```\ncode\n```\n")]


# --- chat -------------------------------------------------------------------------------------


def test_chat_multi_turn_with_system() -> None:
    messages = [s("sys"), u("q1"), a("a1"), u("q2"), a("a2")]
    row = ok({"messages": messages}, "chat")
    assert row.kind == CHAT and row.data == {"messages": messages}


def test_chat_drops_unknown_message_fields_and_normalises_role_case() -> None:
    row = ok({"messages": [{"role": "User", "content": "q", "weight": 0}, {"role": " ASSISTANT", "content": "a"}]})
    assert row.data["messages"] == [u("q"), a("a")]


def test_chat_tool_calls_and_tool_results() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    call2 = {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}}
    messages = [
        u("Weather and time in Oslo?"),
        {"role": "assistant", "tool_calls": [call, call2]},  # no content at all
        {"role": "tool", "content": "12C", "tool_call_id": "c1", "name": "weather"},
        {"role": "tool", "content": "10:00", "tool_call_id": "c2"},  # parallel results
        a("12C at 10:00."),
        u("Thanks, and tomorrow?"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "9C", "tool_call_id": "c1"},
        a("9C."),
    ]
    row = ok({"messages": messages}, "chat")
    out = row.data["messages"]
    assert out[1] == {"role": "assistant", "content": "", "tool_calls": [call, call2]}
    assert out[2] == {"role": "tool", "content": "12C", "tool_call_id": "c1", "name": "weather"}
    assert out[3] == {"role": "tool", "content": "10:00", "tool_call_id": "c2"}
    assert out[6] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert [m["role"] for m in out] == [m["role"] for m in messages]


def test_chat_tool_result_after_a_plain_assistant_turn() -> None:
    messages = [u("q"), a("calling search"), {"role": "tool", "content": "result"}, a("done")]
    assert ok({"messages": messages}).data["messages"] == messages


def test_chat_none_fields_from_parquet_are_dropped() -> None:
    messages = [
        {"role": "user", "content": "q", "tool_calls": None, "name": None, "tool_call_id": None},
        {"role": "assistant", "content": "a", "tool_calls": [], "name": None, "tool_call_id": None},
    ]
    assert ok({"messages": messages}).data["messages"] == [u("q"), a("a")]


def test_chat_messages_as_a_json_string_is_decoded() -> None:
    messages = [u("q"), a("a")]
    assert ok({"messages": json.dumps(messages)}, "chat").data["messages"] == messages


# --- sharegpt ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "role"),
    [("human", "user"), ("user", "user"), ("gpt", "assistant"), ("assistant", "assistant"),
     ("chatgpt", "assistant"), ("bing", "assistant"), ("GPT", "assistant")],
)
def test_sharegpt_role_mapping(source: str, role: str) -> None:
    first, second = ("human", source) if role == "assistant" else (source, "gpt")
    row = ok({"conversations": [{"from": first, "value": "x"}, {"from": second, "value": "y"}]}, "sharegpt")
    assert row.kind == CHAT
    assert row.data["messages"] == [u("x"), a("y")]


def test_sharegpt_system_tools_and_function_calls() -> None:
    conversations = [
        {"from": "system", "value": "You can call tools."},
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": '{"name": "weather"}'},
        {"from": "observation", "value": "12C"},
        {"from": "gpt", "value": "It is 12C."},
        {"from": "human", "value": "Time?"},
        {"from": "gpt", "value": "calling"},
        {"from": "function", "value": "10:00"},
        {"from": "tool", "value": "UTC"},
        {"from": "assistant", "value": "10:00 UTC."},
    ]
    row = ok({"conversations": conversations, "id": "x1"})
    assert [m["role"] for m in row.data["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool", "tool", "assistant",
    ]
    assert row.data["messages"][2] == a('{"name": "weather"}')
    assert row.meta["format"] == "sharegpt"


def test_sharegpt_top_level_system_field() -> None:
    conversations = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    row = ok({"conversations": conversations, "system": "Be nice."})
    assert row.data["messages"] == [s("Be nice."), u("q"), a("a")]
    # A system prompt from the configuration does not replace the row's own.
    row = ok({"conversations": conversations, "system": "Be nice."}, system_prompt="Config.")
    assert row.data["messages"][0] == s("Be nice.")


def test_sharegpt_two_system_prompts_rejected() -> None:
    conversations = [{"from": "system", "value": "A"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    reject = bad({"conversations": conversations, "system": "B"})
    assert reject.reason == RejectReason.BAD_ROLE_ORDER
    assert "top-level 'system'" in reject.detail


# --- prompt_completion ------------------------------------------------------------------------


def test_prompt_completion_strings() -> None:
    row = ok({"prompt": "2+2?", "completion": "4"}, "prompt_completion")
    assert row.kind == CHAT and row.data == {"messages": [u("2+2?"), a("4")]}


def test_prompt_completion_message_lists() -> None:
    prompt = [s("sys"), u("q1"), a("a1"), u("q2")]
    row = ok({"prompt": prompt, "completion": [a("a2")]})
    assert row.data["messages"] == [*prompt, a("a2")]


# --- preference -------------------------------------------------------------------------------


def test_preference_string_form() -> None:
    row = ok({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}, "preference")
    assert row.kind == PREFERENCE
    assert row.data == {"prompt": [u("Capital of France?")], "chosen": [a("Paris.")], "rejected": [a("Lyon.")]}


def test_preference_list_form() -> None:
    prompt = [s("sys"), u("q1"), a("a1"), u("q2")]
    row = ok({"prompt": prompt, "chosen": [a("good")], "rejected": [a("bad")]})
    assert row.data == {"prompt": prompt, "chosen": [a("good")], "rejected": [a("bad")]}


def test_preference_mixed_forms_and_json_strings_from_csv() -> None:
    prompt = [u("q")]
    row = ok({"prompt": json.dumps(prompt), "chosen": "good", "rejected": json.dumps([a("bad")])})
    assert row.data == {"prompt": prompt, "chosen": [a("good")], "rejected": [a("bad")]}


def test_preference_plain_text_starting_with_a_bracket_stays_text() -> None:
    row = ok({"prompt": "[1, 2] sorted?", "chosen": "[1, 2]", "rejected": "[2, 1]"})
    assert row.data["prompt"] == [u("[1, 2] sorted?")]
    assert row.data["chosen"] == [a("[1, 2]")]


def test_preference_with_tool_use_in_the_answer() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    chosen = [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "r"}, a("ok")]
    row = ok({"prompt": "q", "chosen": chosen, "rejected": "no"})
    assert row.data["chosen"] == chosen


# --- text -------------------------------------------------------------------------------------


def test_text_row() -> None:
    row = ok({"text": "Some document.", "meta": 1}, "text")
    assert row.kind == TEXT and row.data == {"text": "Some document."}


# --- system prompt ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"messages": [u("q"), a("a")]},
        {"instruction": "q", "output": "a"},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"prompt": "q", "completion": "a"},
    ],
)
def test_system_prompt_is_prepended_to_chat_rows_without_one(value: dict[str, Any]) -> None:
    row = ok(value, system_prompt="You are helpful.")
    assert row.data["messages"] == [s("You are helpful."), u("q"), a("a")]
    assert row.meta["system_prompt_added"] is True


def test_system_prompt_does_not_replace_an_existing_one() -> None:
    row = ok({"messages": [s("Own."), u("q"), a("a")]}, system_prompt="Config.")
    assert row.data["messages"][0] == s("Own.")
    assert "system_prompt_added" not in row.meta


def test_system_prompt_goes_into_the_preference_prompt() -> None:
    row = ok({"prompt": "q", "chosen": "a", "rejected": "b"}, system_prompt="Config.")
    assert row.data["prompt"] == [s("Config."), u("q")]
    assert row.data["chosen"] == [a("a")]


@pytest.mark.parametrize("prompt", [None, "", "  "])
def test_blank_system_prompt_is_ignored(prompt: str | None) -> None:
    assert ok({"messages": [u("q"), a("a")]}, system_prompt=prompt).data["messages"] == [u("q"), a("a")]


def test_system_prompt_does_not_touch_text_rows() -> None:
    assert ok({"text": "doc"}, system_prompt="Config.").data == {"text": "doc"}


def test_system_prompt_added_after_validation() -> None:
    # Validation sees the row as written: its first turn must still be a user turn.
    assert bad({"messages": [a("a")]}, system_prompt="Config.").detail.startswith("messages[0] is an assistant")
    reject = bad({"messages": [a("hello"), u("q"), a("a")]}, system_prompt="Config.")
    assert reject.reason == RejectReason.BAD_ROLE_ORDER
    assert "messages[0]" in reject.detail


# --- rejects ----------------------------------------------------------------------------------


def test_invalid_json_from_the_reader() -> None:
    result = normalise(RawRow("in.jsonl", 3, error="invalid JSON: Expecting value at column 1"), "chat")
    assert result == Reject("in.jsonl", 3, RejectReason.INVALID_JSON, "invalid JSON: Expecting value at column 1", None)


def test_invalid_json_in_a_messages_string() -> None:
    reject = bad({"messages": '[{"role": "user"'}, "chat")
    assert reject.reason == RejectReason.INVALID_JSON
    assert "'messages'" in reject.detail and "column" in reject.detail


@pytest.mark.parametrize(("value", "found"), [([1, 2], "an array"), ("text", "a string"), (3, "a number"),
                                              (None, "null"), (True, "a boolean")])
def test_not_an_object(value: Any, found: str) -> None:
    reject = bad(value, "chat")
    assert reject.reason == RejectReason.NOT_AN_OBJECT
    assert f"the row is {found}" in reject.detail


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"messages": {"role": "user"}}, "field 'messages' is an object, expected an array"),
        ({"messages": [u("q"), "hello"]}, "messages[1] is a string, expected an object"),
        ({"conversations": [["human", "q"]]}, "conversations[0] is an array"),
        ({"messages": [u("q"), {"role": "assistant", "tool_calls": "f()"}]}, "messages[1].tool_calls"),
    ],
)
def test_not_an_object_inside_the_row(value: dict[str, Any], where: str) -> None:
    reject = bad(value)
    assert reject.reason == RejectReason.NOT_AN_OBJECT
    assert where in reject.detail


def test_unknown_format_only_when_auto_detecting() -> None:
    value = {"question": "q", "answer": "a"}
    reject = bad(value)
    assert reject.reason == RejectReason.UNKNOWN_FORMAT
    assert "answer, question" in reject.detail and "instruction + output" in reject.detail
    explicit = bad(value, "alpaca")
    assert explicit.reason == RejectReason.MISSING_FIELD
    assert explicit.detail == "field 'instruction' is missing"


@pytest.mark.parametrize(
    ("value", "fmt", "detail"),
    [
        ({"instruction": "q"}, "alpaca", "field 'output' is missing"),
        ({"instruction": "q", "output": None}, "alpaca", "field 'output' is null"),
        ({"messages": [u("q"), {"role": "assistant"}]}, "chat", "field messages[1].content is missing"),
        ({"messages": [{"content": "q"}, a("a")]}, "chat", "field messages[0].role is missing"),
        ({"chosen": "a", "rejected": "b"}, "auto", "field 'prompt' is missing"),
        ({"prompt": "q", "chosen": "a"}, "preference", "field 'rejected' is missing"),
        ({"prompt": "q"}, "auto", "field 'completion' is missing"),
        ({"conversations": [{"value": "q"}]}, "sharegpt", "field conversations[0].from is missing"),
        ({"conversations": [{"from": "human"}]}, "sharegpt", "field conversations[0].value is missing"),
        ({"text": None}, "text", "field 'text' is null"),
        ({"id": 1}, "chat", "field 'messages' is missing"),
    ],
)
def test_missing_field(value: dict[str, Any], fmt: str, detail: str) -> None:
    reject = bad(value, fmt)
    assert reject.reason == RejectReason.MISSING_FIELD
    assert reject.detail == detail


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ({"instruction": "q", "output": "  \n"}, "field 'output' is empty"),
        ({"instruction": "", "output": "a"}, "field 'instruction' is empty"),
        ({"messages": []}, "field 'messages' is an empty array"),
        ({"messages": ""}, "field 'messages' is empty"),
        ({"messages": [u("q"), a(" ")]}, "field messages[1].content is empty"),
        ({"conversations": [{"from": "human", "value": ""}]}, "field conversations[0].value is empty"),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, "field 'prompt' is an empty array"),
        ({"prompt": "q", "chosen": "\t", "rejected": "b"}, "field 'chosen' is empty"),
        ({"text": ""}, "field 'text' is empty"),
        ({"messages": [u("q"), a("a"), {"role": "tool", "content": ""}, a("b")]}, "messages[2].content is empty"),
    ],
)
def test_empty_field(value: dict[str, Any], detail: str) -> None:
    reject = bad(value)
    assert reject.reason == RejectReason.EMPTY_FIELD
    assert detail in reject.detail


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ({"messages": [u("q"), {"role": "assistant", "content": 42}]}, "messages[1].content is a number, expected a string"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}, a("a")]}, "messages[0].content is an array"),
        ({"instruction": 5, "output": "a"}, "'instruction' is a number"),
        ({"instruction": "q", "input": {"x": 1}, "output": "a"}, "'input' is an object"),
        ({"conversations": [{"from": "human", "value": ["q"]}]}, "conversations[0].value is an array"),
        ({"prompt": "q", "chosen": 1, "rejected": "b"}, "'chosen' is a number"),
        ({"text": b"bytes"}, "'text' is a bytes"),
        ({"messages": [u("q"), {"role": "assistant", "content": 1, "tool_calls": [{}]}]}, "messages[1].content is a number"),
        ({"messages": [u("q"), a("a"), {"role": "tool", "content": "r", "tool_call_id": 3}, a("b")]}, "messages[2].tool_call_id is a number"),
    ],
)
def test_non_string_content(value: dict[str, Any], detail: str) -> None:
    reject = bad(value)
    assert reject.reason == RejectReason.NON_STRING_CONTENT
    assert detail in reject.detail


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ({"messages": [{"role": "bot", "content": "q"}, a("a")]}, "messages[0].role is 'bot'; allowed roles: system, user, assistant, tool"),
        ({"messages": [u("q"), {"role": 2, "content": "a"}]}, "messages[1].role is 2"),
        ({"conversations": [{"from": "robot", "value": "q"}]}, "conversations[0].from is 'robot'; allowed: human, user, gpt"),
        ({"conversations": [{"from": None, "value": "q"}]}, "conversations[0].from is missing"),
    ],
)
def test_unknown_role(value: dict[str, Any], detail: str) -> None:
    reject = bad(value)
    expected = RejectReason.MISSING_FIELD if "missing" in detail else RejectReason.UNKNOWN_ROLE
    assert reject.reason == expected
    assert detail in reject.detail


@pytest.mark.parametrize(
    ("messages", "detail"),
    [
        ([u("q1"), u("q2"), a("a")], "messages[0] and messages[1] are both user turns"),
        ([u("q"), a("a1"), a("a2")], "messages[1] and messages[2] are both assistant turns"),
        ([u("q"), s("late"), a("a")], "messages[1] is a system turn; a system turn is only allowed first"),
        ([s("x"), s("y"), u("q"), a("a")], "messages[1] is a system turn"),
        ([a("hello"), u("q"), a("a")], "messages[0] is an assistant turn; a conversation must start with a user turn"),
        ([s("x"), a("hello"), u("q"), a("a")], "messages[1] is an assistant turn; a conversation must start"),
        ([{"role": "tool", "content": "r"}, u("q"), a("a")], "messages[0] is a tool turn; a conversation must start"),
        ([u("q"), {"role": "tool", "content": "r"}, a("a")], "messages[1] is a tool turn after a user turn"),
        ([u("q"), a("call"), {"role": "tool", "content": "r"}, u("q2"), a("a")], "messages[3] is a user turn after a tool result"),
        ([u("q"), a("a"), u("more?")], "ends with a user turn (messages[2]); the last turn must be assistant"),
        ([u("q"), a("call"), {"role": "tool", "content": "r"}], "ends with a tool turn (messages[2])"),
    ],
)
def test_bad_role_order(messages: list[dict[str, Any]], detail: str) -> None:
    reject = bad({"messages": messages})
    assert reject.reason == RejectReason.BAD_ROLE_ORDER
    assert detail in reject.detail


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ({"prompt": "q", "completion": [u("again")]}, "completion[0] is a user turn; an answer must start with an assistant turn"),
        ({"prompt": [u("q"), a("a")], "completion": "b"}, "prompt[1] and 'completion' are both assistant turns"),
        ({"prompt": [u("q"), a("a")], "chosen": "x", "rejected": "y"}, "prompt[1] and 'chosen' are both assistant turns"),
        ({"prompt": "q", "chosen": "x", "rejected": [a("y"), u("z")]}, "ends with a user turn (rejected[1])"),
        ({"prompt": [a("q")], "chosen": "x", "rejected": "y"}, "prompt[0] is an assistant turn; a conversation must start"),
    ],
)
def test_bad_role_order_in_prompt_answer_rows(value: dict[str, Any], detail: str) -> None:
    reject = bad(value)
    assert reject.reason == RejectReason.BAD_ROLE_ORDER
    assert detail in reject.detail


@pytest.mark.parametrize(
    "value",
    [
        {"messages": [u("q")]},
        {"messages": [s("x"), u("q")]},
        {"messages": [u("q1"), u("q2")]},  # no assistant at all wins over the order problem
        {"conversations": [{"from": "human", "value": "q"}]},
    ],
)
def test_no_assistant_turn(value: dict[str, Any]) -> None:
    reject = bad(value)
    assert reject.reason == RejectReason.NO_ASSISTANT_TURN
    assert "no assistant turn" in reject.detail and "nothing to train on" in reject.detail


def test_every_validation_reason_is_reachable() -> None:
    """Each reason this module owns is produced by at least one of the rows below."""
    cases = [
        RawRow("f", 1, error="invalid JSON: x at column 1"),
        raw([1]),
        raw({"foo": 1}),
        raw({"text": None}),
        raw({"text": " "}),
        raw({"text": 1}),
        raw({"messages": [{"role": "x", "content": "q"}]}),
        raw({"messages": [u("q"), u("q"), a("a")]}),
        raw({"messages": [u("q")]}),
    ]
    reasons = {normalise(r, "auto").reason for r in cases}  # type: ignore[union-attr]
    assert reasons == {
        RejectReason.INVALID_JSON, RejectReason.NOT_AN_OBJECT, RejectReason.UNKNOWN_FORMAT,
        RejectReason.MISSING_FIELD, RejectReason.EMPTY_FIELD, RejectReason.NON_STRING_CONTENT,
        RejectReason.UNKNOWN_ROLE, RejectReason.BAD_ROLE_ORDER, RejectReason.NO_ASSISTANT_TURN,
    }


def test_reject_keeps_the_raw_row_unchanged() -> None:
    value = {"messages": [u("q"), u("q2")], "extra": {"keep": True}}
    before = copy.deepcopy(value)
    reject = bad(value)
    assert reject.row is value and value == before


def test_normalise_does_not_mutate_the_input() -> None:
    value = {"messages": [{"role": "User", "content": "q", "x": 1}, a("a")]}
    before = copy.deepcopy(value)
    ok(value, system_prompt="Config.")
    assert value == before


# --- auto (per row) ---------------------------------------------------------------------------


def test_auto_normalises_each_row_by_its_own_keys() -> None:
    assert ok({"instruction": "q", "output": "a"}).meta["format"] == "alpaca"
    assert ok({"messages": [u("q"), a("a")]}).meta["format"] == "chat"
    assert ok({"text": "t"}).meta["format"] == "text"
    assert ok({"prompt": "q", "chosen": "a", "rejected": "b"}).meta["format"] == "preference"


def test_explicit_format_ignores_other_keys() -> None:
    row = ok({"instruction": "q", "output": "a", "text": "### Instruction: q ### Response: a"}, "text")
    assert row.data == {"text": "### Instruction: q ### Response: a"}


# --- detect_format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        ({"instruction": "q", "input": "", "output": "a"}, "alpaca"),
        ({"instruction": "q", "output": "a", "text": "rendered"}, "alpaca"),
        ({"messages": []}, "chat"),
        ({"conversations": []}, "sharegpt"),
        ({"prompt": "q", "completion": "a"}, "prompt_completion"),
        ({"text": "t"}, "text"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
        ({"chosen": [], "rejected": []}, "preference"),
    ],
)
def test_detect_each_format(value: dict[str, Any], fmt: str) -> None:
    assert detect_format([value]) == fmt


def test_detect_skips_unparsed_and_non_dict_rows_and_takes_the_majority() -> None:
    values = [None, [1], "x", {"foo": 1}, {"text": "t"}, {"messages": []}, {"messages": []}]
    assert detect_format(values) == "chat"


def test_detect_ties_go_to_the_first_seen() -> None:
    assert detect_format([{"text": "t"}, {"messages": []}]) == "text"


def test_detect_nothing_recognisable() -> None:
    assert detect_format([]) is None
    assert detect_format([None, 3, {"foo": 1}]) is None


def test_detect_looks_only_at_the_first_hundred_dict_rows() -> None:
    values = [{"text": "t"}] * 100 + [{"messages": []}] * 500
    assert detect_format(values) == "text"


# --- row_text and map_text --------------------------------------------------------------------


def test_row_text_chat_includes_every_content_in_order() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    row = ok({"messages": [s("sys"), u("q"), {"role": "assistant", "tool_calls": [call]},
                           {"role": "tool", "content": "r"}, a("a")]})
    assert row_text(row) == "sys\nq\nr\na"  # the empty tool-call turn adds no blank line


def test_row_text_leaves_out_the_injected_system_prompt() -> None:
    row = ok({"instruction": "q", "output": "a"}, system_prompt="Config.")
    assert row_text(row) == "q\na"


def test_row_text_preference_and_text() -> None:
    row = ok({"prompt": [s("sys"), u("q")], "chosen": "good", "rejected": "bad"})
    assert row_text(row) == "sys\nq\ngood\nbad"
    row = ok({"prompt": "q", "chosen": "good", "rejected": "bad"}, system_prompt="Config.")
    assert row_text(row) == "q\ngood\nbad"
    assert row_text(ok({"text": "doc"})) == "doc"


def test_map_text_chat_returns_a_new_row() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"to": "a@b.c"}'}}
    row = ok({"messages": [u("mail a@b.c"), {"role": "assistant", "tool_calls": [call]},
                           {"role": "tool", "content": "sent", "tool_call_id": "c"}, a("done")]},
             system_prompt="Config.")
    before = copy.deepcopy(row)
    mapped = map_text(row, str.upper)
    assert mapped is not row
    assert mapped.data["messages"] == [
        s("Config."),  # configuration text is left alone, as in row_text
        u("MAIL A@B.C"),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "SENT", "tool_call_id": "c"},
        a("DONE"),
    ]
    assert row == before  # the original is untouched
    assert mapped.meta == row.meta and mapped.meta is not row.meta
    assert (mapped.source, mapped.line, mapped.kind, mapped.origin) == (row.source, row.line, row.kind, row.origin)
    assert row_text(mapped) == row_text(row).upper()


def test_map_text_preference_and_text() -> None:
    row = ok({"prompt": "q", "chosen": "good", "rejected": "bad"})
    mapped = map_text(row, lambda t: f"<{t}>")
    assert mapped.data == {"prompt": [u("<q>")], "chosen": [a("<good>")], "rejected": [a("<bad>")]}
    assert row.data["prompt"] == [u("q")]
    text = ok({"text": "doc"})
    assert map_text(text, str.upper).data == {"text": "DOC"}
    assert text.data == {"text": "doc"}


# --- end to end with the readers --------------------------------------------------------------


def test_csv_chat_rows_end_to_end(tmp_path: Path) -> None:
    good = json.dumps([u("q"), a("a")]).replace('"', '""')
    broken = '[{""role"": ""user""'
    path = tmp_path / "chat.csv"
    path.write_text(f'messages,id\n"{good}",1\n"{broken}",2\n')
    (chunk,) = read_rows(path)
    assert detect_format([r.value for r in chunk]) == "chat"
    first, second = (normalise(r, "chat") for r in chunk)
    assert isinstance(first, Row) and first.data["messages"] == [u("q"), a("a")] and first.line == 2
    assert isinstance(second, Reject) and second.reason == RejectReason.INVALID_JSON and second.line == 3


def test_parquet_chat_rows_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    records = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r", "tool_call_id": "1"}]},
    ]
    pq.write_table(pa.Table.from_pylist(records), path)
    (chunk,) = read_rows(path)
    first, second = (normalise(r, "auto") for r in chunk)
    assert isinstance(first, Row) and first.data["messages"] == [u("q"), a("a")]
    assert isinstance(second, Reject) and second.reason == RejectReason.NO_ASSISTANT_TURN and second.line == 2
