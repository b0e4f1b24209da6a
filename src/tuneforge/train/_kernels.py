"""Which fused layer kernels a run trains with: Liger's Triton kernels, or the model's own layers.

On CUDA with the liger-kernel package (`pip install 'tuneforge[gpu]'`), Liger replaces each decoder
layer's RMSNorm, SwiGLU MLP and rotary embedding with fused Triton kernels: fewer passes over the
activations and fewer saved for backward. Liger's fused linear cross-entropy stays off: it replaces
the model's forward, where TRL already computes the loss with its own fused LM head, and it would
read the LM head's base weight past any adapter on it.

Liger patches transformers' modelling module for the architecture as well as the loaded model, so
every model of that architecture loaded later in the same process also uses the kernels (all on CUDA).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from tuneforge.errors import TrainError

# Only the layer kernels: TRL refuses Liger's fused loss, and granite-style defaults would
# otherwise swap torch's cross-entropy globally.
LIGER_CONFIG = {"fused_linear_cross_entropy": False, "cross_entropy": False}
INSTALL = "pip install 'tuneforge[gpu]' (liger-kernel)"


@dataclass(frozen=True)
class Kernels:
    """The fused kernels to train with ("liger" or "none") and why."""

    name: str
    reason: str


def trainer_args(name: str) -> dict[str, Any]:
    """transformers' TrainingArguments that apply the kernels ``name``d by `choose` when training starts."""
    if name != "liger":
        return {}
    return {"use_liger_kernel": True, "liger_kernel_config": dict(LIGER_CONFIG)}


def choose(requested: str, model_config: Any, cuda: bool) -> Kernels:
    """``train.kernels`` resolved for this machine and model: ``auto`` takes Liger where it runs,
    ``liger`` insists (a clear error where it cannot run), ``none`` keeps the model's own layers."""
    if requested == "none":
        return Kernels("none", "train.kernels=none")
    problem = _liger_problem(model_config, cuda)
    if problem is None:
        return Kernels("liger", "Liger's Triton kernels for RMSNorm, SwiGLU and RoPE (the loss stays "
                       "TRL's fused LM head)")
    if requested == "liger":
        what, fix = problem
        raise TrainError(f"train.kernels=liger, but {what}", where="train.kernels",
                         fix=f"{fix}, or set train.kernels=auto")
    return Kernels("none", f"the model's own layers: {problem[0]}")


def _liger_problem(model_config: Any, cuda: bool) -> tuple[str, str] | None:
    """(why Liger cannot run here, how to fix it), or None when it can."""
    if not cuda:
        return "Liger's kernels are Triton kernels and need a CUDA GPU", "run on a CUDA GPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "the liger-kernel package is not installed", INSTALL
    model_type = getattr(model_config, "model_type", None)
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception as exc:  # a broken install (e.g. no triton) must not stop training on auto
        return f"liger-kernel does not import ({type(exc).__name__}: {exc})", f"reinstall: {INSTALL}"
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return (f"liger-kernel has no kernels for model type {model_type!r}",
                "use a supported architecture (Llama, Mistral, Qwen, Gemma, Phi-3, ...)")
    return None
