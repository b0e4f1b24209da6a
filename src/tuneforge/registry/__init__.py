"""The model registry: versioned, verified, audited models on top of the MLflow Model Registry.

mlflow is imported lazily inside the methods, so importing this package (and the CLI) stays light.
"""

from tuneforge.registry.audit import AuditEntry, AuditLog
from tuneforge.registry.integrity import FileEntry
from tuneforge.registry.promotion import EvalRecord, Evidence
from tuneforge.registry.store import (
    ModelVersion,
    RegisteredModel,
    Registry,
    VersionDetails,
    resolve_model_ref,
)

__all__ = [
    "AuditEntry",
    "AuditLog",
    "EvalRecord",
    "Evidence",
    "FileEntry",
    "ModelVersion",
    "RegisteredModel",
    "Registry",
    "VersionDetails",
    "resolve_model_ref",
]
