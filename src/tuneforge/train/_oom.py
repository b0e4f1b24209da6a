"""CUDA out-of-memory back-off: halve the micro-batch, double accumulation, retry.

The effective batch (batch_size * grad_accum) stays the same, so the optimizer sees the same
updates; only activation memory drops. The retry continues from the last committed checkpoint
(or from the start), with a freshly loaded model: PEFT has already wrapped the old one.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from typing import Any

from tuneforge.errors import TrainError


@dataclass(frozen=True)
class OomRetry:
    """One back-off: the settings the retry ran with, and where it restarted."""

    attempt: int
    batch_size: int
    grad_accum: int
    from_checkpoint: str | None  # checkpoint directory name, or None: from the start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def note(self) -> str:
        start = self.from_checkpoint or "the start"
        return (f"CUDA out of memory: retrying with batch_size={self.batch_size}, grad_accum={self.grad_accum} "
                f"(same effective batch) from {start}")


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)  # torch.cuda.OutOfMemoryError is this class


def halved(tcfg: Any) -> Any:
    """``tcfg`` with at most half the micro-batch and the accumulation raised to keep the effective batch:
    the largest divisor of the batch size up to its half (6 → 3 × 2 steps, 3 → 1 × 3 steps)."""
    size = tcfg.batch_size
    smaller = max((d for d in range(1, size // 2 + 1) if size % d == 0), default=1)
    return tcfg.model_copy(update={"batch_size": smaller, "grad_accum": tcfg.grad_accum * (size // smaller)})


def give_up(tcfg: Any, retries: list[OomRetry], limit: int) -> TrainError | None:
    """The error to raise instead of another retry, or None when one more is allowed."""
    if tcfg.batch_size <= 1:
        what = "CUDA ran out of memory with train.batch_size=1, so the batch cannot be halved further"
    elif len(retries) >= limit:
        what = (f"CUDA ran out of memory after {len(retries)} back-off(s) (train.oom_retries={limit}); "
                f"last batch_size={tcfg.batch_size}")
    else:
        return None
    return TrainError(
        what,
        where=f"train.batch_size={tcfg.batch_size}, train.grad_accum={tcfg.grad_accum}, "
        f"train.max_seq_len={tcfg.max_seq_len}",
        fix="set train.gradient_checkpointing=true, lower train.max_seq_len (and data.max_tokens), or use "
        "train.peft=qlora (4-bit base); `tuneforge train --dry-run` shows the memory estimate",
    )


def free_memory() -> None:
    """Release what the failed attempt held (its trainer, optimizer state, cached CUDA blocks)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
