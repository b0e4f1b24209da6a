"""End-to-end training on the tiny model: artifacts, plain-PEFT loading, what changed, methods, guards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import FAST, chat_dataset, chat_row, preference_row, write_dataset
from transformers import TrainerCallback

from tuneforge.config import load_config
from tuneforge.errors import TrainError
from tuneforge.train import TrainProgress, TrainResult, train
from tuneforge.train import _artifacts as artifacts
from tuneforge.workspace import Workspace


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Any, list]:
    """One LoRA run shared by the artifact tests; the in-memory model is captured as it is saved."""
    root = tmp_path_factory.mktemp("lora-run")
    ds = chat_dataset(root / "ds")
    cfg = load_config(None, [f"model.base={tiny_model_dir}", *FAST, "train.max_steps=6",
                             "train.precision=bf16"])
    captured: dict[str, Any] = {}
    events: list[TrainProgress] = []
    real_save = artifacts.save

    def capture(model: Any, *args: Any, **kwargs: Any) -> Any:
        captured["model"] = model
        return real_save(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(artifacts, "save", capture)
        result = train(cfg, data=ds, workspace=Workspace(root / "ws"), progress=events.append)
    return result, captured["model"], events


def test_adapter_directory_is_complete_and_self_describing(lora_run, tiny_model_dir: Path) -> None:
    result, _, _ = lora_run
    files = {p.name for p in result.path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
            "tuneforge.json"} <= files
    assert result.path.parent.name == "adapters" and result.path.name.startswith("tiny-llama")
    adapter_config = json.loads((result.path / "adapter_config.json").read_text())
    assert not adapter_config.get("modules_to_save")
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    meta = json.loads((result.path / "tuneforge.json").read_text())
    assert meta["contract"]["eos_token"] == "<|im_end|>" and meta["contract"]["chat_template"]
    assert meta["dataset"]["fingerprint"] and meta["seed"] == 0 and meta["run_key"] == result.run_key
    assert meta["config"]["train"]["max_steps"] == 6 and meta["config"]["model"]["base"] == str(tiny_model_dir)
    assert {"torch", "transformers", "peft", "trl", "accelerate"} <= set(meta["versions"])
    assert meta["metrics"]["train_loss"] > 0 and meta["metrics"]["val_loss"] > 0 and meta["metrics"]["steps"] == 6
    assert meta["serving"] == {"vllm_lora": True, "reason": ""}
    assert set(meta["files"]) == files - {"tuneforge.json"} and artifacts.verify_checksum(result.path)
    assert not (result.path.parent.parent / "runs" / result.run_key[:32]).exists()  # checkpoints cleaned up


def test_plain_peft_loads_the_adapter_with_the_same_logits(lora_run, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, trained, _ = lora_run
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    loaded = PeftModel.from_pretrained(base, result.path).eval()
    trained.eval()
    ids = torch.tensor([[1, 520, 3000, 42, 2, 198, 77]])
    # The trained model's forward still carries the run's bf16 autocast (accelerate wraps it).
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reloaded = loaded(input_ids=ids).logits.float()
    with torch.no_grad():
        in_memory = trained(input_ids=ids).logits
    assert torch.equal(reloaded, in_memory)


def test_adapter_weights_changed_and_base_weights_did_not(lora_run, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file

    _, trained, _ = lora_run
    lora_b = {n: p for n, p in trained.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # every adapter got updates (B starts at 0)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    state = trained.get_base_model().state_dict()
    for name, original in base.items():
        key = name.replace(".weight", ".base_layer.weight") if name.replace(".weight", ".base_layer.weight") in state else name
        assert torch.equal(state[key].float(), original.to(state[key].dtype).float()), name


def test_progress_reports_every_step(lora_run) -> None:
    _, _, events = lora_run
    steps = [e for e in events if e.phase == "training" and e.loss is not None]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6] and all(e.total_steps == 6 for e in steps)
    assert all(e.tokens_per_s and e.tokens_per_s > 0 for e in steps) and steps[-1].eta_s == 0
    assert [e.phase for e in events][-2:] == ["evaluating", "saving"]


def test_rerun_of_an_identical_config_is_a_no_op(lora_run, tiny_model_dir: Path) -> None:
    result, _, _ = lora_run
    ws = Workspace(result.path.parent.parent)
    cfg = load_config(None, [f"model.base={tiny_model_dir}", *FAST, "train.max_steps=6", "train.precision=bf16"])
    again = train(cfg, data=result.meta["dataset"]["path"], workspace=ws)
    assert again.reused and again.path == result.path and again.metrics == result.metrics


@pytest.mark.parametrize(
    ("overrides", "peft_type", "vllm"),
    [
        (["train.peft=dora"], "LORA", False),
        (["train.peft=passthrough",
          "train.peft_config={peft_type: IA3, target_modules: [k_proj, v_proj, down_proj], "
          "feedforward_modules: [down_proj]}"], "IA3", False),
        # Virtual tokens shift hidden states against labels: trained with the model's own loss.
        (["train.peft=passthrough", "train.peft_config={peft_type: PROMPT_TUNING, num_virtual_tokens: 4}"],
         "PROMPT_TUNING", False),
    ],
)
def test_other_peft_methods(dataset: Path, tiny_cfg, overrides: list[str], peft_type: str, vllm: bool) -> None:
    result = train(tiny_cfg("train.max_steps=2", *overrides), data=dataset)
    meta = result.meta
    assert meta["peft_type"] == peft_type and meta["serving"]["vllm_lora"] is vllm and meta["serving"]["reason"]
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type
    if overrides[0] == "train.peft=dora":
        assert config["use_dora"] is True
    if peft_type == "PROMPT_TUNING":
        assert config["num_virtual_tokens"] == 4


class _Seen(TrainerCallback):
    """What the trainer's model and run directory look like during training."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        self.checkpointing: list[bool] = []
        self.kept: list[list[str]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.checkpointing.append(bool(model.is_activation_checkpointing))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        (run,) = self.runs.iterdir()
        self.kept.append([p.name for p in artifacts.RunDirs(run).list()])


def test_gradient_checkpointing_and_early_stopping_run(dataset: Path, tiny_cfg) -> None:
    cfg = tiny_cfg("train.max_steps=3", "train.gradient_checkpointing=true", "train.eval_every_steps=1",
                   "train.early_stopping_patience=1", "train.grad_accum=2")
    seen = _Seen(Workspace.from_env().runs_dir)
    m = train(cfg, data=dataset, callbacks=[seen]).metrics
    assert m["val_loss"] > 0 and 1 <= m["steps"] <= 3 and isinstance(m["stopped_early"], bool)
    assert seen.checkpointing == [True]
    seen = _Seen(Workspace.from_env().runs_dir)
    train(tiny_cfg("train.max_steps=1"), data=dataset, out=dataset.parent / "plain", callbacks=[seen])
    assert seen.checkpointing == [False]


def test_only_the_last_checkpoints_are_kept(dataset: Path, tiny_cfg) -> None:
    seen = _Seen(Workspace.from_env().runs_dir)
    train(tiny_cfg("train.max_steps=4", "train.save_every_steps=1", "train.keep_checkpoints=2"), data=dataset,
          callbacks=[seen])
    assert seen.kept == [["checkpoint-1"], ["checkpoint-1", "checkpoint-2"], ["checkpoint-2", "checkpoint-3"],
                         ["checkpoint-3", "checkpoint-4"]]
    assert not list(Workspace.from_env().runs_dir.iterdir())  # the finished run's checkpoints are gone


def test_dpo_with_an_adapter_keeps_no_second_model(tmp_path: Path, tiny_cfg, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tuneforge.models import load_tokenizer, resolve_model
    from tuneforge.train._dpo import build_trainer, dpo_args
    from tuneforge.train._peft import build_peft_config
    from tuneforge.train._tokenize import build_pairs

    tcfg = tiny_cfg("train.method=dpo").train
    tok = load_tokenizer(resolve_model(str(tiny_model_dir), Workspace.from_env()))
    pairs, _ = build_pairs(tok, [preference_row(i) for i in range(4)])
    args = dpo_args(tcfg, tmp_path / "stage", prec="fp32", has_val=False, cuda=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = build_trainer(model, tok, build_peft_config(tcfg), args, pairs, [],
                            artifacts.RunDirs(tmp_path / "run"), 1, [])
    assert trainer.ref_model is None  # the reference is the base with the adapter switched off


def test_full_fine_tune_saves_a_model_that_changed(dataset: Path, tiny_cfg, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file

    result = train(tiny_cfg("train.peft=full", "train.max_steps=2", "train.lr=1e-3"), data=dataset)
    assert result.meta["kind"] == "full" and (result.path / "model.safetensors").is_file()
    assert not (result.path / "adapter_config.json").exists()
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(result.path / "model.safetensors"))
    changed = [n for n in before if not torch.equal(before[n], after[n].to(before[n].dtype))]
    assert len(changed) == len(before)


def test_nan_loss_stops_the_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(broken)
    ds = write_dataset(tmp_path / "ds", [chat_row(i) for i in range(8)])
    cfg = load_config(None, [f"model.base={broken}", *FAST, "train.save_every_steps=1"])
    with pytest.raises(TrainError) as err:
        train(cfg, data=ds)
    assert "loss became nan at step 1" in err.value.what and "train.lr" in err.value.fix
    runs = list((Workspace.from_env().runs_dir).glob("*/checkpoints/checkpoint-*"))
    assert runs == []  # the poisoned step was not checkpointed
    assert not list(Workspace.from_env().adapters_dir.glob("*/tuneforge.json"))


def test_existing_checkpoints_need_resume_or_deletion(dataset: Path, tiny_cfg) -> None:
    from tuneforge.train._train import _checkpoint_to_resume

    run = artifacts.RunDirs(Workspace.from_env().runs_dir / "x")
    with pytest.raises(TrainError, match="has no checkpoint"):
        _checkpoint_to_resume(run, resume=True)
    (run.checkpoints / "checkpoint-3").mkdir(parents=True)
    (run.checkpoints / "checkpoint-12").mkdir()
    assert _checkpoint_to_resume(run, resume=True).name == "checkpoint-12"
    with pytest.raises(TrainError, match="pass --resume"):
        _checkpoint_to_resume(run, resume=False)


def test_out_refuses_to_replace_a_foreign_directory(dataset: Path, tiny_cfg, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TrainError, match="not a tuneforge adapter directory"):
        train(tiny_cfg("train.max_steps=1"), data=dataset, out=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_dpo_trains_the_adapter_against_the_frozen_base(tmp_path: Path, tiny_cfg) -> None:
    ds = write_dataset(tmp_path / "ds", [preference_row(i) for i in range(8)] + [chat_row(0)],
                       [preference_row(100 + i) for i in range(2)])
    dry = train(tiny_cfg("train.method=dpo"), data=ds, dry_run=True).preflight
    assert dry.rows == {"train": 8, "val": 2} and dry.skipped["train"] == 1 and dry.packing == "off"
    chosen = "".join(p for p, t in dry.samples[0] if t)
    assert chosen == "Order 0 ships tomorrow, sorry for the wait.<|im_end|>\n"  # the answer only, not the prompt
    assert "".join(p for p, t in dry.samples[1] if t) == "No idea.<|im_end|>\n"
    result = train(tiny_cfg("train.method=dpo", "train.max_steps=3", "train.batch_size=2"), data=ds)
    m = result.metrics
    assert m["steps"] == 3 and m["val_loss"] is not None and "rewards_accuracies" in m
    # Step 1 runs before any update: the adapter is a no-op (lora_B = 0), so policy == reference and the
    # sigmoid loss is -log(sigmoid(0)) = ln 2. A reference other than the frozen base would not give this.
    assert m["train_loss_first"] == pytest.approx(0.6931, abs=1e-3)
    assert m["train_loss"] < m["train_loss_first"] and m["val_loss"] < 0.6931  # preference loss went down
    assert result.meta["serving"]["vllm_lora"] and (result.path / "adapter_model.safetensors").is_file()


class _Rates(TrainerCallback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "learning_rate" in logs:
            self.rates.append(logs["learning_rate"])


@pytest.mark.parametrize(("scheduler", "warmup"), [("cosine", 0.0), ("linear", 0.5), ("constant", 0.5)])
def test_learning_rate_follows_the_schedule(dataset: Path, tiny_cfg, scheduler: str, warmup: float) -> None:
    import math

    rates = _Rates()
    train(tiny_cfg(f"train.scheduler={scheduler}", f"train.warmup_ratio={warmup}", "tracking.enabled=false"),
          data=dataset, out=dataset.parent / scheduler, callbacks=[rates])
    total, warm, peak = 4, int(warmup * 4), 1e-2  # FAST: 4 steps at lr 1e-2

    def expected(done: int) -> float:  # the rate of the step after `done` optimizer steps
        if done < warm:
            return peak * done / warm
        after = (done - warm) / (total - warm)
        return {"cosine": peak * 0.5 * (1 + math.cos(math.pi * after)), "linear": peak * (1 - after),
                "constant": peak}[scheduler]

    assert rates.rates == pytest.approx([expected(k) for k in range(total)])
