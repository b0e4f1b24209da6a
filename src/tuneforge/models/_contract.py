"""The chat contract: how a model expects conversations to be rendered and ended.

Training stores it next to every adapter and serving checks it, so a model trained one way is
never served another way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneforge.models._resolve import ResolvedModel


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatContract:
    chat_template: str
    chat_template_sha256: str
    tokenizer_sha256: str
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    stop_tokens: list[str] = field(default_factory=list)
    base_model: str = ""  # ResolvedModel.name
    base_model_ref: str = ""
    base_weights_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatContract:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def differences(self, other: ChatContract) -> list[str]:
        """Fields that differ in a way that changes what the model sees or when it stops."""
        keys = ("chat_template_sha256", "tokenizer_sha256", "eos_token", "stop_tokens",
                "base_weights_sha256")
        return [
            f"{k}: {getattr(self, k)!r} != {getattr(other, k)!r}"
            for k in keys
            if getattr(self, k) != getattr(other, k)
        ]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the tokenizer's vocabulary/merges/normaliser and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    special = json.dumps(
        {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    )
    return sha256_text(body + "\0" + special)


def compute_contract(tokenizer: Any, model: ResolvedModel, generation_config: Any = None) -> ChatContract:
    """Build the contract from a loaded tokenizer (and generation config, for extra stop ids)."""
    template = tokenizer.chat_template or ""
    stop: list[str] = []
    if tokenizer.eos_token:
        stop.append(tokenizer.eos_token)
    eos_ids = getattr(generation_config, "eos_token_id", None) if generation_config else None
    if isinstance(eos_ids, int):
        eos_ids = [eos_ids]
    for tid in eos_ids or []:
        tok = tokenizer.convert_ids_to_tokens(int(tid))
        if tok and tok not in stop:
            stop.append(tok)
    return ChatContract(
        chat_template=template,
        chat_template_sha256=sha256_text(template),
        tokenizer_sha256=tokenizer_fingerprint(tokenizer),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        stop_tokens=stop,
        base_model=model.name,
        base_model_ref=model.ref,
        base_weights_sha256=model.weights_sha256,
    )


def load_contract(model: ResolvedModel, tokenizer: Any) -> ChatContract:
    """The contract of a resolved base model, reading its generation_config.json when present."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model.path)
    except OSError:
        gen = None
    return compute_contract(tokenizer, model, gen)
