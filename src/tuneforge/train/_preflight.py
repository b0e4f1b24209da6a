"""Checks that run before any training step: masks, lengths, stop tokens, and a memory estimate.

Silent mask bugs are the most common way a fine-tune "trains fine" and ships a broken model: a
row with no trainable token, an end-of-turn token left out of the loss (the model never learns to
stop), a row truncated mid-answer. Each is an error here, all reported at once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuneforge.errors import TrainError
from tuneforge.train._tokenize import Example, sample_renderings, segments

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig

GIB = 2**30
SAMPLES = 3


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one training process, within a factor of 2 (checked against a measured peak in
    tests/train/test_preflight.py).

    weights: every parameter at its load dtype (4-bit for QLoRA), plus autocast's bf16 copy of fp32
    weights for a full fine-tune. gradients and optimizer: fp32 gradients and AdamW's two fp32
    moments for trainable parameters only. activations: what autograd keeps per token and layer for
    the backward pass, (18·hidden + 6·intermediate) values in the compute dtype: measured 39.6 KB per
    token and layer on SmolLM2-135M with LoRA on every linear layer under bf16 autocast (fp32
    RMSNorm inputs, LoRA dropout's masked copies, the MLP's four intermediate-wide tensors); with
    gradient checkpointing one hidden state per layer plus one full layer. logits: the LM head scores
    trained positions only (SFT/CPT; DPO scores every position), 16 bytes per position and vocabulary
    entry (the bf16 head output, its fp32 copy, log-softmax and its gradient): for SmolLM2's 49,152
    entries ~0.75 MB per scored token. runtime: torch, transformers and the rest of the process on
    CPU (~0.75 GiB resident before any weight), the CUDA context on a GPU.
    """

    params: int
    trainable_params: int
    tokens_per_micro_batch: int
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    total_gib: float
    available_gib: float | None
    device: str
    scored_tokens_per_micro_batch: int = 0
    logits_gib: float = 0.0
    runtime_gib: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Preflight:
    """What a run will train on and how, checked before the first step."""

    method: str
    peft: str
    packing: str  # "padding_free", "length_grouped" or "off"
    packing_reason: str
    kernels: str  # fused layer kernels: "liger" or "none"
    kernels_reason: str
    precision: str
    rows: dict[str, int]  # train/val examples used
    skipped: dict[str, int]  # rows of another kind than the method trains on
    tokens: int  # train tokens per epoch
    trained_tokens: int  # of which carry loss
    longest: int
    steps: int  # optimizer steps planned (approximate with padding-free packing)
    samples: list[list[tuple[str, bool]]]  # rendered examples cut into (text, trained) runs
    estimate: MemoryEstimate
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["estimate"] = self.estimate.to_dict()
        return d


def stop_token_ids(tokenizer: Any, stop_tokens: list[str]) -> set[int]:
    ids = {tokenizer.convert_tokens_to_ids(t) for t in stop_tokens}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    unk = getattr(tokenizer, "unk_token_id", None)
    return {i for i in ids if i is not None and i != unk}


def check_examples(train: list[Example], val: list[Example], tcfg: TrainConfig, stops: set[int],
                   stop_names: list[str]) -> None:
    """Raise one TrainError naming every problem: no train rows, unmasked rows, missing stops, length."""
    problems: list[str] = []
    if not train:
        raise TrainError(
            f"no training rows for train.method={tcfg.method}",
            where="train split of the prepared dataset",
            fix="sft trains chat rows, dpo preference rows, cpt text rows; prepare data of that kind or "
            "change train.method",
        )
    for split, exs in (("train", train), ("val", val)):
        empty = [e for e in exs if e.trained == 0]
        if empty:
            problems.append(f"{len(empty)} {split} row(s) have zero trainable tokens (first: {_where(empty[0])})")
        unstopped = [e for e in exs if e.trained and e.trained_stops(stops) < e.turns]
        if unstopped:
            problems.append(
                f"{len(unstopped)} {split} row(s) do not train the end-of-turn token "
                f"({' or '.join(stop_names)}) after every assistant turn, so the model would not learn to "
                f"stop (first: {_where(unstopped[0])})"
            )
        long = [e for e in exs if len(e.input_ids) > tcfg.max_seq_len]
        if long:
            longest = max(len(e.input_ids) for e in long)
            problems.append(
                f"{len(long)} {split} row(s) are longer than train.max_seq_len={tcfg.max_seq_len} tokens "
                f"(longest {longest}, first: {_where(long[0])}); truncating would cut the answer. Raise "
                f"train.max_seq_len to {longest}, or re-run `tuneforge data prepare --set "
                f"data.max_tokens={tcfg.max_seq_len}` so such rows are rejected"
            )
    if problems:
        raise TrainError(
            f"preflight found {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems),
            where="the prepared dataset's rows as tokenised for training",
            fix="`tuneforge data inspect DIR` shows rendered rows with the trained spans marked",
        )


def _where(e: Example) -> str:
    return f"{e.origin or 'row'} id={e.id}"


def planned_steps(rows: int, tokens: int, tcfg: TrainConfig, packing: str) -> int:
    if tcfg.max_steps:
        return tcfg.max_steps
    sequences = math.ceil(tokens / tcfg.max_seq_len) if packing == "padding_free" else rows
    batches = math.ceil(sequences / tcfg.batch_size)
    return max(1, math.ceil(batches / tcfg.grad_accum)) * tcfg.epochs


def samples(tokenizer: Any, records: Iterable[dict[str, Any]], method: str) -> list[list[tuple[str, bool]]]:
    return [segments(tokenizer, r) for r in sample_renderings(tokenizer, records, method, SAMPLES)]


def tokens_per_micro_batch(train: list[Example], tcfg: TrainConfig, packing: str) -> int:
    if packing == "padding_free":
        return tcfg.batch_size * tcfg.max_seq_len
    longest = max((len(e.input_ids) for e in train), default=tcfg.max_seq_len)
    return tcfg.batch_size * min(longest, tcfg.max_seq_len)


def trained_per_micro_batch(train: list[Example], tcfg: TrainConfig, packing: str) -> int:
    """Positions the LM head scores in the worst micro-batch: those whose next token carries loss."""
    tokens = tokens_per_micro_batch(train, tcfg, packing)
    if packing == "padding_free":  # packed rows hold the data's trained share, whatever the rows
        total = sum(len(e.input_ids) for e in train) or 1
        return min(tokens, math.ceil(tokens * sum(e.trained for e in train) / total))
    most = max((e.trained for e in train), default=tokens)
    return min(tokens, tcfg.batch_size * most)


_RUNTIME = {"cpu": 0.75 * GIB, "cuda": 0.5 * GIB}  # process (CPU) or CUDA context (GPU) before any weight


def estimate_memory(config: Any, tcfg: TrainConfig, peft_config: Any, tokens: int, prec: str,
                    scored: int | None = None) -> MemoryEstimate:
    """Count parameters of the model ``config`` describes on the meta device (no weights are read) and
    apply the estimate's formula.

    ``scored``: positions the LM head scores per micro-batch (default: all ``tokens``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    if peft_config is not None:
        import copy

        from peft import get_peft_model

        from tuneforge.train._peft import ignore_checkpointing_deprecation

        try:
            with warnings.catch_warnings():
                ignore_checkpointing_deprecation()
                peft_model = get_peft_model(model, copy.deepcopy(peft_config))
        except ValueError as exc:  # e.g. target modules the model does not have
            raise _peft_refused(exc, tcfg, model) from None
        trainable, _ = peft_model.get_nb_trainable_parameters()
    else:
        trainable = params
    act_bytes = 2 if prec == "bf16" else 4
    if tcfg.peft == "full":
        weights = params * 4 + (params * 2 if prec == "bf16" else 0)
    elif tcfg.peft == "qlora":
        weights = linear * 0.5 + (params - linear) * 2 + trainable * 4
    else:
        weights = params * act_bytes + trainable * 4
    text = config.get_text_config()
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    inter = int(getattr(text, "intermediate_size", 4 * hidden) or 4 * hidden)
    layers = int(getattr(text, "num_hidden_layers", 1) or 1)
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    per_layer = tokens * (18 * hidden + 6 * inter) * act_bytes
    if tcfg.gradient_checkpointing:
        activations = tokens * hidden * act_bytes * layers + per_layer
    else:
        activations = per_layer * layers
    scored = tokens if scored is None else min(scored, tokens)
    logits = scored * vocab * 16
    grads, optim = trainable * 4, trainable * 8
    device, available = _device_memory()
    runtime = _RUNTIME["cpu" if device == "cpu" else "cuda"]
    total = weights + grads + optim + activations + logits + runtime
    return MemoryEstimate(
        params=params, trainable_params=trainable, tokens_per_micro_batch=tokens,
        weights_gib=round(weights / GIB, 3), gradients_gib=round(grads / GIB, 3),
        optimizer_gib=round(optim / GIB, 3), activations_gib=round(activations / GIB, 3),
        total_gib=round(total / GIB, 3), available_gib=available, device=device,
        scored_tokens_per_micro_batch=scored, logits_gib=round(logits / GIB, 3), runtime_gib=round(runtime / GIB, 3),
    )


def _peft_refused(exc: ValueError, tcfg: TrainConfig, model: Any) -> TrainError:
    import torch

    where = "train.peft_config" if tcfg.peft == "passthrough" else "train.lora.target_modules"
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    return TrainError(f"PEFT cannot apply this configuration to the model: {exc}", where=where,
                      fix=f"target the model's linear layers by name ({', '.join(linear)}) or use all-linear")


def _device_memory() -> tuple[str, float | None]:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"cuda:{props.name}", round(props.total_memory / GIB, 1)
    try:
        import psutil

        return "cpu", round(psutil.virtual_memory().available / GIB, 1)
    except ImportError:  # pragma: no cover - psutil is a pinned dependency
        return "cpu", None


def memory_note(est: MemoryEstimate, tcfg: TrainConfig) -> str | None:
    if est.available_gib is None or est.total_gib <= est.available_gib:
        return None
    hint = "set train.gradient_checkpointing=true, " if not tcfg.gradient_checkpointing else ""
    return (f"estimated peak {est.total_gib:.1f} GiB exceeds the {est.available_gib:.1f} GiB available on "
            f"{est.device}: {hint}lower train.batch_size (raise train.grad_accum to keep the effective batch) "
            "or train.max_seq_len, or use train.peft=qlora on a GPU")
