"""Models under evaluation: resolving a reference, batched greedy generation, answer loss, and the cache.

Generation is greedy with a fixed seed and left padding, so a rerun produces the same answers;
outputs are cached by (model checksum, suite checksum, generation config) and a rerun with an
unchanged model and suite loads no weights at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneforge.errors import EvalError
from tuneforge.workspace import Workspace

# Bump when a change here changes generated text or losses for the same inputs.
GEN_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate, resolved but not loaded."""

    ref: str
    kind: Literal["base", "adapter", "registry"]
    checksum: str  # adapter checksum, or the base weights' sha256
    path: Path  # the adapter directory, or the base model directory
    base_ref: str  # the base model this one was trained from (itself for a base model)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)


def resolve_spec(ref: str, workspace: Workspace, *, where: str = "MODEL") -> ModelSpec:
    """A base model ref, an adapter directory, or a registry reference name@version / name@alias.

    ``where``: the argument that named ``ref``, for errors (the model resolver's own say model.base)."""
    from tuneforge.train._artifacts import read_meta

    local = Path(ref).expanduser()
    if local.is_dir() and (local / "tuneforge.json").is_file():
        return _adapter_spec(ref, local, "adapter")
    if "@" in ref and not local.exists() and not ref.startswith("bundled:"):
        return _adapter_spec(ref, _from_registry(ref, workspace), "registry")
    if local.is_dir() and read_meta(local) is None and not (local / "config.json").is_file():
        raise EvalError(f"'{ref}' is neither an adapter directory (no tuneforge.json) nor a model directory",
                        where="MODEL / --baseline", fix="pass an adapter directory written by `tuneforge train`, "
                        "a base model (bundled:smollm2-135m-instruct, a hub id, a model directory) or name@version")
    from tuneforge.errors import ModelError
    from tuneforge.models import resolve_model

    try:
        resolved = resolve_model(ref, workspace)
    except ModelError as exc:
        raise ModelError(exc.what, where=where, fix=exc.fix) from None
    return ModelSpec(ref, "base", resolved.weights_sha256, resolved.path, ref)


def _from_registry(ref: str, workspace: Workspace) -> Path:
    try:
        from tuneforge import registry
    except ImportError:
        registry = None  # type: ignore[assignment]
    resolver = getattr(registry, "resolve_model_ref", None)
    if resolver is None:
        raise EvalError(f"cannot resolve registry reference '{ref}': the model registry is not available",
                        where="MODEL / --baseline",
                        fix="pass the adapter directory instead (see `tuneforge train` output)")
    return Path(resolver(ref, workspace))


def _adapter_spec(ref: str, directory: Path, kind: Literal["adapter", "registry"]) -> ModelSpec:
    from tuneforge.train._artifacts import read_meta, verify_checksum

    meta = read_meta(directory)
    if meta is None:
        raise EvalError(f"{directory} has no readable tuneforge.json", where=ref,
                        fix="pass a complete adapter directory written by `tuneforge train`")
    if not verify_checksum(directory):
        raise EvalError(f"adapter {directory} does not match its checksum (a file is missing or was changed)",
                        where=ref, fix="re-copy the adapter directory, or retrain it")
    base_ref = (meta.get("base_model") or {}).get("ref") or (meta.get("contract") or {}).get("base_model_ref")
    if not base_ref:
        raise EvalError(f"{directory}/tuneforge.json does not name its base model", where=ref,
                        fix="retrain the adapter with this version of tuneforge")
    return ModelSpec(ref, kind, str(meta["checksum"]), directory.resolve(), str(base_ref), meta)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    stop_ids: list[int]


def load(spec: ModelSpec, workspace: Workspace, dtype: str) -> LoadedModel:
    """Weights and tokenizer; an adapter goes on the base named in its tuneforge.json (the training contract)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models import load_contract, load_model, load_tokenizer, pick_dtype, resolve_model

    torch_dtype = pick_dtype(dtype)
    if spec.kind == "base":
        resolved = resolve_model(spec.ref, workspace)
        tokenizer = load_tokenizer(resolved)
        stops = load_contract(resolved, tokenizer).stop_tokens
        model = load_model(resolved, dtype=torch_dtype)
    else:
        tokenizer = AutoTokenizer.from_pretrained(spec.path)
        stops = list((spec.meta.get("contract") or {}).get("stop_tokens") or [])
        if not (spec.path / "adapter_config.json").is_file():  # a full fine-tune or a merged model
            model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch_dtype)
        else:
            from peft import PeftModel

            base = load_model(resolve_model(spec.base_ref, workspace), dtype=torch_dtype)
            model = PeftModel.from_pretrained(base, spec.path)
    model.eval()
    ids = [tokenizer.convert_tokens_to_ids(t) for t in stops or [tokenizer.eos_token]]
    stop_ids = sorted({i for i in ids if isinstance(i, int) and i >= 0} | (
        {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
    return LoadedModel(model, tokenizer, stop_ids)


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(lm: LoadedModel, conversations: list[list[dict[str, str]]], *, max_new_tokens: int,
             batch_size: int, seed: int) -> list[str]:
    """Greedy answers, batched with left padding; longest prompts first so batches waste little padding."""
    import torch

    tok = lm.tokenizer
    tok.padding_side = "left"
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else lm.stop_ids[0]
    prompts = [render_prompt(tok, c) for c in conversations]
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    replies = [""] * len(prompts)
    stop = set(lm.stop_ids)
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in idx])
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx])
        with torch.inference_mode():
            out = lm.model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                    max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                    eos_token_id=lm.stop_ids, temperature=None, top_p=None, top_k=None)
        for i, seq in zip(idx, out[:, width:].tolist(), strict=True):
            cut = next((k for k, t in enumerate(seq) if t in stop), len(seq))
            replies[i] = tok.decode(seq[:cut], skip_special_tokens=True).strip()
    return replies


def answer_losses(lm: LoadedModel, conversations: list[list[dict[str, str]]], answers: list[str], *,
                  batch_size: int) -> list[tuple[float, int]]:
    """Mean NLL per answer token and the token count: the expected assistant turn given the prompt.

    The answer span is located exactly as training does (render_chat + encode), end-of-turn included.
    """
    import torch

    from tuneforge.data import Rendered, render_chat
    from tuneforge.train._tokenize import encode

    rows: list[tuple[list[int], list[int]]] = []
    for conv, ans in zip(conversations, answers, strict=True):
        rendered = render_chat(lm.tokenizer, [*conv, {"role": "assistant", "content": ans}])
        ids, labels, _ = encode(lm.tokenizer, Rendered(rendered.text, rendered.spans[-1:]))
        rows.append((ids, labels))
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.stop_ids[0]
    out: list[tuple[float, int]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in chunk])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk])
        with torch.inference_mode():
            logits = lm.model(input_ids=input_ids, attention_mask=mask).logits.float()
        targets = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100,
                                                reduction="none")
        counts = (targets != -100).sum(dim=1)
        sums = nll.sum(dim=1)
        for s, c in zip(sums.tolist(), counts.tolist(), strict=True):
            out.append((s / c if c else math.nan, int(c)))
    return out


@dataclass(frozen=True)
class GenerationCache:
    """<workspace>/eval-cache/<key>.json: answers and losses of one model on one suite."""

    root: Path
    enabled: bool = True

    @staticmethod
    def key(model_checksum: str, suite_checksum: str, generation: dict[str, Any]) -> str:
        body = json.dumps({"v": GEN_VERSION, "model": model_checksum, "suite": suite_checksum, "gen": generation},
                          sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.root / f"{key}.json"
        if not self.enabled or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.root / f"{key}.json")
