"""Fixtures for training tests: a small prepared dataset and configs for the tiny model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from train_helpers import FAST, chat_dataset

from tuneforge.config import TuneforgeConfig, load_config


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """24 two-turn chat rows for training, 4 for validation."""
    return chat_dataset(tmp_path / "ds")


@pytest.fixture
def tiny_cfg(tiny_model_dir: Path) -> Callable[..., TuneforgeConfig]:
    def make(*overrides: str) -> TuneforgeConfig:
        return load_config(None, [f"model.base={tiny_model_dir}", *FAST, *overrides])

    return make
