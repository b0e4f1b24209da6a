"""Where artifacts live: ./.tuneforge by default, TUNEFORGE_HOME overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "TUNEFORGE_HOME"
DEFAULT_DIR = ".tuneforge"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> Workspace:
        """An explicit root wins, then $TUNEFORGE_HOME, then ./.tuneforge."""
        chosen = root or os.environ.get(ENV_VAR) or DEFAULT_DIR
        return cls(Path(chosen).expanduser().resolve())

    @property
    def models_dir(self) -> Path:
        """Converted base models (e.g. the bundled GGUF dequantised to safetensors)."""
        return self.root / "models"

    @property
    def datasets_dir(self) -> Path:
        """Prepared datasets, one directory per content fingerprint."""
        return self.root / "datasets"

    @property
    def adapters_dir(self) -> Path:
        """Trained adapters (or full models), one directory per name and content hash."""
        return self.root / "adapters"

    @property
    def runs_dir(self) -> Path:
        """In-progress training runs: resumable checkpoints, keyed like the adapter they produce."""
        return self.root / "runs"

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files of runs with train.report_to: [tensorboard], one directory per run."""
        return self.root / "tensorboard"

    @property
    def mlflow_db(self) -> Path:
        """The embedded MLflow store (runs, params, metrics, registered models) when no server is set."""
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """Artifacts of the embedded MLflow store (logged adapters, eval reports)."""
        return self.root / "mlartifacts"

    def ensure(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path
