"""Fused layer kernels: Liger only where it runs (CUDA, installed, a known architecture), a clear error
when forced elsewhere, and a trainer configured with its layer kernels but never its fused loss."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
from train_helpers import FAST, chat_row

from tuneforge.errors import TrainError
from tuneforge.train import train
from tuneforge.train._kernels import LIGER_CONFIG, Kernels, choose, trainer_args

HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None


def _llama() -> object:
    from transformers import LlamaConfig

    return LlamaConfig()


def test_auto_keeps_the_models_layers_without_cuda_and_none_never_uses_liger() -> None:
    auto = choose("auto", _llama(), cuda=False)
    assert auto.name == "none" and "CUDA" in auto.reason and trainer_args(auto.name) == {}
    assert choose("none", _llama(), cuda=True) == Kernels("none", "train.kernels=none")


def test_forcing_liger_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(TrainError, match="train.kernels=liger, but Liger's kernels are Triton kernels") as info:
        choose("liger", _llama(), cuda=False)
    assert info.value.where == "train.kernels" and "train.kernels=auto" in (info.value.fix or "")


@pytest.mark.skipif(HAS_LIGER, reason="liger-kernel is installed here")
def test_without_the_package_auto_says_how_to_install_it_and_liger_refuses() -> None:
    auto = choose("auto", _llama(), cuda=True)
    assert auto.name == "none" and "not installed" in auto.reason
    with pytest.raises(TrainError, match="liger-kernel package is not installed") as info:
        choose("liger", _llama(), cuda=True)
    assert "tuneforge[gpu]" in (info.value.fix or "")


@pytest.mark.skipif(not HAS_LIGER, reason="needs liger-kernel")
def test_with_the_package_llama_gets_liger_and_an_unknown_architecture_does_not() -> None:
    from transformers import GPT2Config

    assert choose("auto", _llama(), cuda=True).name == "liger"
    other = choose("auto", GPT2Config(), cuda=True)
    assert other.name == "none" and "'gpt2'" in other.reason


def test_trainer_takes_liger_layer_kernels_but_keeps_trls_fused_loss(tiny_model_dir: Path, tmp_path: Path,
                                                                      tiny_cfg) -> None:
    """TRL refuses Liger's fused cross-entropy (it replaces the forward TRL patches): the args must
    switch it off, and the trainer must build with them."""
    from transformers import AutoModelForCausalLM

    from tuneforge.models import load_tokenizer, resolve_model
    from tuneforge.train._artifacts import RunDirs
    from tuneforge.train._tokenize import build_examples
    from tuneforge.train._trainer import build_trainer, sft_args
    from tuneforge.workspace import Workspace

    cfg = tiny_cfg(*FAST).train
    args = sft_args(cfg, tmp_path / "stage", prec="fp32", packing="off", has_val=False, cuda=False, kernels="liger")
    assert args.use_liger_kernel and args.liger_kernel_config == LIGER_CONFIG
    assert not sft_args(cfg, tmp_path / "s2", prec="fp32", packing="off", has_val=False, cuda=False).use_liger_kernel
    tok = load_tokenizer(resolve_model(str(tiny_model_dir), Workspace.from_env(tmp_path)))
    exs, _ = build_examples(tok, [chat_row(i) for i in range(4)], "chat")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = build_trainer(model, tok, None, args, exs, [], RunDirs(tmp_path / "run"), 1, [], cuda=False)
    assert trainer.args.liger_kernel_config["fused_linear_cross_entropy"] is False


def test_dry_run_and_adapter_record_the_kernel_choice(dataset: Path, tiny_cfg) -> None:
    pre = train(tiny_cfg(), data=dataset, dry_run=True).preflight
    assert pre.kernels == "none" and "CUDA" in pre.kernels_reason
    with pytest.raises(TrainError, match="train.kernels=liger"):
        train(tiny_cfg("train.kernels=liger"), data=dataset, dry_run=True)
    result = train(tiny_cfg("train.max_steps=1"), data=dataset, out=dataset.parent / "adapter")
    assert result.meta["kernels"] == {"name": "none", "reason": pre.kernels_reason}
