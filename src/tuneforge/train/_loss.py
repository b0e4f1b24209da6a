"""The causal-LM loss on CPU, computed where it counts: the LM head runs on trained positions only.

The model's own loss projects every position through the vocabulary head (SmolLM2: 49,152 rows)
and upcasts the whole (batch, seq, vocab) logits to fp32 before the cross-entropy. In chat SFT
most positions are prompt (the quickstart tickets: 18% of tokens carry loss), so on CPU that head,
its fp32 copies and their backward were ~20% of a LoRA step on the bundled model. Here a forward
pre-hook on the head hands it only the hidden states whose next token is trained; the model's
forward is otherwise unchanged (PEFT, DDP and autocast wrappers all stay in the call). TRL's fused
LM head does the same selection, but only on Triton devices; its CPU fallback scores every position.

Right-padded batches also drop their attention mask: under a causal mask a real token never sees
the padding after it, so the loss is exactly the same (padding positions carry no label), and
sdpa takes its causal kernel, which skips the masked half, instead of a dense (seq, seq) mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

IGNORE = -100


@dataclass(frozen=True)
class TrainedLogits:
    """The loss, and the fp32 logits of the trained positions with their target ids (for metrics)."""

    loss: Any
    logits: Any
    targets: Any


def causal_only(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` without an attention mask that only marks right padding (each row ones, then zeros)."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2 or "position_ids" in inputs:
        return inputs
    if bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all()):
        return {k: v for k, v in inputs.items() if k != "attention_mask"}
    return inputs  # left padding or holes: the mask matters


@contextlib.contextmanager
def _head_on(head: Any, keep: Any) -> Iterator[None]:
    """While active, ``head`` sees hidden[:, :-1][keep] (N, hidden) instead of (batch, seq, hidden)."""

    def select(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden = args[0] if args else None
        if hidden is None or hidden.dim() != 3 or tuple(hidden.shape[:2]) != (keep.shape[0], keep.shape[1] + 1):
            return None  # another shape (e.g. virtual prompt tokens): leave the head as it is
        return (hidden[:, :-1][keep], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def trained_positions_loss(model: Any, head: Any, inputs: dict[str, Any], num_items_in_batch: Any = None,
                           ) -> TrainedLogits:
    """Mean cross-entropy over trained tokens, as the model's own loss: summed and divided by
    ``num_items_in_batch`` (the whole gradient accumulation's count) when given, else by this batch's."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    model_inputs = causal_only({k: v for k, v in inputs.items() if k != "labels"})
    with _head_on(head, keep):
        logits = model(**model_inputs).logits
    if logits.dim() == 3:  # the hook stood aside (the head saw another shape): every position was scored
        if tuple(logits.shape[:2]) != tuple(labels.shape):
            raise RuntimeError(f"logits {tuple(logits.shape)} do not line up with labels {tuple(labels.shape)}")
        logits = logits[:, :-1][keep]
    logits = logits.float()
    picked = targets[keep]
    loss = F.cross_entropy(logits, picked, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    return TrainedLogits(loss / torch.as_tensor(count, device=loss.device), logits, picked)


def token_metrics(trained: TrainedLogits) -> tuple[float, float]:
    """(mean entropy, top-1 accuracy) over the trained positions, as TRL logs them on GPU."""
    import torch

    with torch.no_grad():
        logits = trained.logits.detach()
        if logits.shape[0] == 0:
            return 0.0, 0.0
        logp = torch.log_softmax(logits, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        accuracy = (logits.argmax(-1) == trained.targets).float().mean()
    return float(entropy), float(accuracy)
