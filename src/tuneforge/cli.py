"""The `tuneforge` command: one sub-app per stage, each command a thin layer over the library.

Heavy imports (torch, transformers) happen inside commands so `tuneforge --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tuneforge import console
from tuneforge.errors import TuneforgeError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="tuneforge: prepare data, fine-tune, evaluate, register and serve LLMs.")
config_app = typer.Typer(no_args_is_help=True, help="Show and validate tuneforge.yaml.")
models_app = typer.Typer(no_args_is_help=True, help="Base models available here.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect training data.")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")

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
    samples: Annotated[int, typer.Option(help="Rendered samples to show.")] = 3,
) -> None:
    """Counts, token lengths, turns, reject reasons and samples with trained spans marked."""
    from tuneforge.data import inspect_dataset, render_html

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
) -> None:
    """Fine-tune the base model on a prepared dataset (LoRA, loss on assistant turns)."""
    from tuneforge.train import train

    cfg = _load(config, set_)
    with console.TrainProgressBar() as bar:
        result = train(cfg, data=data, out=out, resume=resume, dry_run=dry_run, progress=bar.update)
    console.train_summary(result)


def main() -> None:
    try:
        app()
    except TuneforgeError as exc:
        console.err.print(f"[bold red]error:[/bold red] {exc.render()}", markup=True, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
