"""`tuneforge merge` on the tiny model: merged logits equal the adapter's, bad inputs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import FAST, chat_row, write_dataset
from typer.testing import CliRunner

from tuneforge.config import load_config
from tuneforge.errors import TrainError
from tuneforge.train import _artifacts as artifacts
from tuneforge.train import train
from tuneforge.train.merge import MergeResult, check_prompts, max_logit_diff, merge_adapter, model_logits
from tuneforge.workspace import Workspace


def _train(root: Path, tiny_model_dir: Path, *overrides: str) -> Path:
    ds = write_dataset(root / "ds", [chat_row(i) for i in range(12)], [chat_row(100 + i) for i in range(2)])
    cfg = load_config(None, [f"model.base={tiny_model_dir}", *FAST, "train.max_steps=3", "train.lr=5e-2",
                             "tracking.enabled=false", *overrides])
    return train(cfg, data=ds, workspace=Workspace(root / "ws")).path


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("merge-lora"), tiny_model_dir)


@pytest.fixture(scope="module")
def merged(lora_adapter: Path) -> MergeResult:
    return merge_adapter(lora_adapter, lora_adapter.parent.parent / "merged", workspace=Workspace(lora_adapter.parent.parent))


def _adapter_logits(adapter: Path, base_dir: Path, prompts: list[list[int]]) -> list[torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return model_logits(PeftModel.from_pretrained(base, adapter), prompts)


def test_merged_model_loads_with_plain_transformers_and_matches_the_adapter(
        lora_adapter: Path, merged: MergeResult, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora_b = {k: v for k, v in load_file(str(lora_adapter / "adapter_model.safetensors")).items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # the adapter really changes the model

    result = merged
    assert result.passed and result.prompts_checked == 3 and result.dtype == "float32"
    assert 0 <= result.max_abs_diff <= result.tolerance == 1e-3 and 0 <= result.merge_diff <= 1e-3

    out = result.path
    assert {"model.safetensors", "config.json", "tokenizer.json", "tuneforge.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "adapter_config.json").exists() and not list(out.parent.glob(".merged*"))
    meta = json.loads((out / "tuneforge.json").read_text())
    source = json.loads((lora_adapter / "tuneforge.json").read_text())
    assert meta["kind"] == "merged" and meta["contract"] == source["contract"]
    assert meta["source_adapter"]["checksum"] == source["checksum"]
    assert meta["source_adapter"]["path"] == str(lora_adapter.resolve())
    assert meta["merge"]["max_abs_diff"] == result.max_abs_diff and meta["merge"]["passed"] is True
    assert meta["merge"]["merge_diff"] == result.merge_diff and meta["merge"]["dtype"] == "float32"
    assert meta["checksum"] == result.checksum and artifacts.verify_checksum(out)

    # Independently of merge_adapter: plain transformers + the merged dir's own tokenizer and template.
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == source["contract"]["chat_template"]
    prompts = check_prompts(tokenizer)
    merged_logits = model_logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), prompts)
    adapter_logits = _adapter_logits(lora_adapter, tiny_model_dir, prompts)
    assert max_logit_diff(adapter_logits, merged_logits) <= 1e-3
    base_logits = model_logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), prompts)
    assert max_logit_diff(base_logits, merged_logits) > 100 * max(result.max_abs_diff, 1e-5)  # the merge happened


def test_a_corrupted_merged_weight_is_caught(lora_adapter: Path, merged: MergeResult, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = merged
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    prompts = check_prompts(tokenizer)
    reference = _adapter_logits(lora_adapter, tiny_model_dir, prompts)
    broken = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32)
    with torch.no_grad():
        w = broken.model.layers[1].self_attn.o_proj.weight
        w[0] += 0.5  # one row of one projection
    assert max_logit_diff(reference, model_logits(broken, prompts)) > result.tolerance


def test_merge_over_tolerance_is_refused_and_leaves_nothing(lora_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    # bf16 rounding of every merged weight cannot stay within 1e-7 of the fp32 adapter.
    with pytest.raises(TrainError, match="nothing was written") as err:
        merge_adapter(lora_adapter, out, workspace=Workspace(lora_adapter.parent.parent), dtype="bfloat16",
                      tolerance=1e-7)
    assert "tolerance 1e-07" in err.value.what and "--dtype float32" in err.value.fix
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bfloat16_merge_passes_its_default_tolerance(lora_adapter: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    result = merge_adapter(lora_adapter, tmp_path / "m16", workspace=Workspace(lora_adapter.parent.parent),
                           dtype="bfloat16")
    assert result.passed and result.tolerance == 4.0 and result.max_abs_diff > result.merge_diff
    assert result.merge_diff <= 1e-3  # the merge itself is checked in fp32 before the cast
    with safe_open(str(result.path / "model.safetensors"), framework="pt") as st:
        assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.bfloat16}  # noqa: SIM118


def test_dora_adapter_merges(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = _train(tmp_path, tiny_model_dir, "train.peft=dora")
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    result = merge_adapter(adapter, tmp_path / "merged", workspace=Workspace(tmp_path / "ws"))
    assert result.passed and result.max_abs_diff <= 1e-3
    assert result.meta["source_adapter"]["peft_type"] == "LORA"


def test_inputs_that_are_not_adapters_are_refused(lora_adapter: Path, merged: MergeResult, tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    ws = Workspace(lora_adapter.parent.parent)
    with pytest.raises(TrainError, match="not a tuneforge adapter directory"):
        merge_adapter(tiny_model_dir, tmp_path / "a", workspace=ws)
    with pytest.raises(TrainError, match="not a tuneforge adapter directory"):
        merge_adapter(tmp_path / "missing", tmp_path / "a", workspace=ws)

    full = tmp_path / "full"
    full.mkdir()
    (full / "tuneforge.json").write_text(json.dumps({"kind": "full"}))
    with pytest.raises(TrainError, match="full fine-tune") as err:
        merge_adapter(full, tmp_path / "a", workspace=ws)
    assert "base model" in err.value.fix

    with pytest.raises(TrainError, match="already a merged model"):
        merge_adapter(merged.path, tmp_path / "a", workspace=ws)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TrainError, match="is not a merged tuneforge model"):
        merge_adapter(lora_adapter, foreign, workspace=ws)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(TrainError, match="into the adapter directory"):
        merge_adapter(lora_adapter, lora_adapter / "merged", workspace=ws)
    assert not (tmp_path / "a").exists()


def test_a_tampered_adapter_is_refused(lora_adapter: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "adapter"
    shutil.copytree(lora_adapter, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 999}))
    with pytest.raises(TrainError, match="do not match the checksums"):
        merge_adapter(copy, tmp_path / "merged", workspace=Workspace(lora_adapter.parent.parent))
    assert not (tmp_path / "merged").exists()


def test_cli_merge_prints_the_check(lora_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge.cli import app

    monkeypatch.setenv("TUNEFORGE_HOME", str(lora_adapter.parent.parent))
    out = tmp_path / "merged"
    r = CliRunner().invoke(app, ["merge", str(lora_adapter), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "max |logit diff|" in r.output and "passed" in r.output and (out / "model.safetensors").is_file()
    r = CliRunner().invoke(app, ["merge", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and isinstance(r.exception, TrainError) and not (tmp_path / "x").exists()
