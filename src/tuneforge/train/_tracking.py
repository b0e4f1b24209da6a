"""One MLflow run per training run, logged through an MlflowClient bound to an explicit run id.

No mlflow fluent API and no environment changes: two trainings in one process (a tuning study)
never share an "active run", and the caller's MLFLOW_* variables are only read, never set.
The store is `tuneforge.tracking.TrackingStore` (config, then $MLFLOW_TRACKING_URI, then an
embedded SQLite database in the workspace). It is contacted before any weight is loaded, so an
unreachable server is an error at once rather than after an hour of training.

The run id is kept in the run directory, so `--resume` continues the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TrainError
from tuneforge.tracking import TrackingStore
from tuneforge.workspace import Workspace

log = logging.getLogger("tuneforge.train")

RUN_ID_FILE = "mlflow_run.json"
# MLflow's limits (mlflow.utils.validation): params per batch, characters per param value, digest length.
_PARAMS_PER_BATCH = 100
_PARAM_VALUE_MAX = 6000
_DIGEST_MAX = 32
# The Trainer's end-of-run summary log; the final metrics are logged by `finish` instead.
_SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos"}
# A connection to a tracking server that is down must fail in seconds, not after MLflow's retries.
_PROBE_TIMEOUT_S = 5.0


@dataclass
class TrainTracker:
    """The MLflow run of one training: created (or reopened on resume) before training starts."""

    store: TrackingStore
    client: Any
    experiment_id: str
    run_id: str

    @property
    def info(self) -> dict[str, str]:
        """What tuneforge.json records, so the registry can tag a version with its training run."""
        return {"uri": self.store.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}

    @classmethod
    def start(cls, cfg: Any, ws: Workspace, *, run_dir: Path, run_name: str, resume: bool,
              main: bool = True) -> TrainTracker | None:
        """The run to log to, or None when tracking is off (or on a non-zero rank of a multi-process job)."""
        if not cfg.tracking.enabled or not main:
            return None
        store = TrackingStore.resolve(cfg.tracking.uri, ws)
        _probe(store.uri)
        try:
            client = store.client()
            experiment_id = store.experiment_id(cfg.tracking.experiment)
            previous = _previous_run(client, run_dir) if resume else None
            if previous is not None:
                client.update_run(previous, status="RUNNING")
                run_id = previous
            else:
                run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        except TrainError:
            raise
        except Exception as exc:
            raise _unusable(store.uri, exc) from exc
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_ID_FILE).write_text(json.dumps({"uri": store.uri, "run_id": run_id}))
        return cls(store, client, experiment_id, run_id)

    def log_start(self, params: dict[str, Any], tags: dict[str, str], dataset: Any) -> None:
        """Parameters, tags and the dataset as an input of the run (its fingerprint as the digest)."""
        try:
            self._log_start(params, tags, dataset)
        except Exception as exc:
            raise _unusable(self.store.uri, exc) from exc

    def _log_start(self, params: dict[str, Any], tags: dict[str, str], dataset: Any) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag, Param, RunTag

        flat = [Param(_key(k), _value(v)) for k, v in params.items()]
        existing = self.client.get_run(self.run_id).data.params  # a resumed run already has them
        flat = [p for p in flat if p.key not in existing]
        for i in range(0, len(flat), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=flat[i:i + _PARAMS_PER_BATCH])
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        fingerprint = dataset.fingerprint
        entity = Dataset(
            name=Path(dataset.path).name[:500],
            # MLflow caps a digest at 36 characters; the full fingerprint is in the profile and params.
            digest=fingerprint[:_DIGEST_MAX],
            source_type="local",
            source=json.dumps({"uri": str(dataset.path)}),
            profile=json.dumps({"fingerprint": fingerprint, "counts": dataset.manifest.get("counts", {})}),
        )
        self.client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", "training")])])

    def callback(self) -> Any:
        """A TrainerCallback that logs every Trainer log entry as metrics at its global step."""
        from tuneforge.train._trainer import MetricsLogger

        return MetricsLogger(self._log_metrics)

    def note(self, tags: dict[str, str]) -> None:
        """Tags added during training (an OOM back-off); never fails the run."""
        from mlflow.entities import RunTag

        try:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        except Exception as exc:
            log.warning("could not tag MLflow run %s: %s", self.run_id, exc)

    def finish(self, metrics: dict[str, Any], tags: dict[str, str], adapter: Path, step: int) -> None:
        """Final metrics, tags and the adapter directory (under adapter/), then the run is FINISHED."""
        from mlflow.entities import RunTag

        final = {("tokens_per_s_mean" if k == "tokens_per_s" else k): v for k, v in metrics.items()}
        self._log_metrics(final, step)
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.log_artifacts(self.run_id, str(adapter), artifact_path="adapter")
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, exc: BaseException) -> None:
        """KILLED for an interrupt (resumable), FAILED otherwise; never hides the original error."""
        from tuneforge.errors import TrainInterrupted

        status = "KILLED" if isinstance(exc, KeyboardInterrupt | TrainInterrupted) else "FAILED"
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, status, err)

    def _log_metrics(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), float(v), now, step) for k, v in values.items()
                   if isinstance(v, int | float) and k not in _SUMMARY_KEYS]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


def flat_params(cfg: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The effective configuration as dotted keys (train.lora.r, model.base, ...) plus ``extra``."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", cfg.model_dump(mode="json", exclude={"tracking"}))
    out.update(extra)
    return out


def _key(name: str) -> str:
    return re.sub(r"[^\w./\- :]", "_", name)[:250]


def _value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text[:_PARAM_VALUE_MAX]


def _previous_run(client: Any, run_dir: Path) -> str | None:
    """The run id an interrupted run left behind, when it is in this store."""
    try:
        saved = json.loads((run_dir / RUN_ID_FILE).read_text())
        return str(client.get_run(saved["run_id"]).info.run_id)
    except Exception:  # no file, another store, or the run was deleted: start a new MLflow run
        return None


def _probe(uri: str) -> None:
    """An HTTP tracking server must answer now; any HTTP response counts (auth is checked later)."""
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=_PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise _unusable(uri, exc) from exc


def _unusable(uri: str, exc: BaseException) -> TrainError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainError(
        f"the MLflow tracking store cannot be used: {reason}",
        where=f"tracking URI {uri} (tracking.uri, else $MLFLOW_TRACKING_URI)",
        fix="start the server or fix the URI, unset tracking.uri / $MLFLOW_TRACKING_URI for the embedded "
        "store in the workspace, or set tracking.enabled=false to train without tracking",
    )

