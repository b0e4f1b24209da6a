"""Per-row adapters through hooks registered once: the same logits as PEFT's own per-call
``adapter_names`` path, including an adapter added later on modules the first one did not touch,
and after an adapter is deleted."""

from __future__ import annotations

from pathlib import Path

import torch

from tuneforge.serve.engines._row_adapters import RowAdapters


def _peft_model(model_dir: Path) -> tuple[object, object]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
                           adapter_name="attn")
    # The second adapter targets layers the first did not: PEFT wraps new modules when it is added.
    model.add_adapter("mlp", LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights=False))
    return model.eval(), base


def test_rows_match_peft_adapter_names_and_follow_adapter_changes(tiny_model_dir: Path) -> None:
    model, _ = _peft_model(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4, 5]] * 3)
    names = ["attn", "__base__", "mlp"]
    rows = RowAdapters()
    rows.install(model)
    with torch.no_grad():
        expected = model(input_ids=ids, adapter_names=names).logits
        with rows.serving(names):
            got = model.get_base_model()(input_ids=ids).logits
        assert torch.allclose(got, expected, atol=1e-6)
        # Each adapter really changes its row: the three rows differ although the inputs are equal.
        assert not torch.allclose(got[0], got[1], atol=1e-4) and not torch.allclose(got[2], got[1], atol=1e-4)

        model.set_adapter("mlp")  # PEFT's own forward looks up the active adapter's config
        model.delete_adapter("attn")
        rows.install(model)
        names = ["mlp", "__base__", "mlp"]
        expected = model(input_ids=ids, adapter_names=names).logits
        with rows.serving(names):
            got = model.get_base_model()(input_ids=ids).logits
        assert torch.allclose(got, expected, atol=1e-6)
        # Outside `serving` the hooks stand aside: PEFT's active adapter applies, as without them.
        assert torch.allclose(model(input_ids=ids).logits, model.get_base_model()(input_ids=ids).logits)
    rows.remove()
    assert not any(m._forward_pre_hooks for m in model.modules())
