"""LoRA dropout whose mask costs a quarter of the random numbers, for CPU training.

``nn.Dropout`` on CPU draws one Bernoulli sample per element from a scalar Mersenne Twister:
with LoRA on every linear layer it drew ~250 M numbers per 2,048-token step of SmolLM2-135M,
about a fifth of the step (benchmarks/bench_train.py). Here one 64-bit draw gives four 15-bit
uniforms (the sign bit of each 16-bit lane is dropped: ``random_`` leaves the top bit of an int64
at 0). An element is dropped when its uniform falls below round(p * 2^15); survivors are scaled by
1 / (1 - that rate), so the expectation is exactly preserved and the rate is within 2^-16 of p.
Independent masks per layer, seeded by torch's generator (checkpoints restore it), the same
forward and gradient as ``nn.Dropout``. CUDA keeps ``nn.Dropout`` (its Philox generator is fast).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_LEVELS = 1 << 15


def _drop_mask(shape: torch.Size, threshold: int, device: torch.device) -> torch.Tensor:
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()
    lanes = words.view(torch.int16)[:count].view(shape)
    return torch.bitwise_and(lanes, _LEVELS - 1) < threshold


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, drop: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(drop)  # one byte per element, as nn.Dropout keeps
        ctx.scale = scale
        return x.masked_fill(drop, 0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0).mul_(ctx.scale), None, None


class FastDropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (same train/eval behaviour) with a cheaper mask."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * _LEVELS)
        self.scale = _LEVELS / (_LEVELS - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        return _MaskedScale.apply(x, _drop_mask(x.shape, self.threshold, x.device), self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every LoRA ``nn.Dropout`` in ``model`` by ``FastDropout``; returns how many."""
    replaced = 0
    for module in model.modules():
        table = getattr(module, "lora_dropout", None)
        if not isinstance(table, nn.ModuleDict):
            continue
        for name, dropout in list(table.items()):
            if type(dropout) is nn.Dropout and dropout.p > 0:
                table[name] = FastDropout(dropout.p)
                replaced += 1
    return replaced
