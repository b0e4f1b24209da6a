"""The retrain trigger: logged traffic curated into training rows, then the normal pipeline as a canary.

Logged requests become chat rows (the request's messages plus the served answer). When users
rated any of them, only positively rated ones are kept: unrated traffic includes the answers
that caused the alarm. The rows go through
the data stage like any input (dedup, PII, decontamination against the eval sets), mixed with
the original inputs, and the pipeline's gates decide; a version that passes becomes the
`canary` at monitor.retrain.canary percent, never production.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import InputSpec, TuneforgeConfig
from tuneforge.errors import MonitorError
from tuneforge.monitor import drift
from tuneforge.workspace import Workspace

SayFn = Callable[[str], None]


@dataclass
class LoggedRows:
    rows: list[dict[str, Any]]  # chat rows, newest request first
    candidates: int  # answered, non-shadow chat requests of the model
    feedback_filtered: bool  # True when ratings existed and only positively rated rows were kept


@dataclass
class RetrainOutcome:
    pipeline: Any  # PipelineResult
    logged_file: Path
    logged_rows: int
    original_inputs: list[str]
    feedback_filtered: bool
    canary: float

    def summary(self) -> dict[str, Any]:
        return {"version": self.pipeline.version, "canary_share": self.canary, "logged_rows": self.logged_rows,
                "logged_file": str(self.logged_file), "dataset": self.pipeline.dataset,
                "feedback_filtered": self.feedback_filtered,
                "stages": {st.name: f"{st.status}: {st.detail}" for st in self.pipeline.stages}}


def curate_logged(cfg: TuneforgeConfig, ws: Workspace, model: str) -> LoggedRows:
    """Chat rows from the model's logged requests: answered, not shadow, not errors; when any were rated,
    the positively rated ones, and every corrected one with the user's correction as the answer."""
    from tuneforge.serve.requestlog import log_path, read_log
    from tuneforge.serve.requestlog import read_feedback as read_all_feedback

    found: list[tuple[str, list[dict[str, Any]], str]] = []  # (request id, prompt turns, answer)
    for row in read_log(log_path(ws), model=model):
        if row["shadow"] or row.get("status") != 200 or row.get("error") or not row.get("response"):
            continue
        msgs = drift.row_messages(row)
        if not msgs:
            continue
        # The open assistant turn a rendered prompt ends with is where the answer goes.
        while msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        if not msgs or msgs[-1].get("role") != "user":
            continue
        turns = [{"role": m["role"], "content": m.get("content")} for m in msgs]
        found.append((row["request_id"], turns, row["response"]))
    wanted = {rid for rid, _, _ in found}
    feedback = {rid: fb for rid, fb in read_all_feedback(log_path(ws)).items() if rid in wanted}
    rated = bool(feedback)
    keep_min = cfg.monitor.retrain.positive_score_min
    rows = []
    for rid, turns, answer in found:
        fb = feedback.get(rid)
        if fb is not None and fb.correction:  # the user's corrected answer is the best label there is
            rows.append({"messages": [*turns, {"role": "assistant", "content": fb.correction}],
                         "request_id": rid, "corrected": True})
        elif not rated or (fb is not None and fb.score >= keep_min):
            rows.append({"messages": [*turns, {"role": "assistant", "content": answer}], "request_id": rid})
    return LoggedRows(rows, len(found), rated)


def _original_inputs(cfg: TuneforgeConfig, reference_source: str | None) -> list[InputSpec]:
    """data.inputs, else the domain inputs recorded in the reference dataset's manifest."""
    if cfg.data.inputs:
        return list(cfg.data.inputs)
    if reference_source and (Path(reference_source) / "manifest.json").is_file():
        manifest = json.loads((Path(reference_source) / "manifest.json").read_text())
        specs = [InputSpec(path=i["path"], format=i.get("format", "auto")) for i in manifest.get("inputs", [])
                 if i.get("origin") == "domain" and Path(i["path"]).is_file()]
        if specs:
            return specs
    raise MonitorError("the original training inputs are unknown, so a retrain cannot mix them in",
                       where="data.inputs", fix="list the training files under data.inputs in the config")


def _count_rows(specs: list[InputSpec]) -> int:
    from tuneforge.data._readers import read_rows

    return sum(len(chunk) for s in specs for chunk in read_rows(s.path))


def retrain(cfg: TuneforgeConfig, ws: Workspace | None = None, result: Any = None, *,
            say: SayFn | None = None) -> RetrainOutcome:
    """Export curated logged requests, mix them with the original inputs, and run the pipeline as a canary.

    ``result`` (a MonitorResult) supplies the model name and the reference dataset; without it
    monitor.model / pipeline.name and data.inputs are used. Raises GateFailed when the new
    version fails a gate (nothing is registered then) and MonitorError when too few logged rows
    are usable.
    """
    from tuneforge.pipeline import run_pipeline

    ws = ws or Workspace.from_env()
    tell = say or (lambda _m: None)
    rcfg = cfg.monitor.retrain
    model = getattr(result, "model", None) or cfg.monitor.model or cfg.pipeline.name
    logged = curate_logged(cfg, ws, model)
    originals = _original_inputs(cfg, (getattr(result, "reference", None) or {}).get("source"))
    n_original = _count_rows(originals)
    # At most logged_share of the combined inputs comes from traffic, so the original task
    # still dominates; the newest requests are kept.
    cap = min(rcfg.max_rows, int(n_original * rcfg.logged_share / (1 - rcfg.logged_share)))
    rows = logged.rows[:cap]
    if len(rows) < rcfg.min_rows:
        why = (f"{len(logged.rows)} of {logged.candidates} logged requests are usable"
               + (" (only positively rated ones count, since some were rated)"
                  if logged.feedback_filtered else ""))
        raise MonitorError(f"too few logged rows to retrain on: {why}; monitor.retrain.min_rows={rcfg.min_rows}",
                           where=f"request log of {model}",
                           fix="wait for more traffic (or feedback), or lower monitor.retrain.min_rows")
    body = "".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False, sort_keys=True) + "\n"
                   for r in reversed(rows))
    # Named by content, so an unchanged export lets the data stage reuse its prepared dataset.
    out = ws.ensure(ws.root / "monitor" / "retrain") / f"logged-{hashlib.sha256(body.encode()).hexdigest()[:16]}.jsonl"
    if not out.is_file():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(out)
    tell(f"retrain: {len(rows)} logged rows ({'positively rated only' if logged.feedback_filtered else 'unrated'}) "
         f"+ {n_original} original rows → {out}")

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.data.inputs = [*originals, InputSpec(path=str(out), format="chat")]
    run_cfg.pipeline.name = model
    run_cfg.deploy.canary = rcfg.canary
    pipeline = run_pipeline(run_cfg, workspace=ws, say=tell)
    return RetrainOutcome(pipeline, out, len(rows), [s.path for s in originals], logged.feedback_filtered,
                          rcfg.canary)
