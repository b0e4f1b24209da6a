"""The CLI through typer's runner: exit codes, error rendering, and the data commands."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tuneforge.cli import app

runner = CliRunner()


def test_config_show_prints_effective_values() -> None:
    r = runner.invoke(app, ["config", "show", "--set", "data.max_tokens=321"])
    assert r.exit_code == 0
    assert "max_tokens: 321" in r.output and "base: bundled:smollm2-135m-instruct" in r.output


def test_config_validate_reports_errors_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "t.yaml"
    bad.write_text("data:\n  pii:\n    mod: drop\n")
    p = subprocess.run([sys.executable, "-m", "tuneforge.cli", "config", "validate", "-c", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "did you mean 'data.pii.mode'" in p.stderr
    assert f"{bad}:3" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    ok = subprocess.run([sys.executable, "-m", "tuneforge.cli", "config", "validate"], capture_output=True, text=True)
    assert ok.returncode == 0 and "valid" in ok.stdout


def test_models_list(tmp_path: Path) -> None:
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "bundled:smollm2-135m-instruct" in r.output and "available" in r.output


def test_prepare_then_inspect(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Question number {i} about {w}"},
                          {"role": "assistant", "content": f"Answer {i}: {w} is fine"}]}
            for i, w in enumerate(["apples", "pears", "plums", "cherries", "grapes", "melons"])]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    out = tmp_path / "ds"
    args = ["data", "prepare", str(src), "--out", str(out), "--set", f"model.base={tiny_model_dir}"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "invalid_json" in r.output and "prepared 6 of 7 rows" in r.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "unchanged" in again.output

    html = tmp_path / "report.html"
    r = runner.invoke(app, ["data", "inspect", str(out), "--html", str(html), "--samples", "2"])
    assert r.exit_code == 0, r.output
    assert "token length histogram" in r.output and "«" in r.output  # trained spans marked
    page = html.read_text()
    assert "<svg" in page and "<mark>" in page and "invalid_json" in page


def test_prepare_with_nothing_left_exits_nonzero(tmp_path: Path, tiny_model_dir: Path) -> None:
    import subprocess
    import sys

    src = tmp_path / "bad.jsonl"
    src.write_text("{nope\n[1]\n")
    p = subprocess.run([sys.executable, "-m", "tuneforge.cli", "data", "prepare", str(src), "--out",
                        str(tmp_path / "o"), "--set", f"model.base={tiny_model_dir}"], capture_output=True, text=True)
    assert p.returncode == 1
    assert "nothing left to train on" in p.stderr and "Traceback" not in p.stderr
    assert (tmp_path / "o" / "rejected.jsonl").read_text().count("\n") == 2
