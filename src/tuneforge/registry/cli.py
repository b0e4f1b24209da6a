"""`tuneforge registry ...`: thin commands over tuneforge.registry.Registry, with rich output.

Only typer and rich are imported here; the registry (and mlflow) load inside each command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tuneforge import console

if TYPE_CHECKING:
    from tuneforge.registry import AuditEntry, Registry

registry_app = typer.Typer(no_args_is_help=True,
                           help="Versioned, verified, audited models (MLflow Model Registry).")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tuneforge.yaml (default: ./tuneforge.yaml if present).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: section.key=value (repeatable).")]


def _registry(config: Path | None, overrides: list[str] | None) -> Registry:
    from tuneforge.config import load_config
    from tuneforge.registry import Registry

    if config is None and Path("tuneforge.yaml").is_file():
        config = Path("tuneforge.yaml")
    return Registry.from_config(load_config(config, overrides or []))


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


@registry_app.command("register")
def register(
    adapter: Annotated[Path, typer.Argument(help="Adapter directory written by `tuneforge train`.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Registered model name.")],
    eval_report: Annotated[Path | None, typer.Option("--eval", help="eval.json of this adapter to attach.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register ADAPTER as a new immutable version of NAME (identical content: the existing version)."""
    mv = _registry(config, set_).register(adapter, name, eval_report=eval_report)
    if mv.reused:
        console.out.print(f"[yellow]already registered[/yellow]: identical content is {mv.ref} "
                          f"(checksum {mv.checksum[:16]}…); no new version")
    else:
        console.out.print(f"[green]registered[/green] {mv.ref} (checksum {mv.checksum[:16]}…, "
                          f"{len(mv.files)} files) → {escape(mv.source)}")
    if mv.evals:
        console.out.print(f"eval reports attached: {len(mv.evals)}")


@registry_app.command("attach-eval")
def attach_eval(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    report: Annotated[Path, typer.Argument(help="eval.json written by `tuneforge eval` for this version.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Attach an eval report to a version, as evidence for promotion to production."""
    rec = _registry(config, set_).attach_eval(name, version, report)
    state = "[green]passed[/green]" if rec.passed else "[red]failed[/red]"
    console.out.print(f"attached {report} to {name}@{version}: {state}, suites {', '.join(rec.suites) or '-'}, "
                      f"gates {rec.gates_passed}/{rec.gates_total}")


@registry_app.command("list")
def list_cmd(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Registered models with their latest version and aliases."""
    models = _registry(config, set_).list_models()
    t = Table(title="registered models")
    for col in ("name", "versions", "latest", "aliases"):
        t.add_column(col)
    for m in models:
        t.add_row(m.name, str(m.versions), _v(m.latest_version),
                  ", ".join(f"{a}→v{v}" for a, v in sorted(m.aliases.items())) or "-")
    console.out.print(t)
    if not models:
        console.out.print("no models yet: tuneforge registry register ADAPTER --name NAME")


@registry_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME (latest), NAME@VERSION or NAME@ALIAS.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Lineage, metrics, gate results and files of one version."""
    reg = _registry(config, set_)
    d = reg.show(ref)
    mv = d.version
    lineage = Table(title=f"{mv.ref}", show_header=False)
    lineage.add_column(style="bold")
    lineage.add_column(overflow="fold")
    for k, v in [("aliases", ", ".join(mv.aliases) or "-"), ("created", mv.created), ("kind", mv.kind),
                 ("checksum", mv.checksum), ("training run", mv.training_run_id or "- (not tracked)"),
                 ("registry run", mv.run_id), ("dataset fingerprint", mv.dataset_fingerprint or "-"),
                 ("base model", mv.base_model.get("ref") or "-"),
                 ("base identity", mv.base_model.get("identity") or "-"),
                 ("chat template sha256", mv.contract.get("chat_template_sha256") or "-"),
                 ("tokenizer sha256", mv.contract.get("tokenizer_sha256") or "-"), ("source", mv.source)]:
        lineage.add_row(k, escape(str(v)))
    console.out.print(lineage)
    if mv.metrics:
        m = Table(title="training metrics", show_header=False)
        m.add_column(style="bold")
        m.add_column(justify="right")
        for k, v in sorted(mv.metrics.items()):
            if isinstance(v, int | float | str) or v is None:
                m.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        console.out.print(m)
    if d.gates:
        g = Table(title="gates (attached eval report)")
        for col in ("gate", "value", "threshold", "result"):
            g.add_column(col)
        for gate in d.gates:
            g.add_row(escape(str(gate.get("expr", gate.get("metric", "?")))), str(gate.get("value")),
                      str(gate.get("threshold")), "[green]pass[/green]" if gate.get("passed") else "[red]fail[/red]")
        console.out.print(g)
    gated = ", ".join(reg.gated_aliases)
    if d.evidence.ok:
        console.out.print(f"evidence for {gated}: [green]yes[/green] (report {d.evidence.report.sha256[:12]}…)"
                          if d.evidence.report else f"evidence for {gated}: [green]yes[/green]")
    else:
        console.out.print(f"evidence for {gated}: [red]no[/red] — " + escape("; ".join(d.evidence.problems)))
    f = Table(title="files")
    f.add_column("file", overflow="fold")
    f.add_column("bytes", justify="right")
    f.add_column("sha256", overflow="fold")
    for e in mv.files.values():
        f.add_row(e.path, f"{e.size:,}", e.sha256)
    console.out.print(f)


@registry_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(help="Version to point the alias at.")],
    to: Annotated[str, typer.Option("--to", help="Alias: staging, canary, production or your own.")],
    force: Annotated[bool, typer.Option("--force", help="Override the evidence rules (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why; recorded in the audit log.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Point ALIAS at VERSION (production needs a passing eval report of that version)."""
    entry = _registry(config, set_).promote(name, version, to, force=force, reason=reason)
    if entry is None:
        console.out.print(f"{name}@{to} already points at v{version}; nothing changed")
        return
    tag = "[yellow]forced[/yellow]" if entry.action == "force" else "[green]promoted[/green]"
    console.out.print(f"{tag} {name}@{to}: {_v(entry.from_version)} → {_v(entry.to_version)} "
                      f"(audit entry {entry.id})")


@registry_app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str, typer.Option("--alias", help="Alias to roll back.")] = "production",
    reason: Annotated[str | None, typer.Option("--reason", help="Why; recorded in the audit log.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Point production (or --alias) back at the version it held before."""
    entry = _registry(config, set_).rollback(name, alias, reason=reason)
    console.out.print(f"[green]rolled back[/green] {name}@{alias}: {_v(entry.from_version)} → "
                      f"{_v(entry.to_version)} (audit entry {entry.id})")


@registry_app.command("history")
def history(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str | None, typer.Option("--alias", help="Only moves of this alias.")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check the audit log's hash chain.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The append-only audit log: every alias move, registration and attached report."""
    from tuneforge.errors import RegistryError

    reg = _registry(config, set_)
    entries = reg.history(name, alias)
    if as_json:
        for e in entries:
            console.out.print(json.dumps(e.to_dict()), markup=False, highlight=False, soft_wrap=True)
    else:
        _history_table(name, entries)
    if verify:
        problems = reg.verify_history()
        if problems:
            raise RegistryError("the audit log was modified outside tuneforge:\n  " + "\n  ".join(problems),
                                where=str(reg.audit.path), fix="restore the file from a backup and investigate")
        console.out.print("[green]audit log intact[/green] (hash chain verified)")


def _history_table(name: str, entries: list[AuditEntry]) -> None:
    t = Table(title=f"history of {name}")
    for col in ("#", "time (UTC)", "actor", "action", "alias", "from → to", "reason", "evidence"):
        t.add_column(col, overflow="fold")
    for e in entries:
        ev = e.evidence
        evidence = (ev.get("gates") or ev.get("eval_report") or ev.get("checksum") or
                    ("; ".join(ev.get("problems", [])) if ev.get("problems") else ""))
        t.add_row(str(e.id), e.time[:19], escape(e.actor), e.action, e.alias or "-",
                  f"{_v(e.from_version)} → {_v(e.to_version)}", escape(e.reason), escape(str(evidence)[:40]))
    console.out.print(t)


@registry_app.command("download")
def download(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (new or empty).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Copy a version's verified files to a local directory."""
    path = _registry(config, set_).download(ref, out)
    console.out.print(f"[green]downloaded[/green] {ref} → {path} (every file's sha256 verified)")
