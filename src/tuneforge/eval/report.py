"""eval.json (read by the registry to decide promotion) and eval.html, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("schema_version", "created", "model", "baselines", "suites", "generation", "metrics",
                 "by_category", "comparisons", "forgetting", "judge", "gates", "passed")


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    from tuneforge.eval.html import render_html

    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise AssertionError(f"eval report lacks {missing}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "eval.json", json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    _write(out_dir / "eval.html", render_html(report))


def read_report(path: Path) -> dict[str, Any]:
    p = path / "eval.json" if path.is_dir() else path
    return json.loads(p.read_text(encoding="utf-8"))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
