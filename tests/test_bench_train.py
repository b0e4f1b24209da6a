"""Smoke test of benchmarks/bench_train.py's two workers on the tiny model: same rows, same steps."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "train"))
from train_helpers import chat_row, write_dataset  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baseline_and_ours_train_the_same_rows(bench, tiny_model_dir: Path, tmp_path: Path) -> None:
    # Rows of 1 to 3 turns: batches padded to their longest row carry padding.
    full = write_dataset(tmp_path / "ds", [chat_row(i, turns=1 + i % 3) for i in range(12)])
    subset = bench._subset(full, 8, tmp_path / "home")
    assert len((subset / "train.jsonl").read_text().splitlines()) == 8
    job = {"model": str(tiny_model_dir), "data": str(subset), "batch": 2, "device": "cpu", "precision": "fp32",
           "peft": "lora", "checkpointing": False, "kernels": "auto", "home": str(tmp_path / "home")}
    base = bench.run_baseline(job)
    ours = bench.run_ours(job)
    assert base["steps"] == ours["steps"] == 4
    assert base["useful_tokens"] == ours["useful_tokens"] > 0 and base["params"] == ours["params"]
    assert 0 < base["pad_fraction"] < 1 and (ours["packing"], ours["kernels"]) == ("length_grouped", "none")
    for r in (base, ours):
        assert r["useful_tokens_per_s"] > 0 and r["train_s"] > 0 and r["peak_rss_mib"] > 0
        assert r["useful_tokens_per_cpu_s"] > 0 and r["train_cpu_s"] > 0
        json.dumps(r)


def test_cpu_peak_flops_is_measured(bench) -> None:
    peak, source = bench._peak_flops("cpu", "fp32")
    assert peak > 1e8 and "matmul" in source
