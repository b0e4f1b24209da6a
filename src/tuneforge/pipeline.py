"""`tuneforge run`: prepare → train → eval (gates) → register → promote, resumable stage by stage.

Every stage is keyed by the content of its inputs, and a rerun skips each stage whose key is
unchanged and says so, so a pipeline that crashed mid-way continues at the stage that failed.
Prepare (dataset fingerprint), train (run key) and register (adapter checksum) already detect
identical finished work themselves; eval is keyed here (adapter checksum, suites, eval settings)
in `<workspace>/pipeline/<name>/state.json`, because its report depends on more than its cache key.

A failed gate stops the pipeline before anything is registered or promoted: the version that
would have been registered has evidence against it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import TuneforgeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.workspace import Workspace

SayFn = Callable[[str], None]


class GateFailed(TuneforgeError):
    """The candidate failed at least one evaluation gate; nothing was registered or promoted."""

    def __init__(self, what: str, *, where: str, fix: str, report: dict[str, Any]) -> None:
        super().__init__(what, where=where, fix=fix)
        self.report = report


@dataclass
class StageResult:
    name: str
    status: str  # ran | skipped | failed
    seconds: float
    detail: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    name: str
    stages: list[StageResult]
    dataset: str | None = None
    adapter: str | None = None
    eval_dir: str | None = None
    version: str | None = None  # name@N
    passed: bool | None = None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


class _State:
    """The last successful key and outputs of each stage, written atomically after each stage."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, stage: str, key: str) -> dict[str, Any] | None:
        entry = self.data.get(stage)
        return entry["outputs"] if entry and entry.get("key") == key else None

    def record(self, stage: str, key: str, outputs: dict[str, Any]) -> None:
        self.data[stage] = {"key": key, "outputs": outputs, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def run_pipeline(cfg: TuneforgeConfig, *, inputs: list[str] | None = None, workspace: Workspace | None = None,
                 say: SayFn | None = None, train_progress: Any = None, data_progress: Any = None,
                 eval_progress: SayFn | None = None) -> PipelineResult:
    """Run every stage of the pipeline for ``cfg``; raises GateFailed when a gate fails."""
    from tuneforge.data import prepare
    from tuneforge.eval.run import evaluate
    from tuneforge.registry import Registry
    from tuneforge.train import train

    ws = workspace or Workspace.from_env()
    name = cfg.pipeline.name
    tell = say or (lambda _m: None)
    state = _State(ws.root / "pipeline" / name / "state.json")
    result = PipelineResult(name, [])

    def stage(label: str, fn: Callable[[], tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
        tell(f"▶ {label}")
        started = time.perf_counter()
        try:
            status, detail, outputs = fn()
        except BaseException:
            result.stages.append(StageResult(label, "failed", time.perf_counter() - started))
            raise
        result.stages.append(StageResult(label, status, time.perf_counter() - started, detail, outputs))
        tell(f"  {status}: {detail}")
        return outputs

    # 1. prepare: the data stage itself detects an unchanged input set (same fingerprint).
    def do_prepare() -> tuple[str, str, dict[str, Any]]:
        ds = prepare(cfg, inputs, workspace=ws, progress=data_progress)
        counts = ds.counts
        detail = (f"unchanged inputs, reused {ds.path.name}" if ds.reused else
                  f"{counts.get('kept', '?')} of {counts.get('read', '?')} rows kept → {ds.path}")
        return ("skipped" if ds.reused else "ran"), detail, {"path": str(ds.path), "fingerprint": ds.fingerprint}

    prepared = stage("prepare", do_prepare)
    result.dataset = prepared["path"]

    # 2. train: an identical finished run (same run key: config, data, base, precision) is reused.
    def do_train() -> tuple[str, str, dict[str, Any]]:
        res = train(cfg, data=prepared["path"], workspace=ws, progress=train_progress)
        checksum = res.meta.get("checksum", "")
        out = {"path": str(res.path), "checksum": checksum, "run_key": res.run_key}
        m = res.metrics
        detail = (f"identical run already trained, reused {res.path.name}" if res.reused else
                  f"{m.get('steps')} steps, train loss {m.get('train_loss_first', 0):.3f} → {m.get('train_loss', 0):.3f}"
                  f", val loss {m.get('val_loss') or float('nan'):.3f} → {res.path}")
        return ("skipped" if res.reused else "ran"), detail, out

    trained = stage("train", do_train)
    result.adapter = trained["path"]

    # 3. eval: keyed by the adapter's content and everything that decides the report.
    eval_key = _key(trained["checksum"], cfg.eval.model_dump(mode="json"), cfg.model.base,
                    [_file_sha(s.path) for s in cfg.eval.suites])

    def do_eval() -> tuple[str, str, dict[str, Any]]:
        done = state.done("eval", eval_key)
        if done and Path(done["report"]).is_file():
            report = json.loads(Path(done["report"]).read_text())
            return "skipped", f"adapter and suites unchanged, reused {done['report']}", {**done, "report_data": report}
        baselines = [] if cfg.model.base in cfg.eval.baselines else [cfg.model.base]
        res = evaluate(cfg, trained["path"], baselines=baselines, workspace=ws, progress=eval_progress)
        out = {"report": str(res.json_path), "html": str(res.html_path), "passed": res.passed}
        state.record("eval", eval_key, out)
        failed = [g for g in res.report["gates"] if not g["passed"]]
        detail = (f"{len(res.report['gates'])} gate(s) passed → {res.json_path}" if not failed else
                  f"{len(failed)} of {len(res.report['gates'])} gate(s) failed → {res.json_path}")
        return "ran", detail, {**out, "report_data": res.report}

    evaluated = stage("eval", do_eval)
    result.eval_dir = str(Path(evaluated["report"]).parent)
    report = evaluated["report_data"]
    result.passed = bool(report.get("passed"))
    if not result.passed:
        failed = [g["expr"] for g in report.get("gates", []) if not g.get("passed")]
        raise GateFailed(
            f"the candidate failed {len(failed)} gate(s): {', '.join(failed)}; nothing was registered",
            where=evaluated["report"],
            fix="improve the data or training settings and rerun `tuneforge run` (finished stages are skipped), "
            "or adjust eval.gates if the threshold is wrong",
            report=report,
        )

    registry = Registry.from_config(cfg, ws)

    # 4. register: the registry returns the existing version for identical content.
    def do_register() -> tuple[str, str, dict[str, Any]]:
        mv = registry.register(Path(trained["path"]), name, eval_report=Path(evaluated["report"]))
        return (("skipped" if mv.reused else "ran"),
                f"{'already registered as' if mv.reused else 'registered'} {mv.ref}", {"version": mv.version})

    registered = stage("register", do_register)
    version = int(registered["version"])
    result.version = f"{name}@{version}"

    # 5. promote to staging (never production: that needs a person or CI with evidence).
    def do_promote() -> tuple[str, str, dict[str, Any]]:
        alias = cfg.pipeline.promote_to
        entry = registry.promote(name, version, alias, reason="tuneforge run: gates passed")
        return (("ran", f"{alias} → {name}@{version}", {"alias": alias}) if entry else
                ("skipped", f"{alias} already points at {name}@{version}", {"alias": alias}))

    stage(f"promote ({cfg.pipeline.promote_to})", do_promote)

    # 6. deploy: the new version becomes the canary at the configured share of traffic.
    if cfg.deploy.canary:
        share = float(cfg.deploy.canary)

        def do_deploy() -> tuple[str, str, dict[str, Any]]:
            from tuneforge.serve.routing import Policy, load_persisted, persist, routes_path

            entry = registry.promote(name, version, "canary", reason=f"tuneforge run: canary at {share:g}%")
            # The policy file is what a starting server reads; a running one picks it up via
            # `tuneforge serve route` (the admin endpoint), which writes the same file.
            path = routes_path(ws.root)
            policies = load_persisted(path)
            policies[name] = Policy({"production": 100.0 - share, "canary": share})
            persist(path, policies)
            detail = f"canary → {name}@{version} at {share:g}% of {name}'s traffic"
            return ("ran" if entry else "skipped"), detail, {"share": share}

        stage("deploy (canary)", do_deploy)
    return result


def _file_sha(path: str | Path) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    from tuneforge.models._hashing import sha256_file

    return sha256_file(p)

