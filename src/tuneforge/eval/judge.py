"""LLM-as-judge over any OpenAI-compatible endpoint: rubric scores (1-10) and pairwise preference.

Pairwise comparisons run in both orders; a verdict that flips with the order is position bias,
so it counts as a tie. The prompts are versioned and stored with the results.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from tuneforge.errors import EvalError

PROMPT_VERSION = "judge-v1"

RUBRIC_PROMPT = """You are grading an AI assistant's answer.

[Conversation]
{conversation}

[Reference answer]
{reference}

[Assistant's answer]
{answer}

Rate the assistant's answer from 1 (useless or wrong) to 10 (correct, complete and in the requested \
format), using the reference answer as the ground truth. Reply with one line exactly like:
Score: N"""

PAIRWISE_PROMPT = """You are comparing two AI assistant answers to the same conversation.

[Conversation]
{conversation}

[Reference answer]
{reference}

[Answer A]
{a}

[Answer B]
{b}

Which answer is better: correct, complete and in the requested format, using the reference answer \
as the ground truth? Reply with one line exactly like:
Verdict: A
or Verdict: B, or Verdict: tie"""

Outcome = Literal["win", "loss", "tie"]


@dataclass(frozen=True)
class JudgeClient:
    url: str
    model: str
    api_key: str | None
    timeout_s: float = 60.0

    @classmethod
    def from_config(cls, jcfg: Any) -> JudgeClient:
        key = os.environ.get(jcfg.api_key_env) if jcfg.api_key_env else None
        return cls(jcfg.url.rstrip("/"), jcfg.model or "judge", key, jcfg.timeout_s)

    def complete(self, prompt: str) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
        try:
            r = httpx.post(f"{self.url}/chat/completions", json=body, headers=headers, timeout=self.timeout_s)
            r.raise_for_status()
            return str(r.json()["choices"][0]["message"]["content"] or "")
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise EvalError(f"the judge endpoint failed: {type(exc).__name__}: {str(exc)[:200]}",
                            where=f"{self.url}/chat/completions (eval.judge.url)",
                            fix="check eval.judge.url / model / the key in eval.judge.api_key_env, or unset "
                            "eval.judge.url to skip the judge") from None


def parse_score(text: str) -> int | None:
    """The 1-10 score in a judge reply ('Score: 7', '7/10', 'rating of 8'), None when absent."""
    for pattern in (r"score\W{0,3}(\d{1,2})\b", r"\b(\d{1,2})\s*/\s*10\b", r"rating\D{0,12}(\d{1,2})\b",
                    r"^\D*?(\d{1,2})\b"):
        m = re.search(pattern, text, re.IGNORECASE)
        if m and 1 <= int(m.group(1)) <= 10:
            return int(m.group(1))
    return None


def parse_verdict(text: str) -> Literal["A", "B", "tie"] | None:
    """'Verdict: A' / 'B' / 'tie' (also [[A]], 'Answer A is better'), None when unreadable."""
    m = re.search(r"verdict\W{0,3}(a|b|tie)\b", text, re.IGNORECASE) or re.search(r"\[\[(A|B|tie)\]\]", text,
                                                                                 re.IGNORECASE)
    if m is None:
        m = re.search(r"\banswer\s+(A|B)\s+is\s+better\b", text, re.IGNORECASE) or re.fullmatch(
            r"\s*(A|B|tie)\s*\.?\s*", text, re.IGNORECASE)
    if m is None:
        return None
    v = m.group(1).lower()
    return "tie" if v == "tie" else ("A" if v == "a" else "B")


def render_conversation(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def rubric_scores(client: JudgeClient, prompts: list[list[dict[str, str]]], references: list[str],
                  answers: list[str]) -> list[int | None]:
    return [parse_score(client.complete(RUBRIC_PROMPT.format(conversation=render_conversation(p), reference=r,
                                                            answer=a)))
            for p, r, a in zip(prompts, references, answers, strict=True)]


@dataclass(frozen=True)
class PairwiseItem:
    first: str | None  # verdict with the candidate as A
    second: str | None  # verdict with the candidate as B
    outcome: Outcome

    @property
    def value(self) -> float:
        return {"win": 1.0, "tie": 0.5, "loss": 0.0}[self.outcome]


def combine(first: str | None, second: str | None) -> Outcome:
    """The candidate is A in the first verdict and B in the second; a flip between orders is a tie."""
    as_a = {"A": "win", "B": "loss"}.get(first or "", "tie")
    as_b = {"B": "win", "A": "loss"}.get(second or "", "tie")
    return as_a if as_a == as_b else "tie"  # type: ignore[return-value]


def pairwise(client: JudgeClient, prompts: list[list[dict[str, str]]], references: list[str],
             candidate: list[str], baseline: list[str]) -> list[PairwiseItem]:
    out = []
    for p, r, c, b in zip(prompts, references, candidate, baseline, strict=True):
        conv = render_conversation(p)
        first = parse_verdict(client.complete(PAIRWISE_PROMPT.format(conversation=conv, reference=r, a=c, b=b)))
        second = parse_verdict(client.complete(PAIRWISE_PROMPT.format(conversation=conv, reference=r, a=b, b=c)))
        out.append(PairwiseItem(first, second, combine(first, second)))
    return out


def win_rate(items: list[PairwiseItem]) -> float:
    """(wins + 0.5 * ties) / n."""
    return sum(i.value for i in items) / len(items) if items else float("nan")
