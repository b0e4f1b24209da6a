"""The schema of tuneforge.yaml: load, override with --set, validate.

Every section is a pydantic model with ``extra="forbid"`` so a misspelt key is an error that names
its key path, the file line it came from and the closest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneforge.errors import ConfigError

DEFAULT_BASE_MODEL = "bundled:smollm2-135m-instruct"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    base: str = Field(
        DEFAULT_BASE_MODEL,
        description="Base model: a hub id (org/name), a local directory with config.json, or "
        "bundled:smollm2-135m-instruct (ships as a package; runs on CPU). Every stage resolves it "
        "the same way, and its tokenizer and chat template feed the data fingerprint.",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) for a hub id; ignored otherwise."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype when loading. auto: bf16 where supported, else fp32."
    )


DataFormat = Literal["auto", "alpaca", "chat", "sharegpt", "prompt_completion", "text", "preference"]


class InputSpec(_Section):
    path: str = Field(description="A JSONL, JSON (array), CSV or Parquet file.")
    format: DataFormat = Field(
        "auto", description="Row format; auto detects it from the first rows' keys."
    )


class DedupConfig(_Section):
    exact: bool = Field(True, description="Drop rows whose normalised content is identical.")
    near: bool = Field(True, description="Drop near-duplicates found with MinHash LSH.")
    threshold: float = Field(
        0.8, gt=0.0, le=1.0,
        description="Estimated Jaccard similarity above which two rows are near-duplicates. "
        "0.8 catches re-phrasings that differ by a few words without merging distinct tickets.",
    )
    num_perm: int = Field(
        128, ge=16, le=1024,
        description="MinHash permutations. More is more accurate and slower (linear).",
    )
    shingle_size: int = Field(
        3, ge=1, le=32,
        description="Words per shingle. Smaller values see more rows as similar. On the quickstart "
        "tickets (60 injected duplicates, 1,116 distinct tickets) 3 caught 54 and 5 caught 47, "
        "both with no false positive: one changed word breaks `shingle_size` shingles, which in "
        "a short ticket is enough to fall under the threshold.",
    )


PiiEntity = Literal[
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN", "URL"
]
ALL_PII_ENTITIES: list[str] = list(PiiEntity.__args__)  # type: ignore[attr-defined]


class PiiConfig(_Section):
    mode: Literal["redact", "drop", "flag", "off"] = Field(
        "redact",
        description="redact: replace each finding with a <TYPE> placeholder (default, keeps the "
        "row); drop: reject rows with any finding; flag: keep and count; off: no scan.",
    )
    entities: list[PiiEntity] = Field(
        default_factory=lambda: list(ALL_PII_ENTITIES),
        description="Which pattern recognizers run (presidio-analyzer; no spaCy model needed).",
    )
    score_threshold: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Minimum recognizer confidence. Phone numbers score 0.4 without context "
        "words, so lower this to catch bare numbers at the cost of false positives.",
    )


class DecontamConfig(_Section):
    eval_sets: list[str] = Field(
        default_factory=list,
        description="Eval/golden files (any input format). Rows sharing an n-gram with any of "
        "their items are rejected, so evaluation numbers are not inflated by leakage.",
    )
    ngram: int = Field(13, ge=3, le=64, description="Words per n-gram (13 as in GPT-3's study).")


class MixConfig(_Section):
    path: str | None = Field(
        None, description="General-purpose data mixed in to limit catastrophic forgetting."
    )
    format: DataFormat = Field("auto", description="Format of the general-purpose file.")
    ratio: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of the final dataset drawn from `path` (0.15 = 15%). Rows are chosen "
        "by a seeded hash, so the choice is stable.",
    )


class SplitConfig(_Section):
    train: float = Field(0.8, ge=0.0, le=1.0)
    val: float = Field(0.1, ge=0.0, le=1.0)
    test: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = Field(
        0,
        description="Salt of the per-row hash that assigns splits. A row's split depends only on "
        "its content and this seed, so adding rows never moves existing ones.",
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1.0, got {total:g}")
        return self


class DataConfig(_Section):
    inputs: list[InputSpec] = Field(
        default_factory=list,
        description="Input files; paths given on the command line are used instead when present.",
    )
    format: DataFormat = Field("auto", description="Default format for inputs without one.")
    max_tokens: int = Field(
        2048, ge=8,
        description="Rows whose rendered training text (chat template applied) has more tokens "
        "are rejected; match it to train.max_seq_len.",
    )
    system_prompt: str | None = Field(
        None, description="Added as the system turn to chat rows that have none."
    )
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    decontaminate: DecontamConfig = Field(default_factory=DecontamConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    chunk_size: int = Field(
        2000, ge=1, description="Rows processed per batch; bounds memory independently of input size."
    )
    workers: int = Field(
        0, ge=0, description="Worker processes for per-row work; 0 = one per CPU core."
    )


class LoraConfig(_Section):
    r: int = Field(
        16, ge=1,
        description="Adapter rank. 16 fits most single-task fine-tunes; more adds capacity and memory "
        "linearly. Must be <= train.max_serving_rank so the adapter can be served (vLLM --max-lora-rank).",
    )
    alpha: int = Field(
        32, ge=1,
        description="LoRA scaling numerator (the update is scaled by alpha/r). 2*r is the common choice; "
        "change it together with r to keep the effective step size.",
    )
    dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input; 0.05 regularises small datasets."
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules that get adapters: all-linear (every linear projection of the attention and "
        "MLP blocks, never the output head) or a list of module names such as [q_proj, v_proj].",
    )


class TrainConfig(_Section):
    name: str | None = Field(
        None,
        description="Adapter name; the output directory is <workspace>/adapters/<name>-<short hash>. "
        "Default: <base model>-<method>-<peft>.",
    )
    data: str | None = Field(
        None,
        description="A prepared dataset directory (output of `tuneforge data prepare`). Default: the "
        "workspace's latest prepared dataset. A --data flag wins over this key.",
    )
    method: Literal["sft", "dpo", "cpt"] = Field(
        "sft",
        description="sft: supervised fine-tuning on chat rows, loss on every assistant turn including its "
        "end-of-turn token. dpo: direct preference optimisation on preference rows (the frozen base is "
        "the reference; see train.beta). cpt: continued pre-training on text rows, loss on every token. "
        "Rows of other kinds are skipped and counted.",
    )
    beta: float = Field(
        0.1, gt=0.0,
        description="DPO only: how far the policy may move from the reference. 0.1 as in the DPO paper; "
        "lower values let it drift further.",
    )
    peft: Literal["lora", "dora", "qlora", "full", "passthrough"] = Field(
        "lora",
        description="lora: low-rank adapters (train.lora). dora: LoRA with weight decomposition (better at "
        "low rank, ~2x slower; vLLM cannot serve DoRA). qlora: LoRA on a 4-bit base (CUDA + bitsandbytes "
        "only). full: every weight is trained (memory ~16 bytes/parameter). passthrough: train.peft_config "
        "is handed to PEFT unchanged.",
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig,
        description="Adapter shape for peft=lora, dora and qlora (ignored by full and passthrough).",
    )
    peft_config: dict[str, Any] | None = Field(
        None,
        description="With peft=passthrough: keyword arguments of a PEFT config class, selected by its "
        "peft_type (e.g. {peft_type: IA3, target_modules: [k_proj, v_proj, down_proj], "
        "feedforward_modules: [down_proj]}). task_type defaults to CAUSAL_LM.",
    )
    max_serving_rank: int = Field(
        64, ge=1,
        description="Highest adapter rank the serving engine accepts (vLLM --max-lora-rank). Checked "
        "before training so an adapter that cannot be served is never trained.",
    )
    epochs: int = Field(
        1, ge=1, description="Passes over the training split. Ignored when max_steps is set."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Optimizer steps to run; overrides epochs (useful for smoke runs)."
    )
    seed: int = Field(
        0,
        description="Seeds adapter initialisation, data order and dropout. Same seed + same data + same "
        "config gives the same adapter on the same hardware.",
    )
    lr: float = Field(
        2e-4, gt=0.0,
        description="Peak learning rate. 2e-4 suits LoRA; full fine-tuning usually wants ~1e-5.",
    )
    batch_size: int = Field(
        4, ge=1,
        description="Micro-batch: sequences per forward pass (per device). Memory grows linearly with it; "
        "the effective batch is batch_size * grad_accum * devices.",
    )
    grad_accum: int = Field(
        1, ge=1,
        description="Micro-batches accumulated per optimizer step. Raises the effective batch without the "
        "memory; loss is normalised by trained tokens across the accumulation.",
    )
    max_seq_len: int = Field(
        2048, ge=8,
        description="Longest training sequence in tokens. A row longer than this is a preflight error (never "
        "truncated, which would cut the answer); keep data.max_tokens <= this.",
    )
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0,
        description="Share of the optimizer steps spent ramping the learning rate up from 0.",
    )
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after warmup."
    )
    weight_decay: float = Field(
        0.0, ge=0.0, description="AdamW weight decay. 0 is usual for LoRA; 0.01-0.1 for full fine-tuning."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: ~30% slower, activation memory drops from "
        "every layer to about one layer. Turn on when the dry-run estimate does not fit.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Compute precision. auto: bf16 autocast where supported (CPUs, Ampere+ GPUs), else fp32. "
        "Trainable weights and optimizer state stay fp32 either way.",
    )
    packing: bool = Field(
        True,
        description="Pack examples to cut padding. Padding-free packing (examples concatenated, positions "
        "restarting per example, no attention across examples) is used with a flash-attention varlen "
        "kernel; with sdpa/eager attention (CPU) it needs a quadratic mask over the whole micro-batch, so "
        "length-grouped batching is used instead. The choice is recorded in tuneforge.json.",
    )
    save_every_steps: int | None = Field(
        100, ge=1,
        description="Write a resumable checkpoint every N optimizer steps (atomically; None = only at "
        "the end). Checkpoints are deleted when the run completes.",
    )
    keep_checkpoints: int = Field(
        3, ge=1, description="Checkpoints kept on disk during a run; older ones are deleted."
    )
    eval_every_steps: int | None = Field(
        None, ge=1,
        description="Compute val loss every N steps (None = only at the end). Needed by "
        "early_stopping_patience.",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1,
        description="Stop after this many evaluations without a val-loss improvement (None = off). "
        "Requires eval_every_steps.",
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="Trackers for metrics, as transformers' report_to: mlflow, tensorboard, wandb. Each "
        "must be installed. Empty: none.",
    )
    price_per_device_hour: dict[str, float] = Field(
        default_factory=lambda: {"cpu": 0.0},
        description="Price of one device-hour by accelerator kind (cpu, or a substring of the GPU name "
        "such as h100), used to report the cost of a run.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        problems = []
        if self.peft in ("lora", "dora", "qlora") and self.lora.r > self.max_serving_rank:
            problems.append(
                f"train.lora.r={self.lora.r} exceeds train.max_serving_rank={self.max_serving_rank}, so the "
                "adapter could not be served; lower train.lora.r or raise train.max_serving_rank to match "
                "the server's --max-lora-rank"
            )
        if self.peft == "passthrough" and not self.peft_config:
            problems.append("train.peft=passthrough needs train.peft_config (a PEFT config with peft_type)")
        if self.peft_config and self.peft != "passthrough":
            problems.append(f"train.peft_config is only used with train.peft=passthrough (got {self.peft})")
        if self.peft_config:
            rank = self.peft_config.get("r")
            if isinstance(rank, int) and rank > self.max_serving_rank:
                problems.append(
                    f"train.peft_config.r={rank} exceeds train.max_serving_rank={self.max_serving_rank}"
                )
        if self.early_stopping_patience is not None and self.eval_every_steps is None:
            problems.append("train.early_stopping_patience needs train.eval_every_steps")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrackingConfig(_Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI (e.g. http://mlflow:5000). Unset: $MLFLOW_TRACKING_URI, else an "
        "embedded SQLite store in the workspace (<workspace>/mlflow.db, artifacts in <workspace>/mlartifacts).",
    )
    experiment: str = Field("tuneforge", description="MLflow experiment that training runs are logged to.")
    enabled: bool = Field(True, description="Log training runs to MLflow. false: no tracking at all.")


class TuneforgeConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# ---------------------------------------------------------------------------------------------
# loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TuneforgeConfig:
    """Read ``path`` (optional), apply ``key.path=value`` overrides, validate everything at once."""
    raw: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"config file {p} does not exist"], source=str(p))
        text = p.read_text()
        source = str(p)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source=source) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(["the top level must be a mapping of sections"], source=source)
        raw = loaded
        lines = _key_lines(text)
    problems: list[str] = []
    for item in overrides or []:
        try:
            _apply_override(raw, item)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems, source=source)
    try:
        return TuneforgeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, lines), source=source) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item or item.startswith("-"):
        raise ValueError(f"--set {item!r}: expected section.key=value, e.g. --set data.max_tokens=1024")
    key, _, value = item.partition("=")
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise ValueError(f"--set {item!r}: empty key")
    node = raw
    for k in parts[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {item!r}: {k} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = value


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    out: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = (*prefix, str(k.value))
                out[path] = k.start_mark.line + 1
                walk(v, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[(*prefix, str(i))] = v.start_mark.line + 1
                walk(v, (*prefix, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out
    if root is not None:
        walk(root, ())
    return out


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section that contains ``loc`` (for did-you-mean suggestions)."""
    model: Any = TuneforgeConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            ann = inner[0]
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(getattr(model, "model_fields", {}))


def _describe(exc: ValidationError, source: str, lines: dict[tuple[str, ...], int]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = lines.get(tuple(str(p) for p in loc))
        where = f"{source}:{line}: " if line else ""
        if err["type"] == "extra_forbidden":
            valid = _fields_at(loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
            allowed = f"valid keys here: {', '.join(valid)}" if valid else ""
            problems.append(f"{where}unknown key '{key}'. " + (hint or allowed))
        else:
            problems.append(f"{where}{key}: {err['msg']} (got {err.get('input')!r})")
    return problems


def config_to_yaml(cfg: TuneforgeConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
