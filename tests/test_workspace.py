from pathlib import Path

import pytest

from tuneforge.workspace import Workspace


def test_env_var_relocates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "x"))
    ws = Workspace.from_env()
    assert ws.root == (tmp_path / "x").resolve()
    assert ws.models_dir == ws.root / "models"


def test_default_is_dot_tuneforge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEFORGE_HOME")
    monkeypatch.chdir(tmp_path)
    assert Workspace.from_env().root == (tmp_path / ".tuneforge").resolve()


def test_explicit_root_wins(tmp_path: Path) -> None:
    assert Workspace.from_env(tmp_path / "y").root == (tmp_path / "y").resolve()
