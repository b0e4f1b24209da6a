"""Helpers shared by the registry tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(path: Path, checksum: str, *, passed: bool = True, suites: tuple[str, ...] = ("golden",),
                 ref: str = "support@1") -> Path:
    """An eval.json as `tuneforge eval` writes it (the keys the registry reads)."""
    gates = [{"expr": f"{s}/exact_match >= 0.5", "metric": f"{s}/exact_match", "value": 0.9 if passed else 0.1,
              "threshold": 0.5, "passed": passed} for s in suites]
    report = {"schema_version": 1, "model": {"ref": ref, "kind": "registry", "checksum": checksum},
              "suites": [{"name": s, "path": f"{s}.jsonl", "checksum": "c" * 64, "n": 10} for s in suites],
              "metrics": {g["metric"]: g["value"] for g in gates}, "gates": gates, "passed": passed}
    path.write_text(json.dumps(report))
    return path


def checksum_of(adapter: Path) -> str:
    return json.loads((adapter / "tuneforge.json").read_text())["checksum"]
