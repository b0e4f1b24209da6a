"""Recognise row formats and normalise rows to tuneforge's schema (see ``_types``).

Every input format becomes one of three kinds: CHAT (``messages``), PREFERENCE (TRL's
conversational ``prompt``/``chosen``/``rejected``) or TEXT. A row that cannot be normalised
becomes a Reject whose detail names the field or turn at fault, and which keeps the raw value.

Conversation rules (all chat-like formats, after mapping to roles system/user/assistant/tool):
- a system turn is allowed only first; then the conversation starts with a user turn;
- user and assistant turns alternate; tool results follow an assistant turn (or another tool
  result) and are answered by an assistant turn;
- it must contain an assistant turn (else NO_ASSISTANT_TURN: nothing to train on) and end with
  one (else BAD_ROLE_ORDER: a trailing user/tool turn would be context for nothing).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tuneforge.data._types import CHAT, PREFERENCE, TEXT, RawRow, Reject, RejectReason, Row

FORMATS = ("alpaca", "chat", "sharegpt", "prompt_completion", "text", "preference")
AUTO = "auto"  # normalise() detects the format of each row from its keys

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "function_call": "assistant",
}
# Message fields kept besides role and content: chat templates need them for tool use.
_EXTRA_MESSAGE_FIELDS = ("tool_calls", "name", "tool_call_id")
_DETECT_ROWS = 100  # dict rows looked at by detect_format
_FORMAT_HINT = (
    "expected the fields of one format: messages (chat), conversations (sharegpt), "
    "instruction + output (alpaca), prompt + completion (prompt_completion), "
    "prompt + chosen + rejected (preference) or text (text)"
)

Message = dict[str, Any]


class _Invalid(Exception):
    """Raised inside normalisation; becomes a Reject."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- detection --------------------------------------------------------------------------------


def _format_of(obj: dict[str, Any]) -> str | None:
    """The format a row's keys point to; the most specific signal wins."""
    keys = obj.keys()
    if "chosen" in keys or "rejected" in keys:
        return "preference"  # before prompt_completion: preference rows have a prompt too
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"  # before text: Alpaca exports often carry a rendered "text" column
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def detect_format(values: Sequence[Any]) -> str | None:
    """The format most of the first dict rows (up to 100) have; None if none is recognisable.

    ``values`` are parsed row values (RawRow.value); non-dicts (unparsable rows) are skipped.
    Ties go to the format seen first.
    """
    votes: Counter[str] = Counter()
    seen = 0
    for value in values:
        if not isinstance(value, dict):
            continue
        fmt = _format_of(value)
        if fmt is not None:
            votes[fmt] += 1
        seen += 1
        if seen >= _DETECT_ROWS:
            break
    # most_common keeps insertion order among equal counts, i.e. first seen wins.
    return votes.most_common(1)[0][0] if votes else None


# --- normalisation ----------------------------------------------------------------------------


def normalise(raw: RawRow, fmt: str, system_prompt: str | None = None) -> Row | Reject:
    """Normalise one raw row read as ``fmt`` (one of FORMATS, or "auto" to detect per row).

    With "auto", a row whose keys match no format is rejected as UNKNOWN_FORMAT; with an
    explicit format, missing fields are MISSING_FIELD. ``system_prompt`` is prepended to chat
    and preference-prompt conversations that have no system turn.
    """
    if fmt != AUTO and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {(AUTO, *FORMATS)}")

    def reject(reason: str, detail: str) -> Reject:
        return Reject(raw.source, raw.line, reason, detail, row=raw.value)

    if raw.error is not None:
        return reject(RejectReason.INVALID_JSON, raw.error)
    value = raw.value
    if not isinstance(value, dict):
        return reject(
            RejectReason.NOT_AN_OBJECT,
            f"the row is {_describe(value)}, expected an object with the fields of a format",
        )
    row_fmt = _format_of(value) if fmt == AUTO else fmt
    if row_fmt is None:
        keys = ", ".join(sorted(map(str, value))[:10]) or "none"
        return reject(RejectReason.UNKNOWN_FORMAT, f"fields ({keys}) match no format; {_FORMAT_HINT}")
    prompt = system_prompt if system_prompt and system_prompt.strip() else None
    try:
        kind, data, added = _NORMALISERS[row_fmt](value, prompt)
    except _Invalid as exc:
        return reject(exc.reason, exc.detail)
    meta: dict[str, Any] = {"format": row_fmt}
    if added:
        # row_text/map_text skip the injected turn: it is configuration, not the row's data.
        meta["system_prompt_added"] = True
    return Row(raw.source, raw.line, kind, data, meta=meta)


def _alpaca(obj: dict[str, Any], system_prompt: str | None) -> tuple[str, dict[str, Any], bool]:
    instruction = _text(obj, "instruction")
    output = _text(obj, "output")
    extra = _optional_text(obj, "input")
    system = _optional_text(obj, "system")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [_msg("user", user), _msg("assistant", output)]
    if system:
        messages.insert(0, _msg("system", system))
    messages, added = _with_system(messages, system_prompt)
    return CHAT, {"messages": messages}, added


def _chat(obj: dict[str, Any], system_prompt: str | None) -> tuple[str, dict[str, Any], bool]:
    turns = _turn_list(obj, "messages")
    messages = [_chat_message(turn, f"messages[{i}]") for i, turn in enumerate(turns)]
    _check_conversation(messages, [f"messages[{i}]" for i in range(len(messages))])
    messages, added = _with_system(messages, system_prompt)
    return CHAT, {"messages": messages}, added


def _sharegpt(obj: dict[str, Any], system_prompt: str | None) -> tuple[str, dict[str, Any], bool]:
    turns = _turn_list(obj, "conversations")
    messages = [_sharegpt_message(turn, f"conversations[{i}]") for i, turn in enumerate(turns)]
    labels = [f"conversations[{i}]" for i in range(len(messages))]
    _check_conversation(messages, labels)
    # Some ShareGPT exports keep the system prompt in a top-level field.
    system = _optional_text(obj, "system")
    if system:
        if messages[0]["role"] == "system":
            raise _Invalid(
                RejectReason.BAD_ROLE_ORDER,
                "both a top-level 'system' field and a system turn at conversations[0]; keep one",
            )
        messages.insert(0, _msg("system", system))
    messages, added = _with_system(messages, system_prompt)
    return CHAT, {"messages": messages}, added


def _prompt_completion(
    obj: dict[str, Any], system_prompt: str | None
) -> tuple[str, dict[str, Any], bool]:
    prompt, prompt_labels = _side(obj, "prompt", "user")
    completion, completion_labels = _side(obj, "completion", "assistant")
    _check_continuation(prompt, prompt_labels, completion, completion_labels)
    messages, added = _with_system(prompt + completion, system_prompt)
    return CHAT, {"messages": messages}, added


def _preference(obj: dict[str, Any], system_prompt: str | None) -> tuple[str, dict[str, Any], bool]:
    prompt, prompt_labels = _side(obj, "prompt", "user")
    chosen, chosen_labels = _side(obj, "chosen", "assistant")
    rejected, rejected_labels = _side(obj, "rejected", "assistant")
    _check_continuation(prompt, prompt_labels, chosen, chosen_labels)
    _check_continuation(prompt, prompt_labels, rejected, rejected_labels)
    prompt, added = _with_system(prompt, system_prompt)
    return PREFERENCE, {"prompt": prompt, "chosen": chosen, "rejected": rejected}, added


def _text_row(obj: dict[str, Any], _system_prompt: str | None) -> tuple[str, dict[str, Any], bool]:
    return TEXT, {"text": _text(obj, "text")}, False


_NORMALISERS: dict[str, Callable[[dict[str, Any], str | None], tuple[str, dict[str, Any], bool]]] = {
    "alpaca": _alpaca,
    "chat": _chat,
    "sharegpt": _sharegpt,
    "prompt_completion": _prompt_completion,
    "preference": _preference,
    "text": _text_row,
}


# --- field helpers ----------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """A value's JSON type, as users see it in their files."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _text(obj: dict[str, Any], key: str, *, where: str | None = None) -> str:
    """A required string field: MISSING_FIELD, NON_STRING_CONTENT or EMPTY_FIELD otherwise.

    null counts as missing (Parquet and CSV exports use it for absent cells); whitespace-only
    counts as empty.
    """
    where = where or f"'{key}'"
    value = _optional_text(obj, key, where=where)
    if value is None:
        if obj.get(key) is not None:
            raise _Invalid(RejectReason.EMPTY_FIELD, f"field {where} is empty")
        found = "is null" if key in obj else "is missing"
        raise _Invalid(RejectReason.MISSING_FIELD, f"field {where} {found}")
    return value


def _optional_text(obj: dict[str, Any], key: str, *, where: str | None = None) -> str | None:
    """An optional string field; None when absent, null or blank, NON_STRING_CONTENT if not text."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        where = where or f"'{key}'"
        raise _Invalid(RejectReason.NON_STRING_CONTENT, f"{where} is {_describe(value)}, expected a string")
    return value if value.strip() else None


def _msg(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _decode_json_cell(key: str, value: str) -> Any:
    """A list given as a JSON string (CSV cells can only hold strings)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise _Invalid(
            RejectReason.INVALID_JSON,
            f"field '{key}' is a string that is not valid JSON: {exc.msg} at column {exc.colno}",
        ) from exc


def _turn_list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        found = "is null" if key in obj else "is missing"
        raise _Invalid(RejectReason.MISSING_FIELD, f"field '{key}' {found}")
    if isinstance(value, str):
        if not value.strip():
            raise _Invalid(RejectReason.EMPTY_FIELD, f"field '{key}' is empty")
        value = _decode_json_cell(key, value)
    if not isinstance(value, list | tuple):
        raise _Invalid(
            RejectReason.NOT_AN_OBJECT, f"field '{key}' is {_describe(value)}, expected an array of turns"
        )
    if not value:
        raise _Invalid(RejectReason.EMPTY_FIELD, f"field '{key}' is an empty array")
    return list(value)


def _chat_message(turn: Any, where: str) -> Message:
    if not isinstance(turn, dict):
        raise _Invalid(
            RejectReason.NOT_AN_OBJECT, f"{where} is {_describe(turn)}, expected an object with role and content"
        )
    role = turn.get("role")
    if role is None:
        raise _Invalid(RejectReason.MISSING_FIELD, f"field {where}.role is missing")
    if not isinstance(role, str) or role.strip().lower() not in ROLES:
        raise _Invalid(
            RejectReason.UNKNOWN_ROLE, f"{where}.role is {role!r}; allowed roles: {', '.join(ROLES)}"
        )
    role = role.strip().lower()
    message: Message = {"role": role}
    tool_calls = turn.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list | tuple) or not all(isinstance(c, dict) for c in tool_calls):
            raise _Invalid(
                RejectReason.NOT_AN_OBJECT, f"{where}.tool_calls must be an array of objects"
            )
        # Copied so the Row shares nothing mutable with the raw row; empty means no call.
        tool_calls = copy.deepcopy(list(tool_calls)) or None
    if role == "assistant" and tool_calls:
        # A turn that only calls tools has no text; "" keeps templates that test it working.
        content = turn.get("content")
        if content is not None and not isinstance(content, str):
            raise _Invalid(
                RejectReason.NON_STRING_CONTENT, f"{where}.content is {_describe(content)}, expected a string"
            )
        message["content"] = content or ""
    else:
        message["content"] = _text(turn, "content", where=f"{where}.content")
    if tool_calls:
        message["tool_calls"] = tool_calls
    for key in ("name", "tool_call_id"):
        extra = _optional_text(turn, key, where=f"{where}.{key}")
        if extra is not None:
            message[key] = extra
    return message


def _sharegpt_message(turn: Any, where: str) -> Message:
    if not isinstance(turn, dict):
        raise _Invalid(
            RejectReason.NOT_AN_OBJECT, f"{where} is {_describe(turn)}, expected an object with from and value"
        )
    source = turn.get("from")
    if source is None:
        raise _Invalid(RejectReason.MISSING_FIELD, f"field {where}.from is missing")
    role = SHAREGPT_ROLES.get(source.strip().lower()) if isinstance(source, str) else None
    if role is None:
        raise _Invalid(
            RejectReason.UNKNOWN_ROLE, f"{where}.from is {source!r}; allowed: {', '.join(SHAREGPT_ROLES)}"
        )
    return _msg(role, _text(turn, "value", where=f"{where}.value"))


def _side(obj: dict[str, Any], key: str, role: str) -> tuple[list[Message], list[str]]:
    """prompt/completion/chosen/rejected: a string (one ``role`` turn) or a list of messages."""
    value = obj.get(key)
    if isinstance(value, str):
        stripped = value.lstrip()
        # A CSV cell holding a JSON message list; plain text starting with "[" stays text.
        if stripped.startswith("["):
            try:
                decoded = json.loads(stripped)
            except json.JSONDecodeError:
                decoded = None
            if isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded):
                value = decoded
    if isinstance(value, list | tuple):
        if not value:
            raise _Invalid(RejectReason.EMPTY_FIELD, f"field '{key}' is an empty array")
        labels = [f"{key}[{i}]" for i in range(len(value))]
        return [_chat_message(m, label) for m, label in zip(value, labels, strict=True)], labels
    return [_msg(role, _text(obj, key))], [f"'{key}'"]


def _with_system(messages: list[Message], system_prompt: str | None) -> tuple[list[Message], bool]:
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages, False
    return [_msg("system", system_prompt), *messages], True


# --- conversation rules -----------------------------------------------------------------------


def _check_conversation(messages: list[Message], labels: list[str]) -> None:
    """Apply the module's conversation rules; ``labels`` name each turn in the input."""
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise _Invalid(
            RejectReason.NO_ASSISTANT_TURN,
            f"no assistant turn (roles: {', '.join(roles)}); there is nothing to train on",
        )
    previous: str | None = None
    for role, label, before in zip(roles, labels, [None, *labels], strict=False):
        if role == "system":
            if previous is not None:
                _bad_order(f"{label} is a system turn; a system turn is only allowed first")
        elif previous in (None, "system"):
            if role != "user":
                _bad_order(
                    f"{label} is {_a(role)} turn; a conversation must start with a user turn "
                    "(after an optional system turn)"
                )
        elif role == previous and role in ("user", "assistant"):
            _bad_order(f"{before} and {label} are both {role} turns; user and assistant turns alternate")
        elif role == "tool" and previous not in ("assistant", "tool"):
            _bad_order(
                f"{label} is a tool turn after {_a(previous)} turn; a tool result must follow an "
                "assistant turn (or another tool result)"
            )
        elif role == "user" and previous == "tool":
            _bad_order(f"{label} is a user turn after a tool result; an assistant turn must answer it first")
        previous = role
    if roles[-1] != "assistant":
        _bad_order(
            f"the conversation ends with {_a(roles[-1])} turn ({labels[-1]}); the last turn must be "
            "assistant, since nothing after the last assistant turn is trained"
        )


def _check_continuation(
    prompt: list[Message], prompt_labels: list[str], answer: list[Message], answer_labels: list[str]
) -> None:
    """A completion/chosen/rejected answer: starts with assistant and continues the prompt."""
    if answer[0]["role"] != "assistant":
        _bad_order(f"{answer_labels[0]} is {_a(answer[0]['role'])} turn; an answer must start with an assistant turn")
    _check_conversation(prompt + answer, prompt_labels + answer_labels)


def _a(role: str | None) -> str:
    return "an assistant" if role == "assistant" else f"a {role}"


def _bad_order(detail: str) -> NoReturn:
    raise _Invalid(RejectReason.BAD_ROLE_ORDER, detail)


# --- text access ------------------------------------------------------------------------------


def _conversations(row: Row) -> list[list[Message]]:
    """The message lists of a chat or preference row, the injected system turn left out."""
    if row.kind == CHAT:
        lists = [row.data["messages"]]
    elif row.kind == PREFERENCE:
        lists = [row.data["prompt"], row.data["chosen"], row.data["rejected"]]
    else:
        raise ValueError(f"row kind {row.kind!r} has no messages")
    if row.meta.get("system_prompt_added"):
        lists[0] = lists[0][1:]
    return lists


def row_text(row: Row) -> str:
    """All human-written text of a row, joined with newlines (for dedup, PII, decontamination).

    Message contents in order (preference: prompt, chosen, rejected), or the text. A system
    prompt injected from the configuration is left out: it is not the row's data and would make
    every row look alike. Tool-call arguments are not included.
    """
    if row.kind == TEXT:
        return row.data["text"]
    return "\n".join(m["content"] for messages in _conversations(row) for m in messages if m["content"])


def map_text(row: Row, fn: Callable[[str], str]) -> Row:
    """A new Row with ``fn`` applied to every text that row_text returns (e.g. PII redaction).

    The original row is not modified.
    """
    if row.kind == TEXT:
        data: dict[str, Any] = {**row.data, "text": fn(row.data["text"])}
    else:
        skip_first = bool(row.meta.get("system_prompt_added"))

        def mapped(messages: list[Message], first: bool) -> list[Message]:
            return [
                {**m, "content": fn(m["content"])}
                if m["content"] and not (first and i == 0 and skip_first)
                else {**m}
                for i, m in enumerate(messages)
            ]

        keys = ["messages"] if row.kind == CHAT else ["prompt", "chosen", "rejected"]
        data = {**row.data, **{k: mapped(row.data[k], i == 0) for i, k in enumerate(keys)}}
    return dataclasses.replace(row, data=data, meta=dict(row.meta))
