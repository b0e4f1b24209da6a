"""`tuneforge train`: a prepared dataset in, a servable adapter directory out.

Read top to bottom: resolve inputs, tokenise with masks, preflight, then (unless a dry run, or an
identical run already finished) load, train, evaluate and save.

Raises:
    DataError: no prepared dataset, or it was prepared for another tokenizer or chat template.
    TrainError: preflight problems (unmasked rows, untrained end-of-turn token, over-length rows),
        QLoRA without CUDA, an unservable adapter rank, a non-finite loss, checkpoints left by an
        earlier run when --resume was not given (or none when it was).
    TrainInterrupted: Ctrl-C; a checkpoint was written and --resume continues from it.
    ModelError: the base model cannot be resolved or loaded.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tuneforge
from tuneforge.config import TuneforgeConfig, config_to_yaml
from tuneforge.data import PreparedDataset
from tuneforge.errors import DataError, TrainError, TrainInterrupted
from tuneforge.train import _artifacts as artifacts
from tuneforge.train import _kernels, _launch
from tuneforge.train import _oom as oom
from tuneforge.train import _peft as methods
from tuneforge.train import _preflight as pf
from tuneforge.train._artifacts import RunDirs
from tuneforge.train._progress import ProgressFn, TrainProgress
from tuneforge.train._tokenize import KINDS, build_examples, build_pairs, read_split
from tuneforge.train._tracking import TrainTracker, flat_params
from tuneforge.workspace import Workspace

log = logging.getLogger("tuneforge.train")


@dataclass(frozen=True)
class TrainResult:
    """The outcome of `train()`: where the adapter is, what it was trained on, how it went."""

    path: Path  # the adapter directory (for a dry run: where it would be written)
    name: str
    run_key: str
    preflight: pf.Preflight
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # tuneforge.json
    dry_run: bool = False
    reused: bool = False  # an identical run had already finished; nothing was trained
    resumed_from_step: int | None = None


def train(
    cfg: TuneforgeConfig,
    *,
    data: str | Path | PreparedDataset | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    dry_run: bool = False,
    workspace: Workspace | None = None,
    progress: ProgressFn | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Fine-tune ``cfg.model.base`` on a prepared dataset; see the module docstring for errors.

    ``callbacks`` are extra transformers ``TrainerCallback``s (e.g. a tuning trial's pruner).
    """
    from tuneforge.models import load_contract, load_tokenizer, resolve_model

    ws = workspace or Workspace.from_env()
    tcfg = cfg.train
    if not _launch.is_main():
        progress = None  # under a launcher, rank 0 alone reports
    dataset = _dataset(data, tcfg.data, ws)
    model_ref = resolve_model(cfg.model.base, ws, revision=cfg.model.revision)
    tokenizer = load_tokenizer(model_ref)
    contract = load_contract(model_ref, tokenizer)
    _check_dataset_matches(dataset, contract, cfg.model.base)
    if not getattr(tokenizer, "is_fast", False):
        raise TrainError(f"{model_ref.ref} has no fast tokenizer, which the loss mask needs (character offsets)",
                         where=str(model_ref.path), fix="add tokenizer.json to the model directory")

    # Tokenise with masks, then preflight everything before any weight is loaded.
    kind = KINDS[tcfg.method]
    train_set = _Split.read(tokenizer, dataset.split_path("train"), tcfg.method)
    val_set = _Split.read(tokenizer, dataset.split_path("val"), tcfg.method)
    train_ex, val_ex = train_set.examples, val_set.examples
    stops = pf.stop_token_ids(tokenizer, contract.stop_tokens)
    pf.check_examples(train_ex, val_ex, tcfg, stops, contract.stop_tokens or [str(tokenizer.eos_token)])
    prec = methods.precision(tcfg)
    methods.check_trackers(tcfg.report_to)
    methods.optimizer(tcfg, methods.cuda_available())  # an optimizer this machine lacks fails the dry run too
    peft_config = methods.build_peft_config(tcfg)
    model_config = _model_config(model_ref)
    attention = methods.attention_for(model_config)
    packing, packing_reason = _packing(tcfg.packing, tcfg.method, attention, peft_config)
    kernels = _kernels.choose(tcfg.kernels, model_config, methods.cuda_available())
    tokens_mb = pf.tokens_per_micro_batch(train_ex, tcfg, packing) * (2 if tcfg.method == "dpo" else 1)
    # DPO (and virtual-prompt PEFT) score every position; SFT/CPT only the trained ones.
    every = tcfg.method == "dpo" or getattr(peft_config, "is_prompt_learning", False)
    scored = None if every else pf.trained_per_micro_batch(train_ex, tcfg, packing)
    estimate = pf.estimate_memory(model_config, tcfg, peft_config, tokens_mb, prec, scored)
    notes = [n for n in (pf.memory_note(estimate, tcfg),) if n]
    if tcfg.peft == "qlora" and not methods.cuda_available():
        notes.append("QLoRA needs a CUDA GPU with bitsandbytes; training on this machine will fail "
                     "(use train.peft=lora here)")
    if train_set.skipped:
        notes.append(f"{train_set.skipped} train row(s) are not {kind} rows and are skipped by method {tcfg.method}")
    tokens = sum(len(e.input_ids) for e in train_ex)
    preflight = pf.Preflight(
        method=tcfg.method, peft=tcfg.peft, packing=packing, packing_reason=packing_reason,
        kernels=kernels.name, kernels_reason=kernels.reason, precision=prec,
        rows={"train": train_set.rows, "val": val_set.rows},
        skipped={"train": train_set.skipped, "val": val_set.skipped},
        tokens=tokens, trained_tokens=sum(e.trained for e in train_ex),
        longest=max(len(e.input_ids) for e in train_ex),
        steps=pf.planned_steps(train_set.rows, tokens, tcfg, packing),
        samples=pf.samples(tokenizer, read_split(dataset.split_path("train")), tcfg.method),
        estimate=estimate, notes=notes,
    )

    key = artifacts.run_key(cfg, dataset.fingerprint, contract, prec)
    if _launch.world_size() > 1:  # more processes, a larger effective batch: another run
        key = artifacts.sha256_json({"run": key, "world_size": _launch.world_size(),
                                     "distributed": tcfg.distributed.model_dump(mode="json")})
    name = artifacts.default_name(cfg, model_ref.name)
    target = Path(out).resolve() if out else ws.adapters_dir / f"{name}-{key[:12]}"
    if dry_run:
        return TrainResult(target, name, key, preflight, dry_run=True)
    artifacts.check_out_dir(target)
    done = artifacts.read_meta(target)
    if done is not None and done.get("run_key") == key and artifacts.verify_checksum(target):
        return TrainResult(target, name, key, preflight, done.get("metrics", {}), done, reused=True)

    methods.check_hardware(tcfg)
    attn = attention.loaded_for(packing)
    _launch.check_strategy(tcfg.distributed, cuda=methods.cuda_available())
    run = RunDirs(ws.runs_dir / key[:32])
    checkpoint = _checkpoint_to_resume(run, resume)
    # Contacted before any weight is loaded: an unreachable tracking server fails now, not at the end.
    tracker = TrainTracker.start(cfg, ws, run_dir=run.root, run_name=f"{name}-{key[:8]}", resume=resume,
                                 main=_launch.is_main())
    log.info("training %s on %s (run %s)\n%s", cfg.model.base, dataset.path, key[:12], config_to_yaml(cfg))
    try:
        if tracker:
            tracker.log_start(
                flat_params(cfg, {"precision": prec, "packing": packing, "dataset.fingerprint": dataset.fingerprint,
                                  "dataset.path": str(dataset.path), "base.identity": model_ref.identity,
                                  "run_key": key}),
                {"tuneforge.run_key": key, "tuneforge.kind": "full" if peft_config is None else "adapter",
                 "tuneforge.base": model_ref.identity},
                dataset,
            )
        extra = [*(callbacks or []), *([tracker.callback()] if tracker else [])]
        tensorboard = ws.tensorboard_dir / f"{name}-{key[:12]}" if "tensorboard" in tcfg.report_to else None
        if tensorboard:
            from tuneforge.train._trainer import TensorBoardLogger

            extra.append(TensorBoardLogger(tensorboard))
        started = time.time()
        trainer, output, val_loss, best, retries = _fit_backing_off(
            lambda t: methods.load_for_training(model_ref, t, cfg.model.dtype, prec, attn),
            tokenizer, peft_config, tcfg, train_set, val_set, run, checkpoint, preflight, progress, extra, tracker,
        )
        step = trainer.state.global_step
        metrics = _metrics(trainer, output, val_loss, started, estimate.device, tcfg.price_per_device_hour,
                           _launch.world_size())
        metrics["stopped_early"] = step < trainer.state.max_steps
        if best is not None:
            metrics["best_step"], metrics["best_val_loss"] = best
        metrics["oom_retries"] = [r.to_dict() for r in retries]
        if progress:
            progress(TrainProgress("saving", step, step))
        meta = _meta_and_save(cfg, trainer, tokenizer, target, name, key, model_ref, contract, dataset, peft_config,
                              metrics, preflight, checkpoint, run, tracker, tensorboard)
    except BaseException as exc:
        if tracker:
            tracker.fail(exc)
        raise
    if tracker:
        _finish_tracking(tracker, metrics, meta, target, step, progress)
    return TrainResult(target, name, key, preflight, metrics, meta, resumed_from_step=_step_of(checkpoint))


def _meta_and_save(cfg: TuneforgeConfig, trainer: Any, tokenizer: Any, target: Path, name: str, key: str,
                   model_ref: Any, contract: Any, dataset: PreparedDataset, peft_config: Any,
                   metrics: dict[str, Any], preflight: pf.Preflight, checkpoint: Path | None, run: RunDirs,
                   tracker: TrainTracker | None, tensorboard: Path | None) -> dict[str, Any]:
    """tuneforge.json's content, then the adapter directory written with it (rank 0 only)."""
    tcfg = cfg.train
    meta = {
        "kind": "full" if peft_config is None else "adapter",
        "name": name,
        "run_key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": {"ref": model_ref.ref, "name": model_ref.name, "identity": model_ref.identity,
                       "revision": model_ref.revision},
        "contract": contract.to_dict(),
        "dataset": {"fingerprint": dataset.fingerprint, "path": str(dataset.path)},
        "config": cfg.model_dump(mode="json"),
        "seed": tcfg.seed,
        "precision": preflight.precision,
        "packing": {"mode": preflight.packing, "reason": preflight.packing_reason},
        "kernels": {"name": preflight.kernels, "reason": preflight.kernels_reason},
        "peft_type": methods.peft_type(peft_config),
        "serving": methods.serving(tcfg, peft_config),
        "versions": artifacts.versions(),
        "metrics": metrics,
        "preflight": {k: v for k, v in preflight.to_dict().items() if k != "samples"},
        "resumed_from_step": _step_of(checkpoint),
        "world_size": _launch.world_size(),
        "distributed": _launch.describe(tcfg.distributed),
        # The registry tags versions with the training run; part of the meta before the checksum.
        "tracking": tracker.info if tracker else None,
        "tensorboard_dir": str(tensorboard) if tensorboard else None,
    }
    trained = trainer.model
    if _launch.is_main():  # every rank holds the same weights; one writes them
        meta = artifacts.save(trained, tokenizer, target, meta, full=peft_config is None)
        shutil.rmtree(run.root, ignore_errors=True)  # the adapter is complete; checkpoints are not needed
    _launch.barrier()
    if not _launch.is_main():
        meta = artifacts.read_meta(target) or meta
    return meta


def _finish_tracking(tracker: TrainTracker, metrics: dict[str, Any], meta: dict[str, Any], target: Path,
                     step: int, progress: ProgressFn | None) -> None:
    """Final metrics, tags and the adapter as artifacts. The adapter is already complete on disk, so a
    tracking failure here is reported, not raised."""
    tags = {"tuneforge.adapter_path": str(target), "tuneforge.adapter_checksum": meta.get("checksum", ""),
            "tuneforge.device": metrics.get("device") or "", "tuneforge.oom_retries": len(metrics["oom_retries"]),
            "tuneforge.price_per_device_hour": metrics.get("price_per_device_hour")}
    try:
        tracker.finish(metrics, tags, target, step)
    except Exception as exc:
        tracker.fail(exc)
        log.warning("MLflow logging of %s failed: %s", target, exc)
        if progress:
            progress(TrainProgress("saving", step, step, note=f"the adapter is saved, but MLflow logging failed "
                                   f"({tracker.store.uri}): {exc}"))


def _fit_backing_off(load: Callable[[Any], Any], tokenizer: Any, peft_config: Any, tcfg: Any, train_set: _Split,
                     val_set: _Split, run: RunDirs, checkpoint: Path | None, preflight: pf.Preflight,
                     progress: ProgressFn | None, callbacks: list[Any], tracker: TrainTracker | None,
                     ) -> tuple[Any, Any, float | None, tuple[int, float] | None, list[oom.OomRetry]]:
    """`_fit`, retried on CUDA out-of-memory with half the micro-batch and twice the accumulation."""
    retries: list[oom.OomRetry] = []
    attempt_cfg, start_from = tcfg, checkpoint
    while True:
        model = load(attempt_cfg)  # a fresh model each attempt: PEFT wrapped the previous one in place
        try:
            return (*_fit(model, tokenizer, peft_config, attempt_cfg, train_set, val_set, run, start_from, preflight,
                          progress, callbacks), retries)
        except Exception as exc:
            if not oom.is_oom(exc):
                raise
            # Ranks of a multi-process job cannot change their batch alone; only a single process backs off.
            limit = tcfg.oom_retries if _launch.world_size() == 1 else 0
            stop = oom.give_up(attempt_cfg, retries, limit)
            if stop is not None:
                raise stop from exc
        model = None
        oom.free_memory()
        attempt_cfg = oom.halved(attempt_cfg)
        start_from = run.last()
        retry = oom.OomRetry(len(retries) + 1, attempt_cfg.batch_size, attempt_cfg.grad_accum,
                             start_from.name if start_from else None)
        retries.append(retry)
        log.warning(retry.note())
        if progress:
            progress(TrainProgress("training", 0, 0, note=retry.note()))
        if tracker:
            tracker.note({"tuneforge.oom_retries": str(len(retries)),
                          "tuneforge.batch_size": str(attempt_cfg.batch_size),
                          "tuneforge.grad_accum": str(attempt_cfg.grad_accum)})


@dataclass(frozen=True)
class _Split:
    """One split tokenised for the method: examples (a DPO pair is two), pairs for DPO, skipped rows."""

    examples: list[Any]
    pairs: list[Any]
    rows: int
    skipped: int

    @classmethod
    def read(cls, tokenizer: Any, path: Path, method: str) -> _Split:
        records = read_split(path)  # streamed: only the token arrays are kept
        if method == "dpo":
            # Each pair is checked as two examples (chosen, rejected), labelled on the answer only.
            pairs, skipped = build_pairs(tokenizer, records)
            return cls([e for p in pairs for e in (p.chosen, p.rejected)], pairs, len(pairs), skipped)
        examples, skipped = build_examples(tokenizer, records, KINDS[method])
        return cls(examples, [], len(examples), skipped)


def _fit(model: Any, tokenizer: Any, peft_config: Any, tcfg: Any, train_set: _Split, val_set: _Split,
         run: RunDirs, checkpoint: Path | None, preflight: pf.Preflight,
         progress: ProgressFn | None, extra_callbacks: list[Any],
         ) -> tuple[Any, Any, float | None, tuple[int, float] | None]:
    """Build the TRL trainer, train (resuming from ``checkpoint``), evaluate.

    Returns (trainer, output, val loss, (best step, best val loss) when early stopping restored them).
    """
    from transformers import EarlyStoppingCallback, set_seed

    from tuneforge.train._trainer import BestWeights, Guard, Reporter, graceful_interrupt, quiet_datasets

    if _launch.is_main():
        shutil.rmtree(run.staging, ignore_errors=True)
    guard = Guard()
    callbacks: list[Any] = [guard, Reporter(progress), *extra_callbacks]
    best = BestWeights(run) if tcfg.early_stopping_patience else None
    if best is not None:
        if checkpoint:
            best.load(checkpoint)
        callbacks += [best, EarlyStoppingCallback(early_stopping_patience=tcfg.early_stopping_patience)]
    cuda = methods.cuda_available()
    has_val = bool(val_set.examples)
    prec, kernels = preflight.precision, preflight.kernels

    def stopping() -> None:
        if progress:
            progress(TrainProgress("stopping", 0, 0, note="Ctrl-C: saving a checkpoint after this step "
                                   "(press again to abort without saving)"))

    set_seed(tcfg.seed)  # before PEFT wraps the model inside the trainer: seeds the adapter init
    with quiet_datasets(), warnings.catch_warnings():
        # TRL points Liger users at Hub kernels, which need a download; Liger is the installed choice.
        warnings.filterwarnings("ignore", message=".*use_liger_kernel=True. is deprecated", category=FutureWarning)
        methods.ignore_checkpointing_deprecation()
        if tcfg.method == "dpo":
            from tuneforge.train import _dpo

            args = _dpo.dpo_args(tcfg, run.staging, prec=prec, has_val=has_val, cuda=cuda, kernels=kernels)
            trainer: Any = _dpo.build_trainer(model, tokenizer, peft_config, args, train_set.pairs, val_set.pairs,
                                              run, tcfg.keep_checkpoints, callbacks)
        else:
            from tuneforge.train import _trainer

            args = _trainer.sft_args(tcfg, run.staging, prec=prec, packing=preflight.packing, has_val=has_val,
                                     cuda=cuda, kernels=kernels)
            trainer = _trainer.build_trainer(model, tokenizer, peft_config, args, train_set.examples,
                                             val_set.examples, run, tcfg.keep_checkpoints, callbacks, cuda=cuda)
        with graceful_interrupt(guard, stopping):
            try:
                output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            except KeyboardInterrupt:
                last = run.last()
                raise TrainInterrupted(
                    "training aborted by a second Ctrl-C; nothing was saved for the current step",
                    where=str(last) if last else str(run.root),
                    fix="`tuneforge train --resume` continues from the last checkpoint" if last
                    else "no checkpoint was written yet; run again",
                ) from None
        step = trainer.state.global_step
        if guard.nonfinite is not None:
            at, what, value = guard.nonfinite
            last = run.last()
            raise TrainError(
                f"training stopped: {what} became {value} at step {at}",
                where=f"last good checkpoint: {last}" if last else str(run.root),
                fix="lower train.lr, set train.precision=fp32, or look for broken rows; --resume restarts "
                "from the last good checkpoint",
            )
        if guard.interrupted:
            raise TrainInterrupted(f"training interrupted at step {step}; checkpoint saved",
                                   where=str(run.last()), fix="`tuneforge train --resume` continues from it")
        if progress and has_val:
            progress(TrainProgress("evaluating", step, step))
        val_loss = trainer.evaluate()["eval_loss"] if has_val else None
    if best is None or best.step is None or best.loss is None or val_loss is None:
        return trainer, output, val_loss, None
    if best.loss < val_loss:  # the last weights are worse than an earlier evaluation's: export those
        best.restore(trainer.model)
        val_loss = best.loss
    return trainer, output, val_loss, (best.step, best.loss)


def _dataset(data: str | Path | PreparedDataset | None, configured: str | None, ws: Workspace) -> PreparedDataset:
    if isinstance(data, PreparedDataset):
        return data
    if data is not None:
        return PreparedDataset.load(data)
    if configured:
        return PreparedDataset.load(configured)
    latest = ws.datasets_dir / "latest"
    if latest.is_file():
        return PreparedDataset.load(latest.read_text().strip())
    raise DataError(
        "no dataset to train on",
        where=f"--data, train.data and {latest} are all unset",
        fix="run `tuneforge data prepare FILE...` first, or pass --data DIR",
    )


def _check_dataset_matches(ds: PreparedDataset, contract: Any, base: str) -> None:
    """A dataset counts and filters tokens with one tokenizer and template; training must use the same."""
    prepared = ds.manifest.get("contract", {})
    diffs = [k for k in ("tokenizer_sha256", "chat_template_sha256")
             if prepared.get(k) and prepared.get(k) != getattr(contract, k)]
    if diffs:
        was = ds.manifest.get("base_model", {}).get("ref", "another model")
        raise DataError(
            f"the dataset was prepared for {was}, whose {' and '.join(d.split('_sha')[0] for d in diffs)} "
            f"differ from {base}'s",
            where=str(ds.path),
            fix=f"re-run `tuneforge data prepare` with --set model.base={base}",
        )


def _packing(requested: bool, method: str, attention: methods.Attention, peft_config: Any = None,
             ) -> tuple[str, str]:
    if method == "dpo":
        return "off", "DPO batches hold each prompt with its chosen and rejected answer; packing does not apply"
    if not requested:
        return "off", "train.packing=false"
    if getattr(peft_config, "is_prompt_learning", False):
        return "length_grouped", "virtual prompt tokens are prepended per row, so examples cannot share one"
    if attention.varlen:
        return "padding_free", attention.reason
    return "length_grouped", attention.reason


def _model_config(model_ref: Any) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_ref.path)


def _checkpoint_to_resume(run: RunDirs, resume: bool) -> Path | None:
    last = run.last()
    if resume and last is None:
        raise TrainError("--resume: this run has no checkpoint", where=str(run.checkpoints),
                         fix="run without --resume to start from the beginning; a checkpoint belongs to the exact "
                         "config, data and model it was trained with, so resume with the same --config/--set "
                         "values as the interrupted run")
    if not resume and last is not None:
        raise TrainError(
            f"an earlier run with this exact configuration stopped at {last.name}",
            where=str(run.checkpoints),
            fix=f"pass --resume to continue from it, or delete {run.root} to start over",
        )
    return last if resume else None


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None


def _metrics(trainer: Any, output: Any, val_loss: float | None, started: float, device: str,
             prices: dict[str, float], devices: int) -> dict[str, Any]:
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    wall = time.time() - started
    runtime = float(output.metrics.get("train_runtime", wall))
    device_hours = devices * wall / 3600  # every process holds its own device
    price = price_for(device, prices)
    last_train = next((h for h in reversed(history) if "loss" in h), {})
    preference = {k.replace("/", "_"): last_train[k] for k in ("rewards/accuracies", "rewards/margins")
                  if k in last_train}
    return {
        **preference,
        "train_loss": losses[-1] if losses else None,
        "train_loss_first": losses[0] if losses else None,
        "val_loss": val_loss,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "tokens_seen_this_process": int(tokens),
        "train_runtime_s": round(runtime, 2),
        "wall_time_s": round(wall, 2),  # includes OOM retries; what the cost is based on
        "tokens_per_s": round(tokens / runtime, 1) if runtime > 0 else None,
        "device": device,
        "cost": round(device_hours * price, 4) if price is not None else None,
        "price_per_device_hour": price,
        "device_hours": round(device_hours, 9),
        "tuneforge_version": tuneforge.__version__,
    }


def price_for(device: str, prices: dict[str, float]) -> float | None:
    """The price per device-hour of ``device`` ("cpu" or "cuda:<GPU name>"): the longest key that is a
    whole word of the GPU's name (``h100`` for "cuda:NVIDIA H100 80GB", never ``a10`` for an A100 or
    ``l4`` for an L40S), else the generic ``cuda`` or ``gpu`` key."""
    kind = device.lower()
    lowered = {k.lower(): v for k, v in prices.items()}
    if kind == "cpu":
        return lowered.get("cpu")
    named = [k for k in lowered if k not in ("cpu", "cuda", "gpu")
             and re.search(rf"(?<![a-z0-9]){re.escape(k)}(?![a-z0-9])", kind)]
    if named:
        return lowered[max(named, key=len)]
    return lowered.get("cuda", lowered.get("gpu"))
