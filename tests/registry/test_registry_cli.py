"""`tuneforge registry ...` end to end through the CLI, on the test's workspace ($TUNEFORGE_HOME)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from registry_helpers import checksum_of, write_report
from typer.testing import CliRunner

from tuneforge import console
from tuneforge.cli import app
from tuneforge.registry import Registry
from tuneforge.workspace import Workspace

runner = CliRunner()


def _ok(*args: str) -> str:
    r = runner.invoke(app, ["registry", *args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def test_registry_commands(workspace: Workspace, adapters, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(console.out, "width", 200)  # a wide terminal: hashes print unbroken
    a, b = adapters
    assert "registered support@1" in _ok("register", str(a), "--name", "support")
    assert "already registered" in _ok("register", str(a), "--name", "support")
    _ok("register", str(b), "--name", "support", "--eval", str(write_report(tmp_path / "b.json", checksum_of(b))))
    listing = _ok("list")
    assert "support" in listing and "v2" in listing

    refused = runner.invoke(app, ["registry", "promote", "support", "1", "--to", "production"])
    assert refused.exit_code != 0 and "no eval report is attached" in str(refused.exception)
    out = _ok("attach-eval", "support", "1", str(write_report(tmp_path / "a.json", checksum_of(a))))
    assert "passed" in out and "golden" in out
    assert "promoted support@production: - → v1" in _ok("promote", "support", "1", "--to", "production")
    assert "v1 → v2" in _ok("promote", "support", "2", "--to", "production")
    assert "forced" in _ok("promote", "support", "1", "--to", "canary", "--force", "--reason", "smoke test")
    assert "rolled back support@production: v2 → v1" in _ok("rollback", "support", "--reason", "regression")

    shown = _ok("show", "support@production")
    assert checksum_of(a) in shown and "adapter_model.safetensors" in shown
    assert "golden/exact_match" in shown and "evidence for production" in shown

    lines = _ok("history", "support", "--alias", "production", "--json", "--verify")
    entries = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    assert [(e["action"], e["from_version"], e["to_version"], e["reason"]) for e in entries] == [
        ("promote", None, 1, ""), ("promote", 1, 2, ""), ("rollback", 2, 1, "regression")]
    assert entries == [e.to_dict() for e in Registry(workspace).history("support", alias="production")]
    assert "audit log intact" in lines
    table = _ok("history", "support")
    assert "rollback" in table and "force" in table and "regression" in table

    dl = _ok("download", "support@production", "--out", str(tmp_path / "dl"))
    assert "downloaded" in dl
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(p.name for p in a.iterdir())


def test_cli_errors_have_no_traceback(workspace: Workspace, adapters) -> None:
    Registry(workspace).register(adapters[0], "support")
    p = subprocess.run([sys.executable, "-m", "tuneforge.cli", "registry", "promote", "support", "1",
                        "--to", "production"], capture_output=True, text=True)
    assert p.returncode == 1
    assert "refusing to move 'production' to support@1" in p.stderr and "--force --reason" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
