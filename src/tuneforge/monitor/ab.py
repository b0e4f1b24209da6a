"""`tuneforge ab report NAME`: the variants of a model's traffic split compared from the request log.

Only requests for the bare NAME count (those the router assigned at random, or by user hash, to a
variant); requests pinned to NAME@VERSION or NAME@ALIAS were not randomised and are only counted,
and shadow requests are counted per candidate. Each variant other than the control (ab.control,
production) is compared with it by the anytime-valid mSPRT of ``sequential`` on every metric, so the
report can be read as often as one likes without inflating false positives, and a recommendation
is made: promote, roll back or keep collecting (with about how many more requests it takes).
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import AbError
from tuneforge.monitor import sequential
from tuneforge.monitor.guardrails import (
    GuardrailResult,
    answered,
    check_guardrails,
    configured,
    counts_for_errors,
    is_error,
    metric_values,
    p95,
)
from tuneforge.workspace import Workspace

PROMOTE, ROLL_BACK, KEEP = "promote", "roll back", "keep collecting"
# metric -> (binary, higher is better)
METRICS: dict[str, tuple[bool, bool]] = {
    "error_rate": (True, False), "latency_s": (False, False), "feedback": (False, True),
    "json_valid": (True, True), "schema_valid": (True, True),
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class VariantStats:
    variant: str  # the routed variant (alias or version label), with the version when it changed
    versions: list[str]
    requests: int
    users: int
    errors: int
    error_rate: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    feedback_n: int = 0
    feedback_rate: float | None = None  # share of requests with feedback
    feedback_mean: float | None = None  # mean score, 0-1
    json_valid: float | None = None  # None: the model does not answer in JSON
    schema_valid: float | None = None  # None: no schema configured
    judge_mean: float | None = None  # mean 1-10 rubric score of a sample; None: no judge
    judge_n: int = 0

    @property
    def cost_per_request(self) -> float:
        return self.cost / self.requests if self.requests else 0.0


@dataclass
class MetricDiff:
    """One metric of a candidate against the control (see sequential.Comparison)."""

    metric: str
    higher_is_better: bool
    comparison: sequential.Comparison

    @property
    def verdict(self) -> str:
        c = self.comparison
        if not c.significant:
            return "no difference yet"
        return "better" if (c.diff > 0) == self.higher_is_better else "worse"


@dataclass
class Recommendation:
    variant: str
    action: str  # promote | roll back | keep collecting
    reason: str
    more_requests: int | None = None  # keep collecting: about this many more routed requests (all variants)


@dataclass
class AbReport:
    model: str
    generated_at: float
    since: float | None
    control: str
    primary_metric: str
    alpha: float
    variants: list[VariantStats]
    diffs: dict[str, list[MetricDiff]]  # candidate -> its metrics against the control
    recommendations: list[Recommendation]
    shadow_requests: dict[str, int] = field(default_factory=dict)
    other_requests: int = 0  # pinned to a version or alias: not part of the randomised comparison
    guardrails: GuardrailResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diffs"] = {v: [{"metric": m.metric, "higher_is_better": m.higher_is_better, "verdict": m.verdict,
                           **m.comparison.to_dict()} for m in ms] for v, ms in self.diffs.items()}
        for v, s in zip(d["variants"], self.variants, strict=True):
            v["cost_per_request"] = s.cost_per_request
        d["guardrails"] = self.guardrails.to_dict() if self.guardrails else None
        return d


def parse_duration(text: str) -> float:
    """'90s', '30m', '24h', '7d', '2w' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise AbError(f"invalid duration {text!r}", where="--since",
                      fix="use a number with a unit: 90s, 30m, 24h, 7d or 2w")
    return float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1)


def load_schema(cfg: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The first eval suite's JSON Schema (responses are checked against it), and a note on failure."""
    for suite in cfg.eval.suites:
        if suite.schema_path:
            path = Path(suite.schema_path).expanduser()
            try:
                return json.loads(path.read_text()), None
            except (OSError, ValueError) as exc:
                return None, f"schema compliance skipped: cannot read {path} ({exc})"
    return None, None


def json_expected(cfg: Any) -> bool:
    return cfg.eval.json_fields is not None or any(s.schema_path for s in cfg.eval.suites)


def ab_report(ws: Workspace, cfg: Any, name: str, *, since: float | None = None,
              now: float | None = None) -> AbReport:
    """Compare the variants of ``name``'s traffic logged since the epoch time ``since`` (all when None)."""
    from tuneforge.serve.requestlog import log_path, read_feedback, read_log

    ab = cfg.ab
    now = time.time() if now is None else now
    path = log_path(ws)
    if not path.is_file():
        raise AbError(f"no request log at {path}", where="tuneforge ab report",
                      fix="serve traffic with `tuneforge serve` first (or set TUNEFORGE_HOME to its workspace)")
    rows = list(read_log(path, model=name, since=since, newest_first=False))
    feedback = read_feedback(path, since=since)
    shadow: dict[str, int] = {}
    routed: list[dict[str, Any]] = []
    other = 0
    for r in rows:
        if r["shadow"]:
            label = (r["variant"] or "?").removeprefix("shadow:")
            shadow[label] = shadow.get(label, 0) + 1
        elif r["model_requested"] == name and r["variant"]:
            routed.append(r)
        else:
            other += 1
    if not routed:
        raise AbError(f"no requests for {name} routed between variants in the log"
                      + (" in that period" if since else ""), where=str(path),
                      fix=f"send requests with model '{name}' (not {name}@VERSION) while a policy splits its "
                      f"traffic (`tuneforge serve route {name} production=90 canary=10`), or widen --since")

    notes: list[str] = []
    schema, note = load_schema(cfg)
    if note:
        notes.append(note)
    with_json = json_expected(cfg)
    if not with_json:
        notes.append("JSON validity skipped: the model is not configured to answer in JSON "
                     "(set eval.json_fields or a suite schema)")

    groups = _group(routed)
    stats = {label: _stats(label, rs, feedback, with_json, schema) for label, rs in groups.items()}
    control = _control(ab.control, groups)
    if control is None:
        raise AbError(f"no variant named '{ab.control}' in {name}'s routed traffic (variants: "
                      f"{', '.join(sorted(groups))})", where="ab.control",
                      fix="set ab.control to the variant the others are compared with (--set ab.control=...)")
    _judge(cfg, groups, stats, notes)
    primary = _primary(ab.primary_metric, stats, with_json, schema)

    diffs: dict[str, list[MetricDiff]] = {}
    recs: list[Recommendation] = []
    guard: GuardrailResult | None = None
    for label, rs in groups.items():
        if label == control:
            continue
        diffs[label] = _compare(groups[control], rs, feedback, with_json, schema, ab)
        g = None
        variant = rs[0]["variant"]
        if configured(cfg) and variant == cfg.guardrails.candidate:
            versions = {r["version"] for r in rs}
            version = int(rs[-1]["version"]) if len(versions) == 1 and str(rs[-1]["version"]).isdigit() else None
            g = guard = check_guardrails(cfg, ws, name, version=version, now=now)
        recs.append(_recommend(label, diffs[label], primary, g, groups[control], rs, feedback, with_json, schema, ab))
    if not diffs:
        notes.append(f"only the control ({control}) served routed traffic: nothing to compare")
    order = [control, *[k for k in groups if k != control]]
    return AbReport(name, now, since, control, primary, ab.alpha, [stats[k] for k in order], diffs, recs,
                    shadow, other, guard, notes)


# ---------------------------------------------------------------------- pieces


def _group(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    out: dict[str, list[dict[str, Any]]] = {}
    for variant, rs in by_variant.items():
        versions = sorted({str(r["version"]) for r in rs})
        if len(versions) == 1:
            out[variant] = rs
        else:  # the alias moved during the period: each version is its own variant
            for v in versions:
                out[f"{variant}@v{v}"] = [r for r in rs if str(r["version"]) == v]
    return out


def _control(wanted: str, groups: dict[str, list[dict[str, Any]]]) -> str | None:
    if wanted in groups:
        return wanted
    matches = [k for k in groups if k.startswith(f"{wanted}@v")]
    return max(matches, key=lambda k: len(groups[k])) if matches else None


def _stats(label: str, rows: list[dict[str, Any]], feedback: dict[str, Any], with_json: bool,
           schema: dict[str, Any] | None) -> VariantStats:
    import numpy as np

    counted = [r for r in rows if counts_for_errors(r)]
    errors = sum(is_error(r) for r in counted)
    lat = [v for _, v in metric_values("latency_s", rows, feedback, schema)]
    fb = [v for _, v in metric_values("feedback", rows, feedback, schema)]
    js = [v for _, v in metric_values("json_valid", rows, feedback, schema)] if with_json else []
    sv = [v for _, v in metric_values("schema_valid", rows, feedback, schema)] if schema is not None else []
    return VariantStats(
        label, sorted({str(r["version"]) for r in rows}), len(rows),
        len({r["user_hash"] for r in rows if r["user_hash"]}), errors,
        errors / len(counted) if counted else None,
        float(np.percentile(lat, 50)) if lat else None, p95(lat) if lat else None,
        sum(int(r["prompt_tokens"] or 0) for r in rows), sum(int(r["completion_tokens"] or 0) for r in rows),
        float(sum(float(r["cost"] or 0.0) for r in rows)), len(fb), len(fb) / len(rows) if rows else None,
        sum(fb) / len(fb) if fb else None, sum(js) / len(js) if js else None, sum(sv) / len(sv) if sv else None,
    )


def _primary(wanted: str, stats: dict[str, VariantStats], with_json: bool, schema: dict[str, Any] | None) -> str:
    if wanted != "auto":
        return wanted
    if all(s.feedback_n > 0 for s in stats.values()) and len(stats) > 1:
        return "feedback"
    if schema is not None:
        return "schema_valid"
    return "json_valid" if with_json else "error_rate"


def _metrics(with_json: bool, schema: dict[str, Any] | None) -> list[str]:
    out = ["error_rate", "latency_s", "feedback"]
    if with_json:
        out.append("json_valid")
    if schema is not None:
        out.append("schema_valid")
    return out


def _stream(metric: str, control: list[dict[str, Any]], cand: list[dict[str, Any]], feedback: dict[str, Any],
            schema: dict[str, Any] | None) -> tuple[list[float], list[bool]]:
    """The two variants' values merged in arrival order, so every prefix is a look the reader could
    have taken."""
    merged = sorted([(t, v, False) for t, v in metric_values(metric, control, feedback, schema)]
                    + [(t, v, True) for t, v in metric_values(metric, cand, feedback, schema)])
    return [v for _, v, _ in merged], [b for _, _, b in merged]


def _compare(control: list[dict[str, Any]], cand: list[dict[str, Any]], feedback: dict[str, Any], with_json: bool,
             schema: dict[str, Any] | None, ab: Any) -> list[MetricDiff]:
    out = []
    for metric in _metrics(with_json, schema):
        binary, higher = METRICS[metric]
        values, in_b = _stream(metric, control, cand, feedback, schema)
        c = sequential.compare(values, in_b, metric=metric, binary=binary, alpha=ab.alpha, phi=ab.mixture_sd,
                               burn_in=ab.burn_in)
        if c is not None:
            out.append(MetricDiff(metric, higher, c))
    return out


def _recommend(label: str, diffs: list[MetricDiff], primary: str, guard: GuardrailResult | None,
               control: list[dict[str, Any]], cand: list[dict[str, Any]], feedback: dict[str, Any], with_json: bool,
               schema: dict[str, Any] | None, ab: Any) -> Recommendation:
    if guard is not None and guard.breached:
        return Recommendation(label, ROLL_BACK, guard.reason())
    worse = [d for d in diffs if d.verdict == "worse"]
    by_metric = {d.metric: d for d in diffs}
    for d in worse:
        if d.metric in (primary, "error_rate"):
            c = d.comparison
            return Recommendation(label, ROLL_BACK, f"{d.metric} is worse: {c.mean_b:.3g} vs {c.mean_a:.3g} "
                                  f"(difference {c.diff:+.3g}, anytime-valid p = {c.p_value:.3g})")
    main = by_metric.get(primary)
    if main is None:
        return Recommendation(label, KEEP, f"no {primary} observations for both variants yet")
    c = main.comparison
    others = f"; but {', '.join(d.metric for d in worse)} worse" if worse else ""
    if main.verdict == "better" and not worse:
        return Recommendation(label, PROMOTE, f"{primary} is better: {c.mean_b:.3g} vs {c.mean_a:.3g} "
                              f"(difference {c.diff:+.3g}, anytime-valid p = {c.p_value:.3g})")
    harm_bound = -c.cs_low if main.higher_is_better else c.cs_high  # the worst harm still plausible
    if harm_bound <= ab.noninferiority_margin and not worse:
        return Recommendation(label, PROMOTE, f"{primary} is not worse by more than {ab.noninferiority_margin:g} "
                              f"(anytime-valid interval of the difference [{c.cs_low:.3g}, {c.cs_high:.3g}])")
    # How long until an effect of the size seen (or the margin) would show, at the current split.
    var_a, var_b = _variances(primary, control, cand, feedback, schema)
    n = c.n_a + c.n_b
    needed = sequential.observations_needed(var_a, var_b, c.n_b / n, max(abs(c.diff), ab.noninferiority_margin),
                                            alpha=ab.alpha, phi=ab.mixture_sd)
    more = max(needed - n, 1) if needed is not None else None
    share = n / max(1, len(control) + len(cand))
    more_requests = int(more / share) + 1 if more is not None and share > 0 else None
    return Recommendation(label, KEEP, f"{primary}: no decision yet ({c.mean_b:.3g} vs {c.mean_a:.3g}, "
                          f"anytime-valid interval [{c.cs_low:.3g}, {c.cs_high:.3g}]){others}", more_requests)


def _variances(metric: str, control: list[dict[str, Any]], cand: list[dict[str, Any]], feedback: dict[str, Any],
               schema: dict[str, Any] | None) -> tuple[float, float]:
    import numpy as np

    def var(rows: list[dict[str, Any]]) -> float:
        xs = np.asarray([v for _, v in metric_values(metric, rows, feedback, schema)], dtype=float)
        if METRICS[metric][0]:
            p = (xs.sum() + 0.5) / (len(xs) + 1)
            return float(p * (1 - p))
        return float(xs.var(ddof=1)) if len(xs) > 1 else 1.0

    return var(control), var(cand)


def _judge(cfg: Any, groups: dict[str, list[dict[str, Any]]], stats: dict[str, VariantStats],
           notes: list[str]) -> None:
    """Rubric scores (1-10) of eval.judge on a seeded sample of each variant's answered requests."""
    jcfg = cfg.eval.judge
    if not jcfg.url:
        notes.append("judge scores skipped: eval.judge.url is not set")
        return
    if cfg.ab.judge_sample <= 0:
        notes.append("judge scores skipped: ab.judge_sample is 0")
        return
    from tuneforge.errors import EvalError
    from tuneforge.eval.judge import JudgeClient, rubric_scores

    client = JudgeClient.from_config(jcfg)
    rng = random.Random(0)
    for label, rows in groups.items():
        pool = [r for r in rows if answered(r) and (r.get("messages") or r.get("prompt"))]
        sample = rng.sample(pool, min(cfg.ab.judge_sample, len(pool)))
        if not sample:
            continue
        prompts = [r["messages"] if r.get("messages") else [{"role": "user", "content": r["prompt"]}]
                   for r in sample]
        refs = ["(no reference answer: judge the answer on its own)"] * len(sample)
        try:
            scores = [s for s in rubric_scores(client, prompts, refs, [r["response"] for r in sample]) if s is not None]
        except EvalError as exc:
            notes.append(f"judge scores skipped: {exc.what}")
            return
        stats[label].judge_n = len(scores)
        stats[label].judge_mean = sum(scores) / len(scores) if scores else None
