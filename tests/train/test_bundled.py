"""LoRA on the bundled SmolLM2-135M-Instruct (slow): the default path end to end, loss goes down."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import chat_row, write_dataset

from tuneforge.config import load_config
from tuneforge.train import train
from tuneforge.workspace import Workspace


@pytest.mark.slow
def test_lora_on_the_bundled_model_learns(bundled_home: Path, tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", [chat_row(i % 2) | {"id": f"r{i}"} for i in range(12)],
                       [chat_row(i) for i in range(2)])
    cfg = load_config(None, ["train.max_steps=6", "train.batch_size=2", "train.lr=1e-3",
                             "train.save_every_steps=null", "train.seed=0"])
    result = train(cfg, data=ds, workspace=Workspace.from_env(bundled_home), out=tmp_path / "adapter")
    m = result.metrics
    assert result.preflight.estimate.params == 134_515_008 and result.preflight.precision == "bf16"
    assert m["train_loss"] < m["train_loss_first"] * 0.7, m  # two distinct rows, seen six times: memorised
    assert m["tokens_per_s"] > 0 and result.meta["serving"]["vllm_lora"]
