"""Guardrails on a canary: limits on its error rate, p95 latency, JSON validity and feedback, checked
on its recent traffic in the request log; a breach takes it out of service.

Taking it out means, in this order: the model's routing policy sends the canary's share to the other
variants (production), on the running router and in routes.json, so no request is routed to an
alias that is about to disappear; then the registry removes the canary alias, audited with the
reason (rule, value, threshold, requests); then the event is appended to
``<workspace>/monitor/guardrails.jsonl``. ``Guardian.watch`` runs this inside the server every
``guardrails.check_every_s``; ``tuneforge ab guard`` runs it from outside.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import RegistryError
from tuneforge.workspace import Workspace

log = logging.getLogger("tuneforge.monitor")

RULES = ("error_rate", "p95_latency_s", "json_valid", "feedback")
_LIMIT_FIELD = {"error_rate": "error_rate_max", "p95_latency_s": "p95_latency_s_max",
                "json_valid": "json_valid_min", "feedback": "feedback_min"}
_UPPER = {"error_rate", "p95_latency_s"}  # a breach is a value above the limit; others: below


# ---------------------------------------------------------------------- per-row metrics (shared with ab)


def is_error(row: dict[str, Any]) -> bool:
    """A failure the serving variant is answerable for: a server-side status (client errors and
    client disconnects, 4xx, say nothing about the model)."""
    return int(row["status"]) >= 500


def counts_for_errors(row: dict[str, Any]) -> bool:
    return int(row["status"]) != 499


def answered(row: dict[str, Any]) -> bool:
    return int(row["status"]) == 200 and row.get("response") is not None


def json_ok(response: str) -> float:
    from tuneforge.eval.metrics import json_valid

    return json_valid(response)


def p95(values: list[float]) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), 95))


def metric_values(metric: str, rows: list[dict[str, Any]], feedback: dict[str, Any],
                  schema: dict[str, Any] | None = None) -> list[tuple[float, float]]:
    """(time, value) of every row ``metric`` applies to: the one definition A/B and guardrails share."""
    if metric == "error_rate":
        return [(r["time"], float(is_error(r))) for r in rows if counts_for_errors(r)]
    if metric in ("latency_s", "p95_latency_s"):
        return [(r["time"], float(r["latency_s"])) for r in rows if r["status"] == 200 and r["latency_s"] is not None]
    if metric == "feedback":
        return [(r["time"], float(feedback[r["request_id"]].score)) for r in rows if r["request_id"] in feedback]
    if metric == "json_valid":
        return [(r["time"], json_ok(r["response"])) for r in rows if answered(r)]
    if metric == "schema_valid":
        from tuneforge.eval.metrics import schema_valid

        return [(r["time"], float(schema_valid(r["response"], schema) or 0.0)) for r in rows if answered(r)]
    raise ValueError(metric)


def rule_values(rows: list[dict[str, Any]], feedback: dict[str, Any]) -> dict[str, tuple[float | None, int]]:
    """Each rule's value and the number of requests it rests on (value None when none)."""
    out: dict[str, tuple[float | None, int]] = {}
    for rule in RULES:
        xs = [v for _, v in metric_values(rule, rows, feedback)]
        value = (p95(xs) if rule == "p95_latency_s" else sum(xs) / len(xs)) if xs else None
        out[rule] = (value, len(xs))
    return out


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class RuleResult:
    rule: str  # error_rate | p95_latency_s | json_valid | feedback
    value: float | None
    threshold: float  # the effective limit (production's value plus/minus the margin when relative)
    n: int  # the candidate's requests the value rests on
    breached: bool
    evaluated: bool  # False: fewer than min_requests so far
    production: float | None = None  # production's value in the same window (relative mode)

    def describe(self) -> str:
        op = ">" if self.rule in _UPPER else "<"
        if not self.evaluated:
            return f"{self.rule}: {self.n} request(s), waiting for more"
        return (f"{self.rule} {self.value:.3g} {op if self.breached else ('<=' if op == '>' else '>=')} "
                f"{self.threshold:.3g} over {self.n} request(s)")


@dataclass(frozen=True)
class GuardrailResult:
    model: str
    alias: str
    version: int | None  # the alias's version whose requests were checked (None: alias not set)
    window_s: float
    checked_at: float
    rules: list[RuleResult] = field(default_factory=list)

    @property
    def breaches(self) -> list[RuleResult]:
        return [r for r in self.rules if r.breached]

    @property
    def breached(self) -> bool:
        return bool(self.breaches)

    def reason(self) -> str:
        return (f"guardrail breach on {self.model}@{self.alias} (v{self.version}): "
                + "; ".join(r.describe() for r in self.breaches) + f" (window {self.window_s:g}s)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "breached": self.breached}


@dataclass(frozen=True)
class GuardrailEvent:
    """A rollback the guardrails made."""

    time: float
    model: str
    alias: str
    version: int | None
    reason: str
    breaches: list[dict[str, Any]]
    policy: dict[str, Any] | None  # the model's routing policy afterwards
    audit_id: int | None  # the registry audit entry of the demotion

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def events_path(ws: Workspace) -> Path:
    return ws.root / "monitor" / "guardrails.jsonl"


def read_events(ws: Workspace) -> list[GuardrailEvent]:
    path = events_path(ws)
    if not path.is_file():
        return []
    return [GuardrailEvent(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def configured(cfg: Any) -> bool:
    """Whether any rule is set (no rule: nothing to check)."""
    g = cfg.guardrails
    return any(getattr(g, _LIMIT_FIELD[r]) is not None for r in RULES)


# ---------------------------------------------------------------------- checking


def check_guardrails(cfg: Any, ws: Workspace, name: str, *, version: int | None,
                     now: float | None = None) -> GuardrailResult:
    """Evaluate every configured rule on the requests ``guardrails.candidate`` of ``name`` served
    (only those of ``version`` when given) in the last ``guardrails.window_s`` seconds."""
    from tuneforge.serve.requestlog import log_path, read_feedback, read_log

    g = cfg.guardrails
    now = time.time() if now is None else now
    since = now - g.window_s
    path = log_path(ws)
    rows = [r for r in read_log(path, model=name, since=since) if not r["shadow"]]
    feedback = read_feedback(path, since=since)
    cand = [r for r in rows if r["variant"] == g.candidate and (version is None or r["version"] == str(version))]
    values = rule_values(cand, feedback)
    prod = rule_values([r for r in rows if r["variant"] == "production"], feedback) if g.compare == "relative" else {}
    results = []
    for rule in RULES:
        limit = getattr(g, _LIMIT_FIELD[rule])
        if limit is None:
            continue
        value, n = values[rule]
        base = prod.get(rule, (None, 0))[0] if prod else None
        threshold = float(limit)
        if g.compare == "relative":
            if base is None:  # nothing to be relative to yet
                results.append(RuleResult(rule, value, threshold, n, False, False, None))
                continue
            threshold = base + limit if rule in _UPPER else base - limit
        evaluated = value is not None and n >= g.min_requests
        breached = evaluated and (value > threshold if rule in _UPPER else value < threshold)  # type: ignore[operator]
        results.append(RuleResult(rule, value, threshold, n, bool(breached), bool(evaluated), base))
    return GuardrailResult(name, g.candidate, version, g.window_s, now, results)


# ---------------------------------------------------------------------- enforcing


def without(policy: Any, alias: str) -> Any:
    """``policy`` with ``alias``'s share (and shadowing) given to the remaining variants."""
    from tuneforge.serve.routing import Policy

    weights = {v: w for v, w in policy.weights.items() if v != alias and w > 0}
    shadow = {v: p for v, p in policy.shadow.items() if v != alias}
    return Policy(weights or {"production": 100.0}, shadow, policy.sticky)


def enforce(cfg: Any, ws: Workspace, result: GuardrailResult, *, registry: Any, router: Any = None,
            routes_file: Path | None = None) -> GuardrailEvent | None:
    """Take a breaching candidate out of service (routing first, then the registry alias), and record
    it. ``router``: the running server's (else only routes.json changes). None when nothing breached."""
    from tuneforge.serve.routing import load_persisted, persist, routes_path

    if not result.breached:
        return None
    name, alias = result.model, result.alias
    routes_file = routes_file or routes_path(ws.root)
    new_policy = None
    if router is not None and router.policy(name) is not None:
        new_policy = without(router.policy(name), alias)
        router.set_policy(name, new_policy)
        persist(routes_file, router.policies())
    else:
        policies = load_persisted(routes_file)
        if name in policies:
            new_policy = policies[name] = without(policies[name], alias)
            persist(routes_file, policies)
    breaches = [asdict(r) for r in result.breaches]
    reason = result.reason()
    entry = registry.demote(name, alias, reason, evidence={"guardrails": breaches, "window_s": result.window_s,
                                                           "version": result.version})
    event = GuardrailEvent(time.time(), name, alias, result.version, reason, breaches,
                           new_policy.to_dict() if new_policy is not None else None,
                           entry.id if entry is not None else None)
    path = events_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(event.to_dict()) + "\n")
    log.warning("%s; routed %s to %s", reason, name, new_policy.weights if new_policy else "its default")
    return event


class Guardian:
    """The continuous check inside a server: every ``check_every_s``, each model whose routing
    policy gives the candidate alias a share is checked, and rolled back on a breach."""

    def __init__(self, cfg: Any, ws: Workspace, registry: Any = None) -> None:
        self.cfg = cfg
        self.ws = ws
        self._registry = registry

    @classmethod
    def from_config(cls, cfg: Any, ws: Workspace) -> Guardian | None:
        return cls(cfg, ws) if configured(cfg) else None

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from tuneforge.registry import Registry

            self._registry = Registry.from_config(self.cfg, self.ws)
        return self._registry

    def run_once(self, router: Any, routes_file: Path | None = None) -> list[GuardrailEvent]:
        alias = self.cfg.guardrails.candidate
        events = []
        for name, policy in sorted(router.policies().items()):
            if policy.weights.get(alias, 0) <= 0:
                continue
            try:
                version = self.registry.aliases(name).get(alias)
            except RegistryError:  # served from serve.adapters, not the registry: no alias to guard
                continue
            if version is None:
                continue
            result = check_guardrails(self.cfg, self.ws, name, version=version)
            event = enforce(self.cfg, self.ws, result, registry=self.registry, router=router,
                            routes_file=routes_file)
            if event is not None:
                events.append(event)
        return events

    async def watch(self, router: Any, routes_file: Path | None, refresh: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(self.cfg.guardrails.check_every_s)
            try:
                if await asyncio.to_thread(self.run_once, router, routes_file):
                    await asyncio.to_thread(refresh)  # the catalog drops the removed alias at once
            except Exception:  # a failed check must not stop serving; the next one retries
                log.exception("guardrail check failed")


def apply_on_server(url: str, admin_key: str | None, name: str, policy: Any) -> bool:
    """Put ``policy`` on a running server (PUT /admin/routes/NAME) before the alias goes away, so the
    server stops routing to it first. False when no server answers; an error when one refuses."""
    import httpx

    from tuneforge.errors import AbError

    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    try:
        resp = httpx.put(f"{url.rstrip('/')}/admin/routes/{name}", json=policy.to_dict(), headers=headers, timeout=30)
    except httpx.HTTPError:
        return False
    if resp.status_code != 200:
        raise AbError(f"the server at {url} refused the rollback policy ({resp.status_code}): {resp.text[:200]}",
                      where=f"{url}/admin/routes/{name}",
                      fix="pass --admin-key (or set $TUNEFORGE_ADMIN_KEY) to an admin key of that server")
    return True


def current_policy(url: str | None, admin_key: str | None, ws: Workspace, name: str) -> Any:
    """The model's policy on the running server when one answers, else the persisted one."""
    from tuneforge.serve.routing import Policy, load_persisted, routes_path

    if url:
        import httpx

        headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
        try:
            resp = httpx.get(f"{url.rstrip('/')}/admin/routes", headers=headers, timeout=30)
            if resp.status_code == 200 and name in resp.json():
                return Policy.from_dict(resp.json()[name])
        except (httpx.HTTPError, ValueError):
            pass
    return load_persisted(routes_path(ws.root)).get(name)
