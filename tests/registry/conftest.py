"""Fixtures for the registry tests: two real adapters trained once on the tiny model, and a fresh
workspace per test whose MLflow database is copied from one initialised per session (creating the
tables takes seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tuneforge.registry import Registry
from tuneforge.workspace import Workspace


def _adapter(tiny_model_dir: Path, out: Path, seed: int, ws: Workspace) -> Path:
    """A LoRA adapter directory written by training's own save step (weights, tokenizer, tuneforge.json
    with contract, lineage and checksums); lora_B is randomised by ``seed`` as if trained."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.models import load_contract, load_model, load_tokenizer, resolve_model
    from tuneforge.train import _artifacts

    base = resolve_model(str(tiny_model_dir), ws)
    tokenizer = load_tokenizer(base)
    torch.manual_seed(seed)
    model = get_peft_model(load_model(base, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    meta = {"kind": "adapter", "name": f"tiny-{seed}", "run_key": f"{seed:064d}",
            "base_model": {"ref": base.ref, "name": base.name, "identity": base.identity, "revision": None},
            "contract": load_contract(base, tokenizer).to_dict(),
            "dataset": {"fingerprint": f"{seed + 1:x}" * 64, "path": "ds"},
            "seed": seed, "metrics": {"train_loss": 2.5 - seed, "val_loss": 2.6, "steps": 2}}
    _artifacts.save(model, tokenizer, out, meta, full=False)
    return out


@pytest.fixture(scope="session")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two adapters with different content, laid out exactly as `tuneforge train` writes them."""
    root = tmp_path_factory.mktemp("registry-adapters")
    ws = Workspace(root / "ws")
    return _adapter(tiny_model_dir, root / "adapter-0", 0, ws), _adapter(tiny_model_dir, root / "adapter-1", 1, ws)


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = Workspace(tmp_path_factory.mktemp("mlflow-template"))
    Registry(ws).client.search_registered_models()  # creates the tables
    return ws.mlflow_db


@pytest.fixture
def workspace(_isolated_home: Path, _mlflow_template: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The test's own workspace (also $TUNEFORGE_HOME, for the CLI), with MLflow tables ready."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TUNEFORGE_ACTOR", raising=False)
    ws = Workspace(_isolated_home)
    ws.ensure(ws.root)
    shutil.copyfile(_mlflow_template, ws.mlflow_db)
    return ws


@pytest.fixture
def registry(workspace: Workspace) -> Registry:
    return Registry(workspace)

