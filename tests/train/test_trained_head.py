"""The CPU loss scores trained positions only, drops right-padding masks, and equals the model's own loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import FAST, chat_row

from tuneforge.train._artifacts import RunDirs
from tuneforge.train._loss import causal_only, token_metrics, trained_positions_loss
from tuneforge.train._tokenize import build_examples


@pytest.fixture(scope="module")
def batch(tiny_model_dir: Path):
    """Three rows of 1-3 turns, right-padded as the SFT collator pads them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    exs, _ = build_examples(tok, [chat_row(i, turns=1 + i) for i in range(3)], "chat")
    width = max(len(e.input_ids) for e in exs)
    ids = torch.full((3, width), tok.pad_token_id)
    labels = torch.full((3, width), -100)
    mask = torch.zeros((3, width), dtype=torch.long)
    for r, e in enumerate(exs):
        n = len(e.input_ids)
        ids[r, :n], labels[r, :n], mask[r, :n] = torch.from_numpy(e.input_ids), torch.from_numpy(e.labels), 1
    assert (mask == 0).any()  # the batch really carries padding
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lora(tiny_model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    return model.train()


def _grads(model) -> torch.Tensor:
    out = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return out


def test_loss_and_gradients_equal_the_models_own(batch, tiny_model_dir: Path) -> None:
    model = _lora(tiny_model_dir)
    own = model(**batch).loss
    own.backward()
    expected = _grads(model)
    head = model.get_output_embeddings()
    seen: list[tuple[int, ...]] = []
    probe = head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    trained = trained_positions_loss(model, head, batch)
    probe.remove()
    trained.loss.backward()
    assert float(trained.loss.detach()) == pytest.approx(float(own.detach()), abs=1e-5)
    assert torch.allclose(_grads(model), expected, atol=1e-5, rtol=1e-4)
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(n, head.in_features)] and trained.logits.shape == (n, head.out_features)
    # Normalised by the accumulation's token count when Trainer passes it.
    halved = trained_positions_loss(model, head, batch, num_items_in_batch=torch.tensor(2 * n))
    assert float(halved.loss) == pytest.approx(float(own) / 2, abs=1e-5)
    entropy, accuracy = token_metrics(trained)
    assert entropy > 0 and 0 <= accuracy <= 1


def test_only_right_padding_masks_are_dropped(batch) -> None:
    assert "attention_mask" not in causal_only(batch)
    left = {**batch, "attention_mask": batch["attention_mask"].flip(1)}
    assert causal_only(left) is left  # left padding: real tokens come after pads, the mask matters
    holes = {**batch, "attention_mask": batch["attention_mask"].clone()}
    holes["attention_mask"][0, 1] = 0
    assert causal_only(holes) is holes
    packed = {**batch, "position_ids": torch.zeros_like(batch["input_ids"])}
    assert causal_only(packed) is packed


def test_trainer_uses_the_trained_head_and_bf16_adapter_inputs(batch, tiny_model_dir: Path, tmp_path: Path,
                                                                tiny_cfg) -> None:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from tuneforge.train._trainer import build_trainer, sft_args

    class Flags(TrainerCallback):
        casts: list[bool] = []

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.casts += [m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, BaseTunerLayer)]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    exs, _ = build_examples(tok, [chat_row(i) for i in range(4)], "chat")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    args = sft_args(tiny_cfg(*FAST, "train.max_steps=1").train, tmp_path / "staging", prec="bf16",
                    packing="length_grouped", has_val=False, cuda=False)
    flags = Flags()
    trainer = build_trainer(model, tok, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"), args,
                            exs, [], RunDirs(tmp_path / "run"), 1, [flags], cuda=False)
    trainer.train()
    # Autocast runs the adapters in bf16: PEFT's fp32 copy of every adapter input is switched off...
    assert flags.casts and not any(flags.casts)
    # ...and back on afterwards, for whoever uses the model next.
    assert all(m.cast_input_dtype_enabled for m in trainer.model.modules() if isinstance(m, BaseTunerLayer))
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    assert 0 <= logged["mean_token_accuracy"] <= 1 and logged["entropy"] > 0
