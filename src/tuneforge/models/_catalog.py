"""What base models are available here: bundled packages and converted caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneforge.models._bundled import BUNDLED, BUNDLED_PREFIX
from tuneforge.models._resolve import META
from tuneforge.workspace import Workspace


@dataclass(frozen=True)
class ModelEntry:
    ref: str
    status: str  # "cached" (ready, ~1 s load), "available" (converts on first use), "missing"
    path: str
    size_mb: float
    how_to_get: str = ""


def _dir_size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def list_models(workspace: Workspace) -> list[ModelEntry]:
    entries: list[ModelEntry] = []
    for name, spec in BUNDLED.items():
        ref = BUNDLED_PREFIX + name
        caches = sorted(workspace.models_dir.glob(f"{name}-*/{META}")) if workspace.models_dir.is_dir() else []
        gguf = spec.locate()
        if caches:
            d = caches[-1].parent
            entries.append(ModelEntry(ref, "cached", str(d), _dir_size_mb(d)))
        elif gguf is not None:
            entries.append(ModelEntry(ref, "available", str(gguf), round(gguf.stat().st_size / 2**20, 1)))
        else:
            entries.append(ModelEntry(ref, "missing", "", 0.0, spec.pip_install))
    return entries
