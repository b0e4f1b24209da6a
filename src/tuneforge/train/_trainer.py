"""TRL's SFTTrainer, configured from `train.*`, with atomic checkpoints and guard callbacks.

The examples arrive tokenised with their labels already built (see `_tokenize`), which TRL uses as
is: it never re-derives a mask, and its collator pads labels with -100, never by token id.

Checkpoints: transformers writes a checkpoint into a staging directory; only a complete one is
renamed into `checkpoints/`, so a run killed at any moment leaves either the previous checkpoints
or the new one, never a half-written directory that resume would trip over.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from trl import SFTConfig, SFTTrainer

from tuneforge.config import TrainConfig
from tuneforge.train import _launch
from tuneforge.train._args import shared_args
from tuneforge.train._artifacts import RunDirs
from tuneforge.train._dropout import use_fast_dropout
from tuneforge.train._progress import ProgressFn, TrainProgress
from tuneforge.train._tokenize import Example


class _Trainer(SFTTrainer):
    """SFTTrainer whose checkpoints become visible only when complete.

    Without CUDA the loss is `_loss.trained_positions_loss` instead of TRL's fused LM head, whose
    torch fallback (no Triton) scores every position: the head runs on trained positions only and
    right padding needs no attention mask. Both normalise by the trained tokens of the whole
    accumulation. Under bf16 autocast PEFT's cast of each adapter input to the fp32 adapter dtype is
    switched off (autocast runs the adapter matmuls in bf16 either way; the cast only added an fp32
    copy of the activations per adapted layer and ran LoRA dropout on it, ~5% of a CPU step), and
    LoRA dropout draws its masks with `_dropout.FastDropout`.
    """

    def __init__(self, *args: Any, run: RunDirs, keep: int, fused_head: bool, **kwargs: Any) -> None:
        self._run = run
        self._keep = keep
        self._fused_head = fused_head
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # the caller's progress function reports instead
        peft_config = getattr(self.model, "peft_config", None) or {}
        # Virtual prompt tokens shift the hidden states against the labels: those keep the model's own loss.
        self._trained_head = not fused_head and not any(getattr(c, "is_prompt_learning", False)
                                                        for c in peft_config.values())
        self._bf16_adapters = not fused_head and bool(self.args.bf16) and bool(peft_config)
        if self.args.device.type == "cpu":  # nn.Dropout's per-element Bernoulli draws were ~20% of a LoRA step
            use_fast_dropout(self.model)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        from peft.helpers import disable_input_dtype_casting

        with disable_input_dtype_casting(self.model, active=self._bf16_adapters):
            return super().train(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        from peft.helpers import disable_input_dtype_casting

        with disable_input_dtype_casting(self.model, active=self._bf16_adapters):
            return super().evaluate(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return _EpochSeededLengthGrouped(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[len(ids) for ids in dataset["input_ids"]],
            seed=self.args.seed,
        )

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if self._fused_head:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False  # a cache would disable the packed-sequence masks
        mode = "train" if model.training else "eval"
        if mode == "train":
            mask = inputs.get("attention_mask")
            self._total_train_tokens += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if return_outputs or not self._trained_head:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        from tuneforge.train import _loss

        # As Trainer.compute_loss: normalised by the accumulation's token count only when the model takes it.
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        trained = _loss.trained_positions_loss(model, head, inputs, items)
        entropy, accuracy = _loss.token_metrics(trained)
        self._metrics[mode]["entropy"].append(entropy)
        self._metrics[mode]["mean_token_accuracy"].append(accuracy)
        loss = trained.loss
        if self.args.average_tokens_across_devices and items is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages the gradients the ranks summed
        return loss

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        # Every rank writes into the staging checkpoint (its RNG state at least): commit it once,
        # when all are done, and let no rank run ahead before it is in place.
        _launch.barrier()
        if self.is_world_process_zero():
            self._run.commit(self.state.global_step, self._keep)
        _launch.barrier()


class TensorBoardLogger(TensorBoardCallback):
    """transformers' TensorBoard callback, writing into ``log_dir`` of the workspace.

    Its default directory is under the trainer's output directory, which here is the checkpoint
    staging area a finished run deletes. And each writer it opens gets a file of its own: the final
    evaluation reopens one after training closed it, and the default file name (time in seconds and
    host) would let that second writer truncate the first one's file within the same second.
    """

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.logging_dir = str(log_dir)
        self._opened = 0

    def _init_summary_writer(self, args: Any) -> None:
        self._opened += 1
        self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir,
                                             filename_suffix=f".{os.getpid()}.{self._opened}")

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        super().on_log(args, state, control, logs=logs, **kwargs)
        # The writer reopened for the final evaluation is never closed by the trainer: flush each entry,
        # or its events stay in a buffer (lost when the process ends without closing it).
        if self.tb_writer is not None:
            self.tb_writer.flush()


class _EpochSeededLengthGrouped(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) alone, so a run resumed in a later epoch sees
    the same order as an uninterrupted one (the stock sampler draws from the global RNG)."""

    def __init__(self, batch_size: int, *, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class Guard(TrainerCallback):
    """Stops on a non-finite loss or gradient norm, and turns Ctrl-C into save-then-stop."""

    def __init__(self) -> None:
        self.interrupted = False
        self.nonfinite: tuple[int, str, float] | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                self.nonfinite = (state.global_step, key, value)
                # Stop before this step's checkpoint or eval: the weights may already be poisoned.
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False
                break
        return control


class Reporter(TrainerCallback):
    """Feeds the caller's progress function: step, loss, tokens/s and ETA."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self.started = 0.0
        self.first_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.started = time.perf_counter()
        self.first_step = state.global_step
        if self.progress:
            self.progress(TrainProgress("training", state.global_step, state.max_steps))
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        logs = logs or {}
        if self.progress is None or "loss" not in logs:
            return control
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        done = state.global_step - self.first_step
        rate = logs.get("num_tokens", 0) / elapsed
        eta = (state.max_steps - state.global_step) * elapsed / done if done else None
        self.progress(TrainProgress("training", state.global_step, state.max_steps, float(logs["loss"]),
                                    rate, eta, logs.get("epoch")))
        return control


class MetricsLogger(TrainerCallback):
    """Sends each Trainer log entry (loss, learning_rate, grad_norm, eval_loss, ...) plus tokens/s over
    the interval to ``log_fn(values, global_step)``. A tracker that fails stops logging, not training."""

    def __init__(self, log_fn: Callable[[dict[str, Any], int], None]) -> None:
        self.log_fn = log_fn
        self.failed = False
        self._last: tuple[float, float] | None = None  # (time, tokens) at the previous entry

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # After a resume the token counter restarts at 0, so the first interval is measured from here.
        self._last = (time.perf_counter(), 0.0)
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        if self.failed or not logs or not state.is_world_process_zero:
            return control
        values = dict(logs)
        now, tokens = time.perf_counter(), logs.get("num_tokens")
        if "loss" in logs and isinstance(tokens, int | float) and self._last is not None:
            then, before = self._last
            if now > then and tokens >= before:
                values["tokens_per_s"] = (tokens - before) / (now - then)
            self._last = (now, float(tokens))
        try:
            self.log_fn(values, state.global_step)
        except Exception as exc:
            self.failed = True
            import logging

            logging.getLogger("tuneforge.train").warning("metrics logging stopped: %s", exc)
        return control


class BestWeights(TrainerCallback):
    """Keeps a CPU copy of the trainable weights at the lowest eval loss seen.

    Early stopping must export the best weights, not the last; transformers' load_best_model_at_end
    reloads a checkpoint directory, which our atomic commit has moved (and may have pruned). For an
    adapter the copy is a few MB. Each committed checkpoint gets the best weights so far, so a
    resumed run still knows evaluations from before the interruption.
    """

    FILE = "best_weights.safetensors"

    def __init__(self, run: RunDirs | None = None) -> None:
        self.run = run
        self.step: int | None = None
        self.loss: float | None = None
        self._weights: dict[str, Any] = {}

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    model: Any = None, **kwargs: Any) -> Any:
        loss = (metrics or {}).get("eval_loss")
        if model is None or not isinstance(loss, float) or not math.isfinite(loss):
            return control
        if self.loss is None or loss < self.loss:
            self.step, self.loss = state.global_step, loss
            self._weights = {n: p.detach().to("cpu", copy=True)
                             for n, p in model.named_parameters() if p.requires_grad}
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # Runs after _save_checkpoint has committed the directory; one file, written atomically.
        checkpoint = self.run.checkpoints / f"checkpoint-{state.global_step}" if self.run else None
        if checkpoint is None or not self._weights or not state.is_world_process_zero or not checkpoint.is_dir():
            return control
        from safetensors.torch import save_file

        tmp = checkpoint / f".{self.FILE}.tmp"
        save_file(self._weights, str(tmp), metadata={"step": str(self.step), "loss": repr(self.loss)})
        os.replace(tmp, checkpoint / self.FILE)
        return control

    def load(self, checkpoint: Path) -> None:
        """The best weights recorded up to ``checkpoint`` (a resumed run), if any."""
        from safetensors import safe_open

        path = checkpoint / self.FILE
        if not path.is_file():
            return
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            self._weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not iterable
        self.step, self.loss = int(meta["step"]), float(meta["loss"])

    def restore(self, model: Any) -> None:
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self._weights.items():
                params[name].copy_(value.to(params[name].device))


def sft_args(tcfg: TrainConfig, staging: Path, *, prec: str, packing: str, has_val: bool, cuda: bool,
             kernels: str = "none") -> SFTConfig:
    return SFTConfig(
        **shared_args(tcfg, staging, prec=prec, has_val=has_val, cuda=cuda, kernels=kernels),
        packing=packing == "padding_free",
        packing_strategy="bfd",
        padding_free=packing == "padding_free",
        train_sampling_strategy="group_by_length" if packing == "length_grouped" else "random",
        shuffle_dataset=False,
        assistant_only_loss=False,
        completion_only_loss=False,
        label_names=["labels"],
    )


def to_dataset(examples: list[Example]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                              "labels": [e.labels for e in examples]})


def build_trainer(model: Any, tokenizer: Any, peft_config: Any, args: SFTConfig, train: list[Example],
                  val: list[Example], run: RunDirs, keep: int, callbacks: list[Any], *, cuda: bool) -> _Trainer:
    return _Trainer(
        model=model,
        args=args,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(val) if val else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        run=run,
        keep=keep,
        fused_head=cuda,
    )


@contextlib.contextmanager
def graceful_interrupt(guard: Guard, on_first: Callable[[], None] | None = None) -> Iterator[None]:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: KeyboardInterrupt at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if guard.interrupted:
            signal.default_int_handler(signum, frame)
        guard.interrupted = True
        if on_first:
            on_first()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No per-map progress bars from `datasets` while TRL prepares the data; restored afterwards."""
    from datasets.utils import logging as dlog

    was = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            dlog.enable_progress_bar()
