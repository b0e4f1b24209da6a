"""Gates: `METRIC OP NUMBER` or `METRIC OP baseline [+|- NUMBER]`, checked against the measured values."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from tuneforge.errors import EvalError

GLOBAL_METRICS = ("forgetting_similarity_drop", "judge_score", "judge_win_rate")
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt,
                                                   "<": operator.lt}
_NUM = r"[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?"
_GATE = re.compile(rf"^\s*(?P<metric>[A-Za-z_][\w.]*)\s*(?P<op>>=|<=|>|<)\s*(?:(?P<baseline>baseline)\s*"
                   rf"(?:(?P<sign>[+-])\s*(?P<offset>{_NUM}))?|(?P<number>[+-]?{_NUM}))\s*$")


@dataclass(frozen=True)
class Gate:
    expr: str
    metric: str  # as written, possibly suite-qualified
    op: str
    number: float | None  # absolute threshold
    offset: float | None  # relative to the baseline: threshold = baseline value + offset

    @property
    def relative(self) -> bool:
        return self.offset is not None


@dataclass(frozen=True)
class GateResult:
    expr: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"expr": self.expr, "metric": self.metric, "value": self.value, "threshold": self.threshold,
                "passed": self.passed, **({"note": self.note} if self.note else {})}


def parse_gate(expr: str) -> Gate:
    m = _GATE.match(expr)
    if m is None:
        raise EvalError(f"cannot parse gate {expr!r}", where="eval.gates",
                        fix="write METRIC OP NUMBER or METRIC OP baseline [+|- NUMBER] with OP one of >=, <=, >, <; "
                        "e.g. 'json_valid >= 0.95' or 'field_accuracy >= baseline + 0.20'")
    if m.group("baseline"):
        off = float(m.group("offset") or 0.0)
        return Gate(expr, m.group("metric"), m.group("op"), None, -off if m.group("sign") == "-" else off)
    return Gate(expr, m.group("metric"), m.group("op"), float(m.group("number")), None)


def split_metric(name: str, suites: list[str], primary: str | None) -> tuple[str | None, str]:
    """(suite, metric): a leading known suite name qualifies; otherwise the primary suite (or a global)."""
    head, _, rest = name.partition(".")
    if rest and head in suites:
        return head, rest
    if name in GLOBAL_METRICS:
        return None, name
    return primary, name


def check_names(gates: list[Gate], suites: list[str], primary: str | None, valid: dict[str, set[str]]) -> None:
    """Every gate names a metric that this evaluation measures; else one error listing the valid names."""
    bad = []
    for g in gates:
        suite, metric = split_metric(g.metric, suites, primary)
        if suite is None and metric not in GLOBAL_METRICS:
            bad.append(f"{g.expr!r}: no golden suite to measure {metric} on")
        elif suite is not None and metric not in valid.get(suite, set()):
            bad.append(f"{g.expr!r}: unknown metric {g.metric!r}")
        elif g.relative and metric == "forgetting_similarity_drop":
            bad.append(f"{g.expr!r}: forgetting is measured against the base model, not a baseline")
    if bad:
        names = sorted(valid.get(primary or "", set())) + list(GLOBAL_METRICS)
        qualified = [f"{s}.<metric>" for s in suites]
        raise EvalError("; ".join(bad), where="eval.gates",
                        fix=f"valid metrics: {', '.join(names)}; qualify other suites as {', '.join(qualified)}")


def evaluate_gate(gate: Gate, value: float | None, baseline: float | None, missing: str = "") -> GateResult:
    """Pass/fail of one gate; a metric that was not measured (or has no baseline) fails, with the reason."""
    if value is None:
        return GateResult(gate.expr, gate.metric, None, None, False, missing or "not measured")
    if gate.relative:
        if baseline is None:
            return GateResult(gate.expr, gate.metric, value, None, False, "no baseline value (pass --baseline)")
        threshold = baseline + (gate.offset or 0.0)
    else:
        threshold = float(gate.number or 0.0)
    # Rounding guards a gate like `x >= baseline + 0.2` against float noise in the sum.
    passed = _OPS[gate.op](round(value, 9), round(threshold, 9))
    return GateResult(gate.expr, gate.metric, value, round(threshold, 9), passed)
