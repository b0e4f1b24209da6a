"""eval.html: one self-contained page (inline CSS and SVG, no external assets)."""

from __future__ import annotations

from html import escape
from typing import Any

from tuneforge.eval.metrics import LOWER_IS_BETTER

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f5f5f5}.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}.muted{color:#777}
pre{white-space:pre-wrap;margin:0;font-size:12px;max-width:340px}.sig{font-weight:600}
"""
_COLORS = ["#1a73e8", "#e8710a", "#12b5cb", "#9334e6", "#188038"]


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else escape(str(v))


def _est(e: dict[str, Any]) -> str:
    lo, hi = e.get("ci") or [None, None]
    return f"{_f(e.get('value'))} <span class=muted>[{_f(lo)}, {_f(hi)}] n={e.get('n')}</span>"


def render_html(report: dict[str, Any]) -> str:
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>tuneforge eval: "
             f"{escape(report['model']['ref'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>Evaluation of {escape(report['model']['ref'])}</h1>",
             f"<p class=muted>{escape(report['created'])} · {escape(report['model']['kind'])} · checksum "
             f"{escape(report['model']['checksum'][:16])} · baselines: "
             f"{escape(', '.join(b['ref'] for b in report['baselines']) or 'none')}</p>"]
    parts.append(_gates(report))
    for suite in report["suites"]:
        name = suite["name"]
        parts.append(f"<h2>Suite {escape(name)} ({suite['n']} items, {escape(suite['kind'])})</h2>")
        parts.append(_metrics_table(report["metrics"][name], report["comparisons"], name))
        parts.append(_category_bars(report["by_category"].get(name, {})))
    parts.append(_forgetting(report.get("forgetting")))
    parts.append(_judge(report["judge"]))
    parts.append(_samples(report.get("samples") or []))
    parts.append("</body></html>")
    return "\n".join(parts)


def _gates(report: dict[str, Any]) -> str:
    if not report["gates"]:
        return "<h2>Gates</h2><p class=muted>no gates configured (eval.gates)</p>"
    rows = "".join(
        f"<tr><td><code>{escape(g['expr'])}</code></td><td class=num>{_f(g['value'])}</td>"
        f"<td class=num>{_f(g['threshold'])}</td><td class={'pass' if g['passed'] else 'fail'}>"
        f"{'pass' if g['passed'] else 'FAIL'}</td><td class=muted>{escape(g.get('note', ''))}</td></tr>"
        for g in report["gates"])
    verdict = "<span class=pass>all gates pass</span>" if report["passed"] else "<span class=fail>gates failed</span>"
    return (f"<h2>Gates</h2><p>{verdict}</p><table><tr><th>gate</th><th>value</th><th>threshold</th><th>result</th>"
            f"<th></th></tr>{rows}</table>")


def _metrics_table(by_model: dict[str, dict[str, Any]], comparisons: list[dict[str, Any]], suite: str) -> str:
    labels = list(by_model)
    names = list(by_model.get("candidate", {}))
    head = "".join(f"<th>{escape(lab)}</th>" for lab in labels)
    comps = {(c["metric"], c["baseline"]): c for c in comparisons if c["suite"] == suite}
    diff_head = "".join(f"<th>candidate − {escape(lab)}</th>" for lab in labels[1:])
    rows = []
    for m in names:
        cells = "".join(f"<td class=num>{_est(by_model[lab][m]) if m in by_model[lab] else '–'}</td>" for lab in labels)
        diffs = ""
        for lab in labels[1:]:
            c = comps.get((m, lab))
            if c is None:
                diffs += "<td>–</td>"
                continue
            ci = f" [{_f(c['ci'][0])}, {_f(c['ci'][1])}]" if c["ci"] else ""
            mark = (" ▲" if c["candidate_better"] else " ▼") if c["significant"] else " (n.s.)"
            diffs += f"<td class='num{' sig' if c['significant'] else ''}'>{c['diff']:+.3f}{ci}{mark}</td>"
        arrow = " ↓" if m in LOWER_IS_BETTER else ""
        rows.append(f"<tr><td>{escape(m)}{arrow}</td>{cells}{diffs}</tr>")
    return f"<table><tr><th>metric</th>{head}{diff_head}</tr>{''.join(rows)}</table>"


def _category_bars(by_model: dict[str, dict[str, Any]]) -> str:
    """Horizontal SVG bars per category for the main quality metric of this suite."""
    cand = by_model.get("candidate") or {}
    if not cand:
        return ""
    first = next(iter(cand.values()))
    metric = next((m for m in ("field_accuracy", "exact_match", "rouge_l") if m in first), None)
    if metric is None:
        return ""
    labels = list(by_model)
    cats = list(cand)
    bar_h, gap, left, width = 12, 8, 150, 420
    height = len(cats) * (len(labels) * bar_h + gap) + 30
    out = [f"<h3>{escape(metric)} by category</h3><svg xmlns='http://www.w3.org/2000/svg' width='{left + width + 140}'"
           f" height='{height}' role='img'>"]
    y = 10
    for cat in cats:
        out.append(f"<text x='0' y='{y + bar_h * len(labels) / 2 + 4}' font-size='12'>{escape(cat)}</text>")
        for k, lab in enumerate(labels):
            e = (by_model[lab].get(cat) or {}).get(metric) or {}
            v = e.get("value") or 0.0
            color = _COLORS[k % len(_COLORS)]
            out.append(f"<rect x='{left}' y='{y}' width='{max(1.0, v * width):.1f}' height='{bar_h - 2}' "
                       f"fill='{color}'><title>{escape(lab)} {v:.3f} (n={e.get('n')})</title></rect>"
                       f"<text x='{left + v * width + 4:.1f}' y='{y + bar_h - 3}' font-size='10'>{v:.2f}</text>")
            y += bar_h
        y += gap
    legend = " ".join(f"<tspan fill='{_COLORS[k % len(_COLORS)]}'>■ {escape(lab)}</tspan>"
                      for k, lab in enumerate(labels))
    out.append(f"<text x='{left}' y='{y + 12}' font-size='11'>{legend}</text></svg>")
    return "".join(out)


def _forgetting(f: dict[str, Any] | None) -> str:
    if f is None:
        return "<h2>Forgetting</h2><p class=muted>no general-purpose suite (kind: general) was evaluated</p>"
    rows = "".join(
        f"<tr><td>{escape(s['suite'])}</td><td class=num>{_est(s['base_similarity'])}</td>"
        f"<td class=num>{_est(s['candidate_similarity'])}</td><td class=num>{_est(s['similarity_drop'])}"
        f"{' (significant)' if s['significant'] else ''}</td></tr>" for s in f["suites"])
    return (f"<h2>Forgetting</h2><p class=muted>similarity to the base model's stored answers ({escape(f['base'])})"
            f"</p><table><tr><th>suite</th><th>base</th><th>candidate</th><th>drop</th></tr>{rows}</table>")


def _judge(j: dict[str, Any]) -> str:
    if "skipped" in j:
        return f"<h2>Judge</h2><p class=muted>skipped: {escape(j['skipped'])}</p>"
    rows = "".join(f"<tr><td>{escape(lab)}</td><td class=num>{_est(r)}</td><td class=num>{r['unparsed']}</td></tr>"
                   for lab, r in j["rubric"].items())
    out = (f"<h2>Judge</h2><p class=muted>{escape(j['model'])} at {escape(j['url'])}, prompt "
           f"{escape(j['prompt_version'])}, {j['n']} items of {escape(j['suite'])}</p><table><tr><th>model</th>"
           f"<th>rubric score (1–10)</th><th>unparsed</th></tr>{rows}</table>")
    pw = j.get("pairwise")
    if pw:
        out += (f"<p>pairwise vs {escape(pw['baseline'])} (both orders): {pw['wins']} wins, {pw['losses']} losses, "
                f"{pw['ties']} ties ({pw['order_disagreements']} order disagreements) · win rate "
                f"{_est(pw['win_rate'])}</p>")
    return out


def _samples(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return ""
    rows = "".join(
        f"<tr><td>{escape(s['suite'])}/{escape(s['id'])}</td><td><pre>{escape(s['prompt'])}</pre></td>"
        f"<td><pre>{escape(s['expected'])}</pre></td><td><pre>{escape(s['candidate'])}</pre></td>"
        f"<td><pre>{escape(s['baseline'])}</pre></td></tr>" for s in samples)
    return ("<h2>Samples where candidate and baseline differ</h2><table><tr><th>item</th><th>prompt</th>"
            f"<th>expected</th><th>candidate</th><th>baseline</th></tr>{rows}</table>")
