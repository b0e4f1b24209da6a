"""Helpers shared by the training tests: chat rows, prepared datasets written directly, fast settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Fast, deterministic defaults for the tiny model; tests override what they exercise.
FAST = ["train.max_steps=4", "train.batch_size=4", "train.lr=1e-2", "train.save_every_steps=null",
        "train.precision=fp32", "train.warmup_ratio=0.0"]


def chat_row(i: int, turns: int = 2) -> dict[str, Any]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": "You answer support tickets."}]
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Ticket {i}.{t}: my order {i * 7 + t} is late"})
        msgs.append({"role": "assistant", "content": f"Sorry! Order {i * 7 + t} ships in {t + 1} days."})
    return {"id": f"r{i}", "kind": "chat", "messages": msgs, "source": "domain", "num_tokens": 0,
            "origin": f"in.jsonl:{i + 1}"}


def preference_row(i: int) -> dict[str, Any]:
    return {"id": f"p{i}", "kind": "preference", "source": "domain", "num_tokens": 0, "origin": f"pairs.jsonl:{i + 1}",
            "prompt": [{"role": "user", "content": f"Is order {i} late?"}],
            "chosen": [{"role": "assistant", "content": f"Order {i} ships tomorrow, sorry for the wait."}],
            "rejected": [{"role": "assistant", "content": "No idea."}]}


def write_dataset(path: Path, train: list[dict[str, Any]], val: list[dict[str, Any]] | None = None) -> Path:
    """A prepared-dataset directory as `tuneforge data prepare` writes it (the parts training reads)."""
    path.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("val", val or []), ("test", [])):
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fingerprint = f"{abs(hash(json.dumps([train, val], sort_keys=True))):064d}"[-64:]
    (path / "manifest.json").write_text(json.dumps({"fingerprint": fingerprint, "counts": {}}))
    return path


def chat_dataset(path: Path) -> Path:
    """The usual training set of these tests: 24 two-turn chat rows for training, 4 for validation."""
    return write_dataset(path, [chat_row(i) for i in range(24)], [chat_row(100 + i) for i in range(4)])
