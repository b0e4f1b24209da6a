"""Per-key sliding-window limits on requests and tokens per minute."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from tuneforge.serve.auth import KeyInfo
from tuneforge.serve.errors import ApiError

WINDOW_S = 60.0


class RateLimiter:
    """Admission checks the request count and the tokens already used in the last minute; the
    tokens a request used are charged when it finishes (its size is unknown before)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def admit(self, key: KeyInfo) -> None:
        now = self._clock()
        with self._lock:
            if key.requests_per_minute:
                q = self._requests.setdefault(key.id, deque())
                _expire(q, now)
                if len(q) >= key.requests_per_minute:
                    raise ApiError(
                        429, f"Rate limit reached for key '{key.id}': {key.requests_per_minute} requests "
                        "per minute.", code="rate_limit_exceeded", retry_after=q[0] + WINDOW_S - now,
                    )
                q.append(now)
            if key.tokens_per_minute:
                t = self._tokens.setdefault(key.id, deque())
                _expire_tokens(t, now)
                used = sum(n for _, n in t)
                if used >= key.tokens_per_minute:
                    raise ApiError(
                        429, f"Rate limit reached for key '{key.id}': {key.tokens_per_minute} tokens per "
                        f"minute (used {used}).", code="rate_limit_exceeded",
                        retry_after=t[0][0] + WINDOW_S - now,
                    )

    def charge(self, key: KeyInfo, tokens: int) -> None:
        if key.tokens_per_minute and tokens > 0:
            with self._lock:
                self._tokens.setdefault(key.id, deque()).append((self._clock(), tokens))


def _expire(q: deque[float], now: float) -> None:
    while q and q[0] <= now - WINDOW_S:
        q.popleft()


def _expire_tokens(q: deque[tuple[float, int]], now: float) -> None:
    while q and q[0][0] <= now - WINDOW_S:
        q.popleft()
