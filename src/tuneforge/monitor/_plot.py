"""report.html of `tuneforge monitor`: each check's value over time (inline SVG, no external assets)."""

from __future__ import annotations

import time
from html import escape
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f5f5f5}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#137333;font-weight:600}.alarm{color:#b3261e;font-weight:600}.skipped,.muted{color:#777}
"""
# The embedding check's value (MMD²) has no threshold of its own; its p-value has, so that is plotted.
_PLOTTED = {"prompt_embedding": "p_value"}


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else escape(str(v))


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def _series(history: list[dict[str, Any]], name: str) -> list[tuple[float, float, float | None, bool]]:
    """(time, value, threshold, alarm) of one check across the history, skipping runs where it was skipped."""
    key = _PLOTTED.get(name, "value")
    out = []
    for rec in history:
        for c in rec.get("checks", []):
            if c["name"] == name and c.get(key) is not None and c["status"] != "skipped":
                out.append((rec["time"], float(c[key]), c.get("threshold"), c["status"] == "alarm"))
    return out


def _svg(points: list[tuple[float, float, float | None, bool]], label: str, width: int = 640,
         height: int = 170) -> str:
    if not points:
        return "<p class=muted>(no run has enough samples for this check yet)</p>"
    pad = 36
    xs = [p[0] for p in points]
    ys = [p[1] for p in points] + [p[2] for p in points if p[2] is not None]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    span_x, span_y = max(x1 - x0, 1e-9), max(y1 - y0, 1e-9)

    def px(x: float) -> float:
        return pad + ((x - x0) / span_x if x1 > x0 else 0.5) * (width - 2 * pad)

    def py(y: float) -> float:
        return height - pad - (y - y0) / span_y * (height - 2 * pad)

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{escape(label)} over time">']
    thresholds = [(px(t), py(th)) for t, _, th, _ in points if th is not None]
    if thresholds:
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in thresholds)
        parts.append(f'<polyline fill="none" stroke="#b3261e" stroke-dasharray="4 3" points="{coords}"/>')
    coords = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v, _, _ in points)
    parts.append(f'<polyline fill="none" stroke="#1a73e8" stroke-width="2" points="{coords}"/>')
    for t, v, _, alarm in points:
        parts.append(f'<circle cx="{px(t):.1f}" cy="{py(v):.1f}" r="3.5" fill="{"#b3261e" if alarm else "#1a73e8"}">'
                     f"<title>{_when(t)}: {v:.4g}{' (alarm)' if alarm else ''}</title></circle>")
    parts.append(f'<text x="{pad}" y="14" font-size="11">{escape(label)}: last {points[-1][1]:.4g} '
                 f"(max {max(p[1] for p in points):.4g}); dashed: alarm threshold</text>")
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="11">{_when(x0)}</text>')
    parts.append(f'<text x="{width - pad - 90}" y="{height - 8}" font-size="11">{_when(x1)}</text></svg>')
    return "".join(parts)


def render_report(history: list[dict[str, Any]], model: str) -> str:
    """The page: the latest run's checks, each check's history as a chart, and the retrain log."""
    html = [f"<!doctype html><meta charset=utf-8><title>tuneforge monitor · {escape(model)}</title>",
            f"<style>{_CSS}</style><h1>tuneforge monitor · {escape(model)}</h1>"]
    if not history:
        return "".join([*html, "<p>no monitor runs yet</p>"])
    last = history[-1]
    verdict = "<span class=alarm>ALARM</span>" if last.get("alarm") else "<span class=ok>ok</span>"
    html.append(f"<p>latest run {escape(last.get('time_iso', ''))}: {verdict}; {last['window'].get('requests', 0)} "
                f"requests of {escape(str(last.get('version') or model))} vs "
                f"{last['reference'].get('rows', 0)} reference prompts "
                f"(<code>{escape(str(last['reference'].get('source')))}</code>); "
                f"validity baseline: {escape(str(last.get('baseline')))}. {len(history)} run(s) recorded.</p>")
    html.append("<table><tr><th>check</th><th>status</th><th>value</th><th>threshold</th><th>p-value</th>"
                "<th>baseline</th><th>n</th><th>detail</th></tr>")
    for c in last.get("checks", []):
        html.append(f"<tr><td>{escape(c['name'])}</td><td class={c['status']}>{c['status']}</td>"
                    f"<td class=num>{_f(c.get('value'))}</td><td class=num>{_f(c.get('threshold'))}</td>"
                    f"<td class=num>{_f(c.get('p_value'))}</td><td class=num>{_f(c.get('baseline'))}</td>"
                    f"<td class=num>{c.get('n', 0)}</td><td>{escape(c.get('detail', ''))}</td></tr>")
    html.append("</table><h2>over time</h2>")
    names = list(dict.fromkeys(c["name"] for rec in history for c in rec.get("checks", [])))
    for name in names:
        label = f"{name} ({_PLOTTED.get(name, 'value')})"
        html.append(f"<h3>{escape(label)}</h3>{_svg(_series(history, name), label)}")
    retrains = [r for r in history if r.get("retrain")]
    if retrains:
        html.append("<h2>retrain triggers</h2><table><tr><th>time</th><th>checks</th><th>outcome</th></tr>")
        for r in retrains:
            rt = r["retrain"]
            outcome = ", ".join(f"{k}: {v}" for k, v in rt.items() if k not in ("checks", "status"))
            html.append(f"<tr><td>{escape(r.get('time_iso', ''))}</td><td>{escape(', '.join(rt.get('checks', [])))}"
                        f"</td><td><b>{escape(rt.get('status', ''))}</b> {escape(outcome)}</td></tr>")
        html.append("</table>")
    return "".join(html)
