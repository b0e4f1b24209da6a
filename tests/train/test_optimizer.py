"""Hardware-dependent choices: 8-bit AdamW only where it exists (CUDA + bitsandbytes), a clear error when
forced elsewhere; bf16 only where the device has bf16 kernels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tuneforge.config import load_config
from tuneforge.errors import TrainError
from tuneforge.train import _peft
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


def test_a_dry_run_already_refuses_8bit_adamw_without_cuda(dataset: Path, tiny_cfg) -> None:
    import torch

    from tuneforge.train import train

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainError, match="8-bit AdamW needs a CUDA GPU"):
        train(tiny_cfg("train.optimizer=adamw_8bit"), data=dataset, dry_run=True)


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = load_config(None, []).train
    monkeypatch.setattr(_peft, "cpu_has_bf16", lambda: False)
    assert _peft.precision(auto) == "fp32"
    assert _peft.precision(load_config(None, ["train.precision=bf16"]).train) == "bf16"  # asked for: kept
    monkeypatch.setattr(_peft, "cpu_has_bf16", lambda: True)
    assert _peft.precision(auto) == "bf16"


def test_a_cpu_with_bf16_instructions_is_seen_as_one() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or "avx512_bf16" not in cpuinfo.read_text():
        pytest.skip("needs a Linux x86 CPU with AVX512-BF16")
    assert _peft.cpu_has_bf16()
