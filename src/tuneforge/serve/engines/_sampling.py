"""Per-row token choice and per-choice text bookkeeping for the local engine.

Every choice owns a ``torch.Generator`` seeded from its request, and sampling reads only that
choice's logits row, so a seeded request draws the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tuneforge.serve.engines.base import SamplingParams, TokenLogprob


@dataclass
class Choice:
    """What one row of logits turned into."""

    token_id: int
    logprob: TokenLogprob | None = None


def pick(logits: Any, params: SamplingParams, generator: Any, tokenizer: Any, banned: Any = None,
         allowed: Any = None) -> Choice:
    """Choose the next token from one row of logits (fp32, shape [vocab]).

    ``banned``/``allowed`` are id tensors used by the JSON steering; logprobs are reported from the
    model's own distribution (before temperature/top-p), as OpenAI does.
    """
    import torch

    row = logits.float()
    if allowed is not None:
        masked = torch.full_like(row, -math.inf)
        masked[allowed] = row[allowed]
        row = masked
    if banned is not None and len(banned):
        row = row.clone()
        row[banned] = -math.inf
    if params.temperature <= 0:
        token = int(torch.argmax(row))
    else:
        probs = torch.softmax(row / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            drop = torch.cumsum(sorted_p, dim=-1) - sorted_p >= params.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        token = int(torch.multinomial(probs, 1, generator=generator))
    if not params.logprobs:
        return Choice(token)
    logp = torch.log_softmax(logits.float(), dim=-1)
    top: tuple[tuple[str, float], ...] = ()
    if params.top_logprobs > 0:
        values, ids = torch.topk(logp, params.top_logprobs)
        top = tuple((tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids, strict=True))
    return Choice(token, TokenLogprob(tokenizer.decode([token]), float(logp[token]), top))


@dataclass
class TextState:
    """Decoded output of one choice: what was emitted, and what is held back.

    Text that might be the start of a stop string, or an incomplete UTF-8 character, is held
    until the next token decides it, so a stop string never reaches the client.
    """

    stops: tuple[str, ...]
    json_mode: bool = False
    ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the decoded text already sent
    text: str = ""

    def add(self, tokenizer: Any, token_id: int) -> tuple[str, bool]:
        """Append a token; return (new text safe to send, whether a stop string or JSON end was hit)."""
        self.ids.append(token_id)
        self.text = tokenizer.decode(self.ids, skip_special_tokens=False)
        end = self._stop_at()
        if end is not None:
            delta = self.text[self.emitted:end] if end > self.emitted else ""
            self.emitted = max(self.emitted, end)
            return delta, True
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            safe -= 1
        safe -= self._partial_stop_len()
        if safe <= self.emitted:
            return "", False
        delta = self.text[self.emitted:safe]
        self.emitted = safe
        return delta, False

    def flush(self) -> str:
        """Release held-back text when the choice ends for another reason (length, stop token)."""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta

    def json_open(self) -> bool:
        """True while a JSON object has not started or is not closed yet."""
        return self.json_mode and json_object_end(self.text) is None

    def _stop_at(self) -> int | None:
        ends = []
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.emitted - len(stop)))
            if at >= 0:
                ends.append(at)
        if self.json_mode:
            end = json_object_end(self.text)
            if end is not None:
                ends.append(end)
        return min(ends) if ends else None

    def _partial_stop_len(self) -> int:
        held = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:k]):
                    held = max(held, k)
                    break
        return held


def json_object_end(text: str) -> int | None:
    """Index just past the top-level JSON object that ``text`` starts with, or None if unclosed."""
    start = len(text) - len(text.lstrip())
    if start >= len(text) or text[start] != "{":
        return None
    depth, in_str, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def json_start_ids(tokenizer: Any) -> list[int]:
    """Token ids whose text, ignoring leading whitespace, opens a JSON object."""
    out = []
    for tid in range(len(tokenizer)):
        piece = tokenizer.decode([tid]).lstrip()
        if piece.startswith("{"):
            out.append(tid)
    return out
