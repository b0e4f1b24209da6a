"""Output paths the user names are checked before the work that fills them, and never clobber a file
the command is not meant to replace."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.outputs import OutputPathError, output_dir, output_file


def test_output_file_refuses_directories_unwritable_parents_and_kept_files(tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="is a directory") as err:
        output_file(tmp_path, where="--json")
    assert err.value.where == "--json"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="cannot create the directory"):
        output_file(blocker / "report.json", where="--json")
    kept = tmp_path / "requests.jsonl"
    kept.write_text('{"id": 1}\n')
    with pytest.raises(OutputPathError, match="would be overwritten"):
        output_file(kept, where="--export", replace=False)
    assert kept.read_text() == '{"id": 1}\n'
    assert output_file(kept, where="--json") == kept  # replacing is the point of --json
    fresh = output_file(tmp_path / "new" / "deeper" / "r.json", where="--json")
    assert fresh.parent.is_dir() and not fresh.exists()


def test_output_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        output_dir(tmp_path / "f", where="--out")
    assert output_dir(tmp_path / "d" / "e", where="--out").is_dir()


def test_commands_check_their_output_path_before_working(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    runner = CliRunner()
    # monitor would run its whole drift check first; eval its whole evaluation.
    r = runner.invoke(app, ["monitor", "--json", str(tmp_path / "f" / "m.json")])
    assert r.exit_code == 2 and "cannot create the directory" in " ".join(r.output.split())
    r = runner.invoke(app, ["eval", "no-such-model", "--out", str(tmp_path / "f")])
    assert r.exit_code == 2 and "is a file, not a directory" in " ".join(r.output.split())
    r = runner.invoke(app, ["data", "inspect", str(tmp_path), "--html", str(tmp_path)])
    assert r.exit_code != 0 and "is a directory" in str(r.exception)
