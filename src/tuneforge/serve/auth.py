"""API keys: kept as sha256 digests only, each with an id (logged instead of the key) and scopes."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from tuneforge.serve.errors import ApiError

API_KEY_ENV = "TUNEFORGE_API_KEY"
ADMIN_KEY_ENV = "TUNEFORGE_ADMIN_KEY"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "tf-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    scopes: frozenset[str]
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


ANONYMOUS = KeyInfo("anonymous", frozenset({"inference", "admin"}))


class KeyStore:
    """Looks keys up by digest; ``enabled=False`` lets every request in as ``anonymous``."""

    def __init__(self, keys: dict[str, KeyInfo], *, enabled: bool = True) -> None:
        self._by_digest = dict(keys)
        self.enabled = enabled

    @classmethod
    def from_config(cls, serve_cfg, environ: dict[str, str] | None = None) -> KeyStore:
        env = os.environ if environ is None else environ
        keys: dict[str, KeyInfo] = {}
        for k in serve_cfg.keys:
            keys[k.sha256] = KeyInfo(
                k.id, frozenset(k.scopes),
                k.requests_per_minute or serve_cfg.requests_per_minute,
                k.tokens_per_minute or serve_cfg.tokens_per_minute,
            )
        # Keys from the environment are hashed at once; the plaintext is not kept.
        for var, key_id, scopes in ((API_KEY_ENV, "env", {"inference"}),
                                    (ADMIN_KEY_ENV, "env-admin", {"inference", "admin"})):
            if env.get(var):
                keys[hash_key(env[var])] = KeyInfo(
                    key_id, frozenset(scopes), serve_cfg.requests_per_minute, serve_cfg.tokens_per_minute
                )
        return cls(keys, enabled=serve_cfg.auth)

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, authorization: str | None, *, scope: str = "inference") -> KeyInfo:
        if not self.enabled:
            return ANONYMOUS
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
        digest = hash_key(authorization[7:].strip())
        info = None
        for known, candidate in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                info = candidate
        if info is None:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        if scope not in info.scopes:
            raise ApiError(403, f"The key '{info.id}' lacks the '{scope}' scope.", code="insufficient_scope")
        return info
