"""`tuneforge tune` on the tiny model: trials, the SQLite study, resuming, pruning, failures."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from train_helpers import FAST, chat_row, write_dataset
from typer.testing import CliRunner

from tuneforge.config import load_config
from tuneforge.errors import ConfigError, DataError
from tuneforge.train import _artifacts as artifacts
from tuneforge.train import tune
from tuneforge.train.tune import pruning_callback
from tuneforge.workspace import Workspace

# Two LoRA ranks, a wide lr range; every trial runs 4 steps and evaluates after each.
TUNE = [*FAST, "tracking.enabled=false", "tune.space.lora_r=[4, 8]", "tune.space.lr={low: 1e-4, high: 5e-2}",
        "tune.pruner.kind=none"]


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds", [chat_row(i) for i in range(12)], [chat_row(100 + i) for i in range(3)])


def _cfg(tiny_model_dir: Path, *overrides: str):
    return load_config(None, [f"model.base={tiny_model_dir}", *TUNE, *overrides])


def test_trials_run_are_stored_and_resume(ds: Path, tiny_model_dir: Path) -> None:
    ws = Workspace.from_env()
    cfg = _cfg(tiny_model_dir)
    result = tune(cfg, data=ds, trials=3)
    assert result.ran == 3 and [t.state for t in result.trials] == ["complete"] * 3
    assert result.storage == f"sqlite:///{ws.root.resolve() / 'optuna.db'}" and (ws.root / "optuna.db").is_file()

    # The study as Optuna itself stores it.
    study = optuna.load_study(study_name=result.study, storage=result.storage)
    stored = {t.number: t for t in study.trials}
    assert len(stored) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in stored.values())
    values = {n: t.value for n, t in stored.items()}
    assert result.best_value == min(values.values()) and values[result.best_trial] == result.best_value
    assert len(set(values.values())) == 3  # the trials really differ
    for t in stored.values():
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]  # every evaluation was reported, once
        meta = json.loads((Path(t.user_attrs["adapter"]) / "tuneforge.json").read_text())
        assert meta["metrics"]["val_loss"] == t.value and meta["config"]["train"]["lr"] == t.params["lr"]
        assert meta["config"]["train"]["eval_every_steps"] == 1

    best = result.best_adapter
    assert best == ws.root.resolve() / "tune" / result.study / f"trial-{result.best_trial}"
    assert artifacts.verify_checksum(best)
    adapter_config = json.loads((best / "adapter_config.json").read_text())
    r = result.best_params["lora_r"]
    assert adapter_config["r"] == r and adapter_config["lora_alpha"] == 2 * r  # default alpha_ratio [2]
    assert set(result.best_params) == {"lr", "lora_r", "alpha_ratio", "dropout"}  # epochs: max_steps is set

    again = tune(cfg, data=ds, trials=4)
    assert again.study == result.study and again.ran == 1
    assert [t.number for t in again.trials] == [0, 1, 2, 3]
    assert [t.value for t in again.trials[:3]] == [values[n] for n in range(3)]
    assert again.trials[3].params != again.trials[0].params  # the resumed sampler does not replay trial 0
    assert tune(cfg, data=ds, trials=4).ran == 0


def test_a_failed_trial_is_recorded_and_the_cli_retries_it(ds: Path, tiny_model_dir: Path) -> None:
    from tuneforge.cli import app

    ws = Workspace.from_env()
    sets = ["tune.study=fails", "tune.space.lora_r=[4]"]
    blocker = ws.root.resolve() / "tune" / "fails" / "trial-0"
    blocker.mkdir(parents=True)
    (blocker / "notes.txt").write_text("not an adapter")
    result = tune(_cfg(tiny_model_dir, *sets), data=ds, trials=1)
    assert [t.state for t in result.trials] == ["fail"] and result.ran == 1 and result.best_trial is None
    assert "TrainError" in result.trials[0].error and "not a tuneforge adapter directory" in result.trials[0].error
    assert (blocker / "notes.txt").is_file()

    # Failed trials do not count: the same command adds a trial to reach one finished trial.
    args = ["tune", "--data", str(ds), "--trials", "1"]
    for item in [f"model.base={tiny_model_dir}", *TUNE, *sets]:
        args += ["--set", item]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "study fails (1 run now)" in out and "fail" in out and "complete" in out
    assert "best: trial 1" in out and "best adapter →" in out
    study = optuna.load_study(study_name="fails", storage=f"sqlite:///{ws.root.resolve() / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert "not a tuneforge adapter directory" in study.trials[0].user_attrs["error"]


def test_a_clearly_worse_trial_is_pruned(ds: Path, tiny_model_dir: Path) -> None:
    pruned = ["tune.study=prune", "tune.pruner.kind=median", "tune.pruner.n_startup_trials=1",
              "tune.space.lora_r=[8]", "tune.space.dropout=null"]
    # tune.timeout_s: no trial starts after 0.5 s, so only the first of three runs.
    good = tune(_cfg(tiny_model_dir, *pruned, "tune.space.lr={low: 2e-2, high: 2e-2}", "tune.timeout_s=0.5"),
                data=ds, trials=3)
    assert [t.state for t in good.trials] == ["complete"] and good.ran == 1
    # The same study, now sampling a learning rate too small to move the adapter.
    bad = tune(_cfg(tiny_model_dir, *pruned, "tune.space.lr={low: 1e-9, high: 1e-9}"), data=ds, trials=2)
    trial = bad.trials[1]
    assert trial.state == "pruned" and trial.pruned_at_step == 1 and bad.best_trial == 0
    assert trial.value is not None and trial.value > good.best_value
    meta = json.loads((trial.adapter / "tuneforge.json").read_text())
    assert meta["metrics"]["steps"] == 1  # training stopped at the pruned evaluation


def test_pruning_callback_reports_and_stops_with_a_real_trial() -> None:
    from transformers import TrainerControl, TrainerState

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    first = study.ask()
    first.report(1.0, 2)
    study.tell(first, 1.0)

    def evaluate(loss: float, step: int, max_steps: int = 10):
        trial = study.ask()
        cb = pruning_callback(trial)
        control = TrainerControl()
        state = TrainerState(global_step=step, max_steps=max_steps)
        cb.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        return trial, cb, control

    trial, cb, control = evaluate(5.0, 2)
    assert cb.pruned_at == 2 and control.should_training_stop and study.trials[-1].intermediate_values == {2: 5.0}
    trial, cb, control = evaluate(0.5, 2)
    assert cb.pruned_at is None and not control.should_training_stop
    trial, cb, control = evaluate(5.0, 10)  # the last step: its loss is the objective, never a pruning point
    assert cb.pruned_at is None and not control.should_training_stop


def test_a_dataset_without_validation_rows_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    ds = write_dataset(tmp_path / "ds", [chat_row(i) for i in range(8)])
    with pytest.raises(DataError, match="no validation rows") as err:
        tune(_cfg(tiny_model_dir), data=ds, trials=1)
    assert "data.split.val" in err.value.fix
    assert not (Workspace.from_env().root / "optuna.db").exists()


def test_a_space_that_cannot_be_served_is_refused(ds: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="above train.max_serving_rank=64"):
        tune(_cfg(tiny_model_dir, "tune.space.lora_r=[8, 128]"), data=ds, trials=1)


def test_every_tune_key_is_documented_and_validated(tmp_path: Path) -> None:
    from tuneforge.config import TuneConfig, TunePrunerConfig, TuneRange, TuneSpace, config_to_yaml

    for model in (TuneConfig, TuneSpace, TuneRange, TunePrunerConfig):
        for name, f in model.model_fields.items():
            assert f.description and len(f.description) > 20, f"{model.__name__}.{name}"
    cfg = load_config(None, ["tune.trials=5", "tune.space.lora_alpha=[16, 32]", "tune.space.epochs=null"])
    assert cfg.tune.space.alpha_ratio is None  # explicit alpha choices replace the default ratio
    path = tmp_path / "t.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
    for bad, message in [("tune.space.lr={low: 0.1, high: 0.01}", "must be <= high"),
                         ("tune.space.lr={low: 0, high: 0.01}", "sampled on a log scale"),
                         ("tune.space.alpha_ratio=[2]", "not both"),
                         ("tune.space.epochs={low: 0.5, high: 2}", "whole numbers"),
                         ("tune.pruner.kind=hyperband", "tune.pruner.kind")]:
        overrides = [bad, "tune.space.lora_alpha=[16]"] if "alpha_ratio" in bad else [bad]
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)


def test_a_storage_optuna_cannot_open_is_a_clear_error(ds: Path, tiny_model_dir: Path) -> None:
    from tuneforge.errors import TrainError

    with pytest.raises(TrainError, match="cannot open the Optuna study") as err:
        tune(_cfg(tiny_model_dir, "tune.storage=nosuchdb://x/y"), data=ds, trials=1)
    assert "tune.storage" in err.value.where and not list(Workspace.from_env().root.glob("tune/*"))


def test_epochs_are_searched_when_no_max_steps_is_set(ds: Path, tiny_model_dir: Path) -> None:
    cfg = _cfg(tiny_model_dir, "train.max_steps=null", "tune.space.epochs={low: 1, high: 2}", "tune.space.lora_r=[4]",
               "tune.study=epochs")
    result = tune(cfg, data=ds, trials=3)
    seen = set()
    for t in result.trials:
        epochs = t.params["epochs"]
        seen.add(epochs)
        meta = json.loads((Path(t.adapter) / "tuneforge.json").read_text())
        assert meta["config"]["train"]["epochs"] == epochs
        assert meta["metrics"]["steps"] == 3 * epochs  # 12 rows, batch 4: 3 steps an epoch
    assert seen <= {1, 2} and result.best_params["epochs"] in seen
