"""The CLI through typer's runner: exit codes, error rendering, and the data commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


def test_errors_print_square_brackets_as_text(tmp_path: Path) -> None:
    import subprocess
    import sys

    # data.inputs wants {path: ...} entries; a bare list of paths is a natural mistake, and rich would read
    # "[/tmp/a.jsonl]" in the message as a closing markup tag.
    for args in (["config", "validate", "-s", "data.inputs=[/tmp/a.jsonl]"],
                 ["data", "prepare", str(tmp_path / "tickets[v2].jsonl")]):
        p = subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert "error:" in p.stderr and ("[/tmp/a.jsonl]" in p.stderr or "tickets[v2].jsonl" in p.stderr)


def test_a_config_that_is_not_utf8_or_a_directory_is_a_config_error(tmp_path: Path) -> None:
    from tuneforge.config import load_config
    from tuneforge.errors import ConfigError

    latin = tmp_path / "latin.yaml"
    latin.write_bytes("data:\n  max_tokens: 12 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        load_config(latin)
    assert err.value.where == str(latin)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_prepare_never_replaces_a_directory_of_the_users_files(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello"}]}) + "\n")
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    r = runner.invoke(app, ["data", "prepare", str(src), "--out", str(mine), "--set", f"model.base={tiny_model_dir}"])
    assert r.exit_code != 0 and "not a prepared dataset" in str(r.exception)
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "sub").is_dir()
    assert not list(tmp_path.glob(".prepare-*"))
    r = runner.invoke(app, ["data", "prepare", str(src), "--out", str(mine / "notes.txt"),
                            "--set", f"model.base={tiny_model_dir}"])
    assert r.exit_code != 0 and "is a file" in str(r.exception)
    r = runner.invoke(app, ["data", "prepare", str(mine), "--set", f"model.base={tiny_model_dir}"])
    assert r.exit_code != 0 and "is a directory" in str(r.exception)


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


def test_each_run_that_keeps_nothing_keeps_its_own_rejection_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tuneforge.config import load_config
    from tuneforge.data import prepare
    from tuneforge.errors import DataError
    from tuneforge.workspace import Workspace

    ws, cfg = Workspace(tmp_path / "home"), load_config(None, [f"model.base={tiny_model_dir}"])
    reports = []
    for name, text in (("a.jsonl", "{nope\n"), ("b.jsonl", "[1]\n[2]\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as err:
            prepare(cfg, [str(tmp_path / name)], workspace=ws)
        reports.append(Path(err.value.where))
    assert reports[0] != reports[1]  # the same (empty) content, but two reports
    assert [p.read_text().count("\n") for p in reports] == [1, 2] and name in reports[1].read_text()
