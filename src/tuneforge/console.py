"""Terminal rendering for the CLI: tables, progress bars and error output (rich)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from tuneforge.data import Inspection, PreparedDataset
    from tuneforge.models import ModelEntry
    from tuneforge.monitor.monitor import MonitorResult
    from tuneforge.pipeline import PipelineResult
    from tuneforge.quickstart import QuickstartResult
    from tuneforge.train import TrainProgress, TrainResult

out = Console()
err = Console(stderr=True)


class RowProgress:
    """A progress bar fed by the library's (done, total) callback, with rows/s and ETA."""

    def __init__(self, label: str) -> None:
        self._progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]} rows/s"), TimeRemainingColumn(), console=err, transient=True,
        )
        self._task = self._progress.add_task(label, total=None, rate="-")

    def __enter__(self) -> RowProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, done: int, total: int | None) -> None:
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{done / elapsed:,.0f}" if elapsed > 0 else "-"
        self._progress.update(self._task, completed=done, total=total, rate=rate)


def models_table(entries: list[ModelEntry]) -> None:
    t = Table(title="base models")
    t.add_column("ref", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("size MB", justify="right", no_wrap=True)
    t.add_column("path / how to get it", overflow="fold")
    for e in entries:
        t.add_row(e.ref, e.status, f"{e.size_mb:,.1f}", e.path or e.how_to_get)
    out.print(t)
    out.print("Also accepted: a local directory with config.json, or a hub id (org/name) present in the hub cache.")


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    return t


def prepared_summary(ds: PreparedDataset) -> None:
    m = ds.manifest
    c = m["counts"]
    if ds.reused:
        out.print(f"[yellow]unchanged[/yellow]: inputs, tokenizer, template and config match an earlier run; "
                  f"nothing to do. Dataset at {ds.path}")
    funnel = Table(title="rows through the pipeline")
    for col in ("stage", "removed", "left"):
        funnel.add_column(col, justify="right" if col != "stage" else "left")
    for f in c["funnel"]:
        funnel.add_row(f["stage"], f"{f['removed']:,}", f"{f['left']:,}")
    out.print(funnel)
    if c["rejected_by_reason"]:
        out.print(_kv_table("rejected by reason (rejected.jsonl)", list(c["rejected_by_reason"].items())))
    pii = m["pii"]
    if pii["findings"]:
        out.print(_kv_table(f"PII ({pii['mode']}; {pii['rows_with_findings']:,} rows)", list(pii["findings"].items())))
    s = m["tokens"]["stats"]
    out.print(_kv_table("tokens per row (chat template applied)",
                        [("mean", s["mean"]), ("p50", s["p50"]), ("p90", s["p90"]), ("max", s["max"]),
                         ("total", s["total"])]))
    out.print(_kv_table("splits", list(c["splits"].items())))
    if not ds.reused:
        out.print(f"[green]prepared[/green] {c['kept']:,} of {c['read']:,} rows in {m['timings']['total_s']} s "
                  f"→ {ds.path}")
    out.print(f"fingerprint {ds.fingerprint}")


def inspection(ins: Inspection) -> None:
    prepared_summary_header = f"dataset {ins.dataset.path} (fingerprint {ins.dataset.fingerprint[:16]})"
    out.print(f"[bold]{escape(prepared_summary_header)}[/bold]")
    m = ins.dataset.manifest
    c = m["counts"]
    out.print(_kv_table("counts", [("read", c["read"]), ("kept", c["kept"]), ("rejected", c["rejected"])]
                        + [(f"split {k}", v) for k, v in c["splits"].items()]))
    hist = m["tokens"]["stats"]["histogram"]
    if hist:
        top = max(h[2] for h in hist) or 1
        t = Table(title="token length histogram")
        t.add_column("tokens", justify="right")
        t.add_column("rows", justify="right")
        t.add_column("")
        for lo, hi, n in hist:
            t.add_row(f"{lo}–{hi - 1}", f"{n:,}", "█" * max(1 if n else 0, round(40 * n / top)))
        out.print(t)
    out.print(_kv_table("messages per row", [(str(k), v) for k, v in ins.turns.items()]))
    out.print(_kv_table("messages per role", list(ins.roles.items())))
    if ins.reject_examples:
        t = Table(title="reject reasons")
        for col in ("reason", "rows", "first example"):
            t.add_column(col)
        for reason, n in c["rejected_by_reason"].items():
            ex = ins.reject_examples.get(reason, {})
            t.add_row(reason, f"{n:,}", escape(f"{ex.get('source')}:{ex.get('line')} {ex.get('detail', '')}"))
        out.print(t)
    for s in ins.samples:
        for r in s.rendered:
            out.print(f"[dim]── sample {escape(s.origin)} (trained spans in «green»)[/dim]")
            text = Text()
            pos = 0
            for a, b in r.spans:
                text.append(r.text[pos:a])
                text.append("«" + r.text[a:b] + "»", style="bold green")
                pos = b
            text.append(r.text[pos:])
            out.print(text)


class TrainProgressBar:
    """Training progress from the library's TrainProgress events: step, loss, tokens/s and ETA."""

    def __init__(self, *, console: Console | None = None, log_every_s: float = 30.0) -> None:
        self._console = console or err
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
            TextColumn("ETA {task.fields[eta]}"), console=self._console, transient=True,
        )
        self._task = self._progress.add_task("training", total=None, loss="-", rate="-", eta="-")
        self._started = False
        # Not a terminal (CI logs, `make demo > log`): a live bar draws nothing until the end, so
        # print a plain line at most every log_every_s seconds, and at the last step.
        self._plain = not self._console.is_terminal
        self._log_every_s = log_every_s
        self._last_line = float("-inf")

    def __enter__(self) -> TrainProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._progress.stop()

    def update(self, event: TrainProgress) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        if event.note:
            self._progress.console.print(f"[yellow]{escape(event.note)}[/yellow]")
        fields: dict[str, Any] = {"description": event.phase}
        if event.phase == "training":
            fields.update(completed=event.step, total=event.total_steps or None)
            if event.loss is not None:
                fields["loss"] = f"{event.loss:.4f}"
            if event.tokens_per_s is not None:
                fields["rate"] = f"{event.tokens_per_s:,.0f}"
            if event.eta_s is not None:
                fields["eta"] = _duration(event.eta_s)
            if self._plain and event.loss is not None:
                self._log_line(event, fields)
        self._progress.update(self._task, **fields)

    def _log_line(self, event: TrainProgress, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        last = bool(event.total_steps) and event.step >= event.total_steps
        if not last and now - self._last_line < self._log_every_s:
            return
        self._last_line = now
        total = f"/{event.total_steps}" if event.total_steps else ""
        self._console.print(f"step {event.step}{total}  loss {fields['loss']}  {fields.get('rate', '-')} tok/s  "
                            f"ETA {fields.get('eta', '-')}", markup=False, highlight=False)


def error(exc: Any) -> None:
    """A user-caused error on stderr: what, where and how to fix it, printed as text (a path or a --set
    value with square brackets is not rich markup)."""
    err.print(f"[bold red]error:[/bold red] {escape(exc.render())}", highlight=False)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _gib(v: float) -> str:
    return f"{v:,.2f} GiB" if v >= 1 else f"{v * 1024:,.1f} MiB"


def _cost(m: dict[str, Any]) -> str:
    if m.get("cost") is None:
        return "- (no train.price_per_device_hour for this device)"
    hours = m.get("device_hours")
    over = f" × {hours:.3g} h" if hours is not None else ""
    return f"{m['cost']:.4f} at {m.get('price_per_device_hour')}/device-hour{over}"


def train_summary(result: TrainResult) -> None:
    pre = result.preflight
    if result.dry_run:
        out.print(_kv_table("preflight", [
            ("method / peft", f"{pre.method} / {pre.peft}"), ("precision", pre.precision),
            ("packing", pre.packing), ("train rows", pre.rows["train"]), ("val rows", pre.rows["val"]),
            ("skipped rows", sum(pre.skipped.values())), ("train tokens / epoch", pre.tokens),
            ("trained tokens", pre.trained_tokens), ("longest row", pre.longest), ("optimizer steps", pre.steps),
        ]))
        e = pre.estimate
        out.print(_kv_table(f"memory estimate ({e.device}, ±50%)", [
            ("parameters", e.params), ("trainable", e.trainable_params),
            ("tokens per micro-batch", e.tokens_per_micro_batch), ("weights", _gib(e.weights_gib)),
            ("gradients", _gib(e.gradients_gib)), ("optimizer", _gib(e.optimizer_gib)),
            ("activations", _gib(e.activations_gib)),
            (f"logits ({e.scored_tokens_per_micro_batch:,} scored positions)", _gib(e.logits_gib)),
            ("runtime overhead", _gib(e.runtime_gib)), ("total", _gib(e.total_gib)),
            ("available", _gib(e.available_gib) if e.available_gib is not None else "?"),
        ]))
        for i, segs in enumerate(pre.samples):
            out.print(f"[dim]── sample {i + 1} (trained tokens in «green»)[/dim]")
            text = Text()
            for piece, trained in segs:
                text.append(f"«{piece}»" if trained else piece, style="bold green" if trained else None)
            out.print(text)
        out.print(f"packing: {pre.packing} ({escape(pre.packing_reason)})")
        out.print(f"kernels: {pre.kernels} ({escape(pre.kernels_reason)})")
    for note in pre.notes:
        out.print(f"[yellow]note[/yellow]: {escape(note)}")
    if result.dry_run:
        out.print(f"[green]dry run ok[/green]: would write {result.path}")
        return
    m = result.metrics
    if result.reused:
        out.print(f"[yellow]unchanged[/yellow]: an identical run already finished; nothing to do. Adapter at {result.path}")
    rows = [("train loss (first → last)", f"{m.get('train_loss_first') or 0:.4f} → {m.get('train_loss') or 0:.4f}"),
            ("val loss", f"{m['val_loss']:.4f}" if m.get("val_loss") is not None else "-"),
            ("steps", m.get("steps")), ("tokens/s", m.get("tokens_per_s")),
            ("runtime (training / wall)", f"{_duration(m.get('train_runtime_s') or 0)} / "
             f"{_duration(m.get('wall_time_s') or m.get('train_runtime_s') or 0)}"),
            ("device", m.get("device")), ("cost", _cost(m))]
    if m.get("best_step") is not None:
        rows.append(("best checkpoint (exported)", f"step {m['best_step']}, val loss {m['best_val_loss']:.4f}"))
    for r in m.get("oom_retries") or []:
        rows.append(("CUDA OOM back-off", f"batch_size {r['batch_size']}, grad_accum {r['grad_accum']}"))
    if result.resumed_from_step is not None:
        rows.append(("resumed from step", result.resumed_from_step))
    tracking = result.meta.get("tracking")
    if tracking:
        rows.append(("MLflow run", f"{tracking['run_id']} (experiment {tracking['experiment_id']}, "
                     f"{tracking['uri']})"))
    out.print(_kv_table("training", rows))
    serving = result.meta.get("serving", {})
    if serving and not serving.get("vllm_lora"):
        out.print(f"[yellow]note[/yellow]: {escape(serving.get('reason', ''))}")
    if not result.reused:
        out.print(f"[green]trained[/green] {result.name} → {result.path}")


def pipeline_summary(result: PipelineResult) -> None:
    table = Table(title=f"tuneforge run · {result.name}")
    for col in ("stage", "status", "time", "detail"):
        table.add_column(col, justify="right" if col == "time" else "left")
    colours = {"ran": "green", "skipped": "cyan", "failed": "red"}
    for st in result.stages:
        table.add_row(st.name, f"[{colours.get(st.status, 'white')}]{st.status}[/]", f"{st.seconds:,.1f} s",
                      escape(st.detail))
    table.add_row("total", "", f"{result.seconds:,.1f} s", "")
    out.print(table)
    if result.version:
        out.print(f"[green]{result.version}[/green] is in the registry; `tuneforge registry show {result.version}`")


def quickstart_summary(result: QuickstartResult) -> None:
    from tuneforge.quickstart import headline_rows

    pipeline_summary(result.pipeline)
    table = Table(title=f"through the API · base vs {result.served_as}", show_lines=True)
    for col in ("ticket", "base", "tuned"):
        table.add_column(col, ratio=1, overflow="fold")
    for x in result.exchanges:
        mark = {True: "[green]✓ valid JSON[/]", False: "[red]✗ not JSON[/]"}
        table.add_row(escape(x.ticket[:300]), f"{escape(x.base[:300])}\n{mark[x.base_valid]}",
                      f"{escape(x.tuned[:300])}\n{mark[x.tuned_valid]}")
    out.print(table)
    evals = Table(title="held-out golden set (eval.json)")
    for col in ("metric", "base", "tuned", "Δ"):
        evals.add_column(col, justify="left" if col == "metric" else "right")
    for row in headline_rows(result.report):
        evals.add_row(*row)
    out.print(evals)
    timings = Table(title="time per stage")
    timings.add_column("stage")
    timings.add_column("time", justify="right")
    for name, seconds in result.timings.items():
        timings.add_row(name, f"{seconds:,.1f} s")
    timings.add_row("total", f"{sum(result.timings.values()):,.1f} s")
    out.print(timings)
    if result.report_html:
        out.print(f"report → {result.report_html}")


def monitor_summary(result: MonitorResult, report: Any = None) -> None:
    w = result.window
    table = Table(title=f"tuneforge monitor · {result.version or result.model} · {w.get('requests', 0)} requests "
                  f"vs {result.reference.get('rows', 0)} reference prompts")
    for col in ("check", "status", "value", "threshold", "p-value", "baseline", "n"):
        table.add_column(col, justify="left" if col in ("check", "status") else "right", no_wrap=True)
    table.add_column("detail")
    colours = {"ok": "green", "alarm": "bold red", "skipped": "dim"}

    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.4g}"

    for c in result.checks:
        table.add_row(c.name, f"[{colours.get(c.status, 'white')}]{c.status}[/]", f(c.value), f(c.threshold),
                      f(c.p_value), f(c.baseline), str(c.n), escape(c.detail))
    out.print(table)
    verdict = "[bold red]ALARM[/]" if result.alarm else "[green]no drift[/]"
    out.print(f"{verdict}; validity baseline: {escape(result.baseline)}")
    if result.retrain:
        rt = result.retrain
        if rt.get("status") == "ran":
            out.print(f"retrain: [green]{rt.get('version')}[/] is the canary at {rt.get('canary_share'):g}% "
                      f"({rt.get('logged_rows')} logged rows mixed in)")
        else:
            out.print(f"retrain: [red]{rt.get('status')}[/]: {escape(str(rt.get('reason')))}")
    if report is not None:
        out.print(f"report → {report}")
