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


def _conversations(row: Row) -> list[list[dict[str, Any]]]:
    if row.kind == CHAT:
        return [row.data["messages"]]
    if row.kind == PREFERENCE:
        return [row.data["prompt"] + row.data["chosen"], row.data["prompt"] + row.data["rejected"]]
    return []


def render_texts_batch(tokenizer: Any, rows: list[Row]) -> list[list[str]]:
    """``render_texts`` of each row, with one batched ``apply_chat_template`` call for all of them.

    transformers renders a list of conversations in one call; its per-call set-up (template
    lookup, special-token map) is then paid once per batch instead of once per row.
    """
    per_row = [_conversations(row) for row in rows]
    flat = [c for convs in per_row for c in convs]
    rendered = iter(tokenizer.apply_chat_template(flat, tokenize=False) if flat else [])
    eos = tokenizer.eos_token or ""
    return [
        [next(rendered) for _ in convs] if convs else [row.data["text"] + eos]
        for row, convs in zip(rows, per_row, strict=True)
    ]


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
