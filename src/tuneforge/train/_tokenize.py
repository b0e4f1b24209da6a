"""Prepared rows to token ids and labels: the loss mask is built here and nowhere else.

A row is rendered with the data stage's `render_chat`, which gives the character spans of every
assistant turn including the end-of-turn marker the template appends. The rendered text is
tokenised once with offsets, and a token is trained when its characters overlap a span. Labels
are built per example; padding added later by the collator never touches them, so a pad token
that equals the end-of-turn token (SmolLM2: <|im_end|>) cannot mask the real end of a turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data import Rendered, render_chat

IGNORE = -100
# Row kinds each method trains on; other rows are skipped and counted.
KINDS = {"sft": "chat", "cpt": "text", "dpo": "preference"}


@dataclass(frozen=True, eq=False)
class Example:
    """One training sequence: ids, labels (-100 where no loss) and where it came from.

    int32 arrays, not lists: a Python int per token would take ~36 bytes, so 100k rows of 500 tokens
    would hold several GB before training starts.
    """

    id: str
    origin: str  # file:line of the input row
    input_ids: np.ndarray
    labels: np.ndarray
    turns: int  # assistant turns (chat) or 1 (text): each must end with a trained stop token

    @property
    def trained(self) -> int:
        return int((self.labels != IGNORE).sum())

    def trained_stops(self, stops: set[int]) -> int:
        return int(np.isin(self.labels, list(stops)).sum())


def _example(rec_id: str, origin: str, tokenizer: Any, rendered: Rendered, turns: int) -> Example:
    ids, labels, _ = encode(tokenizer, rendered)
    return Example(rec_id, origin, np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32), turns)


def render_record(tokenizer: Any, rec: dict[str, Any]) -> tuple[Rendered, int]:
    """The rendered text and trainable spans of a prepared chat or text record, and its turn count."""
    if rec["kind"] == "chat":
        msgs = rec["messages"]
        return render_chat(tokenizer, msgs), sum(m["role"] == "assistant" for m in msgs)
    if rec["kind"] == "text":
        # As the data stage renders text rows: the text plus the eos token, every token trained.
        text = rec["text"] + (tokenizer.eos_token or "")
        return Rendered(text, [(0, len(text))]), 1
    raise ValueError(f"cannot render a {rec['kind']!r} row as one training sequence")


def encode(tokenizer: Any, rendered: Rendered) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Token ids, labels and character offsets of a rendered text.

    A token is trained when its character range overlaps a trainable span (a zero-width token when
    its position lies inside one), so every character of an answer is covered even when a token
    straddles a span boundary.
    """
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    spans = sorted(rendered.spans)
    labels = [IGNORE] * len(ids)
    j = 0
    for k, (s, e) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j == len(spans):
            break
        a, b = spans[j]
        if (s < b and e > a) or (s == e and a <= s < b):
            labels[k] = ids[k]
    return ids, labels, offsets  # type: ignore[return-value]


def read_split(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one split of a prepared dataset, streamed (a missing split is empty)."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def build_examples(tokenizer: Any, records: Iterable[dict[str, Any]], kind: str) -> tuple[list[Example], int]:
    """Examples for the records of ``kind``, and how many records of other kinds were skipped."""
    out: list[Example] = []
    skipped = 0
    for rec in records:
        if rec.get("kind") != kind:
            skipped += 1
            continue
        rendered, turns = render_record(tokenizer, rec)
        out.append(_example(str(rec.get("id", len(out))), str(rec.get("origin", "")), tokenizer, rendered, turns))
    return out, skipped


def segments(tokenizer: Any, rendered: Rendered) -> list[tuple[str, bool]]:
    """The rendered text cut at token starts into (text, trained) runs, exactly as the labels mark it."""
    _, labels, offsets = encode(tokenizer, rendered)
    text = rendered.text
    out: list[tuple[str, bool]] = []
    starts = [s for s, _ in offsets]
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(text)
        piece = text[start:end] if k else text[:end]
        trained = labels[k] != IGNORE
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + piece, trained)
        elif piece:
            out.append((piece, trained))
    return out


@dataclass(frozen=True)
class Pair:
    """A preference row: the conversation prompt, and chosen/rejected examples trained on their answer."""

    prompt: list[dict[str, Any]]
    chosen_messages: list[dict[str, Any]]
    rejected_messages: list[dict[str, Any]]
    chosen: Example
    rejected: Example


def build_pairs(tokenizer: Any, records: Iterable[dict[str, Any]]) -> tuple[list[Pair], int]:
    """Preference pairs, each side labelled on its answer turns only (the prompt's turns are context)."""
    out: list[Pair] = []
    skipped = 0
    for rec in records:
        if rec.get("kind") != "preference":
            skipped += 1
            continue
        sides = []
        for key in ("chosen", "rejected"):
            rendered, turns = render_answer(tokenizer, rec["prompt"], rec[key])
            sides.append(_example(f"{rec.get('id', len(out))}:{key}", str(rec.get("origin", "")), tokenizer,
                                  rendered, turns))
        out.append(Pair(rec["prompt"], rec["chosen"], rec["rejected"], sides[0], sides[1]))
    return out, skipped


def render_answer(tokenizer: Any, prompt: list[dict[str, Any]], answer: list[dict[str, Any]]) -> tuple[Rendered, int]:
    """prompt + answer rendered, with only the answer's assistant turns trainable."""
    rendered = render_chat(tokenizer, prompt + answer)
    turns = sum(m["role"] == "assistant" for m in answer)
    return Rendered(rendered.text, rendered.spans[len(rendered.spans) - turns:] if turns else []), turns


def sample_renderings(tokenizer: Any, records: Iterable[dict[str, Any]], method: str, n: int) -> list[Rendered]:
    """The first ``n`` training sequences as rendered text with trainable spans (pairs give two)."""
    out: list[Rendered] = []
    for rec in records:
        if len(out) >= n:
            break
        if rec.get("kind") != KINDS[method]:
            continue
        if method == "dpo":
            out += [render_answer(tokenizer, rec["prompt"], rec[k])[0] for k in ("chosen", "rejected")]
        else:
            out.append(render_record(tokenizer, rec)[0])
    return out[:n]
