"""Preflight: every mask and length problem is an error before any weight is loaded; dry runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from train_helpers import chat_row, write_dataset

from tuneforge.errors import ConfigError, DataError, TrainError
from tuneforge.train import Preflight, train
from tuneforge.train._preflight import check_examples
from tuneforge.train._tokenize import IGNORE, Example


def test_dry_run_reports_masks_steps_and_memory(dataset: Path, tiny_cfg) -> None:
    r = train(tiny_cfg("train.max_steps=null", "train.epochs=2"), data=dataset, dry_run=True)
    pre = r.preflight
    assert isinstance(pre, Preflight) and r.dry_run and not r.path.exists()
    assert pre.rows == {"train": 24, "val": 4} and pre.skipped == {"train": 0, "val": 0}
    assert 0 < pre.trained_tokens < pre.tokens
    assert pre.steps == 2 * 6  # 24 rows / batch 4, two epochs
    assert pre.packing == "length_grouped" and "CPU" in pre.packing_reason
    trained = ["".join(p for p, t in s if t) for s in pre.samples]
    assert trained[0] == "Sorry! Order 0 ships in 1 days.<|im_end|>\nSorry! Order 1 ships in 2 days.<|im_end|>\n"
    e = pre.estimate
    assert 0 < e.trainable_params < e.params and e.optimizer_gib == pytest.approx(e.trainable_params * 8 / 2**30, abs=1e-3)
    assert e.total_gib >= e.weights_gib + e.activations_gib - 1e-3 and e.device == "cpu"


def test_zero_trainable_rows_are_an_error(tmp_path: Path, tiny_cfg) -> None:
    no_answer = chat_row(1)
    no_answer["messages"] = no_answer["messages"][:2]  # system + user only
    ds = write_dataset(tmp_path / "ds", [chat_row(0), no_answer, chat_row(2)])
    with pytest.raises(TrainError, match=r"1 train row\(s\) have zero trainable tokens \(first: in.jsonl:2 id=r1\)"):
        train(tiny_cfg(), data=ds, dry_run=True)


def test_over_length_rows_are_counted_and_data_max_tokens_is_suggested(dataset: Path, tiny_cfg) -> None:
    with pytest.raises(TrainError) as err:
        train(tiny_cfg("train.max_seq_len=64"), data=dataset, dry_run=True)
    msg = str(err.value)
    assert "24 train row(s) are longer than train.max_seq_len=64" in msg
    assert "4 val row(s)" in msg  # every problem at once, not just the first
    assert "data.max_tokens=64" in msg and "truncating would cut the answer" in msg


def test_untrained_end_of_turn_token_is_an_error() -> None:
    from tuneforge.config import TrainConfig

    eot = 2
    ok = Example("a", "f:1", np.array([5, 6, eot]), np.array([IGNORE, 6, eot]), 1)
    lost = Example("b", "f:2", np.array([5, 6, eot]), np.array([IGNORE, 6, IGNORE]), 1)
    check_examples([ok], [], TrainConfig(), {eot}, ["<|im_end|>"])
    with pytest.raises(TrainError, match=r"do not train the end-of-turn token \(<\|im_end\|>\).*f:2 id=b"):
        check_examples([ok, lost], [], TrainConfig(), {eot}, ["<|im_end|>"])


def test_method_without_rows_of_its_kind(dataset: Path, tiny_cfg) -> None:
    with pytest.raises(TrainError, match="no training rows for train.method=cpt"):
        train(tiny_cfg("train.method=cpt"), data=dataset, dry_run=True)


def test_no_dataset_tells_the_user_to_prepare(tiny_cfg) -> None:
    with pytest.raises(DataError) as err:
        train(tiny_cfg(), dry_run=True)
    assert "tuneforge data prepare" in err.value.render()


def test_latest_prepared_dataset_is_the_default(dataset: Path, tiny_cfg, _isolated_home: Path) -> None:
    (_isolated_home / "datasets").mkdir(parents=True)
    (_isolated_home / "datasets" / "latest").write_text(f"{dataset}\n")
    assert train(tiny_cfg(), dry_run=True).preflight.rows["train"] == 24


def test_dataset_prepared_for_another_tokenizer_is_refused(dataset: Path, tiny_cfg) -> None:
    import json

    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["contract"] = {"tokenizer_sha256": "0" * 64, "chat_template_sha256": "1" * 64}
    manifest["base_model"] = {"ref": "org/other"}
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="prepared for org/other"):
        train(tiny_cfg(), data=dataset, dry_run=True)


def test_rank_above_the_serving_limit_is_a_config_error(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match=r"train.lora.r=128 exceeds train.max_serving_rank=64"):
        tiny_cfg("train.lora.r=128")
    with pytest.raises(ConfigError, match=r"train.peft_config.r=96 exceeds"):
        tiny_cfg("train.peft=passthrough", "train.peft_config={peft_type: LORA, r: 96}")
    assert tiny_cfg("train.lora.r=128", "train.max_serving_rank=128").train.lora.r == 128


def test_rank_pattern_above_the_serving_limit_fails_at_train_time(dataset: Path, tiny_cfg) -> None:
    cfg = tiny_cfg("train.peft=passthrough",
                   "train.peft_config={peft_type: LORA, r: 8, rank_pattern: {q_proj: 128}}")
    with pytest.raises(TrainError, match="adapter rank 128 exceeds train.max_serving_rank=64"):
        train(cfg, data=dataset, dry_run=True)


def test_modules_to_save_is_refused(dataset: Path, tiny_cfg) -> None:
    cfg = tiny_cfg("train.peft=passthrough", "train.peft_config={peft_type: LORA, modules_to_save: [lm_head]}")
    with pytest.raises(TrainError, match="vLLM"):
        train(cfg, data=dataset, dry_run=True)


def test_config_consistency_rules(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="early_stopping_patience needs train.eval_every_steps"):
        tiny_cfg("train.early_stopping_patience=2")
    with pytest.raises(ConfigError, match="peft=passthrough needs train.peft_config"):
        tiny_cfg("train.peft=passthrough")
    with pytest.raises(ConfigError, match="only used with train.peft=passthrough"):
        tiny_cfg("train.peft_config={peft_type: IA3}")
    with pytest.raises(ConfigError, match="did you mean 'train.lora.alpha'"):
        tiny_cfg("train.lora.alfa=8")


def test_qlora_without_cuda_is_a_clear_error(dataset: Path, tiny_cfg) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pre = train(tiny_cfg("train.peft=qlora"), data=dataset, dry_run=True).preflight
    assert any("QLoRA needs a CUDA GPU" in n and "train.peft=lora" in n for n in pre.notes)  # a dry run still plans
    with pytest.raises(TrainError) as err:
        train(tiny_cfg("train.peft=qlora"), data=dataset)
    assert "CUDA" in err.value.what and "bitsandbytes" in err.value.what and "train.peft=lora" in err.value.fix


def test_an_unknown_peft_type_lists_the_known_ones(tiny_cfg) -> None:
    from tuneforge.train._peft import build_peft_config

    with pytest.raises(TrainError, match="unknown PEFT method 'NOPE'") as err:
        build_peft_config(tiny_cfg("train.peft=passthrough", "train.peft_config={peft_type: nope}").train)
    assert err.value.where == "train.peft_config.peft_type"
    assert "IA3" in err.value.fix.split(", ") and "PeftType" not in err.value.fix


def test_target_modules_the_model_lacks_are_a_clear_error(dataset: Path, tiny_cfg) -> None:
    with pytest.raises(TrainError, match="nope_proj") as err:  # already in a dry run, before any weight loads
        train(tiny_cfg("train.lora.target_modules=[nope_proj]"), data=dataset, dry_run=True)
    assert err.value.where == "train.lora.target_modules"
    assert "q_proj" in err.value.fix and "down_proj" in err.value.fix and "all-linear" in err.value.fix


def test_missing_tracker_package_is_named(dataset: Path, tiny_cfg) -> None:
    with pytest.raises(TrainError, match="no wandb package is installed") as err:
        train(tiny_cfg("train.report_to=[wandb]"), data=dataset, dry_run=True)
    assert err.value.where == "train.report_to" and "pip install wandb" in err.value.fix
    with pytest.raises(TrainError, match="unknown tracker 'neptune'") as err:
        train(tiny_cfg("train.report_to=[neptune]"), data=dataset, dry_run=True)
    assert "tensorboard" in err.value.fix and "mlflow" not in err.value.fix.split("(")[0]


def test_cpt_trains_every_token_of_text_rows(tmp_path: Path, tiny_cfg) -> None:
    rows = [{"id": f"t{i}", "kind": "text", "text": f"Return policy {i}: thirty days.", "origin": f"t:{i}"}
            for i in range(4)]
    ds = write_dataset(tmp_path / "ds", [*rows, chat_row(0)])
    pre = train(tiny_cfg("train.method=cpt"), data=ds, dry_run=True).preflight
    assert pre.rows["train"] == 4 and pre.skipped["train"] == 1
    assert pre.trained_tokens == pre.tokens and pre.samples[0] == [("Return policy 0: thirty days.<|im_end|>", True)]
    result = train(tiny_cfg("train.method=cpt", "train.max_steps=2"), data=ds)
    assert result.metrics["steps"] == 2 and result.meta["config"]["train"]["method"] == "cpt"


_MEASURE = """
import json, resource, sys
from tuneforge.config import load_config
from tuneforge.train import train
cfg = load_config(None, sys.argv[3:])
r = train(cfg, data=sys.argv[1], out=sys.argv[2])
print(json.dumps({"estimate": r.preflight.estimate.to_dict(),
                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def test_memory_estimate_is_within_a_factor_of_2_of_the_measured_peak(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The tiny model has the real 49k vocabulary: with long answers the scored logits dominate the peak."""
    import json
    import subprocess
    import sys

    from train_helpers import FAST

    ds = write_dataset(tmp_path / "ds", [chat_row(i, turns=12) for i in range(8)])
    overrides = [f"model.base={tiny_model_dir}", *FAST, "train.max_steps=2", "train.batch_size=8",
                 "train.precision=bf16", "tracking.enabled=false"]
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(ds), str(tmp_path / "adapter"), *overrides],
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    est = got["estimate"]
    assert est["logits_gib"] > est["activations_gib"] + est["weights_gib"]  # the term this test is about
    assert 0 < est["scored_tokens_per_micro_batch"] < est["tokens_per_micro_batch"]
    assert 0.5 <= got["peak_gib"] / est["total_gib"] <= 2, got
