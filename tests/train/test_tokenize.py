"""The loss mask: every assistant turn and its end-of-turn token, never system or user text."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import FAST, chat_row, write_dataset

from tuneforge.train._tokenize import IGNORE, build_examples, encode, render_record, segments


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _trained_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])


def test_every_assistant_turn_and_its_end_token_are_trained(tokenizer) -> None:
    row = chat_row(3, turns=3)
    rendered, turns = render_record(tokenizer, row)
    ids, labels, _ = encode(tokenizer, rendered)
    trained = _trained_text(tokenizer, ids, labels)
    answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    assert turns == 3
    assert trained == "".join(f"{a}<|im_end|>\n" for a in answers)
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for t in labels if t == eot) == 3  # one per assistant turn, not the user/system ones
    assert sum(1 for t in ids if t == eot) == 7  # system + 3 user + 3 assistant


def test_system_and_user_text_is_never_trained(tokenizer) -> None:
    rendered, _ = render_record(tokenizer, chat_row(5, turns=2))
    segs = segments(tokenizer, rendered)
    for piece, trained in segs:
        if trained:
            assert "<|im_start|>" not in piece and "Ticket" not in piece and "support tickets" not in piece
    untrained = "".join(p for p, t in segs if not t)
    assert "You answer support tickets." in untrained and "Ticket 5.1" in untrained
    assert "".join(p for p, _ in segs) == rendered.text  # segments reproduce the text exactly
    ex = build_examples(tokenizer, [chat_row(5, turns=2)], "chat")[0][0]
    assert ex.trained == len(tokenizer("".join(p for p, t in segs if t), add_special_tokens=False)["input_ids"])


def test_text_rows_train_every_token_including_eos(tokenizer) -> None:
    rows = [{"id": "t", "kind": "text", "text": "Plain domain text.", "origin": "x:1"}, chat_row(1)]
    exs, skipped = build_examples(tokenizer, rows, "text")
    assert skipped == 1 and len(exs) == 1
    assert (exs[0].labels == exs[0].input_ids).all() and exs[0].input_ids[-1] == tokenizer.eos_token_id


def test_padding_never_masks_the_end_of_turn_token(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    """SmolLM2 pads with <|im_end|>, its end-of-turn token: padded batches must keep those labels."""
    import torch

    from tuneforge.models import load_tokenizer, resolve_model
    from tuneforge.train._artifacts import RunDirs
    from tuneforge.train._trainer import build_trainer, sft_args
    from tuneforge.workspace import Workspace

    tok = load_tokenizer(resolve_model(str(tiny_model_dir), Workspace.from_env(tmp_path)))
    assert tok.pad_token_id == tok.eos_token_id
    rows = [chat_row(i, turns=1 + i % 3) for i in range(6)]  # different lengths -> padding
    exs, _ = build_examples(tok, rows, "chat")
    cfg = tiny_cfg(*FAST).train
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = sft_args(cfg, tmp_path / "stage", prec="fp32", packing="off", has_val=False, cuda=False)
    trainer = build_trainer(model, tok, None, args, exs, [], RunDirs(tmp_path / "run"), 1, [], cuda=False)
    batch = trainer.data_collator([{"input_ids": e.input_ids.tolist(), "labels": e.labels.tolist()} for e in exs])
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    for i, e in enumerate(exs):
        n = len(e.input_ids)
        assert batch["labels"][i, :n].tolist() == e.labels.tolist()
        assert (batch["labels"][i, n:] == IGNORE).all()
        assert int((batch["labels"][i] == tok.eos_token_id).sum()) == e.turns
    assert torch.equal(batch["input_ids"][batch["attention_mask"] == 0],
                       torch.full_like(batch["input_ids"][batch["attention_mask"] == 0], tok.pad_token_id))


def test_prepared_dataset_rows_round_trip(tokenizer, tmp_path: Path) -> None:
    from tuneforge.train._tokenize import read_split

    ds = write_dataset(tmp_path / "ds", [chat_row(i) for i in range(3)])
    recs = list(read_split(ds / "train.jsonl"))
    assert [r["id"] for r in recs] == ["r0", "r1", "r2"] and list(read_split(ds / "missing.jsonl")) == []
