"""Base models: resolution (hub id, local dir, bundled), loading, and the chat contract."""

from tuneforge.models._catalog import ModelEntry, list_models
from tuneforge.models._contract import ChatContract, compute_contract, load_contract, tokenizer_fingerprint
from tuneforge.models._load import load_model, load_tokenizer, pick_dtype
from tuneforge.models._resolve import ResolvedModel, resolve_model

__all__ = [
    "ChatContract",
    "ModelEntry",
    "ResolvedModel",
    "compute_contract",
    "list_models",
    "load_contract",
    "load_model",
    "load_tokenizer",
    "pick_dtype",
    "resolve_model",
    "tokenizer_fingerprint",
]
