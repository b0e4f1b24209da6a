"""The terminal summary of an evaluation: headline metrics per model, comparisons, gates."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

HEADLINE = ("json_valid", "schema_valid", "field_accuracy", "exact_match", "rouge_l", "chrf",
            "semantic_similarity", "val_loss", "perplexity")


def _est(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "–"
    lo, hi = e["ci"]
    return f"{e['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def print_summary(report: dict[str, Any], out: Console, paths: tuple[str, str]) -> None:
    comps = {(c["suite"], c["metric"]): c for c in report["comparisons"] if c["baseline"] == "baseline"}
    for suite in report["suites"]:
        by_model = report["metrics"][suite["name"]]
        labels = list(by_model)
        table = Table(title=f"{suite['name']} ({suite['n']} items, {suite['kind']}) · value [95% CI]")
        table.add_column("metric")
        for lab in labels:
            table.add_column(lab, justify="right")
        if len(labels) > 1:
            table.add_column("Δ vs baseline", justify="right")
        for m in [m for m in HEADLINE if m in by_model["candidate"]]:
            row = [m, *(_est(by_model[lab].get(m)) for lab in labels)]
            if len(labels) > 1:
                c = comps.get((suite["name"], m))
                row.append("–" if c is None else f"{c['diff']:+.3f}" + (" *" if c["significant"] else ""))
            table.add_row(*row)
        out.print(table)
    f = report.get("forgetting")
    if f:
        out.print(f"forgetting ({f['suite']}): similarity to base answers {_est(f['base_similarity'])} → "
                  f"{_est(f['candidate_similarity'])}, drop {f['similarity_drop']['value']:+.3f}")
    j = report["judge"]
    if "skipped" in j:
        out.print(f"judge: skipped ({j['skipped']})", markup=False)
    else:
        out.print(f"judge ({j['model']}, {j['prompt_version']}): candidate score {_est(j['rubric']['candidate'])}"
                  + (f", win rate {_est(j['pairwise']['win_rate'])}" if j.get("pairwise") else ""), markup=False)
    if report["gates"]:
        gates = Table(title="gates")
        for col in ("gate", "value", "threshold", "result"):
            gates.add_column(col)
        for g in report["gates"]:
            value = "–" if g["value"] is None else f"{g['value']:.4f}"
            threshold = "–" if g["threshold"] is None else f"{g['threshold']:.4f}"
            result = "[green]pass[/green]" if g["passed"] else "[bold red]FAIL[/bold red]"
            if g.get("note"):
                result += f" ({g['note']})"
            gates.add_row(g["expr"], value, threshold, result)
        out.print(gates)
    out.print(f"eval.json → {paths[0]}\neval.html → {paths[1]}", markup=False, highlight=False)
    if report["gates"]:
        failed = sum(not g["passed"] for g in report["gates"])
        out.print("[green]all gates passed[/green]" if not failed else f"[bold red]{failed} gate(s) failed[/bold red]")
