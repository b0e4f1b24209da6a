"""Loading a resolved base model and its tokenizer with transformers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneforge.errors import ModelError

if TYPE_CHECKING:
    from tuneforge.models._resolve import ResolvedModel


def load_tokenizer(model: ResolvedModel) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the tokenizer of {model.ref}: {exc}",
            where=str(model.path),
            fix="the directory needs tokenizer.json/tokenizer_config.json (save_pretrained writes them)",
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"{model.ref} has no chat template, so chat data cannot be rendered for it",
            where=str(model.path),
            fix="use an instruct/chat model, or add chat_template.jinja to the model directory",
        )
    return tokenizer


def pick_dtype(name: str) -> Any:
    """auto: bf16 where the hardware supports it (CUDA with bf16, or CPU), else fp32."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16


def load_model(model: ResolvedModel, dtype: Any = "auto", **kwargs: Any) -> Any:
    """The base model's weights in ``dtype`` (a name, "auto", or a torch dtype).

    ``kwargs`` go to ``from_pretrained`` (quantisation config, attention implementation).
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = pick_dtype(dtype) if isinstance(dtype, str) else dtype
    try:
        return AutoModelForCausalLM.from_pretrained(model.path, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the weights of {model.ref}: {exc}",
            where=str(model.path),
            fix="check that the directory holds a complete save_pretrained() output",
        ) from None
