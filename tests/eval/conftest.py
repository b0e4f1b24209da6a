"""Fixtures for evaluation tests: small suites, a stand-in judge server, tiny-model configs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eval_helpers import SCHEMA, SYSTEM, write_jsonl
from judge_server import JudgeServer, start

from tuneforge.config import TuneforgeConfig, load_config


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    """Four JSON-answer items in two categories, with a schema file beside them."""
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    rows = []
    for i, (cat, pri) in enumerate([("billing", "low"), ("bug", "high"), ("billing", "high"), ("bug", "low")]):
        rows.append({"id": f"g{i}", "messages": [{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": f"Ticket {i}: my invoice {i} is wrong"}],
                     "expected": json.dumps({"category": cat, "priority": pri}), "category": cat,
                     "schema": "schema.json"})
    return write_jsonl(tmp_path / "golden.jsonl", rows)


@pytest.fixture
def general(tmp_path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("What is 2 + 2?", "4"), ("Name a colour.", "Blue."), ("Say hi.", "Hi!")]]
    return write_jsonl(tmp_path / "general.jsonl", rows)


@pytest.fixture
def eval_cfg(tiny_model_dir: Path) -> Callable[..., TuneforgeConfig]:
    """Fast settings for the tiny random model: short answers, few resamples."""

    def make(*overrides: str) -> TuneforgeConfig:
        return load_config(None, [f"model.base={tiny_model_dir}", "eval.max_new_tokens=6", "eval.batch_size=4", "eval.dtype=float32",
                                  "eval.bootstrap_resamples=200", *overrides])

    return make


@pytest.fixture(scope="session")
def judge() -> Iterator[JudgeServer]:
    server = start()
    yield server
    server.stop()
