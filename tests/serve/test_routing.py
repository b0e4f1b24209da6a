"""Traffic policies: weighted split, sticky users, shadow mirroring, alias moves without restart."""

from __future__ import annotations

import collections
import time
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import ADMIN_KEY, API_KEY

from tuneforge.serve.catalog import Catalog, ServedVersion, Snapshot
from tuneforge.serve.requestlog import LogRecord, RequestLog, read_log, user_hash
from tuneforge.serve.routing import Policy, Router, parse_weights


class _Fixed:
    """A fixed registry snapshot: support v1 (production) and v2 (canary)."""

    def __init__(self) -> None:
        self.snap = Snapshot({"support": {1: ServedVersion("support", 1), 2: ServedVersion("support", 2)}},
                             {"support": {"production": 1, "canary": 2}})

    def snapshot(self) -> Snapshot:
        return self.snap

    def local_path(self, version: ServedVersion) -> Any:
        raise AssertionError("not needed")


def test_1000_requests_over_200_users_split_90_10_sticky_and_logged(tmp_path: Any) -> None:
    catalog = Catalog("base", "bundled:base", _Fixed())
    router = Router({"support": Policy(parse_weights(["production=90", "canary=10"]))})
    log = RequestLog(tmp_path / "requests.db")
    users = [f"user-{i}" for i in range(200)]
    for i in range(1000):
        user = users[i % 200]
        target = catalog.resolve("support", lambda name, u=user: router.assign(name, u).variant)
        log.write(LogRecord(f"r{i}", time.time(), "chat", "k", user_hash(user), "support", target.served_name,
                            str(target.version.version), target.variant))
    log.close()
    rows = list(read_log(tmp_path / "requests.db"))
    assert len(rows) == 1000
    share = collections.Counter(r["variant"] for r in rows)["canary"] / len(rows)
    assert abs(share - 0.10) <= 0.03, share
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for r in rows:
        seen[r["user_hash"]].add(r["model_served"])
        assert r["model_served"] == {"production": "support@1", "canary": "support@2"}[r["variant"]]
    assert len(seen) == 200 and all(len(v) == 1 for v in seen.values())


def test_consistent_hashing_moves_only_the_users_that_must_move() -> None:
    router = Router({"m": Policy({"production": 90, "canary": 10})})
    users = [f"u{i}" for i in range(5000)]
    a = {u: router.assign("m", u).variant for u in users}
    assert a == {u: router.assign("m", u).variant for u in users}
    router.set_policy("m", Policy({"production": 88, "canary": 12}))
    b = {u: router.assign("m", u).variant for u in users}
    assert abs(sum(v == "canary" for v in b.values()) / len(users) - 0.12) < 0.002
    moved = [u for u in users if a[u] != b[u]]
    assert all(a[u] == "production" and b[u] == "canary" for u in moved)  # nobody leaves the canary
    assert 0.01 <= len(moved) / len(users) <= 0.03
    # most users sit where their hash puts them (the share bound displaces ~6% of them)
    from tuneforge.serve.routing import pick, user_point

    policy = router.policy("m")
    assert sum(pick(policy, user_point(u, "m")) == b[u] for u in users) / len(users) > 0.9
    # a removed variant's users are reassigned; the others keep theirs
    router.set_policy("m", Policy({"production": 100}))
    assert {router.assign("m", u).variant for u in users} == {"production"}


def test_requests_without_user_are_split_at_random_and_bad_policies_refused() -> None:
    router = Router({"m": Policy({"a": 50, "b": 50})})
    counts = collections.Counter(router.assign("m", None).variant for _ in range(2000))
    assert 900 < counts["a"] < 1100
    assert router.assign("other", "u") is None
    with pytest.raises(ValueError):
        Policy({"a": 0})
    with pytest.raises(ValueError):
        Policy({"a": 1}, {"b": 150})
    with pytest.raises(ValueError, match="VARIANT=NUMBER"):
        parse_weights(["production90"])


def test_http_routing_by_user_field_and_header_with_shadow(start_server: Any, registered: Any) -> None:
    srv = start_server()
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    resp = httpx.put(srv.url + "/admin/routes/support", headers=admin,
                     json={"weights": {"production": 50, "canary": 50}, "shadow": {"canary": 100}})
    assert resp.status_code == 200, resp.text
    bad = httpx.put(srv.url + "/admin/routes/support", headers=admin, json={"weights": {"staging": 1}})
    assert bad.status_code == 404 and "staging" in bad.json()["error"]["message"]
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
    served: dict[str, set[str]] = collections.defaultdict(set)
    t0 = time.time()
    for i in range(24):
        user = f"user-{i % 8}"
        if i % 2:
            raw = client.completions.with_raw_response.create(model="support", prompt="hi", max_tokens=1, user=user)
        else:
            raw = client.completions.with_raw_response.create(model="support", prompt="hi", max_tokens=1,
                                                              extra_headers={"x-tuneforge-user": user})
        served[user].add(raw.parse().model)
        assert raw.headers["x-tuneforge-variant"] in ("production", "canary")
    assert all(len(v) == 1 for v in served.values())
    assert set.union(*served.values()) == {"support@1", "support@2"}
    gw = srv.app.state.gateway
    deadline = time.monotonic() + 30
    while gw.background and time.monotonic() < deadline:
        time.sleep(0.05)
    gw.request_log.flush()
    rows = [r for r in read_log(gw.request_log.path) if r["model_requested"] == "support" and r["time"] >= t0]
    primary = [r for r in rows if not r["shadow"]]
    shadows = [r for r in rows if r["shadow"]]
    assert len(primary) == 24
    assert {r["user_hash"] for r in primary} == {user_hash(f"user-{i}") for i in range(8)}
    for r in primary:  # the log shows each user's one assignment
        assert r["variant"] == {"support@1": "production", "support@2": "canary"}[r["model_served"]]
    # users on production are mirrored to the canary (100%); the canary's own users are not mirrored
    on_production = sum(r["variant"] == "production" for r in primary)
    assert len(shadows) == on_production and on_production > 0
    assert all(r["variant"] == "shadow:canary" and r["model_served"] == "support@2" for r in shadows)
    httpx.delete(srv.url + "/admin/routes/support", headers=admin)


def test_alias_move_takes_effect_without_restart(start_server: Any, registered: Any) -> None:
    srv = start_server()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
    registry = registered["registry"]
    assert client.completions.create(model="support@production", prompt="x", max_tokens=1).model == "support@1"
    registry.promote("support", 2, "production", force=True, reason="test: move")
    try:
        deadline = time.monotonic() + 20
        model = None
        while time.monotonic() < deadline:
            model = client.completions.create(model="support@production", prompt="x", max_tokens=1).model
            if model == "support@2":
                break
            time.sleep(0.1)
        assert model == "support@2"
        assert client.completions.create(model="support", prompt="x", max_tokens=1).model == "support@2"
    finally:
        registry.promote("support", 1, "production", force=True, reason="test: restore")
