"""The optimizer: 8-bit AdamW only where it exists (CUDA + bitsandbytes), a clear error when forced elsewhere."""

from __future__ import annotations

import importlib.util

import pytest

from tuneforge.config import load_config
from tuneforge.errors import TrainError
from tuneforge.train._peft import optimizer

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def test_auto_is_torch_adamw_without_cuda_and_8bit_with_it() -> None:
    cfg = load_config(None, []).train
    assert optimizer(cfg, cuda=False) == "adamw_torch"
    assert optimizer(cfg, cuda=True) == ("adamw_bnb_8bit" if HAS_BNB else "adamw_torch")


def test_forcing_8bit_without_cuda_is_a_clear_error() -> None:
    cfg = load_config(None, ["train.optimizer=adamw_8bit"]).train
    with pytest.raises(TrainError, match="8-bit AdamW needs a CUDA GPU"):
        optimizer(cfg, cuda=False)
    assert optimizer(load_config(None, ["train.optimizer=adamw"]).train, cuda=True) == "adamw_torch"
