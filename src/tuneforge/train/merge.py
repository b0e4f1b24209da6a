"""`tuneforge merge`: fold a trained adapter into its base model and prove the result is the same model.

The merge runs in fp32 (the adapter's own forward in fp32 is the reference), the merged weights are
cast to the requested dtype and saved, then the saved directory is loaded back with plain
transformers and its logits are compared with the reference on a few chat prompts rendered through
the adapter's chat template. Only a merge within tolerance is moved to ``out``.

Raises:
    TrainError: not an adapter directory (or a full fine-tune, or already merged), files changed
        since training, an adapter type PEFT cannot merge, or merged logits beyond tolerance.
    ModelError: the base model named in tuneforge.json cannot be resolved or loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TrainError
from tuneforge.train import _artifacts as artifacts
from tuneforge.workspace import Workspace

# Max |logit difference| from the fp32 adapter accepted by default, per saved dtype. fp32 differs
# only by summation order; bf16/fp16 round every weight, base included (8 and 11 mantissa bits).
# Measured on the bundled SmolLM2-135M (LoRA / DoRA, 3 steps): fp32 1.0e-4 / 9.1e-5, bf16 1.8 / 1.06,
# fp16 0.133 / 0.133. The merge itself is always checked in fp32 first (see merge_diff), so the
# looser low-precision bounds only have to catch a save/load that went wrong.
DEFAULT_TOLERANCE = {"float32": 1e-3, "bfloat16": 4.0, "float16": 0.5}
DTYPES = ("auto", "float32", "bfloat16", "float16")

# Fixed conversations the check renders through the chat template; the last turn of each is an
# assistant answer so the comparison covers answer tokens as well as the prompt.
CHECK_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "My order 4411 has not arrived. Can you help?"},
     {"role": "assistant", "content": "Sorry about that! Order 4411 ships tomorrow."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Summarise: the meeting moved to Friday at 10am."},
     {"role": "assistant", "content": "Meeting: Friday, 10am."}],
    [{"role": "user", "content": "Translate 'good morning' to French."},
     {"role": "assistant", "content": "Bonjour."},
     {"role": "user", "content": "And to German?"}],
]


@dataclass(frozen=True)
class MergeResult:
    """A merged model directory and the equivalence check that let it be written."""

    path: Path
    max_abs_diff: float  # the saved model, loaded back with plain transformers, vs the fp32 adapter
    tolerance: float
    merge_diff: float  # the merged weights in fp32, before the cast to ``dtype``, vs the fp32 adapter
    prompts_checked: int
    checksum: str
    dtype: str
    source: Path
    meta: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.merge_diff <= self.fp32_tolerance

    @property
    def fp32_tolerance(self) -> float:
        return self.tolerance if self.dtype == "float32" else DEFAULT_TOLERANCE["float32"]


def merge_adapter(
    adapter_dir: str | Path,
    out: str | Path,
    *,
    workspace: Workspace | None = None,
    dtype: str = "auto",
    tolerance: float | None = None,
) -> MergeResult:
    """Merge the adapter at ``adapter_dir`` into its base and write a full model to ``out``.

    ``dtype``: of the saved weights; auto keeps the base checkpoint's dtype. ``tolerance``: max
    absolute logit difference accepted for the saved model (default by dtype, see DEFAULT_TOLERANCE);
    the merged weights before the cast must also be within the fp32 tolerance.
    """
    import torch
    from peft import PeftModel

    from tuneforge.models import load_model, resolve_model

    source = Path(adapter_dir).resolve()
    target = Path(out).resolve()
    meta = _adapter_meta(source)
    if dtype not in DTYPES:
        raise TrainError(f"unknown dtype {dtype!r}", where="--dtype", fix=f"one of: {', '.join(DTYPES)}")
    _check_target(target, source)
    ws = workspace or Workspace.from_env()
    base = meta["base_model"]
    model_ref = resolve_model(base["ref"], ws, revision=base.get("revision"))
    trained_on = meta.get("contract", {}).get("base_weights_sha256")
    if trained_on and trained_on != model_ref.weights_sha256:
        raise TrainError(
            f"the base model {base['ref']} is not the one the adapter was trained on "
            f"(weights {model_ref.weights_sha256[:12]}, trained on {trained_on[:12]})",
            where=str(model_ref.path),
            fix="restore the original base model weights, or retrain the adapter on this base",
        )
    saved_dtype = _saved_dtype(dtype, model_ref.path)
    limit = DEFAULT_TOLERANCE[saved_dtype] if tolerance is None else float(tolerance)

    tokenizer = _adapter_tokenizer(source, meta["contract"])
    prompts = check_prompts(tokenizer)

    # fp32 throughout the merge: the unmerged adapter in fp32 is the reference the result must match.
    model = PeftModel.from_pretrained(load_model(model_ref, dtype=torch.float32), str(source)).eval()
    reference = model_logits(model, prompts)
    try:
        merged = model.merge_and_unload()
    except (AttributeError, NotImplementedError, ValueError) as exc:
        raise TrainError(f"PEFT cannot merge this {meta.get('peft_type')} adapter: {exc}", where=str(source),
                         fix="serve the adapter unmerged") from None
    merge_diff = max_logit_diff(reference, model_logits(merged, prompts))
    fp32_limit = limit if saved_dtype == "float32" else DEFAULT_TOLERANCE["float32"]
    if not merge_diff <= fp32_limit:  # also refuses NaN
        raise TrainError(
            f"the merged weights (fp32) give logits up to {merge_diff:.3g} away from the adapter's "
            f"(tolerance {fp32_limit:g}); nothing was written",
            where=str(source), fix="check the adapter loads and runs with PEFT; serve it unmerged",
        )
    merged = merged.to(getattr(torch, saved_dtype))
    del model

    staging = target.with_name(f".{target.name}.merge-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        out_meta = artifacts.save(merged, tokenizer, staging, _merged_meta(meta, source, saved_dtype), full=True)
        del merged
        reloaded = _load_plain(staging, saved_dtype)
        diff = max_logit_diff(reference, model_logits(reloaded, prompts))
        del reloaded
        if not diff <= limit:  # also refuses NaN
            raise TrainError(
                f"merged logits differ from the adapter's by up to {diff:.3g} (tolerance {limit:g}); "
                "nothing was written",
                where=str(target),
                fix="merge with --dtype float32, or raise --tolerance if this rounding is acceptable",
            )
        out_meta["merge"] = {**out_meta["merge"], "max_abs_diff": diff, "tolerance": limit, "merge_diff": merge_diff,
                             "prompts_checked": len(prompts), "passed": True}
        # tuneforge.json is not among the checksummed files, so recording the check keeps the checksum valid.
        (staging / artifacts.META).write_text(json.dumps(out_meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return MergeResult(target, diff, limit, merge_diff, len(prompts), out_meta["checksum"], saved_dtype, source,
                       out_meta)


def check_prompts(tokenizer: Any) -> list[list[int]]:
    """Token ids of CHECK_CONVERSATIONS rendered through the tokenizer's chat template."""
    out = []
    for conv in CHECK_CONVERSATIONS:
        text = tokenizer.apply_chat_template(conv, tokenize=False,
                                             add_generation_prompt=conv[-1]["role"] != "assistant")
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def max_logit_diff(a: list[Any], b: list[Any]) -> float:
    """Largest absolute difference between two lists of logit tensors of the same shapes."""
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def model_logits(model: Any, prompts: list[list[int]]) -> list[Any]:
    """Logits of ``model`` on each prompt, one sequence at a time (no padding to get wrong)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu() for ids in prompts]


def _adapter_meta(source: Path) -> dict[str, Any]:
    meta = artifacts.read_meta(source) if source.is_dir() else None
    if meta is None:
        raise TrainError(f"{source} is not a tuneforge adapter directory (no readable tuneforge.json)",
                         where=str(source), fix="pass a directory written by `tuneforge train`")
    kind = meta.get("kind")
    if kind == "full":
        raise TrainError("this is a full fine-tune: it is already a complete model, there is no adapter to merge",
                         where=str(source), fix="load or serve the directory as a base model as it is")
    if kind == "merged":
        raise TrainError("this directory is already a merged model", where=str(source),
                         fix="pass the adapter directory it was merged from")
    if kind != "adapter" or not (source / "adapter_config.json").is_file():
        raise TrainError(f"{source} holds no PEFT adapter (kind {kind!r}, adapter_config.json "
                         f"{'present' if (source / 'adapter_config.json').is_file() else 'missing'})",
                         where=str(source), fix="pass a directory written by `tuneforge train` with a PEFT method")
    if not artifacts.verify_checksum(source):
        raise TrainError("the adapter's files do not match the checksums in its tuneforge.json "
                         "(changed or missing since training)",
                         where=str(source), fix="retrain the adapter, or restore its original files")
    return meta


def _adapter_tokenizer(source: Path, contract: dict[str, Any]) -> Any:
    """The tokenizer saved with the adapter, which must still be the one in its chat contract."""
    from transformers import AutoTokenizer

    from tuneforge.models import tokenizer_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(source)
    if contract.get("tokenizer_sha256") and tokenizer_fingerprint(tokenizer) != contract["tokenizer_sha256"]:
        raise TrainError("the adapter's tokenizer files do not match the tokenizer in its chat contract",
                         where=str(source), fix="retrain the adapter, or restore its original tokenizer files")
    tokenizer.chat_template = contract.get("chat_template") or tokenizer.chat_template
    return tokenizer


def _check_target(target: Path, source: Path) -> None:
    if target == source or source in target.parents:
        raise TrainError("the merged model cannot be written into the adapter directory", where=str(target),
                         fix="choose another --out directory")
    if not target.exists():
        return
    existing = artifacts.read_meta(target) if target.is_dir() else None
    empty = target.is_dir() and not any(target.iterdir())
    if not empty and (existing is None or existing.get("kind") != "merged"):
        raise TrainError(f"{target} exists and is not a merged tuneforge model, so it is not replaced",
                         where="--out", fix="choose a new directory, or delete it first")


def _saved_dtype(dtype: str, base_path: Path) -> str:
    if dtype != "auto":
        return dtype
    try:
        config = json.loads((base_path / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return name if name in DEFAULT_TOLERANCE else "float32"


def _load_plain(directory: Path, dtype: str) -> Any:
    """The merged model as any consumer would load it: plain transformers, no PEFT."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype))


def _merged_meta(meta: dict[str, Any], source: Path, dtype: str) -> dict[str, Any]:
    return {
        "kind": "merged",
        "name": f"{meta.get('name', source.name)}-merged",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": meta["base_model"],
        "contract": meta["contract"],
        "source_adapter": {"path": str(source), "checksum": meta.get("checksum"), "name": meta.get("name"),
                           "run_key": meta.get("run_key"), "peft_type": meta.get("peft_type")},
        "dataset": meta.get("dataset"),
        "config": meta.get("config"),
        "metrics": meta.get("metrics", {}),
        "serving": {"vllm_lora": False, "reason": "merged model: serve it as a base model, not an adapter"},
        "versions": artifacts.versions(),
        "merge": {"dtype": dtype, "passed": False},
    }
