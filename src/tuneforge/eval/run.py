"""`evaluate(...)`: the candidate and its baselines on every suite, then comparisons, judge and gates."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import EvalError
from tuneforge.eval import gates as gates_mod
from tuneforge.eval import metrics as M
from tuneforge.eval.generate import (
    GenerationCache,
    LoadedModel,
    ModelSpec,
    answer_losses,
    generate,
    load,
    resolve_spec,
)
from tuneforge.eval.stats import Estimate, mean_ci, paired_diff_ci
from tuneforge.eval.suites import Suite, load_suite
from tuneforge.workspace import Workspace

ProgressFn = Callable[[str], None]
CANDIDATE = "candidate"


@dataclass
class Outputs:
    """One model's answers on one suite, with per-item metric values (None: not applicable)."""

    replies: list[str]
    losses: list[tuple[float, int]]
    values: dict[str, list[float | None]] = field(default_factory=dict)
    cached: bool = False


@dataclass
class EvalResult:
    report: dict[str, Any]
    out_dir: Path
    gates: list[gates_mod.GateResult]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def json_path(self) -> Path:
        return self.out_dir / "eval.json"

    @property
    def html_path(self) -> Path:
        return self.out_dir / "eval.html"


def baseline_labels(n: int) -> list[str]:
    return ["baseline" if i == 0 else f"baseline_{i + 1}" for i in range(n)]


def select_suites(cfg: Any, names_or_paths: list[str] | None) -> list[Suite]:
    """Config suites by name, or ad-hoc paths (a golden suite named after the file); default: all configured."""
    declared = {s.name: s for s in cfg.eval.suites}
    chosen = names_or_paths or list(declared)
    if not chosen:
        raise EvalError("no evaluation suite given", where="--suite / eval.suites",
                        fix="pass --suite PATH.jsonl (or a prepared dataset directory), or declare eval.suites")
    suites = []
    for item in chosen:
        spec = declared.get(item)
        if spec is not None:
            suites.append(load_suite(spec.name, spec.path, kind=spec.kind, schema=spec.schema_path))
        elif Path(item).exists():
            name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(item).stem if Path(item).is_file() else Path(item).name)
            suites.append(load_suite(name, item))
        else:
            raise EvalError(f"unknown suite '{item}'", where="--suite",
                            fix=f"declared suites: {', '.join(declared) or '(none)'}; or pass an existing file")
    names = [s.name for s in suites]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalError(f"two suites are named {', '.join(dupes)}", where="--suite / eval.suites",
                        fix="give each suite a distinct name in eval.suites")
    return suites


def evaluate(cfg: Any, model: str, *, suites: list[str] | None = None, baselines: list[str] | None = None,
             out: Path | None = None, workspace: Workspace | None = None,
             progress: ProgressFn | None = None) -> EvalResult:
    """Evaluate ``model`` (base ref, adapter dir or name@version) and write eval.json and eval.html."""
    ws = workspace or Workspace.from_env()
    ecfg = cfg.eval
    say = progress or (lambda _msg: None)
    loaded_suites = select_suites(cfg, suites)
    golden = [s for s in loaded_suites if s.kind == "golden"]
    general = [s for s in loaded_suites if s.kind == "general"]
    primary = golden[0].name if golden else None
    parsed = [gates_mod.parse_gate(g) for g in ecfg.gates]
    valid = {s.name: _metric_names(s, ecfg.json_fields) for s in loaded_suites}
    gates_mod.check_names(parsed, [s.name for s in loaded_suites], primary, valid)

    relative = [g.expr for g in parsed if g.relative]
    if relative and not [*ecfg.baselines, *(baselines or [])]:  # would fail only after the whole evaluation
        raise EvalError(f"gate(s) {', '.join(map(repr, relative))} compare with a baseline, but none is given",
                        where="eval.gates", fix="pass --baseline MODEL (e.g. the base model) or set eval.baselines")

    candidate = resolve_spec(model, ws)
    base_specs = [resolve_spec(b, ws, where="--baseline / eval.baselines") for b in [*ecfg.baselines, *(baselines or [])]]
    labels = [CANDIDATE, *baseline_labels(len(base_specs))]
    specs = dict(zip(labels, [candidate, *base_specs], strict=True))
    generation = {"greedy": True, "seed": ecfg.seed, "max_new_tokens": ecfg.max_new_tokens,
                  "batch_size": ecfg.batch_size, "dtype": ecfg.dtype}
    cache = GenerationCache(ws.root / "eval-cache", enabled=ecfg.cache)
    runner = _Runner(ws, ecfg, cache, generation, say)

    outputs: dict[str, dict[str, Outputs]] = {s.name: {} for s in loaded_suites}
    for label, spec in specs.items():
        for suite in loaded_suites:
            outputs[suite.name][label] = runner.outputs(spec, suite, losses=suite.kind == "golden")
        runner.release()

    forgetting = None
    if general:
        forgetting = _forgetting(runner, candidate, general, outputs, ws, ecfg)
    runner.release()

    embedder = M.Embedder()
    say("scoring")
    for suite in loaded_suites:
        for out_ in outputs[suite.name].values():
            out_.values = _item_metrics(suite, out_, embedder, ecfg.json_fields)

    res = ecfg.bootstrap_resamples
    metrics = {s.name: {lab: _aggregate(o.values, o.losses, res, ecfg.seed) for lab, o in outputs[s.name].items()}
               for s in loaded_suites}
    by_category = {s.name: {lab: _by_category(s, o, res, ecfg.seed) for lab, o in outputs[s.name].items()}
                   for s in loaded_suites}
    comparisons = [_compare(s.name, metric, lab, specs[lab].ref, outputs[s.name], res, ecfg.seed)
                   for s in loaded_suites for lab in labels[1:] for metric in metrics[s.name][CANDIDATE]
                   if metric in metrics[s.name][lab]]
    comparisons = [c for c in comparisons if c is not None]

    judge = _judge(ecfg, golden[0] if golden else None, outputs, labels, specs, say)

    results = []
    for g in parsed:
        suite_name, metric = gates_mod.split_metric(g.metric, [s.name for s in loaded_suites], primary)
        value, base_value, missing = _gate_values(suite_name, metric, metrics, forgetting, judge, len(labels) > 1)
        results.append(gates_mod.evaluate_gate(g, value, base_value, missing))

    report = {
        "schema_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"ref": candidate.ref, "kind": candidate.kind, "checksum": candidate.checksum,
                  "base": candidate.base_ref, "path": str(candidate.path)},
        "baselines": [{"ref": s.ref, "kind": s.kind, "checksum": s.checksum, "label": lab}
                      for lab, s in zip(labels[1:], base_specs, strict=True)],
        "suites": [{"name": s.name, "path": str(s.path), "kind": s.kind, "checksum": s.checksum, "n": s.n,
                    "primary": s.name == primary} for s in loaded_suites],
        "generation": generation,
        "bootstrap": {"resamples": res, "seed": ecfg.seed, "level": 0.95, "method": "percentile",
                      "significance": "paired bootstrap; significant when the 95% CI of the difference excludes 0"},
        "metrics": metrics,
        "by_category": by_category,
        "comparisons": comparisons,
        "forgetting": forgetting,
        "judge": judge,
        "gates": [r.to_dict() for r in results],
        "passed": all(r.passed for r in results),
        "samples": _samples(loaded_suites, outputs, labels)[: ecfg.samples],
    }
    out_dir = out or ws.root / "evals" / f"{_slug(candidate.ref)}-{_report_key(report)[:12]}"
    from tuneforge.eval.report import write_report

    write_report(report, out_dir)
    return EvalResult(report, out_dir, results)


class _Runner:
    """Loads each model at most once, only when some suite's answers are not cached."""

    def __init__(self, ws: Workspace, ecfg: Any, cache: GenerationCache, generation: dict[str, Any],
                 say: ProgressFn) -> None:
        self.ws, self.ecfg, self.cache, self.generation, self.say = ws, ecfg, cache, generation, say
        self._loaded: tuple[str, LoadedModel] | None = None

    def model(self, spec: ModelSpec) -> LoadedModel:
        if self._loaded is None or self._loaded[0] != spec.checksum:
            self.release()
            self.say(f"loading {spec.ref}")
            self._loaded = (spec.checksum, load(spec, self.ws, self.ecfg.dtype))
        return self._loaded[1]

    def release(self) -> None:
        self._loaded = None
        gc.collect()

    def outputs(self, spec: ModelSpec, suite: Suite, *, losses: bool) -> Outputs:
        key = GenerationCache.key(spec.checksum, suite.checksum, self.generation)
        hit = self.cache.get(key)
        if hit is not None and (hit.get("losses") or not losses):
            return Outputs(hit["replies"], [tuple(x) for x in hit.get("losses") or []], cached=True)
        lm = self.model(spec)
        prompts = [i.messages for i in suite.items]
        self.say(f"generating {suite.name} ({suite.n} items) with {spec.ref}")
        replies = generate(lm, prompts, max_new_tokens=self.ecfg.max_new_tokens, batch_size=self.ecfg.batch_size,
                           seed=self.ecfg.seed)
        loss = answer_losses(lm, prompts, [i.expected for i in suite.items],
                             batch_size=self.ecfg.batch_size) if losses else []
        self.cache.put(key, {"model": spec.ref, "suite": suite.name, "generation": self.generation,
                             "replies": replies, "losses": loss})
        return Outputs(replies, loss)


def _metric_names(suite: Suite, fields: list[str] | None) -> set[str]:
    names = set(M.TEXT_METRICS)
    if suite.kind == "golden":
        names |= set(M.LOSS_METRICS)
    if any(i.format == "json" for i in suite.items):
        names |= {"json_valid", "field_accuracy"}
        for item in suite.items:
            obj = M.parse_json(item.expected)
            if isinstance(obj, dict):
                names |= {f"field_accuracy.{k}" for k in obj if fields is None or k in fields}
    if any(i.schema is not None for i in suite.items):
        names.add("schema_valid")
    return names


def _item_metrics(suite: Suite, out: Outputs, embedder: M.Embedder, fields: list[str] | None
                  ) -> dict[str, list[float | None]]:
    items, replies = suite.items, out.replies
    v: dict[str, list[float | None]] = {
        "exact_match": [M.exact_match(r, i.expected) for i, r in zip(items, replies, strict=True)],
        "rouge_l": [M.rouge_l(r, i.expected) for i, r in zip(items, replies, strict=True)],
        "chrf": [M.chrf(r, i.expected) for i, r in zip(items, replies, strict=True)],
        "semantic_similarity": list(embedder.similarities(replies, [i.expected for i in items])),
    }
    if any(i.format == "json" for i in items):
        v["json_valid"] = [M.json_valid(r) if i.format == "json" else None for i, r in zip(items, replies, strict=True)]
        per_field = [M.field_scores(r, i.expected, fields) if i.format == "json" else None
                     for i, r in zip(items, replies, strict=True)]
        v["field_accuracy"] = [sum(f.values()) / len(f) if f else None for f in per_field]
        names = sorted({k for f in per_field if f for k in f})
        for k in names:
            v[f"field_accuracy.{k}"] = [f.get(k) if f else None for f in per_field]
    if any(i.schema is not None for i in items):
        v["schema_valid"] = [M.schema_valid(r, i.schema) for i, r in zip(items, replies, strict=True)]
    return v


def _aggregate(values: dict[str, list[float | None]], losses: list[tuple[float, int]], resamples: int, seed: int,
               idx: list[int] | None = None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    pick = idx if idx is not None else None
    for name, vals in values.items():
        chosen = [vals[i] for i in pick] if pick is not None else vals
        kept = [x for x in chosen if x is not None]
        if kept:
            out[name] = mean_ci(kept, resamples=resamples, seed=seed).to_dict()
    if losses:
        chosen_l = [losses[i] for i in pick] if pick is not None else losses
        kept_l = [(m, n) for m, n in chosen_l if n and not math.isnan(m)]
        if kept_l:
            est = mean_ci([m for m, _ in kept_l], [n for _, n in kept_l], resamples=resamples, seed=seed)
            out["val_loss"] = est.to_dict()
            out["perplexity"] = Estimate(math.exp(est.value), math.exp(est.lo), math.exp(est.hi), est.n).to_dict()
    return out


def _by_category(suite: Suite, out: Outputs, resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    cats: dict[str, list[int]] = {}
    for k, item in enumerate(suite.items):
        if item.category is not None:
            cats.setdefault(item.category, []).append(k)
    return {c: _aggregate(out.values, out.losses, resamples, seed, idx) for c, idx in sorted(cats.items())}


def _compare(suite: str, metric: str, label: str, ref: str, outs: dict[str, Outputs], resamples: int,
             seed: int) -> dict[str, Any] | None:
    cand, base = outs[CANDIDATE], outs[label]
    if metric in ("val_loss", "perplexity"):
        pairs = [(a[0], b[0], a[1]) for a, b in zip(cand.losses, base.losses, strict=True)
                 if a[1] and b[1] and not (math.isnan(a[0]) or math.isnan(b[0]))]
        if not pairs:
            return None
        d = paired_diff_ci([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs],
                           resamples=resamples, seed=seed)
        if metric == "perplexity":
            # Perplexity is a monotone function of loss: its difference is significant exactly when the loss's is.
            ca = sum(p[0] * p[2] for p in pairs) / sum(p[2] for p in pairs)
            ba = sum(p[1] * p[2] for p in pairs) / sum(p[2] for p in pairs)
            diff_value = math.exp(ca) - math.exp(ba)
            return _comparison(suite, metric, label, ref, math.exp(ca), math.exp(ba), diff_value, None, d)
        weights = [p[2] for p in pairs]
        return _comparison(suite, metric, label, ref, _wmean([p[0] for p in pairs], weights),
                           _wmean([p[1] for p in pairs], weights), d.diff, (d.lo, d.hi), d)
    pairs2 = [(a, b) for a, b in zip(cand.values.get(metric, []), base.values.get(metric, []), strict=True)
              if a is not None and b is not None]
    if not pairs2:
        return None
    d = paired_diff_ci([a for a, _ in pairs2], [b for _, b in pairs2], resamples=resamples, seed=seed)
    ca, ba = sum(a for a, _ in pairs2) / len(pairs2), sum(b for _, b in pairs2) / len(pairs2)
    return _comparison(suite, metric, label, ref, ca, ba, d.diff, (d.lo, d.hi), d)


def _wmean(v: list[float], w: list[int]) -> float:
    return sum(a * b for a, b in zip(v, w, strict=True)) / sum(w)


def _comparison(suite: str, metric: str, label: str, ref: str, cand: float, base: float, diff: float,
                ci: tuple[float, float] | None, d: Any) -> dict[str, Any]:
    better = (diff < 0) if metric in M.LOWER_IS_BETTER else (diff > 0)
    return {"suite": suite, "metric": metric, "baseline": label, "baseline_ref": ref,
            "candidate_value": round(cand, 6), "baseline_value": round(base, 6), "diff": round(diff, 6),
            "ci": [round(ci[0], 6), round(ci[1], 6)] if ci else None, "n": d.n,
            "significant": d.significant, "candidate_better": better and d.significant,
            "higher_is_better": metric not in M.LOWER_IS_BETTER}


def _forgetting(runner: _Runner, candidate: ModelSpec, general: list[Suite], outputs: dict[str, dict[str, Outputs]],
                ws: Workspace, ecfg: Any) -> dict[str, Any]:
    """Similarity of the base's and the candidate's answers to stored base reference answers."""
    base = candidate
    if candidate.kind != "base":
        base = resolve_spec(candidate.base_ref, ws, where=f"{candidate.ref}: base_model in tuneforge.json")
    embedder = M.Embedder()
    per_suite = []
    for suite in general:
        refs = _references(runner, base, suite, ws, ecfg)
        base_out = outputs[suite.name][CANDIDATE] if base is candidate else runner.outputs(base, suite, losses=False)
        cand_out = outputs[suite.name][CANDIDATE]
        bs = embedder.similarities(base_out.replies, refs)
        cs = embedder.similarities(cand_out.replies, refs)
        res, seed = ecfg.bootstrap_resamples, ecfg.seed
        d = paired_diff_ci(bs, cs, resamples=res, seed=seed)
        per_suite.append({
            "suite": suite.name, "base": base.ref, "base_checksum": base.checksum,
            "references": str(_reference_path(ws, base, suite)),
            "base_similarity": mean_ci(bs, resamples=res, seed=seed).to_dict(),
            "candidate_similarity": mean_ci(cs, resamples=res, seed=seed).to_dict(),
            "similarity_drop": {"value": round(d.diff, 6), "ci": [round(d.lo, 6), round(d.hi, 6)], "n": d.n},
            "significant": d.significant,
        })
    return {**per_suite[0], "suites": per_suite}


def _reference_path(ws: Workspace, base: ModelSpec, suite: Suite) -> Path:
    return ws.root / "eval-cache" / "references" / f"{suite.checksum[:16]}-{base.checksum[:16]}.json"


def _references(runner: _Runner, base: ModelSpec, suite: Suite, ws: Workspace, ecfg: Any) -> list[str]:
    """The base model's answers to a general suite, generated once and stored (not subject to eval.cache)."""
    path = _reference_path(ws, base, suite)
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if len(stored.get("answers", [])) == suite.n:
            return list(stored["answers"])
    out = runner.outputs(base, suite, losses=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"base": base.ref, "base_checksum": base.checksum, "suite": suite.name,
                                "suite_checksum": suite.checksum, "generation": runner.generation,
                                "answers": out.replies}, ensure_ascii=False, indent=1), encoding="utf-8")
    return out.replies


def _judge(ecfg: Any, suite: Suite | None, outputs: dict[str, dict[str, Outputs]], labels: list[str],
           specs: dict[str, ModelSpec], say: ProgressFn) -> dict[str, Any]:
    from tuneforge.eval import judge as J

    jcfg = ecfg.judge
    if not jcfg.url:
        return {"skipped": "no judge configured (set eval.judge.url and eval.judge.model)"}
    if suite is None:
        return {"skipped": "no golden suite to judge"}
    client = J.JudgeClient.from_config(jcfg)
    items = suite.items[: jcfg.max_items] if jcfg.max_items else suite.items
    prompts, refs = [i.messages for i in items], [i.expected for i in items]
    say(f"judging {len(items)} items of {suite.name} with {client.model}")
    rubric: dict[str, Any] = {}
    for lab in labels:
        scores = J.rubric_scores(client, prompts, refs, outputs[suite.name][lab].replies[: len(items)])
        kept = [float(s) for s in scores if s is not None]
        rubric[lab] = {**(mean_ci(kept, resamples=ecfg.bootstrap_resamples, seed=ecfg.seed).to_dict()
                          if kept else {"value": None, "ci": [None, None], "n": 0}),
                       "unparsed": sum(s is None for s in scores), "scores": scores}
    result: dict[str, Any] = {"url": client.url, "model": client.model, "suite": suite.name, "n": len(items),
                              "prompt_version": J.PROMPT_VERSION,
                              "prompt": {"rubric": J.RUBRIC_PROMPT, "pairwise": J.PAIRWISE_PROMPT},
                              "rubric": rubric, "pairwise": None}
    if len(labels) > 1:
        pw = J.pairwise(client, prompts, refs, outputs[suite.name][CANDIDATE].replies[: len(items)],
                        outputs[suite.name][labels[1]].replies[: len(items)])
        est = mean_ci([p.value for p in pw], resamples=ecfg.bootstrap_resamples, seed=ecfg.seed)
        result["pairwise"] = {
            "baseline": specs[labels[1]].ref, "orders": 2,
            "wins": sum(p.outcome == "win" for p in pw), "losses": sum(p.outcome == "loss" for p in pw),
            "ties": sum(p.outcome == "tie" for p in pw),
            "order_disagreements": sum(p.first in ("A", "B") and p.second in ("A", "B") and p.outcome == "tie"
                                       for p in pw),
            "win_rate": est.to_dict(),
            "verdicts": [{"candidate_as_a": p.first, "candidate_as_b": p.second, "outcome": p.outcome} for p in pw],
        }
    return result


def _gate_values(suite: str | None, metric: str, metrics: dict[str, Any], forgetting: dict[str, Any] | None,
                 judge: dict[str, Any], has_baseline: bool) -> tuple[float | None, float | None, str]:
    if suite is None:
        if metric == "forgetting_similarity_drop":
            if forgetting is None:
                return None, None, "no general (kind: general) suite was evaluated"
            return forgetting["similarity_drop"]["value"], None, ""
        if "skipped" in judge:
            return None, None, f"judge skipped: {judge['skipped']}"
        if metric == "judge_score":
            r = judge["rubric"]
            return r[CANDIDATE]["value"], (r["baseline"]["value"] if "baseline" in r else None), ""
        pw = judge.get("pairwise")
        if pw is None:
            return None, None, "judge_win_rate needs a baseline (--baseline)"
        return pw["win_rate"]["value"], None, ""
    cand = metrics[suite][CANDIDATE].get(metric, {}).get("value")
    base = metrics[suite]["baseline"].get(metric, {}).get("value") if has_baseline else None
    return cand, base, "" if cand is not None else "no items to measure it on"


def _samples(suites: list[Suite], outputs: dict[str, dict[str, Outputs]], labels: list[str]) -> list[dict[str, Any]]:
    """Items where the candidate and the first baseline answer differently (for the HTML side-by-side)."""
    if len(labels) < 2:
        return []
    out = []
    for s in suites:
        cand, base = outputs[s.name][CANDIDATE].replies, outputs[s.name][labels[1]].replies
        for k, item in enumerate(s.items):
            if cand[k] != base[k]:
                out.append({"suite": s.name, "id": item.id, "prompt": item.messages[-1]["content"],
                            "expected": item.expected, CANDIDATE: cand[k], "baseline": base[k]})
    return out


def _slug(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(ref).name or ref).strip("-.") or "model"


def _report_key(report: dict[str, Any]) -> str:
    body = json.dumps([report["model"], report["baselines"], report["suites"], report["generation"]], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()
