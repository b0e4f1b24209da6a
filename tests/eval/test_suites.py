"""Suite files: the accepted row shapes, schemas, prepared datasets and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import write_jsonl

from tuneforge.errors import EvalError
from tuneforge.eval.suites import load_suite


def test_golden_rows_with_messages_schema_and_category(golden: Path) -> None:
    s = load_suite("g", golden)
    assert s.n == 4 and len(s.checksum) == 64
    item = s.items[0]
    assert item.messages[-1]["role"] == "user" and item.category == "billing" and item.format == "json"
    assert item.schema is not None and item.schema["required"] == ["category", "priority"]


def test_prompt_rows_chat_rows_and_inline_objects(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "2+2?", "expected": "4"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"prompt": "json please", "expected": {"a": 1}, "format": "json"},
    ])
    s = load_suite("s", p, kind="general")
    assert [i.expected for i in s.items] == ["4", "Hello!", '{"a": 1}']
    assert s.items[1].messages == [{"role": "user", "content": "hi"}]
    assert [i.format for i in s.items] == ["text", "text", "json"] and s.kind == "general"


def test_a_prepared_dataset_directory_means_its_test_split(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 64, "counts": {}}))
    write_jsonl(d / "test.jsonl", [{"id": "r1", "kind": "chat", "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    s = load_suite("test", d)
    assert s.n == 1 and s.items[0].expected == "a" and s.path == d / "test.jsonl"


def test_the_checksum_follows_the_content(tmp_path: Path) -> None:
    a = load_suite("x", write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "expected": "a"}]))
    b = load_suite("y", write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "expected": "a"}]))
    c = load_suite("x", write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "expected": "b"}]))
    assert a.checksum == b.checksum != c.checksum


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "not valid JSON"),
    ('{"expected": "x"}', "needs `messages`"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "last message is not an assistant turn"),
    ('{"prompt": "q", "expected": "a", "schema": "missing.json"}', "cannot read JSON schema"),
    ('{"prompt": "q", "expected": "a", "format": "yaml"}', "unknown format"),
])
def test_bad_rows_name_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok", "expected": "fine"}\n' + line + "\n")
    with pytest.raises(EvalError) as err:
        load_suite("bad", p)
    assert message in err.value.render() and f"{p}:2" in err.value.render()


def test_missing_file_and_empty_suite(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="does not exist"):
        load_suite("x", tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EvalError, match="has no items"):
        load_suite("x", tmp_path / "empty.jsonl")
