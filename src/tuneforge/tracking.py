"""Where MLflow records live: one resolution shared by training, tuning, evaluation and the registry.

An explicit URI (config `tracking.uri`) wins, then $MLFLOW_TRACKING_URI, then an embedded SQLite
store in the workspace, so a laptop needs no server and a team points every stage at one server
by configuration alone. mlflow is imported lazily: the CLI must start without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tuneforge.workspace import Workspace

ENV_VAR = "MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class TrackingStore:
    uri: str
    artifact_location: str | None  # only for the embedded store: artifacts beside the database
    embedded: bool

    @classmethod
    def resolve(cls, uri: str | None = None, workspace: Workspace | None = None) -> TrackingStore:
        ws = workspace or Workspace.from_env()
        chosen = uri or os.environ.get(ENV_VAR)
        if chosen:
            return cls(chosen, None, False)
        ws.ensure(ws.root)
        return cls(f"sqlite:///{ws.mlflow_db}", ws.mlflow_artifacts.as_uri(), True)

    def client(self) -> Any:
        """An MlflowClient bound to this store (tracking and model registry share the URI)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created on first use (artifacts in the workspace if embedded)."""
        client = self.client()
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name, artifact_location=self.artifact_location))
        except Exception:  # another process created it between the lookup and the create
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)
