"""Fixtures for the local engine tests: a tiny model whose greedy text varies, and adapters for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from engine_helpers import make_adapter


@pytest.fixture(scope="session")
def varied_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model re-initialised with larger weights, so greedy continuations do not repeat one token
    and a batching bug shows up as different tokens."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("varied-llama")
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.initializer_range = 0.5
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_dirs(varied_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three adapters for the varied model, each with different weights."""
    root = tmp_path_factory.mktemp("engine-adapters")
    return {name: make_adapter(varied_model_dir, root / name, seed=seed)
            for seed, name in enumerate(("alpha", "beta", "gamma"), start=1)}


@pytest.fixture
def copy_adapter(tmp_path: Path, adapter_dirs: dict[str, Path]):
    """A private copy of a trained adapter, for tests that change its files."""
    def make(name: str) -> Path:
        dst = tmp_path / f"copy-{name}"
        shutil.copytree(adapter_dirs[name], dst)
        return dst

    return make
