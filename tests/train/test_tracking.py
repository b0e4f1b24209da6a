"""MLflow tracking of training runs, read back through a real MlflowClient on SQLite stores."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import FAST, chat_dataset, chat_row, write_dataset
from transformers import TrainerCallback

from tuneforge.config import load_config
from tuneforge.data import PreparedDataset
from tuneforge.errors import ConfigError, TrainError, TrainInterrupted
from tuneforge.tracking import TrackingStore
from tuneforge.train import TrainProgress, TrainResult, train
from tuneforge.train import _artifacts as artifacts
from tuneforge.workspace import Workspace


@pytest.fixture(scope="module")
def tracked(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Any, list]:
    """One tracked 4-step run with evaluation every 2 steps; its progress events are kept."""
    root = tmp_path_factory.mktemp("tracked")
    ds = chat_dataset(root / "ds")
    cfg = load_config(None, [f"model.base={tiny_model_dir}", *FAST, "train.eval_every_steps=2",
                             "train.price_per_device_hour={cpu: 3.6}", "train.report_to=[tensorboard]"])
    ws = Workspace(root / "ws")
    events: list[TrainProgress] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = train(cfg, data=ds, workspace=ws, progress=events.append)
        client = TrackingStore.resolve(None, ws).client()
    return result, client, events


def test_run_records_params_tags_and_final_metrics(tracked, tiny_model_dir: Path) -> None:
    result, client, _ = tracked
    info = result.meta["tracking"]
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == info["experiment_id"]
    assert client.get_experiment(info["experiment_id"]).name == "tuneforge"
    assert run.info.run_name == f"{result.name}-{result.run_key[:8]}"
    p = run.data.params
    assert p["model.base"] == str(tiny_model_dir) and p["train.method"] == "sft" and p["train.peft"] == "lora"
    assert (p["train.lora.r"], p["train.lora.alpha"], p["train.lr"]) == ("16", "32", "0.01")
    assert (p["train.batch_size"], p["train.max_seq_len"], p["train.seed"]) == ("4", "2048", "0")
    assert p["precision"] == "fp32" and p["packing"] == result.meta["packing"]["mode"]
    assert p["dataset.fingerprint"] == result.meta["dataset"]["fingerprint"]
    assert p["base.identity"] == result.meta["base_model"]["identity"]
    tags = run.data.tags
    assert tags["tuneforge.run_key"] == result.run_key and tags["tuneforge.kind"] == "adapter"
    assert tags["tuneforge.adapter_path"] == str(result.path)
    assert tags["tuneforge.adapter_checksum"] == result.meta["checksum"]
    assert tags["tuneforge.price_per_device_hour"] == "3.6" and tags["tuneforge.device"] == "cpu"
    m = run.data.metrics
    assert m["val_loss"] == pytest.approx(result.metrics["val_loss"]) and m["steps"] == 4
    assert m["train_loss"] == pytest.approx(result.metrics["train_loss"])
    assert m["cost"] == pytest.approx(result.metrics["cost"]) and m["cost"] > 0  # 3.6/h of wall time
    assert m["price_per_device_hour"] == 3.6


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``log_dir`` (TFRecord framing: length, crc, event, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_outlive_the_run(tracked) -> None:
    # transformers writes them under the trainer's output directory by default: the checkpoint staging
    # area, which a finished run deletes. They must be in the workspace, and tuneforge.json says where.
    result, _, _ = tracked
    log_dir = Path(result.meta["tensorboard_dir"])
    assert log_dir.parent.name == "tensorboard" and log_dir.name == f"{result.name}-{result.run_key[:12]}"
    scalars = _tensorboard_scalars(log_dir)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert scalars["train/loss"][-1][1] == pytest.approx(result.metrics["train_loss"], rel=1e-5)
    assert scalars["train/loss"][0][1] == pytest.approx(result.metrics["train_loss_first"], rel=1e-5)
    assert [step for step, _ in scalars["eval/loss"]] == [2, 4, 4]  # every 2 steps, then the final evaluation
    assert scalars["eval/loss"][-1][1] == pytest.approx(result.metrics["val_loss"], rel=1e-5)


def test_every_step_is_a_metric_point(tracked) -> None:
    result, client, events = tracked
    run_id = result.meta["tracking"]["run_id"]
    losses = client.get_metric_history(run_id, "loss")
    assert [h.step for h in losses] == [1, 2, 3, 4]
    reported = [e.loss for e in events if e.phase == "training" and e.loss is not None]
    assert [h.value for h in losses] == pytest.approx(reported)  # the same losses the progress bar showed
    for name in ("learning_rate", "grad_norm", "tokens_per_s"):
        history = client.get_metric_history(run_id, name)
        assert [h.step for h in history] == [1, 2, 3, 4], name
    assert all(h.value > 0 for h in client.get_metric_history(run_id, "tokens_per_s"))
    assert {h.step for h in client.get_metric_history(run_id, "eval_loss")} == {2, 4}


def test_dataset_is_an_input_with_its_fingerprint(tracked) -> None:
    result, client, _ = tracked
    inputs = client.get_run(result.meta["tracking"]["run_id"]).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    fingerprint = result.meta["dataset"]["fingerprint"]
    assert ds.digest == fingerprint[:32]  # MLflow caps digests at 36 characters
    assert json.loads(ds.profile)["fingerprint"] == fingerprint
    assert json.loads(ds.source)["uri"] == result.meta["dataset"]["path"] and ds.source_type == "local"
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}


def test_adapter_is_logged_as_artifacts(tracked, tmp_path: Path) -> None:
    result, client, _ = tracked
    run_id = result.meta["tracking"]["run_id"]
    listed = {Path(f.path).name for f in client.list_artifacts(run_id, "adapter")}
    assert listed == {p.name for p in result.path.iterdir()}
    copy = Path(client.download_artifacts(run_id, "adapter/adapter_model.safetensors", str(tmp_path)))
    assert copy.read_bytes() == (result.path / "adapter_model.safetensors").read_bytes()


def test_run_id_is_in_tuneforge_json_under_the_checksum(tracked) -> None:
    result, client, _ = tracked
    on_disk = artifacts.read_meta(result.path)
    assert on_disk["tracking"] == result.meta["tracking"]
    ws_db = result.path.parent.parent / "mlflow.db"
    assert on_disk["tracking"]["uri"] == f"sqlite:///{ws_db}"
    assert artifacts.verify_checksum(result.path)


def test_mlflow_tracking_uri_env_is_respected(dataset: Path, tiny_cfg, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "elsewhere" / "team.db"
    other.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    monkeypatch.chdir(tmp_path)  # a non-embedded store puts artifacts under ./mlruns
    result = train(tiny_cfg("train.max_steps=1", "tracking.experiment=team"), data=dataset)
    ws = Workspace.from_env()
    assert other.is_file() and not ws.mlflow_db.exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{other}")
    run = client.get_run(result.meta["tracking"]["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "team"


def test_tracking_disabled_logs_nothing(dataset: Path, tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = train(tiny_cfg("train.max_steps=1", "tracking.enabled=false"), data=dataset)
    ws = Workspace.from_env()
    assert result.meta["tracking"] is None and artifacts.read_meta(result.path)["tracking"] is None
    assert not ws.mlflow_db.exists() and not ws.mlflow_artifacts.exists()


def test_unreachable_server_fails_before_training(dataset: Path, tiny_cfg) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    started = time.time()
    with pytest.raises(TrainError) as err:
        train(tiny_cfg("train.max_steps=1", f"tracking.uri={uri}"), data=dataset)
    assert time.time() - started < 60
    assert "MLflow tracking store cannot be used" in err.value.what and uri in err.value.where
    assert "tracking.enabled=false" in err.value.fix
    ws = Workspace.from_env()
    assert not list(ws.adapters_dir.glob("*")) and not list(ws.runs_dir.glob("*/checkpoints/*"))


def test_mlflow_in_report_to_points_at_tracking_enabled(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"model.base={tiny_model_dir}", "train.report_to=[mlflow]"])
    assert "tracking.enabled" in str(err.value) and "train.report_to" in str(err.value)


def test_failed_run_is_marked_failed(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(broken)
    ds = write_dataset(tmp_path / "ds", [chat_row(i) for i in range(8)])
    with pytest.raises(TrainError, match="loss became nan"):
        train(load_config(None, [f"model.base={broken}", *FAST]), data=ds)
    store = TrackingStore.resolve(None, Workspace.from_env())
    runs = store.client().search_runs([store.experiment_id("tuneforge")])
    assert [r.info.status for r in runs] == ["FAILED"]


class _CtrlCAt(TrainerCallback):
    """Sends this process SIGINT after ``step``, once: tuneforge's Ctrl-C handling checkpoints and stops."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.sent = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_run_is_killed_and_resume_continues_it(dataset: Path, tiny_cfg,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_cfg("train.max_steps=5", "train.save_every_steps=10")
    with pytest.raises(TrainInterrupted):
        train(cfg, data=dataset, callbacks=[_CtrlCAt(2)])
    store = TrackingStore.resolve(None, Workspace.from_env())
    client = store.client()
    (first,) = client.search_runs([store.experiment_id("tuneforge")])
    assert first.info.status == "KILLED"
    result = train(cfg, data=dataset, resume=True)
    assert result.resumed_from_step is not None and result.meta["tracking"]["run_id"] == first.info.run_id
    assert len(client.search_runs([store.experiment_id("tuneforge")])) == 1
    run = client.get_run(first.info.run_id)
    assert run.info.status == "FINISHED"
    steps = [h.step for h in client.get_metric_history(run.info.run_id, "loss")]
    assert set(steps) == {1, 2, 3, 4, 5} and steps == sorted(steps)
    assert PreparedDataset.load(dataset).fingerprint == run.data.params["dataset.fingerprint"]


def test_cli_summary_shows_cost_device_wall_time_and_run(dataset: Path, tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from tuneforge.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    args = ["train", "--data", str(dataset), "--set", f"model.base={tiny_model_dir}"]
    for s in (*FAST, "train.max_steps=1", "train.price_per_device_hour={cpu: 2.5}"):
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    meta = artifacts.read_meta(next(Workspace.from_env().adapters_dir.iterdir()))
    cost_row = next(line for line in r.output.splitlines() if "cost" in line)
    assert f"{meta['metrics']['cost']:.4f} at 2.5/device-hour × {meta['metrics']['device_hours']:.3g} h" in cost_row
    assert any("device" in line and "cpu" in line for line in r.output.splitlines())
    assert "runtime (training / wall)" in r.output and meta["tracking"]["run_id"] in r.output


def test_the_price_of_a_device_is_its_most_specific_key() -> None:
    from tuneforge.train._train import price_for

    prices = {"cpu": 0.1, "cuda": 1.0, "h100": 2.5, "h100 nvl": 3.0, "A10G": 0.8, "l4": 0.5}
    assert price_for("cuda:NVIDIA H100 80GB HBM3", prices) == 2.5  # not the generic cuda price
    assert price_for("cuda:NVIDIA H100 NVL", prices) == 3.0  # the longer name wins
    assert price_for("cuda:NVIDIA A100-SXM4-80GB", prices) == 1.0  # no named key: the cuda fallback
    assert price_for("cuda:NVIDIA A10G", prices) == 0.8  # keys match whatever their case
    assert price_for("cuda:NVIDIA L40S", prices) == 1.0 and price_for("cuda:NVIDIA L4", prices) == 0.5  # whole words
    assert price_for("cpu", prices) == 0.1
    assert price_for("cuda:NVIDIA L4", {"GPU": 0.7}) == 0.7
    assert price_for("cuda:NVIDIA L4", {"cpu": 0.0}) is None  # no price: the cost is unknown, not 0
