"""Helpers shared by the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = {"type": "object", "properties": {"category": {"enum": ["billing", "bug"]}, "priority": {"type": "string"}},
          "required": ["category", "priority"], "additionalProperties": False}
SYSTEM = "Reply with a JSON object with keys category and priority."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_prepared(path: Path, n: int = 16) -> Path:
    """A prepared-dataset directory (the parts training reads) of short JSON-answer chat rows."""
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        cat = "billing" if i % 2 else "bug"
        rows.append({"id": f"r{i}", "kind": "chat", "source": "domain", "num_tokens": 0, "origin": f"in:{i}",
                     "messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": f"Ticket {i}: problem number {i}"},
                                  {"role": "assistant", "content": json.dumps({"category": cat, "priority": "low"})}]})
    for split, part in (("train", rows[:-4]), ("val", rows[-4:]), ("test", rows[-4:])):
        write_jsonl(path / f"{split}.jsonl", part)
    (path / "manifest.json").write_text(json.dumps({"fingerprint": "e" * 64, "counts": {}}))
    return path
