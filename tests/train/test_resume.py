"""Checkpoints and resume: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed ends where an
uninterrupted run ends. The runs cross an epoch boundary and use LoRA dropout, so data order and RNG
state must both be restored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import chat_row, write_dataset

from tuneforge.config import load_config
from tuneforge.errors import TrainError
from tuneforge.train import TrainResult, train
from tuneforge.workspace import Workspace

SETTINGS = ["train.max_steps=14", "train.batch_size=4", "train.lr=5e-3", "train.save_every_steps=3",
            "train.keep_checkpoints=2", "train.warmup_ratio=0.1"]  # 24 rows / 4 = 6 steps per epoch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume-data")
    return write_dataset(root / "ds", [chat_row(i, turns=1 + i % 2) for i in range(24)],
                         [chat_row(100 + i) for i in range(4)])


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The same run, uninterrupted and in-process."""
    cfg = load_config(None, [f"model.base={tiny_model_dir}", *SETTINGS])
    return train(cfg, data=data_dir, workspace=Workspace(tmp_path_factory.mktemp("resume-ref")))


def _cli(home: Path, tiny: Path, data: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "tuneforge.cli", "train", "--data", str(data), "--set", f"model.base={tiny}"]
    for s in SETTINGS:
        args += ["--set", s]
    env = {**os.environ, "TUNEFORGE_HOME": str(home)}
    return subprocess.Popen([*args, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(home: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(home.glob(f"runs/*/checkpoints/checkpoint-{step}")):
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before checkpoint-{step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint-{step} after {timeout}s")


def _same_result(adapter: Path, ref: TrainResult) -> None:
    from safetensors.torch import load_file

    meta = json.loads((adapter / "tuneforge.json").read_text())
    assert meta["run_key"] == ref.run_key
    assert meta["metrics"]["steps"] == ref.metrics["steps"] == 14
    assert meta["metrics"]["train_loss"] == pytest.approx(ref.metrics["train_loss"], abs=1e-4)
    assert meta["metrics"]["val_loss"] == pytest.approx(ref.metrics["val_loss"], abs=1e-4)
    a = load_file(str(adapter / "adapter_model.safetensors"))
    b = load_file(str(ref.path / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def _adapter(home: Path) -> Path:
    found = list(home.glob("adapters/*/tuneforge.json"))
    assert len(found) == 1
    return found[0].parent


def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, tiny_model_dir: Path, data_dir: Path, reference: TrainResult
) -> None:
    home = tmp_path / "home"
    proc = _cli(home, tiny_model_dir, data_dir)
    _wait_for_checkpoint(home, 9, proc)  # in the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(home.glob("adapters/*/tuneforge.json")), "the run finished before it was killed"
    ckpts = sorted(p.name for p in home.glob("runs/*/checkpoints/checkpoint-*"))
    # keep_checkpoints is 2; a kill between publishing checkpoint-9 and deleting the oldest leaves one
    # extra complete checkpoint, never a half-written one (those live under a temporary name).
    assert "checkpoint-9" in ckpts and len(ckpts) <= 3, ckpts
    assert all(next(home.glob(f"runs/*/checkpoints/{c}/trainer_state.json"), None) for c in ckpts), ckpts

    cfg = load_config(None, [f"model.base={tiny_model_dir}", *SETTINGS])
    with pytest.raises(TrainError, match="pass --resume"):  # never silently starts over
        train(cfg, data=data_dir, workspace=Workspace(home))

    resumed = _cli(home, tiny_model_dir, data_dir, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed from step" in out
    adapter = _adapter(home)
    assert json.loads((adapter / "tuneforge.json").read_text())["resumed_from_step"] in (9, 12)
    _same_result(adapter, reference)


def test_ctrl_c_saves_a_checkpoint_and_resume_completes(
    tmp_path: Path, tiny_model_dir: Path, data_dir: Path, reference: TrainResult
) -> None:
    home = tmp_path / "home"
    proc = _cli(home, tiny_model_dir, data_dir)
    _wait_for_checkpoint(home, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert "training interrupted at step" in err and "--resume" in err
    step = int(err.split("training interrupted at step ")[1].split(";")[0])
    assert list(home.glob(f"runs/*/checkpoints/checkpoint-{step}"))
    resumed = _cli(home, tiny_model_dir, data_dir, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    adapter = _adapter(home)
    assert json.loads((adapter / "tuneforge.json").read_text())["resumed_from_step"] == step
    _same_result(adapter, reference)
