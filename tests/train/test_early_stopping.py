"""Early stopping exports the weights of the best evaluation, not the last ones."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import chat_row, write_dataset
from transformers import TrainerCallback

from tuneforge.errors import TrainInterrupted
from tuneforge.train import _artifacts as artifacts
from tuneforge.train import train


class _EvalRecorder(TrainerCallback):
    """The eval loss and a copy of the adapter's weights (as saved) at every evaluation."""

    def __init__(self) -> None:
        self.evals: list[tuple[int, float, dict[str, torch.Tensor]]] = []

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    model: Any = None, **kwargs: Any) -> None:
        from peft import get_peft_model_state_dict

        weights = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}
        self.evals.append((state.global_step, float(metrics["eval_loss"]), weights))


def _french_row(i: int) -> dict[str, Any]:
    """Validation rows unlike the training rows, so a high learning rate soon overfits away from them."""
    row = chat_row(200 + i)
    row["messages"] = [{"role": "user", "content": f"Quelle heure est-il {i}?"},
                       {"role": "assistant", "content": f"Il est {i} heures et demie, mon ami."}]
    return row


def test_early_stopping_exports_the_best_evaluated_weights(tmp_path: Path, tiny_cfg) -> None:
    from safetensors.torch import load_file

    ds = write_dataset(tmp_path / "ds", [chat_row(i) for i in range(16)], [_french_row(i) for i in range(4)])
    cfg = tiny_cfg("train.max_steps=12", "train.lr=5e-2", "train.scheduler=constant", "train.batch_size=2",
                   "train.eval_every_steps=1", "train.early_stopping_patience=2", "tracking.enabled=false")
    recorder = _EvalRecorder()
    result = train(cfg, data=ds, callbacks=[recorder])

    during = recorder.evals[:-1]  # the last one is the evaluation after training
    best_step, best_loss, best_weights = min(during, key=lambda e: e[1])
    last_step, _, last_weights = during[-1]
    assert best_step < last_step, f"setup: val loss never got worse {[(s, loss) for s, loss, _ in during]}"
    m = result.metrics
    assert m["stopped_early"] and m["steps"] == last_step < 12  # patience 2: two worse evaluations, then stop
    assert (m["best_step"], m["best_val_loss"]) == (best_step, best_loss) and m["val_loss"] == best_loss
    assert artifacts.read_meta(result.path)["metrics"]["best_step"] == best_step

    exported = load_file(str(result.path / "adapter_model.safetensors"))
    assert exported.keys() == best_weights.keys()
    assert all(torch.equal(exported[k], best_weights[k]) for k in exported)
    assert any(not torch.equal(exported[k], last_weights[k]) for k in exported)


def test_without_early_stopping_the_last_weights_are_exported(tmp_path: Path, tiny_cfg) -> None:
    from safetensors.torch import load_file

    ds = write_dataset(tmp_path / "ds", [chat_row(i) for i in range(16)], [_french_row(i) for i in range(4)])
    cfg = tiny_cfg("train.max_steps=3", "train.lr=5e-2", "train.scheduler=constant", "train.batch_size=2",
                   "train.eval_every_steps=2", "tracking.enabled=false")
    recorder = _EvalRecorder()
    result = train(cfg, data=ds, callbacks=[recorder])
    assert "best_step" not in result.metrics and result.metrics["steps"] == 3
    exported = load_file(str(result.path / "adapter_model.safetensors"))
    last = recorder.evals[-1][2]
    assert all(torch.equal(exported[k], last[k]) for k in exported)


class _CtrlCAfter(TrainerCallback):
    """Sends this process SIGINT at the end of ``step``, once: the run checkpoints at its next step and stops."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_best_weights_survive_an_interruption_and_resume(tmp_path: Path, tiny_cfg) -> None:
    from safetensors.torch import load_file

    ds = write_dataset(tmp_path / "ds", [chat_row(i) for i in range(16)], [_french_row(i) for i in range(4)])
    cfg = tiny_cfg("train.max_steps=12", "train.lr=5e-2", "train.scheduler=constant", "train.batch_size=2",
                   "train.eval_every_steps=1", "train.early_stopping_patience=2", "train.save_every_steps=50",
                   "tracking.enabled=false")
    before, after = _EvalRecorder(), _EvalRecorder()
    with pytest.raises(TrainInterrupted):
        train(cfg, data=ds, callbacks=[before, _CtrlCAfter(4)])
    result = train(cfg, data=ds, resume=True, callbacks=[after])
    assert result.resumed_from_step == before.evals[-1][0]
    best_step, best_loss, best_weights = min([*before.evals, *after.evals[:-1]], key=lambda e: e[1])
    assert best_step <= result.resumed_from_step, (  # fixed seed: this holds unless the training math changed
        "setup: the best evaluation should precede the interruption; evals were "
        f"{[(s, round(v, 4)) for s, v, _ in [*before.evals, *after.evals]]}")
    assert (result.metrics["best_step"], result.metrics["best_val_loss"]) == (best_step, best_loss)
    exported = load_file(str(result.path / "adapter_model.safetensors"))
    assert all(torch.equal(exported[k], best_weights[k]) for k in exported)
