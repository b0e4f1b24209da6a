"""Where MLflow records live: one resolution shared by training, tuning, evaluation and the registry.

An explicit URI (config `tracking.uri`) wins, then $MLFLOW_TRACKING_URI, then an embedded SQLite
store in the workspace, so a laptop needs no server and a team points every stage at one server
by configuration alone. mlflow is imported lazily: the CLI must start without it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.workspace import Workspace

ENV_VAR = "MLFLOW_TRACKING_URI"
log = logging.getLogger("tuneforge.tracking")


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

        if self.uri.startswith("sqlite:///") and ":memory:" not in self.uri:
            try:
                seed_sqlite_db(Path(self.uri[len("sqlite:///"):]))
            except OSError as exc:  # e.g. a read-only home: MLflow then builds the database itself
                log.debug("no MLflow schema template: %s", exc)
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


def seed_sqlite_db(db: Path) -> None:
    """Start a new SQLite store (the workspace's, or one named by a URI) as a copy of an empty, migrated one.

    MLflow creates a SQLite store by running its whole chain of schema migrations: 1.6 s on an idle
    machine, 8 s on a busy one, for every new database (every workspace, so every test). The empty schema depends
    on the MLflow version alone, so it is built once per user and copied. The copy holds no
    experiment: MLflow adds its Default experiment, with this workspace's artifact root, on first use.
    """
    if db.exists():
        return
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneforge"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.is_file():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        cache.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        store = SqlAlchemyStore(f"sqlite:///{tmp}", (cache / "unused-artifacts").as_uri())
        store.engine.dispose()
        with sqlite3.connect(tmp) as conn:
            conn.execute("DELETE FROM experiments")
        conn.close()
        os.replace(tmp, template)  # atomic: a concurrent builder's copy is identical
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    shutil.copyfile(template, tmp)
    try:
        os.link(tmp, db)  # never replaces a database another process created meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
