"""Small types shared by the data stage's modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Normalised row kinds.
CHAT = "chat"  # {"messages": [{"role", "content", ...}, ...]}
PREFERENCE = "preference"  # {"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}
TEXT = "text"  # {"text": str} (continued pre-training)


@dataclass(frozen=True)
class RawRow:
    """One row as read from an input file, before any interpretation.

    ``line`` is 1-based: the physical line for JSONL and CSV (the header is line 1), the element
    index + 1 for a JSON array, the row index + 1 for Parquet. ``value`` is the parsed object, or
    None when the row could not be parsed, in which case ``error`` says why.
    """

    source: str
    line: int
    value: Any = None
    error: str | None = None


@dataclass
class Row:
    """A row normalised to tuneforge's schema, plus where it came from."""

    source: str
    line: int
    kind: str  # CHAT, PREFERENCE or TEXT
    data: dict[str, Any]  # the normalised fields for its kind (see above)
    origin: str = "domain"  # source tag: "domain" or "general" (mixing)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    """A row that was not kept, with the reason. Written to rejected.jsonl."""

    source: str
    line: int
    reason: str  # one of REASONS
    detail: str  # human-readable specifics (which field, which row it duplicates, ...)
    row: Any = None  # the raw or normalised content, so nothing is lost


class RejectReason:
    """Every reason a row can be rejected. Keys of manifest.json's rejected counts."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_FORMAT = "unknown_format"
    MISSING_FIELD = "missing_field"
    EMPTY_FIELD = "empty_field"
    NON_STRING_CONTENT = "non_string_content"
    UNKNOWN_ROLE = "unknown_role"
    BAD_ROLE_ORDER = "bad_role_order"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    TOO_MANY_TOKENS = "too_many_tokens"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    PII = "pii"
    CONTAMINATED = "contaminated"
    MIX_SURPLUS = "mix_surplus"  # a general-purpose row the mixing ratio did not need


REASONS: tuple[str, ...] = tuple(
    v for k, v in vars(RejectReason).items() if not k.startswith("_") and isinstance(v, str)
)
