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
from tuneforge.train._args import shared_args
from tuneforge.train._artifacts import RunDirs
from tuneforge.train._dropout import use_fast_dropout
from tuneforge.train._tokenize import Pair


class _DPOTrainer(DPOTrainer):
    """DPOTrainer whose checkpoints become visible only when complete."""

    def __init__(self, *args: Any, run: RunDirs, keep: int, **kwargs: Any) -> None:
        self._run = run
        self._keep = keep
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # the caller's progress function reports instead
        if self.args.device.type == "cpu":  # cheaper LoRA dropout masks, as in the SFT trainer
            use_fast_dropout(self.model)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        _launch.barrier()  # every rank has written its part of the staging checkpoint
        if self.is_world_process_zero():
            self._run.commit(self.state.global_step, self._keep)
        _launch.barrier()


def dpo_args(tcfg: TrainConfig, staging: Path, *, prec: str, has_val: bool, cuda: bool,
             kernels: str = "none") -> DPOConfig:
    return DPOConfig(
        **shared_args(tcfg, staging, prec=prec, has_val=has_val, cuda=cuda, kernels=kernels),
        beta=tcfg.beta,
        loss_type=["sigmoid"],
        padding_free=False,
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
