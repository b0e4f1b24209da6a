"""`tuneforge data inspect`: what a prepared dataset holds, read back from its files."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data._prepare import REJECTED, PreparedDataset
from tuneforge.data._render import Rendered, render_row
from tuneforge.data._split import SPLITS
from tuneforge.data._types import CHAT, PREFERENCE, Row


@dataclass(frozen=True)
class Sample:
    split: str
    origin: str  # file:line in the input
    rendered: list[Rendered]  # text with trainable spans (two for preference pairs)


@dataclass(frozen=True)
class Inspection:
    dataset: PreparedDataset
    turns: dict[int, int]  # messages per row -> rows
    roles: dict[str, int]  # messages per role
    multi_turn_rows: int  # rows with more than one assistant turn
    samples: list[Sample]
    reject_examples: dict[str, dict[str, Any]] = field(default_factory=dict)  # first reject per reason


def inspect_dataset(path: str | Path, *, samples: int = 3) -> Inspection:
    ds = PreparedDataset.load(path)
    turns: Counter[int] = Counter()
    roles: Counter[str] = Counter()
    multi = 0
    picked: list[tuple[str, dict[str, Any]]] = []
    for split in SPLITS:
        p = ds.split_path(split)
        if not p.is_file():
            continue
        with p.open(encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                msgs = _messages(rec)
                if msgs:
                    turns[len(msgs)] += 1
                    roles.update(m["role"] for m in msgs)
                    multi += sum(m["role"] == "assistant" for m in msgs) > 1
                if len(picked) < samples and split == "train":
                    picked.append((split, rec))
    rendered = _render_samples(ds, picked)
    return Inspection(ds, dict(sorted(turns.items())), dict(roles.most_common()), multi, rendered,
                      _reject_examples(ds.path / REJECTED))


def _messages(rec: dict[str, Any]) -> list[dict[str, Any]]:
    if rec.get("kind") == CHAT:
        return rec["messages"]
    if rec.get("kind") == PREFERENCE:
        return rec["prompt"] + rec["chosen"]
    return []


def _render_samples(ds: PreparedDataset, picked: list[tuple[str, dict[str, Any]]]) -> list[Sample]:
    if not picked:
        return []
    from transformers import AutoTokenizer

    from tuneforge.models import resolve_model
    from tuneforge.workspace import Workspace

    base = ds.manifest["base_model"]
    path = Path(base["path"])
    if not path.is_dir():
        path = resolve_model(base["ref"], Workspace.from_env()).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = []
    for split, rec in picked:
        data = {k: rec[k] for k in ("messages", "prompt", "chosen", "rejected", "text") if k in rec}
        row = Row(rec.get("origin", ""), 0, rec["kind"], data)
        out.append(Sample(split, rec.get("origin", ""), render_row(tokenizer, row)))
    return out


def _reject_examples(path: Path) -> dict[str, dict[str, Any]]:
    examples: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return examples
    with path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            examples.setdefault(rec["reason"], rec)
    return examples
