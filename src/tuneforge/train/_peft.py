"""Which weights train: PEFT configs for LoRA / DoRA / QLoRA / passthrough, hardware checks, loading.

Everything here maps `train.*` keys onto PEFT's and transformers' own classes; nothing re-implements
an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneforge.errors import TrainError

if TYPE_CHECKING:
    from tuneforge.config import TrainConfig
    from tuneforge.models import ResolvedModel


@dataclass(frozen=True)
class Attention:
    """The attention implementation to train with, and whether it packs examples into shared rows."""

    implementation: str | None  # from_pretrained's attn_implementation; None: transformers' default (sdpa)
    varlen: bool  # variable-length kernels: examples share a row and never attend to each other
    reason: str

    def loaded_for(self, packing: str) -> str | None:
        """What the model is loaded with: flash-attn serves every batch, ours packed rows only."""
        if packing == "padding_free" or self.implementation == "flash_attention_2":
            return self.implementation
        return None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def precision(tcfg: TrainConfig) -> str:
    """bf16 or fp32: the autocast dtype of the run."""
    import torch

    if tcfg.precision != "auto":
        return tcfg.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (x86 with AVX-512, ARM with BF16). Elsewhere bf16
    autocast falls back to slow reference kernels, so fp32 is the faster choice."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def ignore_checkpointing_deprecation() -> None:
    """Inside ``warnings.catch_warnings()``: PEFT and TRL read transformers' deprecated name of the
    gradient-checkpointing flag, a FutureWarning no user can act on."""
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def check_hardware(tcfg: TrainConfig) -> None:
    if tcfg.peft != "qlora":
        return
    if not cuda_available():
        raise TrainError(
            "QLoRA needs a CUDA GPU with bitsandbytes (4-bit weights); this machine has no CUDA device",
            where="train.peft=qlora",
            fix="use train.peft=lora here (same adapter format, base kept in bf16), or run on a CUDA GPU",
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError(
            "QLoRA needs the bitsandbytes package, which is not installed",
            where="train.peft=qlora",
            fix="pip install 'tuneforge[gpu]' (bitsandbytes, CUDA only), or use train.peft=lora",
        )


def optimizer(tcfg: TrainConfig, cuda: bool) -> str:
    """transformers' `optim` name: 8-bit AdamW where it exists (CUDA + bitsandbytes), else torch AdamW."""
    import importlib.util

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if tcfg.optimizer == "adamw_8bit":
        if not (cuda and has_bnb):
            raise TrainError(
                "8-bit AdamW needs a CUDA GPU and the bitsandbytes package",
                where="train.optimizer=adamw_8bit",
                fix="use train.optimizer=auto (8-bit only where available) or adamw",
            )
        return "adamw_bnb_8bit"
    if tcfg.optimizer == "auto" and cuda and has_bnb:
        return "adamw_bnb_8bit"
    return "adamw_torch"


# report_to name -> the packages transformers can use for it (any one will do). MLflow is built in.
_TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",),
             "comet_ml": ("comet_ml",), "clearml": ("clearml",), "swanlab": ("swanlab",)}


def check_trackers(report_to: list[str]) -> None:
    import importlib.util

    for name in report_to:
        packages = _TRACKERS.get(name)
        if packages is None:
            raise TrainError(f"unknown tracker {name!r}", where="train.report_to",
                             fix=f"use any of: {', '.join(_TRACKERS)} (MLflow is built in: tracking.enabled)")
        if all(importlib.util.find_spec(p) is None for p in packages):
            raise TrainError(f"train.report_to names {name}, but no {' or '.join(packages)} package is installed",
                             where="train.report_to",
                             fix=f"pip install {packages[-1]}, or remove {name} from train.report_to")


def build_peft_config(tcfg: TrainConfig) -> Any:
    """The PEFT config object for ``tcfg``, or None for full fine-tuning."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_config

    if tcfg.peft == "full":
        return None
    if tcfg.peft in ("lora", "dora", "qlora"):
        lo = tcfg.lora
        config = PeftLora(
            r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
            use_dora=tcfg.peft == "dora", bias="none", task_type="CAUSAL_LM",
        )
    else:
        raw = dict(tcfg.peft_config or {})
        raw.setdefault("task_type", "CAUSAL_LM")
        ptype = str(raw.get("peft_type", "")).upper()
        raw["peft_type"] = ptype
        try:
            config = get_peft_config(raw)
        except KeyError:
            from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

            raise TrainError(
                f"unknown PEFT method {ptype or '(none)'!r}",
                where="train.peft_config.peft_type",
                fix=f"one of: {', '.join(sorted(getattr(k, 'value', str(k)) for k in PEFT_TYPE_TO_CONFIG_MAPPING))}",
            ) from None
        except (TypeError, ValueError) as exc:
            raise TrainError(
                f"PEFT rejected train.peft_config: {exc}",
                where="train.peft_config",
                fix="use the keyword arguments of the PEFT config class named by peft_type",
            ) from None
    _check_servable(config, tcfg)
    return config


def _check_servable(config: Any, tcfg: TrainConfig) -> None:
    ranks = [getattr(config, "r", None)] + list((getattr(config, "rank_pattern", None) or {}).values())
    top = max((r for r in ranks if isinstance(r, int)), default=None)
    if top is not None and top > tcfg.max_serving_rank:
        raise TrainError(
            f"adapter rank {top} exceeds train.max_serving_rank={tcfg.max_serving_rank}, so it could not be served",
            where="train.peft_config" if tcfg.peft == "passthrough" else "train.lora.r",
            fix="lower the rank, or raise train.max_serving_rank to the server's --max-lora-rank",
        )
    if getattr(config, "modules_to_save", None):
        raise TrainError(
            f"modules_to_save={config.modules_to_save} trains full copies of those modules, which vLLM "
            "rejects when loading the adapter",
            where="train.peft_config.modules_to_save",
            fix="remove modules_to_save (target those modules with adapters instead)",
        )


def peft_type(config: Any) -> str:
    """LORA, IA3, ... (FULL for full fine-tuning)."""
    if config is None:
        return "FULL"
    value = getattr(config, "peft_type", "")
    return str(getattr(value, "value", value))


def serving(tcfg: TrainConfig, config: Any) -> dict[str, Any]:
    """Whether vLLM's multi-LoRA serving can load the result, with the reason when not."""
    if config is None:
        return {"vllm_lora": False, "reason": "full fine-tune: serve it as a base model, not an adapter"}
    ptype = peft_type(config)
    if ptype != "LORA":
        return {"vllm_lora": False, "reason": f"vLLM serves LoRA adapters only, not {ptype}"}
    if getattr(config, "use_dora", False):
        return {"vllm_lora": False, "reason": "vLLM does not serve DoRA adapters; merge it into the base"}
    return {"vllm_lora": True, "reason": ""}


def _dtype_for(tcfg: TrainConfig, model_dtype: str, prec: str) -> Any:
    import torch

    if model_dtype != "auto":
        return getattr(torch, model_dtype)
    if tcfg.peft == "full":
        return torch.float32  # trained weights stay fp32; bf16 autocast does the compute
    return torch.bfloat16 if prec == "bf16" else torch.float32


def attention_for(model_config: Any) -> Attention:
    """Variable-length attention where a kernel for it runs here: flash-attn's, else PyTorch's own
    (`_varlen`, checked on this GPU first). On CPU none is used: there the per-example path packed
    4 x 2,048-token rows at 260 useful tok/s against 404 for length-grouped padded batches (bundled
    model, benchmarks/bench_train.py), since larger micro-batches buy nothing on 2 cores."""
    import importlib.util

    from tuneforge.train import _varlen

    if not cuda_available():
        return Attention(None, False, "CPU: length-grouped batches (padding-free packing measured 1.55x slower "
                         "here; it pays on GPUs, with a variable-length attention kernel)")
    if importlib.util.find_spec("flash_attn") is not None:
        return Attention("flash_attention_2", True, "flash_attention_2 has variable-length kernels: "
                         "examples share a row, never attention")
    problem = _varlen.supports(model_config) or _varlen.cuda_problem()
    if problem is None:
        return Attention(_varlen.register(), True, "PyTorch's variable-length flash kernel "
                         "(torch.nn.attention.varlen): examples share a row, never attention")
    return Attention(None, False, f"no variable-length attention kernel ({problem}); batches are grouped by "
                     "length instead")


def load_for_training(model: ResolvedModel, tcfg: TrainConfig, model_dtype: str, prec: str,
                      attn_implementation: str | None = None) -> Any:
    """The base model, loaded as the method needs it (4-bit for QLoRA), not yet wrapped by PEFT."""
    import torch

    from tuneforge.models import load_model
    from tuneforge.train import _varlen

    kwargs: dict[str, Any] = {"dtype": _dtype_for(tcfg, model_dtype, prec)}
    # flash-attn refuses fp32 weights at load time; ours takes the autocast dtype at each call.
    if attn_implementation == _varlen.NAME or (
            attn_implementation and kwargs["dtype"] in (torch.bfloat16, torch.float16)):
        kwargs["attn_implementation"] = attn_implementation
    if tcfg.peft == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["dtype"] = torch.bfloat16
    # QLoRA skips PEFT's prepare_model_for_kbit_training on purpose: it casts every 16-bit weight that
    # is not 4-bit to fp32, i.e. the embeddings and the LM head (Llama-3.1-8B: 1.05B parameters, +2.1 GB)
    # and the norms, which then carry an fp32 residual stream through every layer (twice the activation
    # memory). RMSNorm already computes in fp32; the base is frozen by PEFT, and TRL enables input
    # gradients for gradient checkpointing. What remains is the bf16 LoRA path with 4-bit linear layers.
    return load_model(model, **kwargs)
