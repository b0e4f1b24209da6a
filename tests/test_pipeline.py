"""`tuneforge run`: stages chained on the tiny model, skipped when unchanged, stopped by a failed gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.config import load_config
from tuneforge.pipeline import GateFailed, run_pipeline
from tuneforge.registry import Registry
from tuneforge.workspace import Workspace

SYSTEM = "Reply with a JSON object with key category."


def _rows(n: int) -> list[dict]:
    cats = ["billing", "bug", "account"]
    return [{"messages": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": f"Ticket {i}: my {cats[i % 3]} issue number {i * 13} again"},
                          {"role": "assistant", "content": json.dumps({"category": cats[i % 3]})}]}
            for i in range(n)]


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, list[str]]:
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(40)))
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"messages": r["messages"][:2], "expected": r["messages"][2]["content"],
                                          "category": json.loads(r["messages"][2]["content"])["category"]}) + "\n"
                              for r in _rows(46)[40:]))
    overrides = [
        f"model.base={tiny_model_dir}", f"data.inputs=[{{path: {data}}}]", "data.split.seed=1",
        "train.max_steps=2", "train.batch_size=4", "train.precision=fp32", "train.save_every_steps=null",
        "tracking.enabled=false",
        f"eval.suites=[{{name: golden, path: {golden}}}]", "eval.max_new_tokens=4", "eval.batch_size=8",
        "eval.dtype=float32", "eval.bootstrap_resamples=100",
        "pipeline.name=support",
    ]
    return tmp_path, overrides


def _statuses(result) -> dict[str, str]:
    return {s.name.split(" ")[0]: s.status for s in result.stages}


def test_run_registers_promotes_and_skips_unchanged_stages(project: tuple[Path, list[str]]) -> None:
    _, overrides = project
    # The tiny random model never writes JSON: json_valid is 0, so this gate passes and the next fails.
    cfg = load_config(None, [*overrides, "eval.gates=[json_valid <= 0.5]"])
    first = run_pipeline(cfg)
    assert _statuses(first) == {"prepare": "ran", "train": "ran", "eval": "ran", "register": "ran", "promote": "ran"}
    assert first.version == "support@1" and first.passed
    registry = Registry.from_config(cfg, Workspace.from_env())
    assert registry.aliases("support") == {"staging": 1}
    report = json.loads((Path(first.eval_dir) / "eval.json").read_text())
    assert report["model"]["checksum"] == registry.resolve("support@1").checksum

    again = run_pipeline(cfg)
    assert set(_statuses(again).values()) == {"skipped"}
    assert again.version == "support@1"
    assert [v.version for v in registry.versions("support")] == [1]


def test_failed_gate_stops_before_the_registry_and_a_rerun_resumes_at_eval(project: tuple[Path, list[str]]) -> None:
    _, overrides = project
    failing = load_config(None, [*overrides, "eval.gates=[json_valid >= 0.9]"])
    with pytest.raises(GateFailed) as err:
        run_pipeline(failing)
    assert "json_valid >= 0.9" in str(err.value)
    assert err.value.report["passed"] is False
    registry = Registry.from_config(failing, Workspace.from_env())
    assert registry.list_models() == []

    fixed = load_config(None, [*overrides, "eval.gates=[json_valid <= 0.5]"])
    resumed = run_pipeline(fixed)
    assert _statuses(resumed) == {"prepare": "skipped", "train": "skipped", "eval": "ran", "register": "ran",
                                  "promote": "ran"}


def test_deploy_canary_moves_the_alias_and_writes_the_traffic_policy(project: tuple[Path, list[str]]) -> None:
    _, overrides = project
    cfg = load_config(None, [*overrides, "eval.gates=[json_valid <= 0.5]", "deploy.canary=10"])
    result = run_pipeline(cfg)
    ws = Workspace.from_env()
    assert Registry.from_config(cfg, ws).aliases("support") == {"staging": 1, "canary": 1}
    routes = json.loads((ws.root / "serve" / "routes.json").read_text())
    assert routes["support"]["weights"] == {"production": 90.0, "canary": 10.0}
    assert _statuses(result)["deploy"] == "ran"


def test_quickstart_side_by_side_goes_through_the_api_and_into_the_report(project: tuple[Path, list[str]]) -> None:
    from tuneforge.quickstart import QuickstartResult, _side_by_side, headline_rows, render_report

    root, overrides = project
    cfg = load_config(None, [*overrides, "eval.gates=[json_valid <= 0.5]"])
    result = run_pipeline(cfg)
    exchanges = _side_by_side(cfg, Workspace.from_env(), "support@staging", root / "golden.jsonl", 2)
    assert [x.ticket for x in exchanges] == [json.loads(line)["messages"][1]["content"]
                                             for line in (root / "golden.jsonl").read_text().splitlines()[:2]]
    assert all(isinstance(x.base, str) and isinstance(x.tuned, str) for x in exchanges)
    report = json.loads((Path(result.eval_dir) / "eval.json").read_text())
    rows = headline_rows(report)
    assert rows[0][0] == "json_valid" and rows[0][2] == f"{report['metrics']['golden']['candidate']['json_valid']['value']:.3f}"
    page = render_report(QuickstartResult(result, report, exchanges, {"train": 1.5}), [(1, 2.0), (2, 1.0)])
    assert "support@1" in page and "<polyline" in page and "json_valid" in page
    assert exchanges[0].ticket.split(":")[0] in page
