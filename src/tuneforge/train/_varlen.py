"""Padding-free packing without the flash-attn package: an attention function over sequence boundaries.

TRL's padding-free collator flattens a micro-batch into one row and passes the examples' boundaries
(`cu_seq_lens_q`, `max_length_q`) down to the attention layers. transformers only reads them in its
flash-attention functions, which need the separately built flash-attn package; with sdpa it builds a
dense (tokens x tokens) mask over the whole packed row instead. This function, registered with
transformers under `NAME`, attends within each example only:

- CUDA: PyTorch's own variable-length flash kernel (`torch.nn.attention.varlen`, no extra package);
- elsewhere: causal sdpa on each example's slice (no mask is built, the causal kernel is used).

Anything that does not arrive packed (a padded batch, generation) takes transformers' sdpa path.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

NAME = "tuneforge_varlen"


def register() -> str:
    """Registers the attention function (and its mask builder) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, _mask)
    return NAME


def _mask(**kwargs: Any) -> Any:
    """As for flash attention, no mask for unpadded rows, packed ones included (the attention function
    reads the examples' boundaries instead); sdpa's causal padding mask for padded batches, which take sdpa."""
    from transformers.masking_utils import flash_attention_mask, sdpa_mask

    return None if flash_attention_mask(**kwargs) is None else sdpa_mask(**kwargs)


def supports(config: Any) -> str | None:
    """Why ``config``'s model cannot use this attention function, or None when it can."""
    if not getattr(config, "_supports_attention_backend", True):
        return f"{type(config).__name__} does not route attention through transformers' attention interface"
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, key, None):
            return f"{key} is set (logit soft-capping is not in the varlen kernels)"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    if getattr(config, "layer_types", None) and any(t != "full_attention" for t in config.layer_types):
        return "the model mixes attention types across layers"
    return None


def boundaries(position_ids: Any) -> tuple[Any, int]:
    """(cu_seqlens int32, longest example) of one packed row whose positions restart per example."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    (cu, _), (longest, _) = prepare_fa_kwargs_from_position_ids(position_ids)
    return cu, int(longest)


def varlen_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                             dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
                             ) -> tuple[Any, None]:
    """transformers' attention-function contract: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    import torch

    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    position_ids = kwargs.get("position_ids")
    if cu is None and attention_mask is None and _restarts(position_ids, query.shape[0]):
        cu, longest = boundaries(position_ids)  # packed without the boundaries passed down: derive them
    if cu is None or attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"packed attention expects one flattened row, got a batch of {query.shape[0]}")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    low = _kernel_dtype(query) if query.is_cuda and dropout == 0.0 and _cuda_kernel() is not None else None
    if low is not None:
        query, key, value = (t.to(low) for t in (query, key, value))
        out = _cuda_varlen(query, key, value, cu.to(query.device, torch.int32), int(longest), scale)
    else:
        out = _per_example(query, key, value, [int(x) for x in cu.tolist()], scale, dropout)
    return out, None


def _restarts(position_ids: Any, batch: int) -> bool:
    """Whether one row's positions restart (several examples in it); a device sync, so only asked
    when the collator did not pass the boundaries."""
    return position_ids is not None and batch == 1 and int((position_ids[0] == 0).sum()) > 1


def _kernel_dtype(query: Any) -> Any:
    """The 16-bit dtype to run the flash kernel in, or None to stay exact in fp32."""
    import torch

    if query.dtype in (torch.float16, torch.bfloat16):
        return query.dtype
    # fp32 weights under autocast (full fine-tuning): RoPE's fp32 tables promote q and k back to fp32,
    # where sdpa would have been autocast to 16 bits anyway.
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None


def _per_example(query: Any, key: Any, value: Any, cu: list[int], scale: float, dropout: float) -> Any:
    """Causal sdpa on each example's slice of the row: the reference path, and the CPU one."""
    import torch
    import torch.nn.functional as F

    gqa = query.shape[1] != key.shape[1]
    parts = [
        F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout,
                                       is_causal=True, scale=scale, enable_gqa=gqa)
        for s, e in zip(cu[:-1], cu[1:], strict=True) if e > s
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


@functools.cache
def _cuda_kernel() -> tuple[Any, frozenset[str]] | None:
    """torch's varlen_attn and the keywords this torch version takes, or None when it has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _cuda_varlen(query: Any, key: Any, value: Any, cu: Any, longest: int, scale: float) -> Any:
    kernel, params = _cuda_kernel()  # type: ignore[misc]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    extra: dict[str, Any] = {}
    if "window_size" in params:  # newer torch: causal is the window (-1, 0)
        extra["window_size"] = (-1, 0)
    else:
        extra["is_causal"] = True
    if "scale" in params:
        extra["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-9:
        raise RuntimeError("this torch's varlen_attn has no scale argument; the model needs a custom scale")
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:  # older kernels want as many key/value heads as query heads
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    out = kernel(q, k, v, cu, cu, longest, longest, **extra)
    return out[None]  # (1, tokens, heads, dim)


@functools.cache
def cuda_problem() -> str | None:
    """None when torch's varlen kernel runs on this GPU and matches per-example attention; otherwise
    why not, so that packing falls back to length-grouped batches instead of failing or training wrong."""
    import torch

    if _cuda_kernel() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    return check_kernel(_cuda_varlen, "cuda")


def check_kernel(kernel: Any, device: str) -> str | None:
    """Compares ``kernel(q, k, v, cu_seqlens, longest, scale)`` with per-example causal sdpa on two packed
    examples with grouped-query heads, outputs and gradients; None when they agree, else why not."""
    import torch

    try:
        gen = torch.Generator(device=device).manual_seed(0)
        shapes = ((1, 4, 40, 64), (1, 2, 40, 64), (1, 2, 40, 64))
        q, k, v = (torch.randn(s, generator=gen, device=device, dtype=torch.bfloat16).requires_grad_()
                   for s in shapes)
        cu = [0, 13, 40]
        fast = kernel(q, k, v, torch.tensor(cu, dtype=torch.int32, device=device), 27, 0.125)
        grads = torch.autograd.grad(fast.float().square().sum(), (q, k, v))
        ref = _per_example(q, k, v, cu, 0.125, 0.0)
        ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
        # Relative to each tensor's largest value: two bf16 kernels differ by rounding (~1%), while a wrong
        # mask or window (attending across examples, or not causally) is off by the values themselves.
        worst = max(float((a.detach().float() - b.detach().float()).abs().max()
                          / b.detach().float().abs().max().clamp(min=1e-6))
                    for a, b in zip((fast, *grads), (ref, *ref_grads), strict=True))
    except Exception as exc:  # any failure means: do not pack with it
        return f"the varlen kernel failed its check on {device} ({type(exc).__name__}: {exc})"
    if worst > 0.05:
        return f"the varlen kernel disagrees with per-example attention (relative difference {worst:.3g})"
    return None
