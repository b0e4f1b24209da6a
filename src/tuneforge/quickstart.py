"""`tuneforge quickstart` (what `make demo` runs): the whole product on the bundled model, on CPU.

Generate the support-ticket dataset → `tuneforge run` (prepare, train, eval with gates, register,
promote to staging) → serve the base and the tuned version behind the OpenAI-compatible API →
send a few held-out tickets to both through the official `openai` SDK → print them side by side
with the eval table → write a self-contained report.html (stage timings, loss curve, eval
comparison, sample outputs).
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.workspace import Workspace

SayFn = Callable[[str], None]
HEADLINE = ("json_valid", "schema_valid", "field_accuracy", "semantic_similarity", "val_loss")


@dataclass
class Exchange:
    ticket: str
    base: str
    tuned: str
    base_valid: bool
    tuned_valid: bool


@dataclass
class QuickstartResult:
    pipeline: Any  # PipelineResult
    report: dict[str, Any]  # eval.json of the tuned version vs the base
    exchanges: list[Exchange]
    timings: dict[str, float] = field(default_factory=dict)
    report_html: Path | None = None
    served_as: str = ""


def quickstart(example_dir: Path, *, workspace: Workspace | None = None, say: SayFn | None = None,
               tickets: int = 4, overrides: list[str] | None = None, train_progress: Any = None) -> QuickstartResult:
    from tuneforge.config import load_config
    from tuneforge.pipeline import run_pipeline

    ws = workspace or Workspace.from_env()
    tell = say or (lambda _m: None)
    timings: dict[str, float] = {}
    config_path = example_dir / "tuneforge.yaml"
    if not config_path.is_file():
        raise TuneforgeError("the quickstart example is missing", where=str(config_path),
                             fix="run `make demo` (or `tuneforge quickstart`) from the repository root")

    started = time.perf_counter()
    tell("▶ generate the support-ticket dataset")
    subprocess.run([sys.executable, str(example_dir / "generate.py"), "--out", str(example_dir / "data")],
                   check=True, stdout=subprocess.DEVNULL)
    timings["generate data"] = time.perf_counter() - started

    cfg = load_config(config_path, overrides or [])
    pipeline = run_pipeline(cfg, workspace=ws, say=tell, train_progress=train_progress,
                            eval_progress=lambda m: tell(f"  eval: {m}"))
    for st in pipeline.stages:
        timings[st.name] = st.seconds
    assert pipeline.eval_dir is not None and pipeline.version is not None
    report = json.loads((Path(pipeline.eval_dir) / "eval.json").read_text())

    tell("▶ serve the base and the tuned version (OpenAI-compatible API on 127.0.0.1)")
    started = time.perf_counter()
    served_as = f"{cfg.pipeline.name}@{cfg.pipeline.promote_to}"
    exchanges = _side_by_side(cfg, ws, served_as, example_dir / "data" / "golden.jsonl", tickets)
    timings["serve + requests"] = time.perf_counter() - started

    result = QuickstartResult(pipeline, report, exchanges, timings, served_as=served_as)
    result.report_html = ws.root / "report.html"
    result.report_html.write_text(render_report(result, _loss_curve(cfg, ws, pipeline.adapter)), encoding="utf-8")
    return result


def _side_by_side(cfg: Any, ws: Workspace, tuned: str, golden: Path, count: int) -> list[Exchange]:
    from openai import OpenAI

    from tuneforge.eval.metrics import json_valid
    from tuneforge.models import resolve_model
    from tuneforge.serve.server import ServerThread, build_app

    rows = [json.loads(line) for line in golden.read_text().splitlines() if line.strip()][:count]
    base_name = resolve_model(cfg.model.base, ws).name
    app = build_app(cfg, ws, auth=False)
    out = []
    with ServerThread(app, cfg) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused-auth-is-off", max_retries=0, timeout=300)
        for row in rows:
            replies = []
            for model in (base_name, tuned):
                resp = client.chat.completions.create(model=model, messages=row["messages"], temperature=0,
                                                      max_tokens=cfg.eval.max_new_tokens, seed=0)
                replies.append(resp.choices[0].message.content or "")
            ticket = next(m["content"] for m in row["messages"] if m["role"] == "user")
            out.append(Exchange(ticket, replies[0], replies[1], json_valid(replies[0]) == 1.0,
                                json_valid(replies[1]) == 1.0))
    return out


def _loss_curve(cfg: Any, ws: Workspace, adapter: str | None) -> list[tuple[int, float]]:
    """Per-step training loss from the MLflow run recorded in the adapter's tuneforge.json."""
    if not adapter:
        return []
    meta_path = Path(adapter) / "tuneforge.json"
    run_id = json.loads(meta_path.read_text()).get("tracking", {}).get("run_id") if meta_path.is_file() else None
    if not run_id:
        return []
    from tuneforge.tracking import TrackingStore

    history = TrackingStore.resolve(cfg.tracking.uri, ws).client().get_metric_history(run_id, "loss")
    return sorted((int(m.step), float(m.value)) for m in history)


def _svg_curve(points: list[tuple[int, float]], width: int = 560, height: int = 180) -> str:
    if len(points) < 2:
        return "<p>(no per-step loss recorded: tracking was off)</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    span_x, span_y = max(x1 - x0, 1), max(y1 - y0, 1e-9)
    pad = 30
    coords = " ".join(f"{pad + (x - x0) / span_x * (width - 2 * pad):.1f},"
                      f"{height - pad - (y - y0) / span_y * (height - 2 * pad):.1f}" for x, y in points)
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="training loss">'
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{coords}"/>'
            f'<text x="{pad}" y="14" font-size="11">loss {y1:.3f} (max) → {ys[-1]:.3f} (last)</text>'
            f'<text x="{pad}" y="{height - 8}" font-size="11">step {x0}</text>'
            f'<text x="{width - pad - 40}" y="{height - 8}" font-size="11">step {x1}</text></svg>')


def headline_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, base, tuned, difference) rows for the primary suite of an eval report."""
    primary = next((s["name"] for s in report["suites"] if s.get("primary")), report["suites"][0]["name"])
    by_model = report["metrics"][primary]
    rows = []
    for metric in HEADLINE:
        cand = (by_model.get("candidate") or {}).get(metric)
        base = (by_model.get("baseline") or {}).get(metric)
        if not cand or cand.get("value") is None:
            continue
        b = base.get("value") if base else None
        diff = f"{cand['value'] - b:+.3f}" if b is not None else "–"
        rows.append((metric, f"{b:.3f}" if b is not None else "–", f"{cand['value']:.3f}", diff))
    return rows


def render_report(result: QuickstartResult, curve: list[tuple[int, float]]) -> str:
    e = html.escape
    timing_rows = "".join(f"<tr><td>{e(k)}</td><td class=n>{v:,.1f} s</td></tr>" for k, v in result.timings.items())
    total = sum(result.timings.values())
    metric_rows = "".join(f"<tr><td>{e(m)}</td><td class=n>{b}</td><td class=n>{t}</td><td class=n>{d}</td></tr>"
                          for m, b, t, d in headline_rows(result.report))
    gates = "".join(f"<tr><td>{e(g['expr'])}</td><td class=n>{g.get('value')}</td>"
                    f"<td>{'pass' if g['passed'] else 'FAIL'}</td></tr>" for g in result.report.get("gates", []))
    samples = "".join(
        f"<tr><td><pre>{e(x.ticket)}</pre></td><td><pre>{e(x.base)}</pre>{'✓' if x.base_valid else '✗'} JSON</td>"
        f"<td><pre>{e(x.tuned)}</pre>{'✓' if x.tuned_valid else '✗'} JSON</td></tr>" for x in result.exchanges)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneforge quickstart</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#111}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 8px;vertical-align:top}}
td.n{{text-align:right}}pre{{white-space:pre-wrap;margin:0;max-width:340px;font-size:12px}}</style></head><body>
<h1>tuneforge quickstart</h1>
<p>Base model <code>{e(result.report['model'].get('base') or '')}</code>, tuned version
<code>{e(result.pipeline.version or '')}</code> (served as <code>{e(result.served_as)}</code>).</p>
<h2>Stages</h2><table><tr><th>stage</th><th>time</th></tr>{timing_rows}
<tr><th>total</th><td class=n>{total:,.1f} s</td></tr></table>
<h2>Training loss</h2>{_svg_curve(curve)}
<h2>Evaluation (held-out golden set)</h2>
<table><tr><th>metric</th><th>base</th><th>tuned</th><th>Δ</th></tr>{metric_rows}</table>
<h3>Gates</h3><table><tr><th>gate</th><th>value</th><th>result</th></tr>{gates}</table>
<h2>Through the API: base vs tuned</h2>
<table><tr><th>ticket</th><th>base</th><th>tuned</th></tr>{samples}</table>
</body></html>
"""
