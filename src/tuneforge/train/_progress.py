"""Progress events that `train()` sends to its caller (the CLI draws them as a rich progress bar)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainProgress:
    """One progress event: after every optimizer step, and when the phase changes."""

    phase: str  # "training", "evaluating", "saving", "stopping"
    step: int
    total_steps: int
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    epoch: float | None = None
    note: str = ""


ProgressFn = Callable[[TrainProgress], None]
