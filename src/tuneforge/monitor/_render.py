"""Terminal rendering of A/B reports and guardrail checks (rich)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneforge.monitor.ab import KEEP, PROMOTE, ROLL_BACK, AbReport
from tuneforge.monitor.guardrails import GuardrailEvent, GuardrailResult

_ACTION_STYLE = {PROMOTE: "green", ROLL_BACK: "red", KEEP: "yellow"}


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def ab_report(report: AbReport, console: Console) -> None:
    since = (" since " + time.strftime("%Y-%m-%d %H:%M", time.localtime(report.since))) if report.since else ""
    table = Table(title=f"A/B: {escape(report.model)}{since} (control: {escape(report.control)})")
    for col in ("variant", "version", "requests", "users", "errors", "p50", "p95", "tokens in+out", "cost",
                "feedback", "json valid", "schema", "judge"):
        table.add_column(col, justify="left" if col in ("variant", "version") else "right")
    for s in report.variants:
        fb = "-" if not s.feedback_n else f"{_pct(s.feedback_rate)} · {s.feedback_mean:.2f}"
        table.add_row(escape(s.variant), ",".join(s.versions), str(s.requests), str(s.users),
                      _pct(s.error_rate), _num(s.latency_p50_s, ".2f") + "s" if s.latency_p50_s is not None else "-",
                      _num(s.latency_p95_s, ".2f") + "s" if s.latency_p95_s is not None else "-",
                      f"{s.prompt_tokens}+{s.completion_tokens}", f"{s.cost:.4g}", fb, _pct(s.json_valid),
                      _pct(s.schema_valid), "-" if s.judge_mean is None else f"{s.judge_mean:.1f}/10 (n={s.judge_n})")
    console.print(table)
    for variant, diffs in report.diffs.items():
        t = Table(title=f"{escape(variant)} vs {escape(report.control)} (anytime-valid, alpha {report.alpha:g})")
        for col in ("metric", "control", variant, "difference", "interval (any time)", "p (any time)", "n", "verdict"):
            t.add_column(escape(col), justify="left" if col in ("metric", "verdict") else "right")
        for d in diffs:
            c = d.comparison
            style = {"better": "green", "worse": "red"}.get(d.verdict, "dim")
            primary = " *" if d.metric == report.primary_metric else ""
            t.add_row(d.metric + primary, _num(c.mean_a), _num(c.mean_b), f"{c.diff:+.3g}",
                      f"[{_num(c.cs_low)}, {_num(c.cs_high)}]", _num(c.p_value), f"{c.n_a}+{c.n_b}",
                      f"[{style}]{d.verdict}[/{style}]")
        console.print(t)
    if report.shadow_requests:
        console.print("shadow requests: " + ", ".join(f"{escape(k)} {v}" for k, v in report.shadow_requests.items()))
    if report.other_requests:
        console.print(f"{report.other_requests} request(s) pinned to a version or alias (not compared)")
    if report.guardrails is not None:
        guard_result(report.guardrails, None, console)
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]")
    console.print(f"primary metric: {report.primary_metric} (*)")
    for r in report.recommendations:
        style = _ACTION_STYLE.get(r.action, "white")
        more = f"; about {r.more_requests} more routed request(s)" if r.more_requests else ""
        console.print(f"[bold {style}]{escape(r.variant)}: {r.action}[/bold {style}] — {escape(r.reason)}{more}")


def guard_result(result: GuardrailResult, event: GuardrailEvent | None, console: Console) -> None:
    head = f"guardrails of {escape(result.model)}@{escape(result.alias)}"
    head += f" (v{result.version})" if result.version is not None else " (alias not set)"
    console.print(head + f", last {result.window_s:g}s:")
    if not result.rules:
        console.print("  [dim]no rule configured (guardrails.*)[/dim]")
    for r in result.rules:
        mark = "[red]BREACH[/red]" if r.breached else ("[green]ok[/green]" if r.evaluated else "[dim]waiting[/dim]")
        console.print(f"  {mark} {escape(r.describe())}")
    if event is not None:
        routed = ", ".join(f"{k}={v:g}" for k, v in (event.policy or {}).get("weights", {}).items()) or "default"
        audit = f" (audit entry {event.audit_id})" if event.audit_id is not None else ""
        console.print(f"[bold red]rolled back[/bold red]: {escape(event.model)}@{escape(event.alias)} removed"
                      f"{audit}; traffic now {escape(routed)}")


def guard_summary(results: list[tuple[GuardrailResult, GuardrailEvent | None]], console: Any) -> None:
    for result, event in results:
        guard_result(result, event, console)
