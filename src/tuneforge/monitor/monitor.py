"""`tuneforge monitor`: recent traffic against the training data and the eval baseline.

One check per question a model owner asks about live traffic: are people asking different
things (prompt embedding MMD test), differently sized things (prompt length PSI), are answers
still well-formed (JSON / schema validity against the served version's eval report), is the
model refusing more, and are users less happy (feedback trend). Each result is appended to
`<workspace>/monitor/history.jsonl` and plotted in `<workspace>/monitor/report.html`; with
`monitor.on_drift: retrain` an alarm also starts a retrain whose result enters as a canary.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.config import TuneforgeConfig
from tuneforge.errors import MonitorError, TuneforgeError
from tuneforge.monitor import drift
from tuneforge.workspace import Workspace

SayFn = Callable[[str], None]
HISTORY = "history.jsonl"
REPORT = "report.html"
# Under half the reference answers being JSON means the task is not a JSON task: no validity check.
_JSON_TASK_MIN_SHARE = 0.5


@dataclass
class Check:
    name: str
    status: str  # ok | alarm | skipped
    value: float | None = None
    threshold: float | None = None
    n: int = 0
    p_value: float | None = None
    baseline: float | None = None
    detail: str = ""

    @property
    def alarm(self) -> bool:
        return self.status == "alarm"


@dataclass
class MonitorResult:
    model: str
    time: float
    version: str | None  # the version that served most of the window (name@N)
    window: dict[str, Any]  # requests, first/last time, versions
    reference: dict[str, Any]  # source, rows
    baseline: str  # where validity baselines came from
    checks: list[Check] = field(default_factory=list)
    retrain: dict[str, Any] | None = None  # what the retrain trigger did, when it fired

    @property
    def alarm(self) -> bool:
        return any(c.alarm for c in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alarm"] = self.alarm
        d["time_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time))
        return d


@dataclass
class Reference:
    source: str
    sha256: str  # of the reference file: keys the embedding cache
    prompts: list[str]
    responses: list[str]
    dataset_dir: Path | None = None  # when the reference is a prepared dataset


# --- the request log ----------------------------------------------------------------------------


def read_window(ws: Workspace, model: str, *, window: int, since_s: float | None = None,
                now: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(current, previous): the newest ``window`` non-shadow requests of ``model`` and the ones before."""
    from tuneforge.serve.requestlog import log_path, read_log

    now = time.time() if now is None else now
    cutoff = now - since_s if since_s else None
    current: list[dict[str, Any]] = []
    previous: list[dict[str, Any]] = []
    for row in read_log(log_path(ws), model=model):
        if row["shadow"] or row["time"] > now:
            continue
        if len(current) < window and (cutoff is None or row["time"] >= cutoff):
            current.append(row)
        elif len(previous) < window:
            previous.append(row)
        else:
            break
    return current, previous


def _logged_models(ws: Workspace, limit: int = 5000) -> str:
    """The model names requested in the newest ``limit`` log rows, for an error message."""
    from tuneforge.serve.requestlog import log_path, read_log

    path = log_path(ws)
    names = sorted({str(r["model_requested"]).split("@")[0] for r in read_log(path, limit=limit)}) if path.is_file() else []
    return "in the log: " + ", ".join(names) if names else "the log is empty"


def _scores(feedback: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Feedback scores (normalised to [0, 1]) of these rows' requests, by request id."""
    return {r["request_id"]: feedback[r["request_id"]].score for r in rows if r["request_id"] in feedback}


# --- the reference ------------------------------------------------------------------------------


def _served_version(cfg: TuneforgeConfig, ws: Workspace, name: str, rows: list[dict[str, Any]]) -> Any:
    """The registry version that served most of the window, or None (base model, no registry)."""
    versions = Counter(str(r["version"]) for r in rows if r.get("version") and str(r["version"]).isdigit())
    if not versions:
        return None
    from tuneforge.registry import Registry
    from tuneforge.tracking import TrackingStore

    if TrackingStore.resolve(cfg.tracking.uri, ws).embedded and not ws.mlflow_db.is_file():
        return None  # no registry was ever written here; creating an empty store just to ask costs seconds

    try:
        return Registry.from_config(cfg, ws).resolve(f"{name}@{versions.most_common(1)[0][0]}")
    except TuneforgeError:
        return None


def _dataset_with_fingerprint(ws: Workspace, fingerprint: str | None) -> Path | None:
    if not fingerprint or not ws.datasets_dir.is_dir():
        return None
    for manifest in ws.datasets_dir.glob("*/manifest.json"):
        try:
            if json.loads(manifest.read_text()).get("fingerprint") == fingerprint:
                return manifest.parent
        except (OSError, ValueError):
            continue
    return None


def reference_source(cfg: TuneforgeConfig, ws: Workspace, served: Any = None) -> Path:
    """monitor.reference, else the served version's training dataset, else the latest prepared one."""
    if cfg.monitor.reference:
        p = Path(cfg.monitor.reference)
        if not p.exists():
            raise MonitorError(f"reference {p} does not exist", where="monitor.reference",
                               fix="point it at a prepared dataset directory or a JSONL file of training rows")
        return p
    found = _dataset_with_fingerprint(ws, getattr(served, "dataset_fingerprint", None))
    if found is not None:
        return found
    latest = ws.datasets_dir / "latest"
    if latest.is_file():
        p = Path(latest.read_text().strip())
        if (p / "manifest.json").is_file():
            return p
    raise MonitorError("no reference data to compare traffic with", where=f"{ws.datasets_dir} / monitor.reference",
                       fix="run `tuneforge run` (or `tuneforge data prepare`) first, or set monitor.reference to "
                       "the training data")


def load_reference(path: Path) -> Reference:
    """Prompts (user turns) and answers (last assistant turn) of the reference's chat rows.

    A prepared dataset contributes its train split's domain rows only: general-purpose rows
    mixed in against forgetting are not what the model is expected to be asked.
    """
    from tuneforge.models._hashing import sha256_file

    prompts: list[str] = []
    responses: list[str] = []
    dataset_dir = None
    if path.is_dir():
        from tuneforge.data import PreparedDataset

        dataset_dir = path
        file = PreparedDataset.load(path).split_path("train")
        conversations = []
        for line in file.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("source", "domain") == "domain" and isinstance(rec.get("messages"), list):
                conversations.append(rec["messages"])
    else:
        from tuneforge.data._formats import normalise
        from tuneforge.data._readers import read_rows
        from tuneforge.data._types import Row

        file = path
        conversations = []
        for chunk in read_rows(path):
            for raw in chunk:
                row = normalise(raw, "auto")
                if isinstance(row, Row) and isinstance(row.data.get("messages"), list):
                    conversations.append(row.data["messages"])
                elif isinstance(row, Row) and isinstance(row.data.get("prompt"), list):  # preference rows
                    conversations.append(row.data["prompt"] + row.data.get("chosen", [])[:1])
    for msgs in conversations:
        text = drift.user_text(msgs)
        if not text:
            continue
        prompts.append(text)
        last = msgs[-1] if msgs else {}
        responses.append((last.get("content") or "") if last.get("role") == "assistant" else "")
    if not prompts:
        raise MonitorError(f"the reference {path} has no chat rows with a user turn", where=str(file),
                           fix="point monitor.reference at the chat data the model was trained on")
    return Reference(str(path), sha256_file(file), prompts, responses, dataset_dir)


def _reference_embeddings(ws: Workspace, ref: Reference, n: int, seed: int, embedder: Any) -> np.ndarray:
    """The reference sample's embeddings, cached by (reference content, sample size, seed)."""
    key = hashlib.sha256(f"{ref.sha256}:{n}:{seed}".encode()).hexdigest()[:24]
    cache = ws.root / "monitor" / "cache" / f"ref-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    idx = drift.subsample(np.arange(len(ref.prompts)), n, seed)
    emb = drift.embed([ref.prompts[i] for i in idx], embedder)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(cache)
    return emb


# --- baselines ----------------------------------------------------------------------------------


def _eval_metrics(cfg: TuneforgeConfig, ws: Workspace, name: str, served: Any) -> tuple[dict[str, Any], str] | None:
    """The candidate's metrics on the primary suite of the served version's eval report.

    The registry's attached report is preferred (it is checksum-verified evidence for exactly
    that version); the pipeline's last eval report is the fallback for unregistered setups.
    """
    report_metrics: dict[str, Any] | None = None
    source = ""
    if served is not None:
        from tuneforge.registry import Registry

        try:
            report_metrics = Registry.from_config(cfg, ws).show(served.ref).report_metrics or None
            source = f"eval report of {served.ref}"
        except TuneforgeError:
            report_metrics = None
    if report_metrics is None:
        state = ws.root / "pipeline" / name / "state.json"
        try:
            report_path = Path(json.loads(state.read_text())["eval"]["outputs"]["report"])
            report_metrics = json.loads(report_path.read_text())["metrics"]
            source = str(report_path)
        except (OSError, KeyError, ValueError, TypeError):
            return None
    golden = [s.name for s in cfg.eval.suites if s.kind == "golden"]
    for suite in [*golden, *report_metrics]:
        cand = report_metrics.get(suite, {}).get("candidate")
        if cand:
            return cand, f"{source} (suite {suite})"
    return None


def _primary_schema(cfg: TuneforgeConfig) -> dict[str, Any] | None:
    for s in cfg.eval.suites:
        if s.kind == "golden":
            if s.schema_path and Path(s.schema_path).is_file():
                return json.loads(Path(s.schema_path).read_text())
            return None
    return None


# --- the checks ---------------------------------------------------------------------------------


def _rate(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _embedding_check(cfg: TuneforgeConfig, ws: Workspace, ref: Reference, prompts: list[str]) -> Check:
    m = cfg.monitor
    alpha = m.thresholds.embedding_alpha
    if len(prompts) < m.min_samples:
        return Check("prompt_embedding", "skipped", threshold=alpha, n=len(prompts),
                     detail=f"{len(prompts)} prompts < monitor.min_samples={m.min_samples}")
    from tuneforge.eval.metrics import Embedder

    embedder = Embedder()  # one model load for both sides
    ref_emb = _reference_embeddings(ws, ref, m.max_samples, m.seed, embedder)
    sample = drift.subsample(np.arange(len(prompts)), m.max_samples, m.seed + 1)
    cur_emb = drift.embed([prompts[i] for i in sample], embedder)
    res = drift.mmd_test(ref_emb, cur_emb, permutations=m.permutations, seed=m.seed, max_samples=None)
    status = "alarm" if res.p_value < alpha else "ok"
    return Check("prompt_embedding", status, value=res.mmd2, threshold=alpha, n=res.n_current, p_value=res.p_value,
                 detail=f"MMD² {res.mmd2:.4f}, permutation p={res.p_value:.4f} (alarm below {alpha:g}); "
                 f"{res.n_reference} reference vs {res.n_current} recent prompts")


def _length_check(cfg: TuneforgeConfig, ref: Reference, prompts: list[str]) -> Check:
    m = cfg.monitor
    limit = m.thresholds.length_psi_max
    if len(prompts) < m.min_samples:
        return Check("prompt_length", "skipped", threshold=limit, n=len(prompts),
                     detail=f"{len(prompts)} prompts < monitor.min_samples={m.min_samples}")
    ref_len = [len(p) for p in ref.prompts]
    cur_len = [len(p) for p in prompts]
    value = drift.psi(ref_len, cur_len)
    return Check("prompt_length", "alarm" if value > limit else "ok", value=value, threshold=limit, n=len(prompts),
                 baseline=float(np.median(ref_len)),
                 detail=f"PSI {value:.3f} (alarm above {limit:g}); median length {np.median(cur_len):.0f} "
                 f"chars vs {np.median(ref_len):.0f} in the reference")


def _validity_check(name: str, cfg: TuneforgeConfig, scores: list[float], baseline: float, source: str) -> Check:
    m = cfg.monitor
    drop_max = m.thresholds.validity_drop_max
    floor = baseline - drop_max
    if len(scores) < m.min_samples:
        return Check(name, "skipped", threshold=floor, n=len(scores), baseline=baseline,
                     detail=f"{len(scores)} responses < monitor.min_samples={m.min_samples}")
    value = _rate(scores)
    return Check(name, "alarm" if value < floor else "ok", value=value, threshold=floor, n=len(scores),
                 baseline=baseline,
                 detail=f"{value:.3f} of responses vs {baseline:.3f} in {source} (alarm below {floor:.3f})")


def _refusal_check(cfg: TuneforgeConfig, ref: Reference, responses: list[str]) -> Check:
    m = cfg.monitor
    limit = m.thresholds.refusal_rate_max
    patterns = [re.compile(p, re.IGNORECASE) for p in m.refusal_patterns]

    def refused(text: str) -> float:
        return float(any(p.search(text) for p in patterns))

    base = _rate([refused(r) for r in ref.responses if r])
    if len(responses) < m.min_samples:
        return Check("refusal_rate", "skipped", threshold=limit, n=len(responses), baseline=base,
                     detail=f"{len(responses)} responses < monitor.min_samples={m.min_samples}")
    value = _rate([refused(r) for r in responses])
    return Check("refusal_rate", "alarm" if value > limit else "ok", value=value, threshold=limit, n=len(responses),
                 baseline=base, detail=f"{value:.3f} of responses refuse vs {base:.3f} of reference answers "
                 f"(alarm above {limit:g})")


def _feedback_check(cfg: TuneforgeConfig, current: dict[str, float], previous: dict[str, float]) -> Check | None:
    t = cfg.monitor.thresholds
    cur, prev = list(current.values()), list(previous.values())
    if not cur and not prev:
        return None
    mean = _rate(cur) if cur else None
    prev_mean = _rate(prev) if prev else None
    enough = len(cur) >= cfg.monitor.min_samples
    reasons = []
    if enough and mean is not None and t.feedback_mean_min is not None and mean < t.feedback_mean_min:
        reasons.append(f"mean {mean:.3f} < {t.feedback_mean_min:g}")
    if (enough and mean is not None and prev_mean is not None and len(prev) >= cfg.monitor.min_samples
            and t.feedback_drop_max is not None and prev_mean - mean > t.feedback_drop_max):
        reasons.append(f"down {prev_mean - mean:.3f} from the previous window (> {t.feedback_drop_max:g})")
    status = "alarm" if reasons else ("ok" if enough else "skipped")
    detail = (f"mean score {mean:.3f} over {len(cur)} rated requests" if mean is not None else "no rated requests")
    detail += f"; previous window {prev_mean:.3f} over {len(prev)}" if prev_mean is not None else ""
    if reasons:
        detail += "; " + "; ".join(reasons)
    elif not enough:
        detail += f"; fewer than monitor.min_samples={cfg.monitor.min_samples}"
    return Check("feedback", status, value=mean, threshold=t.feedback_mean_min, n=len(cur), baseline=prev_mean,
                 detail=detail)


# --- the whole run -----------------------------------------------------------------------------


def run_monitor(cfg: TuneforgeConfig, ws: Workspace | None = None, *, now: float | None = None,
                say: SayFn | None = None) -> MonitorResult:
    """Run every check on the current window, record the result, and retrain on an alarm if configured."""
    ws = ws or Workspace.from_env()
    tell = say or (lambda _m: None)
    m = cfg.monitor
    name = m.model or cfg.pipeline.name
    now = time.time() if now is None else now
    current, previous = read_window(ws, name, window=m.window, since_s=m.since_s, now=now)
    if not current and not previous:  # a model the log never saw: a typo would otherwise read as "no drift"
        raise MonitorError(f"the request log has no requests of {name}", where="monitor.model / pipeline.name",
                           fix=f"set monitor.model to a served model ({_logged_models(ws)}), or serve {name} first")
    served = _served_version(cfg, ws, name, current)
    ref = load_reference(reference_source(cfg, ws, served))
    tell(f"{len(current)} recent requests of {name} vs {len(ref.prompts)} reference prompts ({ref.source})")

    prompts = [t for t in (drift.row_prompt_text(r) for r in current) if t]
    answered = [r for r in current if r.get("status") == 200 and isinstance(r.get("response"), str)]
    responses = [r["response"] for r in answered]
    checks = [_embedding_check(cfg, ws, ref, prompts), _length_check(cfg, ref, prompts)]

    from tuneforge.eval import metrics as M

    evaluated = _eval_metrics(cfg, ws, name, served)
    baseline_source = evaluated[1] if evaluated else f"reference answers ({ref.source})"
    json_baseline: float | None = None
    if evaluated is not None:
        json_baseline = evaluated[0].get("json_valid", {}).get("value")
    else:
        ref_json = _rate([M.json_valid(r) for r in ref.responses if r])
        json_baseline = ref_json if ref_json >= _JSON_TASK_MIN_SHARE else None
    if json_baseline is not None:
        checks.append(_validity_check("json_valid", cfg, [M.json_valid(r) for r in responses], json_baseline,
                                      baseline_source))
    schema = _primary_schema(cfg)
    if schema is not None:
        schema_baseline = (evaluated[0].get("schema_valid", {}).get("value") if evaluated else
                           _rate([M.schema_valid(r, schema) or 0.0 for r in ref.responses if r]))
        if schema_baseline is not None:
            checks.append(_validity_check("schema_valid", cfg, [M.schema_valid(r, schema) or 0.0 for r in responses],
                                          schema_baseline, baseline_source))
    checks.append(_refusal_check(cfg, ref, responses))
    from tuneforge.serve.requestlog import log_path, read_feedback

    rated = read_feedback(log_path(ws))  # one read serves both windows
    feedback = _feedback_check(cfg, _scores(rated, current), _scores(rated, previous))
    if feedback is not None:
        checks.append(feedback)

    times = [r["time"] for r in current]
    result = MonitorResult(
        model=name, time=now, version=served.ref if served is not None else None,
        window={"requests": len(current), "answered": len(answered), "prompts": len(prompts),
                "first": min(times) if times else None, "last": max(times) if times else None,
                "versions": dict(Counter(str(r.get("version")) for r in current))},
        reference={"source": ref.source, "rows": len(ref.prompts)}, baseline=baseline_source, checks=checks,
    )
    if result.alarm and m.on_drift == "retrain":
        result.retrain = _trigger_retrain(cfg, ws, result, tell)
    record(ws, result)
    return result


def _trigger_retrain(cfg: TuneforgeConfig, ws: Workspace, result: MonitorResult, tell: SayFn) -> dict[str, Any]:
    from tuneforge.monitor.retrain import retrain
    from tuneforge.pipeline import GateFailed

    fired = [c.name for c in result.checks if c.alarm]
    cooldown = cfg.monitor.retrain.cooldown_s
    last = next((h for h in reversed(load_history(ws, result.model))
                 if (h.get("retrain") or {}).get("status") in ("ran", "gate_failed")), None)
    if last is not None and result.time - last["time"] < cooldown:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last["time"] + cooldown))
        tell(f"alarm on {', '.join(fired)}: no retrain until {until} (monitor.retrain.cooldown_s)")
        return {"status": "cooldown", "reason": f"the last retrain was at {last.get('time_iso')}; "
                f"the next may start after {until} (monitor.retrain.cooldown_s={cooldown:g})", "checks": fired}
    tell(f"alarm on {', '.join(fired)}: retraining (monitor.on_drift=retrain)")
    try:
        outcome = retrain(cfg, ws, result, say=tell)
    except GateFailed as exc:
        return {"status": "gate_failed", "reason": exc.what, "report": exc.where, "checks": fired}
    except TuneforgeError as exc:
        return {"status": "failed", "reason": exc.what, "where": exc.where, "checks": fired}
    return {"status": "ran", "checks": fired, **outcome.summary()}


def record(ws: Workspace, result: MonitorResult) -> Path:
    """Append the result to history.jsonl and redraw report.html from the whole history."""
    from tuneforge.monitor._plot import render_report

    root = ws.ensure(ws.root / "monitor")
    with (root / HISTORY).open("a", encoding="utf-8") as f:
        f.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
    history = load_history(ws, result.model)
    tmp = root / f".{REPORT}.tmp"
    tmp.write_text(render_report(history, result.model), encoding="utf-8")
    tmp.replace(root / REPORT)
    return root / REPORT


def load_history(ws: Workspace, model: str | None = None) -> list[dict[str, Any]]:
    path = ws.root / "monitor" / HISTORY
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash mid-append
        if model is None or rec.get("model") == model:
            out.append(rec)
    return out


def watch(cfg: TuneforgeConfig, ws: Workspace | None = None, *, every_s: float | None = None,
          iterations: int | None = None, on_result: Callable[[MonitorResult], None] | None = None,
          on_error: Callable[[TuneforgeError], None] | None = None, sleep: Callable[[float], None] = time.sleep,
          say: SayFn | None = None) -> int:
    """Run the monitor every ``every_s`` seconds (default monitor.watch_every_s); returns the runs made.

    A user error in one run (say, the registry is briefly unavailable) is reported and the next
    run still happens: a watcher that dies on the first hiccup watches nothing.
    """
    interval = every_s or cfg.monitor.watch_every_s
    runs = 0
    while iterations is None or runs < iterations:
        started = time.monotonic()
        try:
            res = run_monitor(cfg, ws, say=say)
            if on_result:
                on_result(res)
        except TuneforgeError as exc:
            if on_error is None:
                raise
            on_error(exc)
        runs += 1
        if iterations is not None and runs >= iterations:
            break
        sleep(max(0.0, interval - (time.monotonic() - started)))
    return runs
