"""Typed errors. Each says what went wrong, where, and how to fix it.

The library raises these and never prints or exits; the CLI shows them without a traceback.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class TuneforgeError(Exception):
    """Root of every error a user can cause."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"  where: {self.where}")
        if self.fix:
            parts.append(f"  fix:   {self.fix}")
        return "\n".join(parts)


class ConfigError(TuneforgeError):
    """tuneforge.yaml or a --set override is invalid. Carries every problem, not just the first."""

    def __init__(self, problems: list[str], *, source: str) -> None:
        self.problems = problems
        what = f"{len(problems)} problem(s) in the configuration:\n" + "\n".join(
            f"  - {p}" for p in problems
        )
        super().__init__(what, where=source, fix="edit the file or the --set value named above")


class ModelError(TuneforgeError):
    """A base model cannot be resolved or loaded."""


class DataError(TuneforgeError):
    """Input data cannot be read or nothing usable is left after preparation."""


class TrainError(TuneforgeError):
    """Training cannot start (preflight, method, hardware) or stopped without a usable result."""


class TrainInterrupted(TrainError):
    """Training was interrupted (Ctrl-C); a checkpoint was saved and `--resume` continues from it."""


class EvalError(TuneforgeError):
    """An evaluation cannot run: a suite, model reference, gate expression or judge endpoint is unusable."""


class RegistryError(TuneforgeError):
    """A model registry operation cannot be done: unknown name/version/alias, bad adapter, refused move."""


class IntegrityError(RegistryError):
    """A registered file is missing, not allowed, or does not match its recorded sha256."""


class MonitorError(TuneforgeError):
    """Drift monitoring cannot run: no reference data, or a retrain trigger has nothing to train on."""


class AbError(TuneforgeError):
    """An A/B report or guardrail check cannot run: no such model, no traffic, a bad duration."""
