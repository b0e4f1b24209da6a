"""CUDA out-of-memory back-off, by fault injection: a callback raises torch's OOM error where CUDA would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from tuneforge.errors import TrainError
from tuneforge.tracking import TrackingStore
from tuneforge.train import TrainProgress, train
from tuneforge.workspace import Workspace


class _OomAt(TrainerCallback):
    """Raises CUDA's out-of-memory error at the start of optimizer step ``step`` of the first ``times``
    attempts, and records what every attempt ran with: (batch_size, grad_accum, first step)."""

    def __init__(self, step: int = 1, times: int = 1) -> None:
        self.step = step
        self.times = times
        self.attempts: list[tuple[int, int, int]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.attempts.append((args.per_device_train_batch_size, args.gradient_accumulation_steps,
                              state.global_step))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if len(self.attempts) <= self.times and state.global_step + 1 == self.step:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_oom_halves_the_batch_doubles_accumulation_and_completes(dataset: Path, tiny_cfg,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fault = _OomAt(step=1)
    events: list[TrainProgress] = []
    result = train(tiny_cfg("train.max_steps=3"), data=dataset, callbacks=[fault], progress=events.append)
    assert fault.attempts == [(4, 1, 0), (2, 2, 0)]  # same effective batch, from the start
    assert result.metrics["steps"] == 3 and result.metrics["oom_retries"] == [
        {"attempt": 1, "batch_size": 2, "grad_accum": 2, "from_checkpoint": None}]
    assert any("CUDA out of memory: retrying with batch_size=2, grad_accum=2" in e.note for e in events)
    assert (result.path / "adapter_model.safetensors").is_file()
    store = TrackingStore.resolve(None, Workspace.from_env())
    run = store.client().get_run(result.meta["tracking"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["tuneforge.oom_retries"] == "1"
    assert run.data.tags["tuneforge.batch_size"] == "2"


def test_oom_retry_continues_from_the_last_checkpoint(dataset: Path, tiny_cfg) -> None:
    fault = _OomAt(step=3)
    result = train(tiny_cfg("train.max_steps=4", "train.save_every_steps=2", "tracking.enabled=false"),
                   data=dataset, callbacks=[fault])
    assert fault.attempts == [(4, 1, 0), (2, 2, 2)]  # resumed after checkpoint-2
    assert result.metrics["oom_retries"][0]["from_checkpoint"] == "checkpoint-2"
    assert result.metrics["steps"] == 4


def test_oom_at_batch_size_one_is_a_clear_error(dataset: Path, tiny_cfg) -> None:
    fault = _OomAt(step=1, times=10)
    with pytest.raises(TrainError) as err:
        train(tiny_cfg("train.batch_size=2", "tracking.enabled=false"), data=dataset, callbacks=[fault])
    assert [a[:2] for a in fault.attempts] == [(2, 1), (1, 2)]
    assert "batch_size=1" in err.value.what
    fix = err.value.fix
    assert "gradient_checkpointing" in fix and "max_seq_len" in fix and "qlora" in fix
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


def test_oom_retries_are_limited_by_config(dataset: Path, tiny_cfg) -> None:
    fault = _OomAt(step=1, times=10)
    with pytest.raises(TrainError, match=r"after 1 back-off\(s\) \(train.oom_retries=1\)"):
        train(tiny_cfg("train.batch_size=4", "train.oom_retries=1", "tracking.enabled=false"), data=dataset,
              callbacks=[fault])
    assert [a[:2] for a in fault.attempts] == [(4, 1), (2, 2)]


@pytest.mark.parametrize(("batch", "accum", "expected"), [(8, 1, (4, 2)), (6, 2, (3, 4)), (3, 1, (1, 3)),
                                                          (5, 2, (1, 10)), (9, 1, (3, 3))])
def test_a_back_off_keeps_the_effective_batch(batch: int, accum: int, expected: tuple[int, int]) -> None:
    from tuneforge.config import load_config
    from tuneforge.train._oom import halved

    smaller = halved(load_config(None, [f"train.batch_size={batch}", f"train.grad_accum={accum}"]).train)
    assert (smaller.batch_size, smaller.grad_accum) == expected
    assert smaller.batch_size * smaller.grad_accum == batch * accum and smaller.batch_size <= batch // 2
