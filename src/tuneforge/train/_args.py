"""The trainer arguments SFT and DPO share, from `train.*`: every value explicit, so TRL's own
defaults never leak in. Each method adds only what is its own (packing for SFT, beta for DPO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.config import TrainConfig
from tuneforge.train import _kernels, _launch
from tuneforge.train._peft import optimizer

_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def shared_args(tcfg: TrainConfig, staging: Path, *, prec: str, has_val: bool, cuda: bool,
                kernels: str = "none") -> dict[str, Any]:
    eval_steps = tcfg.eval_every_steps if has_val else None
    return dict(
        output_dir=str(staging),
        num_train_epochs=tcfg.epochs,
        max_steps=tcfg.max_steps or -1,
        per_device_train_batch_size=tcfg.batch_size,
        per_device_eval_batch_size=tcfg.batch_size,
        gradient_accumulation_steps=tcfg.grad_accum,
        learning_rate=tcfg.lr,
        lr_scheduler_type=_SCHEDULERS[tcfg.scheduler],
        warmup_steps=tcfg.warmup_ratio,  # a value below 1 is a ratio of the total steps
        weight_decay=tcfg.weight_decay,
        optim=optimizer(tcfg, cuda),
        seed=tcfg.seed,
        data_seed=tcfg.seed,
        activation_checkpointing=tcfg.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
        bf16=prec == "bf16",
        fp16=False,
        use_cpu=not cuda,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN must reach the guard, not be averaged away
        save_strategy="steps" if tcfg.save_every_steps else "no",
        save_steps=tcfg.save_every_steps or 500,
        save_total_limit=None,  # RunDirs.commit keeps the last train.keep_checkpoints
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        metric_for_best_model="eval_loss" if tcfg.early_stopping_patience else None,
        greater_is_better=False if tcfg.early_stopping_patience else None,
        # TensorBoard comes as a callback with a log directory that outlives the run (_trainer.TensorBoardLogger).
        report_to=[r for r in tcfg.report_to if r != "tensorboard"] or "none",
        disable_tqdm=True,
        max_length=tcfg.max_seq_len,
        dataloader_pin_memory=cuda,
        dataset_num_proc=None,
        **_launch.trainer_kwargs(tcfg.distributed),
        **_kernels.trainer_args(kernels),
    )
