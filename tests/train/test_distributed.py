"""Multi-process training: `tuneforge train --launcher torchrun --nproc 2` on CPU (DDP over gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import chat_dataset, chat_row, write_dataset
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import load_config
from tuneforge.errors import TrainError
from tuneforge.train import _artifacts as artifacts
from tuneforge.train import _launch, train
from tuneforge.workspace import Workspace

runner = CliRunner()
# Epoch-based on purpose: with a fixed max_steps both runs would take the same number of steps.
SETTINGS = ["train.batch_size=4", "train.grad_accum=1", "train.epochs=1", "train.lr=1e-2",
            "train.precision=fp32", "train.warmup_ratio=0.0"]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNEFORGE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop(_launch.LAUNCHED_ENV, None)
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same data and settings trained in one process (library) and in two (torchrun, real CLI)."""
    root = tmp_path_factory.mktemp("ddp")
    ds = chat_dataset(root / "ds")
    sets = [f"model.base={tiny_model_dir}", *SETTINGS]
    single = train(load_config(None, [*sets, "train.save_every_steps=null"]), data=ds,
                   workspace=Workspace(root / "home"))
    out = root / "ddp-adapter"
    # A checkpoint every step: each is written by both ranks, then committed once by rank 0.
    proc = _cli(root / "home", "--launcher", "torchrun", "--nproc", "2", "--data", str(ds), "--out", str(out),
                *[a for s in [*sets, "train.save_every_steps=1"] for a in ("--set", s)])
    return {"single": single, "proc": proc, "out": out, "home": root / "home"}


def test_torchrun_two_processes_train_one_adapter(runs: dict[str, Any]) -> None:
    proc, out = runs["proc"], runs["out"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "trained" in proc.stdout and proc.stdout.count("train loss") == 1  # rank 0 alone reports
    meta = json.loads((out / "tuneforge.json").read_text())
    assert meta["world_size"] == 2
    assert meta["distributed"] == {"world_size": 2, "strategy": "ddp", "launcher": "torchrun"}
    assert artifacts.verify_checksum(out)
    for key in ("train_loss", "train_loss_first", "val_loss"):
        assert math.isfinite(meta["metrics"][key]), key
    assert not list(out.parent.glob(f".{out.name}.*.tmp"))  # no second writer left a temp dir
    assert not (runs["home"] / "runs" / meta["run_key"][:32]).exists()  # checkpoints cleaned up once


def test_two_processes_take_half_the_optimizer_steps(runs: dict[str, Any]) -> None:
    single = runs["single"]
    meta = json.loads((runs["out"] / "tuneforge.json").read_text())
    assert single.meta["world_size"] == 1 and single.metrics["steps"] == 6  # 24 rows / batch 4
    assert meta["metrics"]["steps"] * 2 == single.metrics["steps"]
    # Each process held a device for the whole run: both are billed.
    # (wall_time_s is rounded to 10 ms: 1e-5 h is 36 ms)
    assert meta["metrics"]["device_hours"] == pytest.approx(2 * meta["metrics"]["wall_time_s"] / 3600, abs=1e-5)
    assert single.metrics["device_hours"] == pytest.approx(single.metrics["wall_time_s"] / 3600, abs=1e-5)
    # Twice the effective batch is another run: the DDP adapter never reuses the single-process one.
    assert meta["run_key"] != single.run_key


def test_ddp_adapter_loads_with_plain_peft(runs: dict[str, Any], tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = runs["out"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    saved = load_file(out / "adapter_model.safetensors")
    lora_b = [t for k, t in saved.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # trained: B starts at zero
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 520, 3000, 42]])).logits
    assert torch.isfinite(logits).all()


def test_checkpoints_hold_every_rank_state_after_commit(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A diverging DDP run stops after its first checkpoint; that checkpoint is complete and committed."""
    ds = write_dataset(tmp_path / "ds", [chat_row(i) for i in range(24)])
    # lr=1e30: step 1 is finite and checkpointed, its update makes the step-2 loss NaN.
    sets = [f"model.base={tiny_model_dir}", *SETTINGS, "train.lr=1e30", "train.save_every_steps=1"]
    proc = _cli(tmp_path / "home", "--launcher", "torchrun", "--nproc", "2", "--data", str(ds),
                "--out", str(tmp_path / "a"), *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 1
    assert "loss became nan at step 2" in proc.stderr and "Traceback" not in proc.stderr
    assert "worker rank 1 exited" in proc.stderr or "worker rank 0 exited" in proc.stderr
    (run,) = (tmp_path / "home" / "runs").iterdir()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-1"]
    files = {p.name for p in (run / "checkpoints" / "checkpoint-1").iterdir()}
    assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state_0.pth",
            "rng_state_1.pth"} <= files
    assert not list((run / ".staging").glob("checkpoint-*"))


@pytest.mark.parametrize(("args", "message"), [
    (["--launcher", "mpi", "--nproc", "2"], "unknown launcher 'mpi'"),
    (["--launcher", "torchrun", "--nproc", "0"], "--nproc must be at least 1"),
    (["--nproc", "2"], "need a launcher"),
    (["--launcher", "torchrun", "--nnodes", "2", "--node-rank", "1"], "needs the address of node 0"),
    (["--launcher", "torchrun", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h"], "outside 0..1"),
])
def test_bad_launcher_options_are_clear_errors(args: list[str], message: str, dataset: Path,
                                               tiny_model_dir: Path) -> None:
    r = runner.invoke(app, ["train", "--data", str(dataset), "--set", f"model.base={tiny_model_dir}", *args])
    assert r.exit_code != 0 and isinstance(r.exception, TrainError), r.output
    assert message in str(r.exception) and r.exception.fix


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs on CUDA")
def test_fsdp_without_cuda_is_refused_before_launching(dataset: Path, tiny_model_dir: Path) -> None:
    r = runner.invoke(app, ["train", "--launcher", "torchrun", "--nproc", "2", "--data", str(dataset),
                            "--set", f"model.base={tiny_model_dir}", "--set", "train.distributed.strategy=fsdp"])
    assert isinstance(r.exception, TrainError) and "FSDP" in str(r.exception)
    assert "strategy=ddp" in r.exception.fix


def test_multi_node_command_carries_the_rendezvous_and_the_arguments() -> None:
    spec = _launch.LaunchSpec("torchrun", 4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500)
    spec.check()
    cmd = _launch.command(spec, ["train", "--set", "train.lr=1e-4"])
    assert {"--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1",
            "--master-port=29500"} <= set(cmd)
    assert cmd[-5:] == ["-m", "tuneforge.cli", "train", "--set", "train.lr=1e-4"] and "--standalone" not in cmd
    single = _launch.command(_launch.LaunchSpec("torchrun", 2), ["train"])
    assert "--standalone" in single and not any(a.startswith("--master-port") for a in single)
    acc = _launch.command(_launch.LaunchSpec("accelerate", 2, nnodes=2, node_rank=1, master_addr="h",
                                             master_port=1234), ["train"])
    assert {"--num_processes=4", "--num_machines=2", "--machine_rank=1", "--main_process_ip=h",
            "--main_process_port=1234"} <= set(acc)


def test_fsdp_settings_map_onto_transformers_arguments() -> None:
    cfg = load_config(None, ["train.distributed.strategy=fsdp", "train.distributed.fsdp_sharding=shard_grad_op",
                             "train.distributed.fsdp_offload=true",
                             "train.distributed.fsdp_config={activation_checkpointing: true}"])
    kwargs = _launch.trainer_kwargs(cfg.train.distributed)
    assert kwargs["fsdp"] == "shard_grad_op auto_wrap offload"
    assert kwargs["fsdp_config"] == {"version": 2, "activation_checkpointing": True}
    assert "ddp_backend" not in kwargs  # auto: accelerate picks nccl on CUDA, gloo with use_cpu
    ddp = _launch.trainer_kwargs(load_config(None, []).train.distributed)
    assert "fsdp" not in ddp and ddp["ddp_find_unused_parameters"] is False
