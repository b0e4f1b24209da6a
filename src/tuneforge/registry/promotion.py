"""What counts as evidence that a version may take a gated alias (production by default).

An eval report (eval.json from `tuneforge eval`) is evidence for a version when it passed, covers
every required suite, and was computed on exactly this version's files (its model.checksum equals
the version's checksum), so a report for another build cannot be reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import RegistryError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvalRecord:
    """An eval report attached to a registered version (the file lives in the artifact store)."""

    sha256: str  # of the report file
    artifact: str  # path in the version's registry run
    passed: bool
    suites: tuple[str, ...]
    model_checksum: str
    gates_passed: int
    gates_total: int
    attached: str  # ISO time, UTC

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "artifact": self.artifact, "passed": self.passed,
                "suites": list(self.suites), "model_checksum": self.model_checksum,
                "gates_passed": self.gates_passed, "gates_total": self.gates_total, "attached": self.attached}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalRecord:
        return cls(d["sha256"], d["artifact"], bool(d["passed"]), tuple(d.get("suites", ())),
                   d.get("model_checksum", ""), int(d.get("gates_passed", 0)), int(d.get("gates_total", 0)),
                   d.get("attached", ""))


@dataclass(frozen=True)
class Evidence:
    ok: bool
    problems: list[str] = field(default_factory=list)
    report: EvalRecord | None = None  # the report that satisfied the rules

    def summary(self) -> dict[str, Any]:
        if self.report is None:
            return {"eval_report": None, "problems": self.problems}
        r = self.report
        return {"eval_report": r.sha256, "passed": r.passed, "suites": list(r.suites),
                "gates": f"{r.gates_passed}/{r.gates_total} passed"}


def load_report(path: Path) -> dict[str, Any]:
    """Read and shape-check an eval.json; errors name the file and the bad key."""
    where = str(path)
    if not path.is_file():
        raise RegistryError(f"eval report {path} does not exist", where=where,
                            fix="pass the eval.json written by `tuneforge eval`")
    try:
        report = json.loads(path.read_text())
    except ValueError as exc:
        raise RegistryError(f"eval report {path} is not valid JSON: {exc}", where=where,
                            fix="pass the eval.json written by `tuneforge eval`") from None
    problems = []
    if not isinstance(report, dict):
        problems.append("the top level must be an object")
    else:
        if report.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"schema_version must be {SCHEMA_VERSION} (got {report.get('schema_version')!r})")
        if not isinstance(report.get("passed"), bool):
            problems.append("'passed' must be true or false")
        model = report.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("checksum"), str):
            problems.append("'model.checksum' is missing")
        suites = report.get("suites")
        if not isinstance(suites, list) or not all(isinstance(s, dict) and "name" in s for s in suites):
            problems.append("'suites' must be a list of objects with a name")
        if not isinstance(report.get("gates", []), list):
            problems.append("'gates' must be a list")
    if problems:
        raise RegistryError(f"eval report {path} is malformed: " + "; ".join(problems), where=where,
                            fix="pass an unmodified eval.json written by `tuneforge eval`")
    return report


def record_for(report: dict[str, Any], sha256: str, artifact: str, attached: str) -> EvalRecord:
    gates = report.get("gates", [])
    return EvalRecord(sha256, artifact, report["passed"], tuple(s["name"] for s in report["suites"]),
                      report["model"]["checksum"], sum(1 for g in gates if g.get("passed")), len(gates), attached)


def assess(records: list[EvalRecord], version_checksum: str, required_suites: list[str]) -> Evidence:
    """The newest attached report that meets every rule, or the reasons none does."""
    if not records:
        return Evidence(False, ["no eval report is attached to this version"])
    problems = []
    for r in reversed(records):
        own = []
        if r.model_checksum != version_checksum:
            own.append(f"it was computed on another model (checksum {r.model_checksum[:12]}…, "
                       f"this version is {version_checksum[:12]}…)")
        if not r.passed:
            own.append(f"it did not pass ({r.gates_passed}/{r.gates_total} gates passed)")
        missing = [s for s in required_suites if s not in r.suites]
        if missing:
            own.append(f"it does not cover required suite(s) {', '.join(missing)}")
        if not own:
            return Evidence(True, [], r)
        problems.append(f"report {r.sha256[:12]}: " + "; ".join(own))
    return Evidence(False, problems)
