"""`tuneforge serve`, `tuneforge serve route`, `tuneforge serve hash-key` and `tuneforge logs`.

Only typer and rich are imported here; FastAPI, uvicorn and the engine load inside the commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tuneforge import console
from tuneforge.errors import TuneforgeError
from tuneforge.outputs import output_file

SERVE_URL_ENV = "TUNEFORGE_SERVE_URL"

serve_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                        help="Serve the base model and registered models behind an OpenAI-compatible API.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tuneforge.yaml (default: ./tuneforge.yaml if present).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: section.key=value (repeatable).")]


class ServeCliError(TuneforgeError):
    """A serve/logs command cannot do what was asked."""


def _load(config: Path | None, overrides: list[str] | None) -> Any:
    from tuneforge.config import load_config

    if config is None and Path("tuneforge.yaml").is_file():
        config = Path("tuneforge.yaml")
    return load_config(config, overrides or [])


@serve_app.callback()
def serve(
    ctx: typer.Context,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default: serve.port; 0 = any free port).")] = None,
    engine: Annotated[str | None, typer.Option(help="local or vllm (default: serve.engine).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Base model ref (default: model.base).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No API keys; binds to 127.0.0.1 only.")] = False,
) -> None:
    """Serve MODEL (default: model.base) plus every registered model until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from tuneforge.serve.server import run

    cfg = _load(config, set_)
    if engine is not None and engine not in ("local", "vllm"):
        raise ServeCliError(f"unknown engine '{engine}'", where="--engine", fix="use local or vllm")
    run(cfg, host=host, port=port, engine_kind=engine, base=model, auth=False if no_auth else None,
        on_ready=_print_ready)


def _print_ready(info: Any) -> None:
    for note in info.notes:
        console.out.print(f"[yellow]{escape(note)}[/yellow]")
    auth = f"on ({info.keys} key(s))" if info.auth else "[yellow]off[/yellow]"
    console.out.print(f"[green]serving[/green] {info.url}  engine: {info.engine}  auth: {auth}")
    console.out.print("models: " + escape(", ".join(info.models)))
    console.out.print("health: /healthz  ready: /readyz  metrics: /metrics   (Ctrl-C stops gracefully)")


@serve_app.command("route")
def route(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    weights: Annotated[list[str], typer.Argument(help="VARIANT=WEIGHT pairs over aliases or versions, e.g. production=90 canary=10.")],
    shadow: Annotated[list[str] | None, typer.Option("--shadow", help="CANDIDATE=PERCENT mirrored (response discarded), repeatable.")] = None,
    no_sticky: Annotated[bool, typer.Option("--no-sticky", help="Assign each request at random, not by user.")] = False,
    url: Annotated[str | None, typer.Option(help=f"Server URL (default: ${SERVE_URL_ENV}, else serve.host:serve.port).")] = None,
    admin_key: Annotated[str | None, typer.Option(help="Admin API key (default: $TUNEFORGE_ADMIN_KEY).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Set NAME's traffic split on a running server and persist it for the next start."""
    import httpx

    from tuneforge.serve.auth import ADMIN_KEY_ENV
    from tuneforge.serve.routing import Policy, load_persisted, parse_weights, persist, routes_path
    from tuneforge.workspace import Workspace

    cfg = _load(config, set_)
    try:
        policy = Policy(parse_weights(weights), parse_weights(shadow or [], "shadow"), not no_sticky)
    except ValueError as exc:
        raise ServeCliError(str(exc), where="tuneforge serve route",
                            fix="e.g. tuneforge serve route support production=90 canary=10 --shadow candidate=5") from None
    base = (url or os.environ.get(SERVE_URL_ENV) or f"http://{cfg.serve.host}:{cfg.serve.port}").rstrip("/")
    key = admin_key or os.environ.get(ADMIN_KEY_ENV)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    applied = False
    try:
        resp = httpx.put(f"{base}/admin/routes/{name}", json=policy.to_dict(), headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        console.out.print(f"[yellow]no server reachable at {escape(base)}[/yellow] ({escape(str(exc))}); "
                          "the policy is saved and applies when the server starts")
    else:
        if resp.status_code != 200:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text
            raise ServeCliError(f"the server refused the policy ({resp.status_code}): {message}",
                                where=f"{base}/admin/routes/{name}",
                                fix=f"set ${ADMIN_KEY_ENV} to an admin key, and use aliases or versions of {name}")
        applied = True
    path = routes_path(Workspace.from_env().root)
    policies = load_persisted(path)
    policies[name] = policy
    persist(path, policies)
    split = ", ".join(f"{k}={v:g}" for k, v in sorted(policy.weights.items()))
    extra = f"; shadow {', '.join(f'{k}={v:g}%' for k, v in policy.shadow.items())}" if policy.shadow else ""
    state = "applied on " + escape(base) if applied else "saved"
    console.out.print(f"[green]{name}[/green]: {split}{extra} ({state}; persisted in {escape(str(path))})")


@serve_app.command("hash-key")
def hash_key_cmd(
    key: Annotated[str | None, typer.Argument(help="An API key to hash (default: generate a new one).")] = None,
) -> None:
    """Print an API key and the sha256 to put in serve.keys (the server stores only the hash)."""
    from tuneforge.serve.auth import hash_key, new_key

    key = key or new_key()
    console.out.print(f"key:    {key}\nsha256: {hash_key(key)}", markup=False, highlight=False)


def logs(
    limit: Annotated[int, typer.Option(min=0, help="Rows to show or export (newest); 0 = all.")] = 20,
    export: Annotated[Path | None, typer.Option("--export", help="Write the rows as JSONL here.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only requests for this model (NAME or NAME@VERSION).")] = None,
) -> None:
    """List or export the gateway's request log (<workspace>/serve/requests.db)."""
    from tuneforge.serve.requestlog import export_jsonl, log_path, read_log
    from tuneforge.workspace import Workspace

    path = log_path(Workspace.from_env())
    if not path.is_file():
        raise ServeCliError(f"no request log at {path}", where="tuneforge logs",
                            fix="serve some requests with `tuneforge serve` first (or set TUNEFORGE_HOME)")
    if export is not None:
        n = export_jsonl(path, output_file(export, where="--export", replace=False), limit=limit or None,
                         model=model)
        console.out.print(f"wrote {n} request(s) to {escape(str(export))}")
        return
    table = Table(title=f"request log ({escape(str(path))})")
    for col in ("time", "request", "key", "model", "served", "variant", "status", "tokens", "latency", "finish"):
        table.add_column(col)
    import time

    for r in read_log(path, limit=limit or None, model=model):
        served = (r["model_served"] or "-") + (" (shadow)" if r["shadow"] else "")
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])), r["request_id"], r["key_id"],
                      r["model_requested"], served, r["variant"] or "-", str(r["status"]),
                      f"{r['prompt_tokens']}+{r['completion_tokens']}",
                      f"{r['latency_s']:.2f}s" if r["latency_s"] is not None else "-", r["finish_reason"] or "-")
    console.out.print(table)


