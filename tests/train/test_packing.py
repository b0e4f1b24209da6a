"""Padding-free packing: examples share a row but never attend to each other, so losses are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import FAST, chat_row

from tuneforge.train._artifacts import RunDirs
from tuneforge.train._tokenize import build_examples
from tuneforge.train._trainer import build_trainer, sft_args


@pytest.fixture(scope="module")
def parts(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    exs, _ = build_examples(tok, [chat_row(1, turns=1), chat_row(2, turns=3)], "chat")
    return tok, model, exs


def _loss(parts, tmp: Path, tiny_cfg, packing: str, examples) -> float:
    tok, model, _ = parts
    args = sft_args(tiny_cfg(*FAST).train, tmp / packing, prec="fp32", packing=packing, has_val=False, cuda=False)
    trainer = build_trainer(model, tok, None, args, examples, [], RunDirs(tmp / "run"), 1, [], cuda=False)
    batch = trainer.data_collator([{"input_ids": e.input_ids.tolist(), "labels": e.labels.tolist(),
                                    "seq_lengths": [len(e.input_ids)]}
                                   for e in examples])
    if packing == "padding_free":
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, positions restart
        assert batch["position_ids"][0].tolist().count(0) == len(examples)
    model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(model, batch))


def test_packing_does_not_change_the_loss(parts, tmp_path: Path, tiny_cfg) -> None:
    _, _, (a, b) = parts
    alone = _loss(parts, tmp_path, tiny_cfg, "off", [b])
    packed_alone = _loss(parts, tmp_path, tiny_cfg, "padding_free", [b])
    assert packed_alone == pytest.approx(alone, abs=1e-5)
    padded = _loss(parts, tmp_path, tiny_cfg, "off", [a, b])
    packed = _loss(parts, tmp_path, tiny_cfg, "padding_free", [a, b])
    assert packed == pytest.approx(padded, abs=1e-5)  # no attention across the two examples
    assert packed != pytest.approx(alone, abs=1e-3)  # ...and the pair really is a different batch


def test_second_example_is_not_seen_through_the_first(parts) -> None:
    _, model, (a, b) = parts
    ids_a, ids_b = torch.from_numpy(a.input_ids)[None].long(), torch.from_numpy(b.input_ids)[None].long()
    with torch.no_grad():
        alone = model(input_ids=ids_b, use_cache=False).logits
        pos = torch.cat([torch.arange(ids_a.shape[1]), torch.arange(ids_b.shape[1])])[None]
        packed = model(input_ids=torch.cat([ids_a, ids_b], 1), position_ids=pos, use_cache=False).logits
        leaky = model(input_ids=torch.cat([ids_a, ids_b], 1), use_cache=False).logits  # one long sequence
    assert torch.allclose(packed[:, ids_a.shape[1]:], alone, atol=1e-5)
    assert not torch.allclose(leaky[:, ids_a.shape[1]:], alone, atol=1e-3)


def test_cpu_uses_length_grouped_batches() -> None:
    from tuneforge.train._train import _packing

    if torch.cuda.is_available():
        pytest.skip("CUDA machines may pick padding-free packing")
    assert _packing(True)[0] == "length_grouped" and _packing(False)[0] == "off"
