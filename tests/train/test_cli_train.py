"""`tuneforge train` through the CLI: dry run output, errors without tracebacks, a real run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.errors import DataError

runner = CliRunner()


def test_dry_run_prints_preflight_memory_and_marked_samples(dataset: Path, tiny_model_dir: Path) -> None:
    r = runner.invoke(app, ["train", "--dry-run", "--data", str(dataset), "--set", f"model.base={tiny_model_dir}"])
    assert r.exit_code == 0, r.output
    for text in ("preflight", "memory estimate", "trainable", "optimizer steps", "«Sorry! Order 0 ships in 1 days.",
                 "scored positions)", "runtime overhead", "packing: length_grouped", "dry run ok"):
        assert text in r.output, text
    assert not list(Path(dataset).parent.glob("tfhome/adapters/*"))


def test_train_runs_and_prints_a_summary(dataset: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    r = runner.invoke(app, ["train", "--data", str(dataset), "--out", str(out), "--set", f"model.base={tiny_model_dir}",
                            "--set", "train.max_steps=2", "--set", "train.save_every_steps=null"])
    assert r.exit_code == 0, r.output
    assert "train loss" in r.output and "val loss" in r.output and f"→ {out}" in r.output.replace("\n", "")
    assert (out / "tuneforge.json").is_file()


def test_missing_dataset_is_an_error_without_traceback(tiny_model_dir: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--set", f"model.base={tiny_model_dir}"])
    assert r.exit_code != 0 and isinstance(r.exception, DataError)
    p = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", "--set", f"model.base={tiny_model_dir}"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "tuneforge data prepare" in p.stderr and "Traceback" not in p.stderr
