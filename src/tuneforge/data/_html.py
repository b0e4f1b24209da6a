"""A self-contained HTML page for `tuneforge data inspect --html` (no scripts, inline SVG chart)."""

from __future__ import annotations

import html
from typing import Any

from tuneforge.data._inspect import Inspection

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .7rem;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.7rem;border-radius:4px;font-size:12px}
mark{background:#c8f7c5}code{font-size:12px}.muted{color:#777}
"""


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{html.escape(str(v))}</td>" for v in r
        ) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _histogram_svg(hist: list[list[int]] | list[tuple[int, int, int]], width: int = 900, height: int = 220) -> str:
    if not hist:
        return "<p class='muted'>no rows</p>"
    top = max(c for _, _, c in hist) or 1
    bar_w = width / len(hist)
    bars = []
    for i, (lo, hi, c) in enumerate(hist):
        h = (height - 40) * c / top
        x = i * bar_w
        bars.append(
            f'<rect x="{x + 2:.1f}" y="{height - 30 - h:.1f}" width="{bar_w - 4:.1f}" height="{h:.1f}" fill="#4a7bd0">'
            f"<title>{lo}–{hi - 1} tokens: {c} rows</title></rect>"
            f'<text x="{x + bar_w / 2:.1f}" y="{height - 15}" font-size="10" text-anchor="middle">{lo}</text>'
        )
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="token length histogram">'
            + "".join(bars) + f'<text x="0" y="12" font-size="11">max {top} rows per bin</text></svg>')


def _marked(text: str, spans: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for a, b in spans:
        out.append(html.escape(text[pos:a]))
        out.append(f"<mark>{html.escape(text[a:b])}</mark>")
        pos = b
    out.append(html.escape(text[pos:]))
    return "".join(out)


def render_html(ins: Inspection) -> str:
    m = ins.dataset.manifest
    c = m["counts"]
    stats = m["tokens"]["stats"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>tuneforge dataset {m['fingerprint'][:16]}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Prepared dataset <code>{m['fingerprint'][:16]}</code></h1>",
        f"<p class='muted'>{html.escape(str(ins.dataset.path))} · base model {html.escape(m['base_model']['identity'])}"
        f" · created {m['created']}</p>",
        "<h2>Counts</h2>",
        _table([("read", c["read"]), ("kept", c["kept"]), ("rejected", c["rejected"])]
               + [(f"split: {k}", v) for k, v in c["splits"].items()], ("", "rows")),
        "<h2>Funnel</h2>",
        _table([(f["stage"], f["removed"], f["left"]) for f in c["funnel"]], ("stage", "removed", "left")),
        "<h2>Reject reasons</h2>",
        _table([(k, v, (ins.reject_examples.get(k) or {}).get("detail", "")) for k, v in c["rejected_by_reason"].items()],
               ("reason", "rows", "first example")),
        "<h2>PII</h2>",
        f"<p>mode <b>{m['pii']['mode']}</b>, rows with findings: {m['pii']['rows_with_findings']:,}</p>",
        _table(list(m["pii"]["findings"].items()), ("type", "findings")),
        "<h2>Token lengths (rendered with the chat template)</h2>",
        _table([(k, stats[k]) for k in ("count", "total", "min", "p50", "p90", "p99", "max")]
               + [("mean", stats["mean"])], ("", "tokens")),
        _histogram_svg(stats["histogram"]),
        "<h2>Turns and roles</h2>",
        _table([(k, v) for k, v in ins.turns.items()], ("messages per row", "rows")),
        _table(list(ins.roles.items()), ("role", "messages")),
        f"<p>rows with more than one assistant turn: {ins.multi_turn_rows:,}</p>",
        "<h2>Samples</h2><p class='muted'>highlighted text is trained on (assistant turns with their end-of-turn token)</p>",
    ]
    for s in ins.samples:
        for r in s.rendered:
            parts.append(f"<p class='muted'>{html.escape(s.origin)}</p><pre>{_marked(r.text, r.spans)}</pre>")
    parts.append("</body></html>")
    return "".join(parts)
