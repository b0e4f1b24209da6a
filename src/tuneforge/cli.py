"""The `tuneforge` command: one sub-app per stage, each command a thin layer over the library.

Heavy imports (torch, transformers) happen inside commands so `tuneforge --help` stays fast.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from tuneforge import console
from tuneforge.errors import TuneforgeError
from tuneforge.outputs import output_dir, output_file

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="tuneforge: prepare data, fine-tune, evaluate, register and serve LLMs.")
config_app = typer.Typer(no_args_is_help=True, help="Show and validate tuneforge.yaml.")
models_app = typer.Typer(no_args_is_help=True, help="Base models available here.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect training data.")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
ab_app = typer.Typer(no_args_is_help=True, help="A/B analysis of a model's traffic split, and canary guardrails.")
app.add_typer(ab_app, name="ab")

from tuneforge.registry.cli import registry_app  # noqa: E402 - light: typer/rich only

app.add_typer(registry_app, name="registry")

from tuneforge.serve.cli import logs as logs_cmd  # noqa: E402 - light: typer/rich only
from tuneforge.serve.cli import serve_app  # noqa: E402

app.add_typer(serve_app, name="serve")
app.command("logs")(logs_cmd)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tuneforge.yaml (default: ./tuneforge.yaml if present).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: section.key=value (repeatable).")]


def _load(config: Path | None, overrides: list[str] | None):
    from tuneforge.config import load_config

    if config is None and Path("tuneforge.yaml").is_file():
        config = Path("tuneforge.yaml")
    return load_config(config, overrides or [])


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the effective configuration (file + overrides + defaults)."""
    from tuneforge.config import config_to_yaml

    console.out.print(config_to_yaml(_load(config, set_)), end="", markup=False, highlight=False)


@config_app.command("validate")
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Check the configuration and report every problem at once."""
    _load(config, set_)
    console.out.print(f"[green]valid[/green] {config or 'defaults'}")


@models_app.command("list")
def models_list() -> None:
    """Show bundled and cached base models."""
    from tuneforge.models import list_models
    from tuneforge.workspace import Workspace

    console.models_table(list_models(Workspace.from_env()))


@data_app.command("prepare")
def data_prepare(
    inputs: Annotated[list[Path] | None, typer.Argument(help="JSONL, JSON, CSV or Parquet files.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: workspace, named by fingerprint).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Validate, deduplicate, scrub PII, decontaminate and split INPUT files for training."""
    from tuneforge.data import prepare

    cfg = _load(config, set_)
    with console.RowProgress("preparing") as bar:
        ds = prepare(cfg, [str(p) for p in inputs or []], out=out, progress=bar.update)
    console.prepared_summary(ds)


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="A prepared dataset directory.")],
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")] = None,
    samples: Annotated[int, typer.Option(min=0, help="Rendered samples to show.")] = 3,
) -> None:
    """Counts, token lengths, turns, reject reasons and samples with trained spans marked."""
    from tuneforge.data import inspect_dataset, render_html

    if html:
        output_file(html, where="--html")
    ins = inspect_dataset(path, samples=samples)
    console.inspection(ins)
    if html:
        html.write_text(render_html(ins), encoding="utf-8")
        console.out.print(f"wrote {html}")


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: Annotated[Path | None, typer.Option(help="Prepared dataset directory (default: train.data, else the latest prepared).")] = None,
    out: Annotated[Path | None, typer.Option(help="Adapter directory (default: <workspace>/adapters/<name>-<hash>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Preflight and memory estimate only; train nothing.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue this run from its last checkpoint.")] = False,
    launcher: Annotated[str, typer.Option(help="none, torchrun or accelerate: train in several processes (DDP/FSDP, train.distributed).")] = "none",
    nproc: Annotated[int | None, typer.Option(help="Processes per node with --launcher (default: one per GPU, else 1).")] = None,
    nnodes: Annotated[int, typer.Option(help="Machines taking part (multi-node: run the same command on each).")] = 1,
    node_rank: Annotated[int, typer.Option(help="This machine's index, 0..nnodes-1.")] = 0,
    master_addr: Annotated[str | None, typer.Option(help="Address of node 0, reachable from every node.")] = None,
    master_port: Annotated[int | None, typer.Option(help="Rendezvous port on node 0 (default: a free one).")] = None,
) -> None:
    """Fine-tune the base model on a prepared dataset (LoRA, loss on assistant turns)."""
    from tuneforge.train import _launch, train

    spec = _launch.LaunchSpec(launcher, nproc, nnodes, node_rank, master_addr, master_port)
    spec.check()
    cfg = _load(config, set_)
    if spec.launcher != "none" and not dry_run and not _launch.launched():
        from tuneforge.train._peft import cuda_available

        _launch.check_strategy(cfg.train.distributed, cuda=cuda_available())
        argv = ["train", *(["--config", str(config.resolve())] if config else []),
                *[a for s in set_ or [] for a in ("--set", s)],
                *(["--data", str(data.resolve())] if data else []), *(["--out", str(out.resolve())] if out else []),
                *(["--resume"] if resume else [])]
        code = _launch.launch(spec, argv)
        if code:
            console.err.print(f"[bold red]error:[/bold red] the {spec.launcher} workers exited with status {code}")
        raise typer.Exit(code)
    if not _launch.is_main():  # a worker other than rank 0: train quietly; rank 0 reports
        train(cfg, data=data, out=out, resume=resume, dry_run=dry_run)
        return
    with console.TrainProgressBar() as bar:
        result = train(cfg, data=data, out=out, resume=resume, dry_run=dry_run, progress=bar.update)
    console.train_summary(result)


@app.command("merge")
def merge_cmd(
    adapter: Annotated[Path, typer.Argument(help="An adapter directory written by `tuneforge train`.")],
    out: Annotated[Path, typer.Option(help="Directory for the merged model (safetensors + tokenizer + tuneforge.json).")],
    dtype: Annotated[str, typer.Option(help="Saved weights: auto (the base's dtype), float32, bfloat16 or float16.")] = "auto",
    tolerance: Annotated[float | None, typer.Option(help="Max |logit diff| vs the adapter (default: 1e-3 fp32, 4 bf16, 0.5 fp16).")] = None,
) -> None:
    """Merge an adapter into its base model and check the merged logits match the adapter's."""
    from tuneforge.train.merge import merge_adapter

    with console.err.status("merging and checking logits"):
        r = merge_adapter(adapter, out, dtype=dtype, tolerance=tolerance)
    console.out.print(f"max |logit diff| {r.max_abs_diff:.3g} over {r.prompts_checked} prompts "
                      f"(tolerance {r.tolerance:g}, {r.dtype}; merge in fp32: {r.merge_diff:.3g}): [green]passed[/green]")
    console.out.print(f"merged model → {r.path}  (checksum {r.checksum[:12]})")


@app.command("tune")
def tune_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: Annotated[Path | None, typer.Option(help="Prepared dataset directory with a val split (default: as train).")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials the study should hold (default: tune.trials).")] = None,
) -> None:
    """Hyper-parameter search (Optuna) over tune.space; rerun the same command to resume the study."""
    from rich.table import Table

    from tuneforge.train.tune import tune

    cfg = _load(config, set_)
    with console.TrainProgressBar() as bar:
        r = tune(cfg, data=data, trials=trials, progress=bar.update)
    table = Table(title=f"study {r.study} ({r.ran} run now)")
    for col in ("trial", "state", "val loss", "params", "note"):
        table.add_column(col)
    for t in r.trials:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        value = f"{t.value:.4f}" if t.value is not None else "-"
        table.add_row(str(t.number), t.state, value, params, t.error or (str(t.adapter) if t.adapter else ""))
    console.out.print(table)
    if r.best_trial is None:
        console.out.print("[yellow]no trial completed[/yellow]")
        return
    console.out.print(f"best: trial {r.best_trial}, val loss {r.best_value:.4f}, {r.best_params}")
    console.out.print(f"best adapter → {r.best_adapter}")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Base model ref, adapter directory, or registry name@version / name@alias.")],
    suite: Annotated[list[str] | None, typer.Option("--suite", help="A suite name from eval.suites, or a JSONL / prepared dataset path (repeatable; default: all of eval.suites).")] = None,
    baseline: Annotated[list[str] | None, typer.Option("--baseline", help="A model to compare with (repeatable; added to eval.baselines).")] = None,
    out: Annotated[Path | None, typer.Option(help="Directory for eval.json and eval.html (default: <workspace>/evals/...).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score MODEL on golden suites (CIs, baselines, forgetting, judge) and check eval.gates (exit 1 on failure)."""
    from tuneforge.eval import evaluate
    from tuneforge.eval.summary import print_summary

    try:
        if out is not None:
            output_dir(out, where="--out")
        cfg = _load(config, set_)
        with console.err.status("evaluating") as status:
            result = evaluate(cfg, model, suites=suite, baselines=baseline, out=out,
                              progress=lambda msg: status.update(msg))
    except TuneforgeError as exc:  # exit 2: the evaluation could not run (1 is reserved for failed gates)
        console.error(exc)
        raise typer.Exit(2) from None
    print_summary(result.report, console.out, (str(result.json_path), str(result.html_path)))
    if not result.passed:
        raise typer.Exit(1)


@app.command("run")
def run_cmd(
    config_file: Annotated[Path | None, typer.Argument(help="tuneforge.yaml (default: ./tuneforge.yaml if present).")] = None,
    set_: SetOpt = None,
) -> None:
    """The whole pipeline: prepare → train → eval (gates) → register → promote (→ canary with deploy.canary).

    Stages whose inputs are unchanged are skipped, so a rerun after a crash continues where it stopped.
    Exits 1 when a gate fails (nothing is registered then).
    """
    from tuneforge.pipeline import GateFailed

    cfg = _load(config_file, set_)
    try:
        result = _run_with_progress(cfg)
    except GateFailed as exc:
        from tuneforge.eval.summary import print_summary

        print_summary(exc.report, console.out, (str(exc.where), str(Path(str(exc.where)).with_name("eval.html"))))
        raise
    console.pipeline_summary(result)


@app.command("quickstart")
def quickstart_cmd(
    example: Annotated[Path, typer.Option(help="The example directory (generate.py + tuneforge.yaml).")] = Path("examples/support_tickets"),
    tickets: Annotated[int, typer.Option(help="Held-out tickets sent to base and tuned through the API.")] = 4,
    set_: SetOpt = None,
) -> None:
    """The whole loop on the bundled model (what `make demo` runs): data → train → eval → registry → serve."""
    from tuneforge.quickstart import quickstart

    with console.TrainProgressBar() as bar:
        result = quickstart(example, tickets=tickets, overrides=set_,
                            say=lambda m: console.err.print(m, highlight=False), train_progress=bar.update)
    console.quickstart_summary(result)


@app.command("monitor")
def monitor_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep checking every --every seconds (Ctrl-C stops).")] = False,
    every: Annotated[float | None, typer.Option("--every", min=1, help="Seconds between checks with --watch (default: monitor.watch_every_s).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the (last) result as JSON to this file.")] = None,
) -> None:
    """Compare recent traffic with the training data and the eval baseline; retrain on drift if configured.

    Checks prompt embedding drift (MMD test), prompt length PSI, JSON/schema validity and refusal rate of
    responses, and the feedback trend; appends to <workspace>/monitor/history.jsonl and redraws report.html.
    Exits 1 on an alarm (without --watch) and 2 when the check cannot run.
    """
    import json

    from tuneforge.monitor.monitor import run_monitor
    from tuneforge.monitor.monitor import watch as watch_loop
    from tuneforge.workspace import Workspace

    def show(result) -> None:
        console.monitor_summary(result, Workspace.from_env().root / "monitor" / "report.html")
        if json_out is not None:
            json_out.write_text(json.dumps(result.to_dict(), indent=2))

    def say(msg: str) -> None:
        console.err.print(msg, highlight=False, markup=False)

    try:
        if json_out is not None:
            output_file(json_out, where="--json")
        cfg = _load(config, set_)
        if watch:
            def report_error(exc: TuneforgeError) -> None:
                console.error(exc)

            try:
                watch_loop(cfg, every_s=every, on_result=show, on_error=report_error, say=say)
            except KeyboardInterrupt:
                console.err.print("stopped")
            return
        result = run_monitor(cfg, say=say)
    except TuneforgeError as exc:  # exit 2: the check could not run (1 is reserved for an alarm)
        console.error(exc)
        raise typer.Exit(2) from None
    show(result)
    if result.alarm:
        raise typer.Exit(1)


@ab_app.command("report")
def ab_report_cmd(
    name: Annotated[str, typer.Argument(help="Registered model name whose traffic is split between variants.")],
    since: Annotated[str | None, typer.Option("--since", help="Only requests from the last DURATION (30m, 24h, 7d).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Per-variant stats from the request log, differences with anytime-valid intervals, and a recommendation."""
    import json
    import time

    from tuneforge.monitor import _render
    from tuneforge.monitor.ab import ab_report, parse_duration
    from tuneforge.workspace import Workspace

    if json_out is not None:
        output_file(json_out, where="--json")
    cfg = _load(config, set_)
    start = time.time() - parse_duration(since) if since else None
    report = ab_report(Workspace.from_env(), cfg, name, since=start)
    _render.ab_report(report, console.out)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2, default=str))
        console.out.print(f"wrote {json_out}")


@ab_app.command("guard")
def ab_guard_cmd(
    name: Annotated[str, typer.Argument(help="Registered model name whose canary is checked.")],
    watch: Annotated[bool, typer.Option("--watch", help="Keep checking every guardrails.check_every_s (Ctrl-C stops).")] = False,
    url: Annotated[str | None, typer.Option(help="Running server to reroute first (default: $TUNEFORGE_SERVE_URL, else serve.host:serve.port).")] = None,
    admin_key: Annotated[str | None, typer.Option(help="Admin API key of that server (default: $TUNEFORGE_ADMIN_KEY).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check NAME's canary against guardrails.*; on a breach route its traffic to production and remove the alias.

    Exits 1 when a breach rolled the canary back (without --watch).
    """
    import time

    from tuneforge.errors import AbError
    from tuneforge.monitor import _render
    from tuneforge.monitor.guardrails import (
        apply_on_server,
        check_guardrails,
        configured,
        current_policy,
        enforce,
        without,
    )
    from tuneforge.registry import Registry
    from tuneforge.serve.auth import ADMIN_KEY_ENV
    from tuneforge.serve.cli import SERVE_URL_ENV
    from tuneforge.workspace import Workspace

    cfg = _load(config, set_)
    if not configured(cfg):
        raise AbError("no guardrail is configured", where="guardrails",
                      fix="set a limit, e.g. --set guardrails.error_rate_max=0.05 or guardrails.json_valid_min=0.9")
    ws = Workspace.from_env()
    registry = Registry.from_config(cfg, ws)
    base = url or os.environ.get(SERVE_URL_ENV) or f"http://{cfg.serve.host}:{cfg.serve.port}"
    key = admin_key or os.environ.get(ADMIN_KEY_ENV)
    while True:
        version = registry.aliases(name).get(cfg.guardrails.candidate)
        result = check_guardrails(cfg, ws, name, version=version)
        event = None
        if version is not None and result.breached:
            policy = current_policy(base, key, ws, name)
            if policy is not None:
                apply_on_server(base, key, name, without(policy, cfg.guardrails.candidate))
            event = enforce(cfg, ws, result, registry=registry)
        _render.guard_result(result, event, console.out)
        if not watch:
            if event is not None:
                raise typer.Exit(1)
            return
        try:
            time.sleep(cfg.guardrails.check_every_s)
        except KeyboardInterrupt:  # Ctrl-C between checks ends --watch quietly
            return


def _run_with_progress(cfg):
    from tuneforge.pipeline import run_pipeline

    with console.TrainProgressBar() as bar:
        return run_pipeline(cfg, say=lambda m: console.err.print(m, highlight=False), train_progress=bar.update,
                            eval_progress=lambda m: console.err.print(f"  eval: {m}", highlight=False))


def main() -> None:
    # Our own progress bars and messages replace the libraries': their per-file download/loading bars
    # and deprecation notices about their own internals are noise a CLI user cannot act on.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        app()
    except TuneforgeError as exc:
        console.error(exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
