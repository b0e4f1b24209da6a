"""The evaluation stage: golden suites, metrics with bootstrap CIs, baselines, forgetting, judge, gates."""

from tuneforge.eval.gates import Gate, GateResult, parse_gate
from tuneforge.eval.run import EvalResult, evaluate
from tuneforge.eval.suites import Suite, SuiteItem, load_suite

__all__ = ["EvalResult", "Gate", "GateResult", "Suite", "SuiteItem", "evaluate", "load_suite", "parse_gate"]
