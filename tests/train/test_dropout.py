"""LoRA dropout with the cheaper mask (train/_dropout.py) behaves as nn.Dropout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tuneforge.train._dropout import FastDropout, use_fast_dropout


def test_drop_rate_and_expectation_match_the_probability() -> None:
    torch.manual_seed(0)
    ones = torch.ones(2048, 2048)
    for p in (0.05, 0.1, 0.5):
        out = FastDropout(p).train()(ones)
        dropped = (out == 0).float().mean().item()
        assert abs(dropped - p) < 2e-3, (p, dropped)  # 4M draws: s.e. < 3e-4
        assert abs(out.mean().item() - 1.0) < 3e-3  # survivors scaled by 1/(1 - rate)
        assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - FastDropout(p).threshold / 2**15)))


def test_gradient_flows_through_the_kept_elements_only() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 96, dtype=torch.bfloat16, requires_grad=True)
    layer = FastDropout(0.3).train()
    out = layer(x)
    out.backward(torch.ones_like(out))
    kept = out != 0
    assert torch.equal(x.grad != 0, kept)
    expected = torch.tensor(layer.scale, dtype=torch.bfloat16)
    assert torch.equal(x.grad[kept], expected.expand(int(kept.sum())))


def test_eval_is_identity_masks_differ_per_call_and_follow_the_seed() -> None:
    x = torch.randn(32, 32)
    layer = FastDropout(0.2)
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    torch.manual_seed(7)
    a, b = layer(x), layer(x)
    torch.manual_seed(7)
    assert not torch.equal(a == 0, b == 0)
    assert torch.equal(layer(x), a)  # the same seed, the same mask: resume stays exact
    with pytest.raises(ValueError):
        FastDropout(1.0)


def test_replaces_every_lora_dropout_of_a_peft_model(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    lora_layers = [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)]
    assert lora_layers and use_fast_dropout(model) == len(lora_layers)
    assert all(isinstance(m.lora_dropout["default"], FastDropout) for m in lora_layers)
    assert use_fast_dropout(model) == 0  # nothing left to replace
    ids = torch.randint(0, 100, (2, 12))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
