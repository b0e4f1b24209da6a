"""`tuneforge eval` through the CLI: summary, gates and exit codes (0 pass, 1 gate failed, 2 cannot run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_tickets"


def _eval(model: Path | str, suite: Path, out: Path, *sets: str) -> tuple[int, str]:
    args = ["eval", str(model), "--suite", str(suite), "--out", str(out)]
    for s in ["eval.max_new_tokens=6", "eval.bootstrap_resamples=200", "eval.dtype=float32", *sets]:
        args += ["--set", s]
    r = runner.invoke(app, args)
    return r.exit_code, r.output


def test_gates_decide_the_exit_code(golden: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, output = _eval(tiny_model_dir, golden, tmp_path / "a", "eval.gates=['rouge_l >= 0', 'json_valid <= 1']")
    assert code == 0, output
    assert "rouge_l >= 0" in output and "all gates passed" in output and "judge: skipped" in output
    report = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert report["passed"] is True and (tmp_path / "a" / "eval.html").is_file()
    # The tiny random model writes no JSON, so a JSON-validity gate fails: exit 1, the gate shown as FAIL.
    code, output = _eval(tiny_model_dir, golden, tmp_path / "b", "eval.gates=['json_valid >= 0.95', 'rouge_l >= 0']")
    assert code == 1, output
    assert "FAIL" in output and "1 gate(s) failed" in output
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["passed"] is False


def test_usage_errors_exit_2_without_a_traceback(golden: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, output = _eval(tiny_model_dir, golden, tmp_path / "o", "eval.gates=['json_validity >= 0.9']")
    assert code == 2 and "unknown metric 'json_validity'" in output and "valid metrics:" in output
    code, output = _eval(tiny_model_dir, tmp_path / "missing.jsonl", tmp_path / "o")
    assert code == 2 and "unknown suite" in output
    code, output = _eval(tmp_path / "no-model", golden, tmp_path / "o")
    assert code == 2 and "where: MODEL" in output  # the argument that named it, not model.base
    code, output = _eval(tiny_model_dir, golden, tmp_path / "o", f"eval.baselines=['{tmp_path / 'no-base'}']")
    assert code == 2 and "where: --baseline / eval.baselines" in output
    # A relative gate with nothing to compare with is refused before any answer is generated.
    code, output = _eval(tiny_model_dir, golden, tmp_path / "r", "eval.gates=['json_valid >= baseline + 0.1']")
    assert code == 2 and "none is given" in " ".join(output.split()) and not (tmp_path / "r" / "eval.json").exists()
    p = subprocess.run([sys.executable, "-m", "tuneforge.cli", "eval", str(tiny_model_dir), "--suite", str(golden),
                        "--set", "eval.gates=['json_valid => 1']"], capture_output=True, text=True)
    assert p.returncode == 2 and "cannot parse gate" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_bundled_model_on_quickstart_golden_subset(bundled_home: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_HOME", str(bundled_home))
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--out", str(data), "--n", "200"], check=True,
                   capture_output=True)
    subset = tmp_path / "golden4.jsonl"
    subset.write_text("".join((data / "golden.jsonl").read_text().splitlines(keepends=True)[:4]))
    (tmp_path / "schema.json").write_text((data / "schema.json").read_text())
    sets = ["eval.max_new_tokens=48", "eval.dtype=auto", "eval.json_fields=[category,priority,product,sentiment]"]
    code, output = _eval("bundled:smollm2-135m-instruct", subset, tmp_path / "o", *sets,
                         "eval.gates=['json_valid >= 0.95', 'field_accuracy >= 0']")
    report = json.loads((tmp_path / "o" / "eval.json").read_text())
    valid = report["metrics"]["golden4"]["candidate"]["json_valid"]
    assert valid["n"] == 4 and 0.0 <= valid["ci"][0] <= valid["value"] <= valid["ci"][1] <= 1.0
    assert report["metrics"]["golden4"]["candidate"]["schema_valid"]["n"] == 4
    # The base model does not follow the JSON-only instruction (what fine-tuning is for), so the gate fails.
    assert valid["value"] < 0.95
    assert code == 1 and [g["passed"] for g in report["gates"]] == [False, True], output
    # Same model and suite: the cached answers are reused, and a lenient gate passes with exit 0.
    code, output = _eval("bundled:smollm2-135m-instruct", subset, tmp_path / "p", *sets,
                         f"eval.gates=['json_valid >= {valid['value']}']")
    assert code == 0, output
    assert json.loads((tmp_path / "p" / "eval.json").read_text())["metrics"] == report["metrics"]
