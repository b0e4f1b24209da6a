"""The schema of tuneforge.yaml: load, override with --set, validate.

Every section is a pydantic model with ``extra="forbid"`` so a misspelt key is an error that names
its key path, the file line it came from and the closest valid key.
"""

from __future__ import annotations

import difflib
import io
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class DistributedConfig(_Section):
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How a multi-process run (tuneforge train --launcher torchrun|accelerate --nproc N) splits "
        "the work. ddp: every process holds the whole model and trains on its share of each batch "
        "(CPU with gloo, or CUDA with nccl). fsdp: weights, gradients and optimizer state are sharded "
        "over the GPUs (transformers' FSDP2; CUDA only). Ignored in a single process.",
    )
    fsdp_sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = Field(
        "full_shard",
        description="FSDP only: full_shard shards everything (least memory); shard_grad_op keeps weights "
        "gathered after the forward (faster, more memory); hybrid_shard shards within a node and "
        "replicates across nodes. Decoder layers are wrapped automatically.",
    )
    fsdp_offload: bool = Field(False, description="FSDP only: keep sharded parameters in CPU memory.")
    fsdp_config: dict[str, Any] = Field(
        default_factory=dict,
        description="FSDP only: extra keys passed unchanged to transformers' fsdp_config (e.g. "
        "{activation_checkpointing: true, cpu_ram_efficient_loading: true}); version defaults to 2.",
    )
    find_unused_parameters: bool = Field(
        False,
        description="DDP only: search for parameters without a gradient every step. LoRA on all linear "
        "layers uses every adapter weight, so off; turn on if DDP reports unused parameters.",
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Process-group backend. auto: nccl on CUDA, gloo on CPU."
    )
    timeout_s: int = Field(
        1800, ge=1, description="Seconds a collective may wait for a slow rank before the run fails."
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
    optimizer: Literal["auto", "adamw", "adamw_8bit"] = Field(
        "auto",
        description="auto: 8-bit AdamW (bitsandbytes) on CUDA when bitsandbytes is installed, else AdamW. "
        "adamw_8bit keeps the optimizer state in 8 bits (~75% less optimizer memory); it needs CUDA.",
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
        description="Pack examples to cut padding. On CUDA: padding-free packing (examples concatenated into "
        "rows of max_seq_len, positions restarting per example, no attention across examples) with a "
        "variable-length attention kernel (flash-attn's, else PyTorch's own). On CPU, and where no such "
        "kernel runs, length-grouped batches, which measured faster on CPU. The choice is recorded in "
        "tuneforge.json.",
    )
    kernels: Literal["auto", "liger", "none"] = Field(
        "auto",
        description="Fused layer kernels. auto: Liger's Triton kernels for RMSNorm, SwiGLU and RoPE on CUDA "
        "when liger-kernel is installed (pip install 'tuneforge[gpu]') and knows the architecture, else the "
        "model's own layers. liger: require them (an error where they cannot run). none: never. The choice "
        "is recorded in tuneforge.json.",
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
        description="Extra trackers for metrics, as transformers' report_to: tensorboard, wandb. Each "
        "must be installed. Empty: none. MLflow is built in (see tracking.enabled), so mlflow is refused here.",
    )
    oom_retries: int = Field(
        3, ge=0,
        description="On CUDA out-of-memory, halve batch_size and double grad_accum (same effective batch) "
        "and retry from the last checkpoint, at most this many times. 0: fail at the first OOM.",
    )
    price_per_device_hour: dict[str, float] = Field(
        default_factory=lambda: {"cpu": 0.0},
        description="Price of one device-hour by accelerator kind: cpu, a word of the GPU's name such as "
        "h100 or a100 (the longest match wins), or cuda for any other GPU. Cost = wall time × processes × price.",
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Multi-process training (DDP or FSDP) when started with --launcher torchrun|accelerate.",
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
        if "mlflow" in self.report_to:
            problems.append("train.report_to=mlflow: MLflow tracking is built in; remove mlflow from "
                            "train.report_to and keep tracking.enabled=true (the default)")
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


class ServeKeyConfig(_Section):
    id: str = Field(description="Name of the key; the request log records it instead of the key.")
    sha256: str = Field(
        description="sha256 hex digest of the key (`tuneforge serve hash-key` prints one); the key itself "
        "is never stored.",
        pattern=r"^[0-9a-f]{64}$",
    )
    scopes: list[Literal["inference", "admin"]] = Field(
        default_factory=lambda: ["inference"],
        description="inference: the /v1 endpoints; admin: also the /admin endpoints (traffic policies).",
    )
    requests_per_minute: int | None = Field(None, ge=1, description="Per-key request limit (None = none).")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Per-key limit on prompt + completion tokens (None = none)."
    )


class ServeRouteConfig(_Section):
    weights: dict[str, float] = Field(
        default_factory=lambda: {"production": 100.0},
        description="Traffic split of requests for the bare model NAME over its aliases or versions, "
        "e.g. {production: 90, canary: 10} (weights are normalised).",
    )
    shadow: dict[str, float] = Field(
        default_factory=dict,
        description="Percent of traffic mirrored to a candidate (alias or version); the mirrored "
        "response is discarded and both are logged, e.g. {candidate: 5}.",
    )
    sticky: bool = Field(
        True,
        description="Assign by consistent hashing of the request's user field (or x-tuneforge-user "
        "header) so a user keeps their variant while weights change slightly.",
    )


class ServeLogConfig(_Section):
    enabled: bool = Field(True, description="Record every request in <workspace>/serve/requests.db.")
    max_rows: int = Field(
        100_000, ge=10, description="Rows kept; the oldest are deleted beyond this (rotating log)."
    )
    store_text: bool = Field(True, description="Store prompts and responses (false: metadata only).")
    redact_pii: bool = Field(
        False, description="Redact PII (data.pii entities) from stored prompts and responses."
    )


class ServeVllmConfig(_Section):
    python: str | None = Field(
        None,
        description="Python executable of the environment vLLM is installed in (it may live in its own). "
        "Default: $TUNEFORGE_VLLM_PYTHON, else .venv-vllm/bin/python (`make vllm-env`) in the current "
        "directory or the tuneforge checkout.",
    )
    port: int = Field(0, ge=0, le=65535, description="Port of the vLLM server on 127.0.0.1 (0 = a free one).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="vLLM --dtype (bfloat16 suits both CPU and GPU)."
    )
    max_model_len: int = Field(
        2048, ge=16, description="Context length vLLM reserves for (--max-model-len); the served context."
    )
    max_num_seqs: int = Field(16, ge=1, description="Sequences vLLM decodes together (--max-num-seqs).")
    max_loras: int = Field(4, ge=1, description="Adapters usable in one batch (--max-loras).")
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        64, description="Highest adapter rank accepted (--max-lora-rank; vLLM allows only these values); "
        "keep it at least train.max_serving_rank.",
    )
    kv_cache_gib: int = Field(
        2, ge=1, description="CPU build: GiB of memory for the KV cache (VLLM_CPU_KVCACHE_SPACE)."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="More vLLM server arguments, e.g. [--enforce-eager] or [--gpu-memory-utilization, '0.8'].",
    )
    startup_timeout_s: float = Field(
        600.0, gt=0, description="How long vLLM may take to load and answer /health before start fails."
    )
    health_interval_s: float = Field(
        1.0, gt=0, description="How often the vLLM process is checked; a dead one is restarted."
    )
    restart_limit: int = Field(
        3, ge=0, description="Restarts allowed within 10 minutes; past that the engine stays down (503)."
    )


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Bind address. With auth off it is forced to 127.0.0.1.")
    port: int = Field(8000, ge=0, le=65535, description="Port (0 = any free port).")
    engine: Literal["local", "vllm"] = Field(
        "local", description="local: transformers + PEFT in-process (CPU or GPU); vllm: a vLLM engine."
    )
    models: list[str] = Field(
        default_factory=list,
        description="Registered model names to serve. Empty: every registered model.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Extra adapter directories served without the registry: NAME -> path "
        "(served as NAME@1).",
    )
    auth: bool = Field(
        True,
        description="Require an API key (Authorization: Bearer). Keys: serve.keys, $TUNEFORGE_API_KEY "
        "(inference) and $TUNEFORGE_ADMIN_KEY (admin).",
    )
    keys: list[ServeKeyConfig] = Field(default_factory=list, description="API keys, stored hashed.")
    requests_per_minute: int | None = Field(
        None, ge=1, description="Default per-key request limit for keys without their own."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Default per-key token limit for keys without their own."
    )
    routes: dict[str, ServeRouteConfig] = Field(
        default_factory=dict,
        description="Traffic policy per registered model. Default: the production alias, else the "
        "latest version. `tuneforge serve route` changes it at runtime and persists it.",
    )
    max_concurrent_requests: int = Field(
        64, ge=1, description="Requests in flight at once; more are refused with 503 (overloaded)."
    )
    max_batch: int = Field(
        32, ge=1, description="local engine: sequences decoded together in one step (continuous batching)."
    )
    max_loaded_adapters: int = Field(
        8, ge=1, description="local engine: adapters resident at once; the least recently used idle one is "
        "unloaded to make room.",
    )
    registry_poll_s: float = Field(
        5.0, gt=0, description="How often registry aliases are re-read, so alias moves need no restart."
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long in-flight requests may take to finish."
    )
    price_per_1k_prompt_tokens: float = Field(
        0.0, ge=0, description="Price used for the request log's estimated cost."
    )
    price_per_1k_completion_tokens: float = Field(
        0.0, ge=0, description="Price used for the request log's estimated cost."
    )
    request_log: ServeLogConfig = Field(default_factory=ServeLogConfig)
    vllm: ServeVllmConfig = Field(default_factory=ServeVllmConfig)


class EvalSuiteSpec(_Section):
    # `schema` is a BaseModel attribute, so the field is stored as schema_path under the alias `schema`.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    name: str = Field(description="Suite name used in reports and gates (suite.metric).")
    path: str = Field(
        description="A JSONL golden set (messages or prompt, expected, optional category/format/schema), a "
        "chat JSONL whose last assistant turn is the reference, or a prepared dataset directory (its "
        "test split is used).",
    )
    schema_path: str | None = Field(
        None, alias="schema",
        description="JSON Schema file for the expected answers (items may name their own with `schema`).",
    )
    kind: Literal["golden", "general"] = Field(
        "golden",
        description="golden: task metrics on the expected answers. general: the forgetting check; the base "
        "model's answers are generated once, stored, and the candidate's similarity to them is compared "
        "with the base's.",
    )


class JudgeConfig(_Section):
    url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1); "
        "{url}/chat/completions is called. Unset: judge metrics are skipped and the report says so.",
    )
    model: str | None = Field(None, description="Judge model name sent in each request.")
    api_key_env: str | None = Field(
        "TUNEFORGE_JUDGE_API_KEY",
        description="Environment variable holding the judge API key (sent as a Bearer token when set).",
    )
    max_items: int | None = Field(
        50, ge=1, description="Items of the primary suite sent to the judge (None = all); bounds cost.",
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")


class EvalConfig(_Section):
    suites: list[EvalSuiteSpec] = Field(
        default_factory=list,
        description="Evaluation suites; --suite selects some by name or adds a path. The first golden "
        "suite is the primary one that unqualified gate metrics refer to.",
    )
    baselines: list[str] = Field(
        default_factory=list,
        description="Models compared with the candidate (base refs, adapter dirs, name@version); "
        "--baseline adds to these. The first is the `baseline` of gates and the judge's opponent.",
    )
    max_new_tokens: int = Field(128, ge=1, description="Generation length limit per answer.")
    batch_size: int = Field(16, ge=1, description="Prompts generated together (left-padded, greedy).")
    seed: int = Field(0, description="Seed for generation and the bootstrap, so reruns match.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Weights dtype for evaluation. auto: bf16 where supported (CPUs, Ampere+ GPUs; ~2x faster "
        "than fp32 on CPU), else fp32. Part of the cache key, so changing it regenerates answers.",
    )
    bootstrap_resamples: int = Field(1000, ge=100, description="Bootstrap resamples for every CI.")
    json_fields: list[str] | None = Field(
        None,
        description="Fields of JSON answers counted by field_accuracy (None = every field of the "
        "expected object); free-text fields such as a summary are better left to rouge_l.",
    )
    gates: list[str] = Field(
        default_factory=list,
        description="Checks like 'json_valid >= 0.95', 'field_accuracy >= baseline + 0.20', "
        "'forgetting_similarity_drop <= 0.05', 'judge_win_rate >= 0.5'. Any failure: exit code 1.",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    samples: int = Field(5, ge=0, description="Side-by-side samples (candidate vs baseline differ) in eval.html.")
    cache: bool = Field(True, description="Reuse generations cached by (model, suite, generation config).")

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: list[str]) -> list[str]:
        # A typo in a gate must fail `config validate` and the pipeline up front, not after training.
        from tuneforge.errors import EvalError
        from tuneforge.eval.gates import parse_gate

        for expr in gates:
            try:
                parse_gate(expr)
            except EvalError as exc:
                raise ValueError(f"{exc.what}; {exc.fix}") from None
        return gates


class TuneRange(_Section):
    low: float = Field(description="Smallest value a trial may sample (inclusive).")
    high: float = Field(description="Largest value a trial may sample (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> TuneRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must be <= high ({self.high:g})")
        return self


class TuneSpace(_Section):
    lr: TuneRange | None = Field(
        default_factory=lambda: TuneRange(low=1e-5, high=1e-3),
        description="train.lr, sampled log-uniformly between low and high (null: keep train.lr).",
    )
    lora_r: list[int] | None = Field(
        default_factory=lambda: [8, 16, 32],
        description="train.lora.r choices (null: keep train.lora.r). Each must be <= train.max_serving_rank.",
    )
    lora_alpha: list[int] | None = Field(
        None, description="train.lora.alpha choices; exclusive with alpha_ratio (null: see alpha_ratio)."
    )
    alpha_ratio: list[float] | None = Field(
        default_factory=lambda: [2.0],
        description="alpha = ratio * r choices, so the update scale alpha/r is what is searched "
        "(null, and lora_alpha null: keep train.lora.alpha).",
    )
    dropout: TuneRange | None = Field(
        default_factory=lambda: TuneRange(low=0.0, high=0.1),
        description="train.lora.dropout, sampled uniformly (null: keep train.lora.dropout).",
    )
    epochs: TuneRange | None = Field(
        default_factory=lambda: TuneRange(low=1, high=3),
        description="train.epochs, an integer between low and high (null: keep train.epochs). "
        "Ignored by training when train.max_steps is set.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TuneSpace:
        problems = []
        if self.lora_alpha and "alpha_ratio" not in self.model_fields_set:
            object.__setattr__(self, "alpha_ratio", None)  # explicit alpha choices replace the default ratio
        if self.lora_alpha and self.alpha_ratio:
            problems.append("set tune.space.lora_alpha or tune.space.alpha_ratio, not both (null the other)")
        if self.lr is not None and self.lr.low <= 0:
            problems.append("tune.space.lr.low must be > 0 (it is sampled on a log scale)")
        if self.dropout is not None and not (self.dropout.low >= 0 and self.dropout.high < 1):
            problems.append("tune.space.dropout must lie in [0, 1)")
        if self.epochs is not None and (self.epochs.low < 1 or self.epochs.low != int(self.epochs.low)
                                        or self.epochs.high != int(self.epochs.high)):
            problems.append("tune.space.epochs low/high must be whole numbers >= 1")
        for key in ("lora_r", "lora_alpha", "alpha_ratio"):
            values = getattr(self, key)
            if values is not None and (not values or min(values) <= 0):
                problems.append(f"tune.space.{key} must be a non-empty list of positive numbers (or null)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TunePrunerConfig(_Section):
    kind: Literal["median", "none"] = Field(
        "median",
        description="median: stop a trial whose val loss at an evaluation is worse than the median of "
        "earlier trials at the same step. none: every trial runs to the end.",
    )
    n_startup_trials: int = Field(
        2, ge=0, description="Trials that always run to the end before any pruning (the median needs them)."
    )
    n_warmup_steps: int = Field(
        0, ge=0, description="Optimizer steps inside a trial before it can be pruned."
    )


class TuneConfig(_Section):
    trials: int = Field(
        10, ge=1,
        description="Trials the study should hold when done (complete or pruned). Rerunning the same "
        "command continues the study and runs only the missing ones; failed trials are retried.",
    )
    study: str | None = Field(
        None,
        description="Optuna study name. Default: tune-<adapter name>-<hash of the dataset, base model, "
        "train settings and search space>, so the same command resumes the same study.",
    )
    storage: str | None = Field(
        None, description="Optuna storage URL. Default: sqlite:///<workspace>/optuna.db."
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Start no new trial after this many seconds (None = no limit)."
    )
    eval_every_steps: int | None = Field(
        None, ge=1,
        description="Evaluations feed the pruner; used when train.eval_every_steps is unset. "
        "Default: about 4 evaluations per trial.",
    )
    space: TuneSpace = Field(default_factory=TuneSpace, description="What is searched, and over which ranges.")
    pruner: TunePrunerConfig = Field(
        default_factory=TunePrunerConfig, description="When a trial that is going badly is stopped early."
    )


class RegistryConfig(_Section):
    required_suites: list[str] = Field(
        default_factory=list,
        description="Eval suites a version's attached eval report must cover (and pass) before it may take a "
        "gated alias. Empty: any passing eval report of that exact version is enough.",
    )
    gated_aliases: list[str] = Field(
        default_factory=lambda: ["production"],
        description="Aliases that need passing eval evidence; `promote --force --reason TEXT` overrides "
        "(audited). Other aliases (staging, canary, user-defined) move freely, and every move is audited.",
    )
    experiment: str = Field(
        "tuneforge-registry",
        description="MLflow experiment whose runs hold the registered files (one run per registered version).",
    )


class PipelineConfig(_Section):
    name: str = Field(
        "tuned",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Registered model name that `tuneforge run` registers each new version under.",
    )
    promote_to: str = Field(
        "staging", description="Alias a version that passed its gates is moved to. Never production: that "
        "takes `tuneforge registry promote` with a passing gate report.",
    )


class DeployConfig(_Section):
    canary: float | None = Field(
        None, gt=0, lt=100,
        description="With a share (percent), `tuneforge run` also makes the new version the `canary` alias and "
        "sets the serving policy of pipeline.name to production=100-share, canary=share. Unset: no deploy step.",
    )


class MonitorThresholds(_Section):
    embedding_alpha: float = Field(
        0.01, gt=0.0, lt=1.0,
        description="Prompt embedding drift alarms when the MMD permutation test's p-value is below this. "
        "It is also the false-alarm rate on unchanged traffic, so 0.01 means about one false alarm in 100 checks.",
    )
    length_psi_max: float = Field(
        0.2, gt=0.0,
        description="Prompt length drift alarms when the population stability index exceeds this (the usual "
        "reading: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift).",
    )
    validity_drop_max: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Output validity alarms when the JSON-valid (or schema-valid) rate of logged responses is "
        "more than this below the served version's eval report (or the reference answers without one).",
    )
    refusal_rate_max: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Refusal rate alarms when more than this share of logged responses match "
        "monitor.refusal_patterns.",
    )
    feedback_mean_min: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Feedback alarms when the mean feedback score (normalised to [0, 1]) of the window's rated "
        "requests is below this (None: off).",
    )
    feedback_drop_max: float | None = Field(
        None, ge=0.0,
        description="Feedback alarms when the window's mean score is more than this below the previous "
        "window's (None: off).",
    )


class MonitorRetrainConfig(_Section):
    max_rows: int = Field(
        2000, ge=1, description="Most logged requests (newest first) exported as new training rows."
    )
    min_rows: int = Field(
        10, ge=1,
        description="A retrain needs at least this many usable logged rows; fewer: no retrain, and the "
        "history says why.",
    )
    logged_share: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="At most this share of the retrain inputs comes from logged requests; the rest is the "
        "original data.inputs (0.5 = at most one logged row per original row).",
    )
    positive_score_min: float = Field(
        0.6, ge=0.0, le=1.0,
        description="When any logged request was rated, only requests rated >= this are exported (feedback "
        "scores are normalised to [0, 1]: thumbs up = 1, 4 of 1-5 stars = 0.75); unrated traffic includes "
        "the answers that caused the alarm.",
    )
    canary: float = Field(
        10.0, gt=0, lt=100,
        description="The retrained version becomes the `canary` alias at this percent of traffic (never "
        "production: that still takes `tuneforge registry promote` with evidence).",
    )
    cooldown_s: float = Field(
        86400.0, ge=0,
        description="Least seconds between two retrains started by the monitor (one that trained, whether or "
        "not its gates passed); alarms in between are recorded as 'cooldown', so a watcher does not retrain "
        "on every check while the canary is being judged.",
    )


class MonitorConfig(_Section):
    model: str | None = Field(
        None, description="Registered model whose traffic is watched (default: pipeline.name)."
    )
    window: int = Field(
        500, ge=1, description="Newest non-shadow requests of the model compared with the reference."
    )
    since_s: float | None = Field(
        None, gt=0, description="Only requests from the last this-many seconds count (None: no time limit)."
    )
    reference: str | None = Field(
        None,
        description="Reference traffic: a prepared dataset directory (its train split) or a JSONL file in any "
        "data format. Default: the prepared dataset the served version was trained on, else the workspace's "
        "latest prepared dataset.",
    )
    min_samples: int = Field(
        30, ge=2,
        description="Checks with fewer samples than this in the window are reported as skipped, never alarmed.",
    )
    max_samples: int = Field(
        400, ge=10,
        description="Each side of the embedding test is subsampled (seeded) to this many prompts, bounding the "
        "cost of embedding and of the permutation test.",
    )
    permutations: int = Field(
        500, ge=50, description="Permutations of the MMD test; the smallest possible p-value is 1/(n+1)."
    )
    seed: int = Field(0, description="Seeds subsampling and permutations, so reruns on the same data agree.")
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [r"\bI(?:'m| am) (?:sorry|unable|not able)\b", r"\bI can(?:'|no)t (?:help|assist)",
                                 r"\bas an AI\b"],
        description="Case-insensitive regular expressions; a response matching any counts as a refusal.",
    )
    thresholds: MonitorThresholds = Field(
        default_factory=MonitorThresholds, description="When each check raises an alarm."
    )
    on_drift: Literal["alert", "retrain"] = Field(
        "alert",
        description="alert: record and report the alarm (exit code 1 without --watch). retrain: also run the "
        "pipeline on the original data mixed with curated logged requests; the result enters as a canary.",
    )
    watch_every_s: float = Field(
        3600.0, gt=0, description="Seconds between checks with `tuneforge monitor --watch`."
    )
    retrain: MonitorRetrainConfig = Field(
        default_factory=MonitorRetrainConfig, description="What monitor.on_drift=retrain trains on and how it deploys."
    )

    @model_validator(mode="after")
    def _consistent(self) -> MonitorConfig:
        import re

        problems = []
        alpha = self.thresholds.embedding_alpha
        if 1.0 / (self.permutations + 1) >= alpha:
            problems.append(
                f"monitor.permutations={self.permutations} cannot give a p-value below "
                f"monitor.thresholds.embedding_alpha={alpha:g} (the smallest is 1/(permutations+1)); "
                f"use at least {int(2 / alpha)} permutations"
            )
        for pattern in self.refusal_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(f"monitor.refusal_patterns: {pattern!r} is not a regular expression ({exc})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AbConfig(_Section):
    control: str = Field(
        "production", description="Variant (alias or version) the others are compared with in `tuneforge ab report`."
    )
    primary_metric: Literal["auto", "feedback", "error_rate", "json_valid", "schema_valid", "latency_s"] = Field(
        "auto",
        description="Metric the recommendation rests on. auto: feedback when both variants have some, else "
        "json_valid when the model answers in JSON (eval.json_fields or a suite schema), else error_rate.",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1,
        description="False-positive rate of the anytime-valid (mSPRT) test; holds however often the report is read.",
    )
    mixture_sd: float = Field(
        0.2, gt=0,
        description="Standard deviation of the mSPRT's normal mixture, in standard deviations of the metric: "
        "the effect size the test is most sensitive to.",
    )
    noninferiority_margin: float = Field(
        0.02, ge=0,
        description="Promote also when the anytime-valid interval rules out the candidate being worse on the "
        "primary metric by more than this (in the metric's units: 0.02 = 2 points of a rate).",
    )
    burn_in: int = Field(
        20, ge=2, description="Observations per variant before the sequential test starts counting looks."
    )
    judge_sample: int = Field(
        20, ge=0,
        description="Logged responses per variant scored by eval.judge (when eval.judge.url is set; 0 = none).",
    )


class GuardrailsConfig(_Section):
    candidate: str = Field(
        "canary", description="Alias whose traffic is guarded (the one `tuneforge run` deploys with deploy.canary)."
    )
    error_rate_max: float | None = Field(
        None, ge=0, le=1,
        description="Breach when more than this share of the candidate's requests fail with a server error "
        "(status >= 500). None: not checked.",
    )
    p95_latency_s_max: float | None = Field(
        None, gt=0, description="Breach when the candidate's 95th-percentile latency exceeds this (seconds)."
    )
    json_valid_min: float | None = Field(
        None, ge=0, le=1, description="Breach when fewer than this share of the candidate's responses are valid JSON."
    )
    feedback_min: float | None = Field(
        None, ge=0, le=1,
        description="Breach when the candidate's mean feedback score (0-1, from POST /v1/feedback) is below this.",
    )
    compare: Literal["absolute", "relative"] = Field(
        "absolute",
        description="absolute: the values above are limits. relative: they are margins over production in the "
        "same window (error_rate_max=0.02: at most 2 points more errors than production; json_valid_min=0.05: "
        "at most 5 points less valid JSON).",
    )
    min_requests: int = Field(
        20, ge=1, description="A rule is evaluated only once it has this many of the candidate's requests."
    )
    window_s: float = Field(
        3600.0, gt=0, description="Only requests from the last this-many seconds count."
    )
    check_every_s: float = Field(
        30.0, gt=0,
        description="Seconds between checks inside `tuneforge serve` (and `tuneforge ab guard --watch`). A "
        "breach routes all of the model's traffic to production, removes the candidate alias (audited, "
        "with the reason) and is recorded in <workspace>/monitor/guardrails.jsonl.",
    )


class TuneforgeConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    ab: AbConfig = Field(default_factory=AbConfig)
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)

    @model_validator(mode="after")
    def _servable(self) -> TuneforgeConfig:
        # Training refuses ranks above train.max_serving_rank; vLLM refuses ranks above its own limit.
        # Both must agree, or an adapter that passed the train-time check would not load when served.
        if self.serve.engine == "vllm" and self.train.max_serving_rank > self.serve.vllm.max_lora_rank:
            raise ValueError(
                f"train.max_serving_rank={self.train.max_serving_rank} exceeds serve.vllm.max_lora_rank="
                f"{self.serve.vllm.max_lora_rank}, so adapters trained up to that rank would not load in vLLM; "
                "raise serve.vllm.max_lora_rank or lower train.max_serving_rank"
            )
        return self


# ---------------------------------------------------------------------------------------------
# loading


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans (true/false only). YAML 1.1 also reads on/off/yes/no as booleans,
    so `data.pii.mode: off` would arrive as false, not as the mode named off; pydantic still accepts
    on/off/yes/no for the boolean fields."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TuneforgeConfig:
    """Read ``path`` (optional), apply ``key.path=value`` overrides, validate everything at once."""
    raw: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError([f"{p} is a directory, not a config file"], source=str(p))
        if not p.is_file():
            raise ConfigError([f"config file {p} does not exist"], source=str(p))
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"], source=str(p)) from None
        source = str(p)
        try:
            stream = io.StringIO(text)
            stream.name = str(p)  # YAML's error marks name the file, not "<unicode string>"
            loaded = yaml.load(stream, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source=source) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(["the top level must be a mapping of sections"], source=source)
        raw = loaded
        lines = _key_lines(text)
    # The error names what the user gave: the file, the --set values, or both.
    origin = f"{source} + --set {' '.join(overrides)}" if overrides else source
    problems: list[str] = []
    for item in overrides or []:
        try:
            _apply_override(raw, item)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems, source=origin)
    try:
        return TuneforgeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, lines), source=origin) from None


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
        node[parts[-1]] = yaml.load(value, Loader=_Loader) if value.strip() else ""
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
        elif err["type"] == "value_error":  # a validator's own sentence already says what and how to fix
            problems.append(f"{where}{key}: {err['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(f"{where}{key}: {err['msg']} (got {err.get('input')!r})")
    return problems


def config_to_yaml(cfg: TuneforgeConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
