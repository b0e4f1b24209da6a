"""Padding-free packing: examples share a row but never attend to each other, so losses are unchanged.

Two attention paths are checked: transformers' sdpa with its packed-sequence mask, and tuneforge's
variable-length attention function (`_varlen`), whose per-example path runs here and on CUDA backs
the flash kernel when that is missing or fails its check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import FAST, chat_row

from tuneforge.train import _varlen
from tuneforge.train._artifacts import RunDirs
from tuneforge.train._peft import Attention, attention_for
from tuneforge.train._tokenize import build_examples
from tuneforge.train._trainer import build_trainer, sft_args


@pytest.fixture(scope="module", params=["sdpa", _varlen.NAME])
def parts(request, tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if request.param == _varlen.NAME:
        _varlen.register()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation=request.param)
    assert model.config._attn_implementation == request.param
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


def test_varlen_attention_matches_each_example_alone_with_gradients(tiny_model_dir: Path) -> None:
    """The boundaries TRL's collator passes (cu_seq_lens_q) and those derived from position_ids give
    each example exactly its own logits and gradients, with grouped-query heads (4 query, 2 key/value)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation=_varlen.register())
    assert model.config.num_attention_heads != model.config.num_key_value_heads
    torch.manual_seed(0)
    lengths = [7, 12, 5]
    rows = [torch.randint(3, model.config.vocab_size, (n,)) for n in lengths]
    flat, pos = torch.cat(rows)[None], torch.cat([torch.arange(n) for n in lengths])[None]
    cu, longest = _varlen.boundaries(pos)
    assert cu.tolist() == [0, 7, 19, 24] and longest == 12 and cu.dtype == torch.int32

    def grads_of(logits: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        logits.square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    alone = torch.cat([model(input_ids=r[None], use_cache=False).logits for r in rows], 1)
    alone_grads = grads_of(alone)
    passed = model(input_ids=flat, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest,
                   max_length_k=longest, use_cache=False).logits
    derived = model(input_ids=flat, position_ids=pos, use_cache=False).logits
    assert torch.allclose(passed, alone, atol=1e-5) and torch.allclose(derived, alone, atol=1e-5)
    for got, want in zip(grads_of(passed), alone_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    leaky = model(input_ids=flat, use_cache=False).logits  # one long sequence: the later examples differ
    assert not torch.allclose(leaky[:, 7:], alone[:, 7:], atol=1e-3)


def test_varlen_attention_keeps_padded_batches_masked(tiny_model_dir: Path) -> None:
    """A padded batch (generation, a DPO pair) is not packed: it takes sdpa with its padding mask."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32}
    ours = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=_varlen.register(), **kwargs)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **kwargs)
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask, use_cache=False).logits
        want = plain(input_ids=ids, attention_mask=mask, use_cache=False).logits
        unmasked = plain(input_ids=ids, use_cache=False).logits
    assert torch.allclose(got[0, 2:], want[0, 2:], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
    assert not torch.allclose(got[0, 2:], unmasked[0, 2:], atol=1e-3)


def test_packing_choice() -> None:
    from transformers import LlamaConfig

    from tuneforge.train._train import _packing

    varlen = Attention(_varlen.NAME, True, "varlen kernel")
    assert _packing(True, "sft", varlen) == ("padding_free", "varlen kernel")
    assert varlen.loaded_for("padding_free") == _varlen.NAME and varlen.loaded_for("off") is None
    assert _packing(False, "sft", varlen)[0] == "off" and _packing(True, "dpo", varlen)[0] == "off"
    prefix = type("Prefix", (), {"is_prompt_learning": True})()
    assert _packing(True, "sft", varlen, prefix)[0] == "length_grouped"
    if not torch.cuda.is_available():  # on CPU length-grouped batches measured faster than packed rows
        here = attention_for(LlamaConfig())
        assert _packing(True, "sft", here) == ("length_grouped", here.reason) and "CPU" in here.reason
    assert _varlen.supports(LlamaConfig()) is None
    assert "sliding-window" in _varlen.supports(LlamaConfig(sliding_window=8))  # type: ignore[operator]


def test_training_packs_rows_through_varlen_attention(dataset: Path, tiny_cfg, monkeypatch) -> None:
    """Where a variable-length kernel is chosen (a GPU), `train` loads the model with it, packs the rows
    padding-free, and the plan counts packed rows. Forced here: the per-example path runs on CPU."""
    from transformers import TrainerCallback

    from tuneforge.train import _peft, train

    monkeypatch.setattr(_peft, "attention_for", lambda config: Attention(_varlen.register(), True, "forced"))
    seen: dict[str, object] = {}

    class Spy(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen.setdefault("attn", model.config._attn_implementation)

    cfg = tiny_cfg("train.max_steps=null", "train.epochs=1", "train.max_seq_len=256", "train.batch_size=2")
    result = train(cfg, data=dataset, out=dataset.parent / "adapter", callbacks=[Spy()])
    pre = result.preflight
    assert (pre.packing, pre.packing_reason) == ("padding_free", "forced") and seen["attn"] == _varlen.NAME
    assert result.meta["packing"]["mode"] == "padding_free"
    # 24 rows of ~60 tokens fill a few 256-token rows: 2 packed rows per step, far fewer than 24 / 2 steps.
    assert result.metrics["steps"] == pre.steps < 24 // 2
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))


def test_kernel_check_accepts_exact_kernels_and_refuses_leaky_or_failing_ones() -> None:
    """The check that guards the CUDA kernel, run here on CPU kernels: per-example attention passes;
    one causal pass over the whole row (examples see each other) and a kernel that raises are refused."""
    import torch.nn.functional as F

    def exact(q, k, v, cu, longest, scale):
        return _varlen._per_example(q, k, v, cu.tolist(), scale, 0.0)

    def leaky(q, k, v, cu, longest, scale):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True).transpose(1, 2)

    def broken(q, k, v, cu, longest, scale):
        raise RuntimeError("no kernel image is available")

    assert _varlen.check_kernel(exact, "cpu") is None
    assert "disagrees" in _varlen.check_kernel(leaky, "cpu")  # type: ignore[operator]
    assert "no kernel image" in _varlen.check_kernel(broken, "cpu")  # type: ignore[operator]
