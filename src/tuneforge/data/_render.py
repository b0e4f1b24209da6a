"""Render normalised rows with the base model's chat template, marking the trainable spans.

The trainable spans of a chat row are its assistant turns, including the end-of-turn marker the
template appends, so a model trained on them learns to stop. Spans are found by rendering each
conversation prefix, which works for any template that renders a prefix of a conversation as a
prefix of the whole (true of the common templates; a template that is not raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.data._types import CHAT, PREFERENCE, TEXT, Row
from tuneforge.errors import DataError


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # [start, end) character offsets of trainable text


def _template(tokenizer: Any, messages: list[dict[str, Any]], *, gen: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def render_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> Rendered:
    text = _template(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _template(tokenizer, messages[:i], gen=True)
        upto = _template(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and text.startswith(upto)):
            raise DataError(
                "the chat template does not render conversation prefixes as prefixes, so "
                "assistant spans cannot be located",
                where=f"assistant turn {i}",
                fix="use a template without history-dependent rewriting, or train on the last turn only",
            )
        spans.append((len(before), len(upto)))
    return Rendered(text, spans)


def render_row(tokenizer: Any, row: Row) -> list[Rendered]:
    """One rendering per training sequence: one for chat/text rows, chosen and rejected for pairs."""
    if row.kind == CHAT:
        return [render_chat(tokenizer, row.data["messages"])]
    if row.kind == PREFERENCE:
        return [
            render_chat(tokenizer, row.data["prompt"] + row.data["chosen"]),
            render_chat(tokenizer, row.data["prompt"] + row.data["rejected"]),
        ]
    if row.kind == TEXT:
        eos = tokenizer.eos_token or ""
        text = row.data["text"] + eos
        return [Rendered(text, [(0, len(text))])]
    raise ValueError(f"unknown row kind {row.kind!r}")


def render_texts(tokenizer: Any, row: Row) -> list[str]:
    """The rendered training text(s) of a row, without span bookkeeping (the fast path)."""
    if row.kind == CHAT:
        return [_template(tokenizer, row.data["messages"])]
    if row.kind == PREFERENCE:
        return [
            _template(tokenizer, row.data["prompt"] + row.data["chosen"]),
            _template(tokenizer, row.data["prompt"] + row.data["rejected"]),
        ]
    return [row.data["text"] + (tokenizer.eos_token or "")]
