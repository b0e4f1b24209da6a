"""Traffic policies: a weighted split of requests for a bare model NAME over its aliases or
versions, sticky per user by consistent hashing, plus shadow mirroring to candidates.

A user's position is a fixed point in [0, 1) derived from a hash of the user id; variants occupy
consecutive ranges in a fixed (sorted) order sized by their weights. Moving 90/10 to 88/12 only
reassigns users whose point lies in the 2% that changed hands. Pure hashing over 200 users misses
a 10% share by 2 points one time in three, so assignments are remembered and bounded by each
variant's share (see ``Router``). Requests without a user get a random point.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Policy:
    weights: dict[str, float]  # variant (alias or version number) -> weight
    shadow: dict[str, float] = field(default_factory=dict)  # candidate -> percent mirrored
    sticky: bool = True

    def __post_init__(self) -> None:
        if not self.weights or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {self.weights}")
        for cand, pct in self.shadow.items():
            if not 0 <= pct <= 100:
                raise ValueError(f"shadow share of {cand} must be 0-100 percent, got {pct}")

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "shadow": dict(self.shadow), "sticky": self.sticky}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        return cls({str(k): float(v) for k, v in data["weights"].items()},
                   {str(k): float(v) for k, v in (data.get("shadow") or {}).items()},
                   bool(data.get("sticky", True)))


@dataclass(frozen=True)
class Assignment:
    variant: str  # the alias or version label chosen
    shadows: tuple[str, ...] = ()  # candidates to mirror this request to


def user_point(user: str, salt: str = "") -> float:
    digest = hashlib.sha256(f"{salt}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick(policy: Policy, point: float) -> str:
    total = sum(policy.weights.values())
    acc = 0.0
    chosen = None
    for variant in sorted(policy.weights):
        w = policy.weights[variant]
        if w <= 0:
            continue
        chosen = variant
        acc += w / total
        if point < acc:
            return variant
    assert chosen is not None  # Policy guarantees a positive weight
    return chosen


class _Assignments:
    """Sticky user -> variant table of one model, kept within each variant's share (bounded loads)."""

    def __init__(self, max_users: int) -> None:
        self.variant: OrderedDict[str, str] = OrderedDict()
        self.counts: collections.Counter[str] = collections.Counter()
        self.max_users = max_users

    def get(self, user: str) -> str | None:
        found = self.variant.get(user)
        if found is not None:
            self.variant.move_to_end(user)
        return found

    def put(self, user: str, variant: str) -> None:
        old = self.variant.get(user)
        if old is not None:
            self.counts[old] -= 1
        self.variant[user] = variant
        self.variant.move_to_end(user)
        self.counts[variant] += 1
        while len(self.variant) > self.max_users:  # forget the least recently seen users
            _, gone = self.variant.popitem(last=False)
            self.counts[gone] -= 1


def _shares(policy: Policy) -> dict[str, float]:
    total = sum(policy.weights.values())
    return {v: w / total for v, w in policy.weights.items() if w > 0}


def _bounded_pick(preferred: str, shares: dict[str, float], counts: collections.Counter[str], n: int) -> str:
    """The hashed choice unless that variant already holds more than its share of ``n`` users (plus
    one), else the variant furthest below its share: consistent hashing with bounded loads."""
    if counts[preferred] + 1 <= shares[preferred] * n + 1:
        return preferred
    return max(sorted(shares), key=lambda v: shares[v] * n - counts[v])


class Router:
    """One policy per model name. Sticky users are remembered, so a user keeps their variant; the
    variant is their consistent-hash choice unless that variant is already over its share, which
    keeps the split close to the weights even over a few hundred users. Changing a policy moves
    only as many users as the new weights require, preferring users whose hash lies in the range
    that changed hands."""

    def __init__(self, policies: dict[str, Policy] | None = None, *, rng: random.Random | None = None,
                 max_users: int = 1_000_000) -> None:
        self._policies = dict(policies or {})
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._max_users = max_users
        self._sticky: dict[str, _Assignments] = {}

    def policy(self, name: str) -> Policy | None:
        return self._policies.get(name)

    def policies(self) -> dict[str, Policy]:
        return dict(self._policies)

    def set_policy(self, name: str, policy: Policy | None) -> None:
        with self._lock:
            new = dict(self._policies)
            if policy is None:
                new.pop(name, None)
                self._sticky.pop(name, None)
            else:
                new[name] = policy
                if name in self._sticky:
                    self._sticky[name] = self._rebalance(name, policy, self._sticky[name])
            self._policies = new

    def _rebalance(self, name: str, policy: Policy, old: _Assignments) -> _Assignments:
        shares = _shares(policy)
        users = sorted(old.variant, key=lambda u: user_point(u, name))
        n = len(users)
        cap = {v: int(round(shares[v] * n)) for v in shares}
        new = _Assignments(self._max_users)
        placed: dict[str, str] = {}
        # 1: users in the right hash range keep their variant; 2: others keep it while there is room
        for in_range in (True, False):
            for u in users:
                cur = old.variant[u]
                if u in placed or cur not in shares or new.counts[cur] >= cap[cur]:
                    continue
                if (pick(policy, user_point(u, name)) == cur) == in_range:
                    placed[u] = cur
                    new.counts[cur] += 1
        for u in users:  # 3: the rest move
            if u not in placed:
                v = _bounded_pick(pick(policy, user_point(u, name)), shares, new.counts, n)
                placed[u] = v
                new.counts[v] += 1
        new.counts.clear()
        for u in old.variant:  # keep the recency order
            new.put(u, placed[u])
        return new

    def assign(self, name: str, user: str | None) -> Assignment | None:
        """None when ``name`` has no policy (the caller applies the default)."""
        policy = self._policies.get(name)
        if policy is None:
            return None
        sticky = policy.sticky and bool(user)
        if sticky and user:
            with self._lock:
                table = self._sticky.setdefault(name, _Assignments(self._max_users))
                variant = table.get(user)
                shares = _shares(policy)
                if variant is None or variant not in shares:
                    n = len(table.variant) + (0 if variant else 1)
                    variant = _bounded_pick(pick(policy, user_point(user, name)), shares, table.counts, n)
                    table.put(user, variant)
        else:
            variant = pick(policy, self._rng.random())
        shadows = []
        for cand, pct in sorted(policy.shadow.items()):
            p = user_point(user, f"{name}\0shadow\0{cand}") if sticky and user else self._rng.random()
            if p * 100 < pct and cand != variant:
                shadows.append(cand)
        return Assignment(variant, tuple(shadows))


def parse_weights(items: list[str], what: str = "weight") -> dict[str, float]:
    """``["production=90", "canary=10"]`` -> ``{"production": 90.0, "canary": 10.0}``."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{what} {item!r} is not VARIANT=NUMBER (e.g. production=90)") from None
    return out


def routes_path(root: Path) -> Path:
    return root / "serve" / "routes.json"


def load_persisted(path: Path) -> dict[str, Policy]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {name: Policy.from_dict(p) for name, p in data.items()}


def persist(path: Path, policies: dict[str, Policy]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({n: p.to_dict() for n, p in sorted(policies.items())}, indent=2))
    tmp.replace(path)
