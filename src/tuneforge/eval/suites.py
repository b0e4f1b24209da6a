"""Evaluation suites: JSONL golden sets (or a prepared dataset's test split) read and validated."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneforge.errors import EvalError


@dataclass(frozen=True)
class SuiteItem:
    id: str
    messages: list[dict[str, str]]  # the prompt: every turn before the expected answer
    expected: str
    category: str | None = None
    format: Literal["json", "text"] = "text"
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    kind: Literal["golden", "general"]
    checksum: str  # sha256 of the items as evaluated (prompts, answers, schemas)
    items: list[SuiteItem] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.items)


def load_suite(
    name: str, path: str | Path, *, kind: Literal["golden", "general"] = "golden", schema: str | Path | None = None,
) -> Suite:
    """Read a suite file (or a prepared dataset's test split) into validated items."""
    p = Path(path)
    if p.is_dir():
        from tuneforge.data._prepare import PreparedDataset

        p = PreparedDataset.load(p).split_path("test")
    if not p.is_file():
        raise EvalError(f"suite '{name}': {p} does not exist", where=f"eval.suites / --suite {path}",
                        fix="point the suite at a JSONL file or a prepared dataset directory")
    schemas: dict[str, dict[str, Any]] = {}
    default_schema = _read_schema(Path(schema), name) if schema else None
    items: list[SuiteItem] = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"suite '{name}': not valid JSON ({exc.msg})", where=where,
                            fix="each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise EvalError(f"suite '{name}': a row must be a JSON object", where=where, fix="fix that line")
        items.append(_item(row, len(items), where, p.parent, default_schema, schemas))
    if not items:
        raise EvalError(f"suite '{name}' has no items", where=str(p), fix="add rows, or pick another suite")
    body = json.dumps([[i.messages, i.expected, i.category, i.format, i.schema] for i in items], sort_keys=True)
    return Suite(name, p, kind, hashlib.sha256(body.encode()).hexdigest(), items)


def _item(row: dict[str, Any], index: int, where: str, base: Path, default_schema: dict[str, Any] | None,
          schemas: dict[str, dict[str, Any]]) -> SuiteItem:
    messages, expected = _prompt_and_expected(row, where)
    schema = default_schema
    ref = row.get("schema")
    if isinstance(ref, dict):
        schema = ref
    elif isinstance(ref, str):
        if ref not in schemas:
            schemas[ref] = _read_schema(base / ref, where)
        schema = schemas[ref]
    fmt = row.get("format")
    if fmt is None:
        fmt = "json" if schema is not None or _is_json_object(expected) else "text"
    if fmt not in ("json", "text"):
        raise EvalError(f"unknown format {fmt!r}", where=where, fix="use format: json or format: text")
    category = row.get("category")
    return SuiteItem(str(row.get("id", index)), messages, expected,
                     None if category is None else str(category), fmt, schema)


def _prompt_and_expected(row: dict[str, Any], where: str) -> tuple[list[dict[str, str]], str]:
    msgs = row.get("messages")
    expected = row.get("expected")
    if expected is not None and not isinstance(expected, str):
        expected = json.dumps(expected)  # a JSON answer written inline as an object
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "role" in m for m in msgs):
        msgs = [{"role": str(m["role"]), "content": str(m.get("content", ""))} for m in msgs]
        if expected is None:
            # The normalised chat schema (prepared test split, general.jsonl): the last assistant turn.
            if msgs[-1]["role"] != "assistant":
                raise EvalError("row has no `expected` and its last message is not an assistant turn", where=where,
                                fix="add `expected`, or end `messages` with the reference assistant answer")
            return msgs[:-1], msgs[-1]["content"]
        return msgs, expected
    prompt = row.get("prompt")
    if isinstance(prompt, str) and expected is not None:
        return [{"role": "user", "content": prompt}], expected
    raise EvalError("row needs `messages` (a list of {role, content}) or `prompt`, and `expected`", where=where,
                    fix='e.g. {"prompt": "2+2?", "expected": "4", "category": "math"}')


def _read_schema(path: Path, where: str) -> dict[str, Any]:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalError(f"cannot read JSON schema {path}: {exc}", where=where,
                        fix="point `schema` at a JSON Schema file (relative to the suite file)") from None
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise EvalError(f"{path} is not a valid JSON Schema: {exc.message}", where=where,
                        fix="fix the schema file") from None
    return schema


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
