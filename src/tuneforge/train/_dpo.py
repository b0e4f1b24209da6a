"""TRL's DPOTrainer, configured from `train.*`, with the same atomic checkpoints as the SFT path.

With an adapter (LoRA, DoRA, passthrough) there is no second model: the reference is the base
with the adapter switched off (TRL's ref_model=None with PEFT). A full fine-tune gets a frozen copy.
The blocks shared with `_trainer.py` are kept identical on purpose (see STYLE.md: duplication
before abstraction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer

from tuneforge.config import TrainConfig
from tuneforge.train import _launch
from tuneforge.train._artifacts import RunDirs
from tuneforge.train._peft import optimizer
from tuneforge.train._tokenize import Pair

_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class _DPOTrainer(DPOTrainer):
    """DPOTrainer whose checkpoints become visible only when complete."""

    def __init__(self, *args: Any, run: RunDirs, keep: int, **kwargs: Any) -> None:
        self._run = run
        self._keep = keep
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # the caller's progress function reports instead

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        _launch.barrier()  # every rank has written its part of the staging checkpoint
        if self.is_world_process_zero():
            self._run.commit(self.state.global_step, self._keep)
        _launch.barrier()


def dpo_args(tcfg: TrainConfig, staging: Path, *, prec: str, has_val: bool, cuda: bool) -> DPOConfig:
    """DPOConfig from `train.*`: every value explicit, so TRL's own defaults never leak in."""
    eval_steps = tcfg.eval_every_steps if has_val else None
    return DPOConfig(
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
        report_to=list(tcfg.report_to) or "none",
        disable_tqdm=True,
        max_length=tcfg.max_seq_len,
        beta=tcfg.beta,
        loss_type=["sigmoid"],
        padding_free=False,
        dataloader_pin_memory=cuda,
        dataset_num_proc=None,
        **_launch.trainer_kwargs(tcfg.distributed),
    )


def to_dataset(pairs: list[Pair]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [p.prompt for p in pairs],
                              "chosen": [p.chosen_messages for p in pairs],
                              "rejected": [p.rejected_messages for p in pairs]})


def build_trainer(model: Any, tokenizer: Any, peft_config: Any, args: DPOConfig, train: list[Pair],
                  val: list[Pair], run: RunDirs, keep: int, callbacks: list[Any]) -> _DPOTrainer:
    return _DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(val) if val else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        run=run,
        keep=keep,
    )
