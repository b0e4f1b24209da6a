"""The model registry: MLflow's Model Registry with the gaps closed that matter for shipping models.

Each registered version is an MLflow model version whose files were copied into a dedicated
"registry" run's artifacts (so it does not depend on the adapter directory staying put), with its
lineage, per-file sha256 manifest and attached eval reports as version tags. On top of MLflow this
adds: content dedup, an allow-list of file types, checksum verification on every load, evidence
rules for gated aliases, and an append-only audit log of every alias move, written under a
cross-process lock together with the move itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneforge.errors import IntegrityError, RegistryError
from tuneforge.outputs import output_dir
from tuneforge.registry import integrity, promotion
from tuneforge.registry.audit import AuditEntry, AuditLog
from tuneforge.registry.integrity import FileEntry
from tuneforge.registry.promotion import EvalRecord, Evidence
from tuneforge.tracking import TrackingStore
from tuneforge.workspace import Workspace

META = "tuneforge.json"  # the adapter's self-description, as written by training
ADAPTER_ARTIFACT = "adapter"
EVAL_ARTIFACT = "eval"
PRODUCTION = "production"
_TAG = "tuneforge."
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    checksum: str  # the adapter's checksum (tuneforge.json "checksum"; eval reports quote it)
    source: str  # artifact URI of the registered files
    run_id: str  # the registry run holding the files
    created: str  # ISO time, UTC
    aliases: tuple[str, ...]
    kind: str  # adapter | full
    training_run_id: str | None
    dataset_fingerprint: str | None
    base_model: dict[str, Any]  # ref, name, identity, revision
    contract: dict[str, Any]  # chat contract minus the template text (its sha256 stays)
    metrics: dict[str, Any]
    files: dict[str, FileEntry]  # every registered file, tuneforge.json included
    evals: tuple[EvalRecord, ...] = ()
    reused: bool = False  # register() found identical content already registered under this name

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    latest_version: int | None
    versions: int
    aliases: dict[str, int]
    description: str = ""


@dataclass(frozen=True)
class VersionDetails:
    version: ModelVersion
    evidence: Evidence  # against the configured required suites
    gates: list[dict[str, Any]] = field(default_factory=list)  # of the newest attached report
    report_metrics: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Typed access to the registry. ``tracking_uri`` (or $MLFLOW_TRACKING_URI) selects a server;
    by default the workspace's embedded SQLite store is used."""

    def __init__(self, workspace: Workspace | None = None, tracking_uri: str | None = None, *,
                 required_suites: list[str] | None = None, gated_aliases: list[str] | None = None,
                 experiment: str = "tuneforge-registry") -> None:
        self.workspace = workspace or Workspace.from_env()
        self.store = TrackingStore.resolve(tracking_uri, self.workspace)
        self.required_suites = list(required_suites or [])
        self.gated_aliases = list(gated_aliases if gated_aliases is not None else [PRODUCTION])
        self.experiment = experiment
        self.root = self.workspace.ensure(self.workspace.root / "registry")
        self.audit = AuditLog(self.root / "audit.db")
        self._client: Any = None

    @classmethod
    def from_config(cls, cfg: Any, workspace: Workspace | None = None) -> Registry:
        r = cfg.registry
        return cls(workspace, cfg.tracking.uri, required_suites=r.required_suites,
                   gated_aliases=r.gated_aliases, experiment=r.experiment)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.store.client()
        return self._client

    def lock(self, name: str) -> AbstractContextManager[Any]:
        """The cross-process lock serialising changes to one registered model."""
        from filelock import FileLock

        locks = self.workspace.ensure(self.root / "locks")
        return FileLock(str(locks / f"{name}.lock"), timeout=300)

    # ------------------------------------------------------------------ reading

    def list_models(self) -> list[RegisteredModel]:
        out = []
        for rm in _paged(lambda token: self.client.search_registered_models(max_results=100, page_token=token)):
            versions = self.versions(rm.name)
            out.append(RegisteredModel(rm.name, max((v.version for v in versions), default=None), len(versions),
                                       {a: int(v) for a, v in (rm.aliases or {}).items()}, rm.description or ""))
        return sorted(out, key=lambda m: m.name)

    def versions(self, name: str) -> list[ModelVersion]:
        _check_name(name)
        found = _paged(lambda token: self.client.search_model_versions(
            f"name = '{name}'", max_results=1000, page_token=token))
        return sorted((_from_mlflow(mv) for mv in found), key=lambda v: v.version)

    def aliases(self, name: str) -> dict[str, int]:
        """Alias → version for ``name`` (serving polls this to notice alias moves)."""
        return {a: int(v) for a, v in (self._registered(name).aliases or {}).items()}

    def resolve(self, ref: str) -> ModelVersion:
        """``name`` (latest version), ``name@3`` / ``name@v3`` (a version) or ``name@alias``."""
        name, _, selector = ref.partition("@")
        _check_name(name, where=ref)
        if not selector:
            versions = self.versions(name)
            if not versions:
                self._registered(name)  # raises "no such model"
                raise RegistryError(f"model {name} has no versions", where=ref, fix="register one first")
            return versions[-1]
        number = selector[1:] if selector[:1] == "v" and selector[1:].isdigit() else selector
        if number.isdigit():
            return self._version(name, int(number), ref)
        from mlflow.exceptions import MlflowException

        try:
            return _from_mlflow(self.client.get_model_version_by_alias(name, selector))
        except MlflowException:
            known = self.aliases(name)
            raise RegistryError(
                f"model {name} has no alias '{selector}'", where=ref,
                fix=f"use one of: {', '.join(f'{a} (v{v})' for a, v in sorted(known.items())) or 'none set yet'}; "
                f"or `tuneforge registry promote {name} VERSION --to {selector}`") from None

    def show(self, ref: str) -> VersionDetails:
        mv = self.resolve(ref)
        evidence = self.evidence(mv)
        gates: list[dict[str, Any]] = []
        metrics: dict[str, Any] = {}
        if mv.evals:
            report = self._read_report(mv, evidence.report or mv.evals[-1])
            gates, metrics = list(report.get("gates", [])), dict(report.get("metrics", {}))
        return VersionDetails(mv, evidence, gates, metrics)

    def history(self, name: str, alias: str | None = None) -> list[AuditEntry]:
        return self.audit.entries(name, alias)

    def verify_history(self) -> list[str]:
        return self.audit.verify()

    # ------------------------------------------------------------------ files

    def local_path(self, ref: str) -> Path:
        """A verified local copy of a version: downloaded once into the workspace cache, and every
        file's sha256 checked against the registered manifest on every call."""
        mv = self.resolve(ref)
        dest = self.root / "cache" / mv.name / str(mv.version)
        if not dest.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=dest.parent))
            try:
                self._download(mv.run_id, ADAPTER_ARTIFACT, tmp)
                got = tmp / ADAPTER_ARTIFACT
                for p in got.rglob("*"):
                    if p.is_file():
                        integrity.check_allowed(p.relative_to(got).as_posix(), f"{mv.source}")
                integrity.verify(got, mv.files, f"{mv.ref} in the artifact store")
                try:
                    os.replace(got, dest)
                except OSError:
                    if not dest.is_dir():  # not a concurrent download that finished first
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        integrity.verify(dest, mv.files, mv.ref)
        return dest

    def download(self, ref: str, out: Path) -> Path:
        """Copy a verified version to ``out`` (which must not exist or be empty)."""
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RegistryError(f"{out} exists and is not empty", where=str(out),
                                fix="choose a new directory or empty it first")
        src = self.local_path(ref)
        mv = self.resolve(ref)
        output_dir(out, where=str(out))
        shutil.copytree(src, out, dirs_exist_ok=True)
        integrity.verify(out, mv.files, f"{mv.ref} copied to {out}")
        return out

    # ------------------------------------------------------------------ writing

    def register(self, adapter_dir: Path, name: str, eval_report: Path | None = None) -> ModelVersion:
        """A new immutable version of ``name`` with ``adapter_dir``'s files, or the existing version
        when the same content is already registered under ``name``."""
        _check_name(name)
        adapter_dir = Path(adapter_dir)
        meta = _read_meta(adapter_dir)
        manifest = integrity.scan(adapter_dir)
        checksum = _adapter_checksum(adapter_dir, manifest, meta)
        report = promotion.load_report(eval_report) if eval_report is not None else None
        if report is not None:
            _check_report_model(report, checksum, eval_report)
        with self.lock(name):
            self._ensure_registered(name)
            for existing in self.versions(name):
                if existing.checksum == checksum:
                    if report is not None and eval_report is not None:
                        self._attach(existing, eval_report, report)
                        existing = self._version(name, existing.version, name)
                    return _replace(existing, reused=True)
            mv = self._create_version(adapter_dir, name, manifest, meta, checksum)
            with self.audit.append(model=name, alias="", from_version=None, to_version=mv.version,
                                   action="register", evidence={"checksum": checksum, "source": mv.source}):
                pass
            if report is not None and eval_report is not None:
                self._attach(mv, eval_report, report)
            return self._version(name, mv.version, name)

    def attach_eval(self, name: str, version: int, report_path: Path) -> EvalRecord:
        """Attach an eval report (eval.json) to a version as evidence; it must be of that version."""
        mv = self._version(name, version, f"{name}@{version}")
        report = promotion.load_report(report_path)
        _check_report_model(report, mv.checksum, report_path)
        with self.lock(name):
            return self._attach(self._version(name, version, mv.ref), report_path, report)

    def evidence(self, mv: ModelVersion) -> Evidence:
        """Whether ``mv`` may take a gated alias, re-checking each attached report file's sha256."""
        for record in mv.evals:
            self._read_report(mv, record)
        return promotion.assess(list(mv.evals), mv.checksum, self.required_suites)

    def promote(self, name: str, version: int, alias: str, *, force: bool = False,
                reason: str | None = None) -> AuditEntry | None:
        """Point ``alias`` at ``version``. Gated aliases (production) need passing evidence unless
        ``force`` with a ``reason``. Returns the audit entry, or None if the alias already points there."""
        _check_alias(alias)
        mv = self._version(name, version, f"{name}@{version}")
        evidence: dict[str, Any] = {}
        action = "promote"
        if alias in self.gated_aliases:
            ev = self.evidence(mv)
            evidence = ev.summary()
            if not ev.ok and not force:
                raise RegistryError(
                    f"refusing to move '{alias}' to {mv.ref}: no passing eval report"
                    + (f" covering {', '.join(self.required_suites)}" if self.required_suites else "")
                    + ":\n    " + "\n    ".join(ev.problems),
                    where=f"{mv.ref} → {alias}",
                    fix=f"run `tuneforge eval {mv.ref}` and `tuneforge registry attach-eval {name} {version} "
                    "eval.json`, or override with --force --reason TEXT (audited)")
        if force:
            if not (reason and reason.strip()):
                raise RegistryError("--force needs --reason", where=f"{mv.ref} → {alias}",
                                    fix="say why the evidence rules are overridden: --reason TEXT")
            action = "force"
        with self.lock(name):
            current = self._alias_target(name, alias)
            if current == version:
                return None
            with self.audit.append(model=name, alias=alias, from_version=current, to_version=version,
                                   action=action, reason=reason or "", evidence=evidence) as entry:
                self.client.set_registered_model_alias(name, alias, str(version))
        return entry

    def rollback(self, name: str, alias: str = PRODUCTION, reason: str | None = None) -> AuditEntry:
        """Point ``alias`` back at the version it held before its current one (repeatable: each
        rollback steps one move further back)."""
        _check_alias(alias)
        with self.lock(name):
            current = self._alias_target(name, alias)
            if current is None:
                raise RegistryError(f"model {name} has no '{alias}' alias to roll back",
                                    where=f"{name}@{alias}", fix=f"promote a version to {alias} first")
            previous = _previous(self.audit.entries(name, alias), current)
            if previous is None:
                raise RegistryError(
                    f"no previous '{alias}' version of {name} to roll back to (v{current} is the first "
                    "recorded one)", where=f"{name}@{alias}",
                    fix=f"promote another version instead: tuneforge registry promote {name} VERSION --to {alias}")
            self._version(name, previous, f"{name}@{previous}")
            with self.audit.append(model=name, alias=alias, from_version=current, to_version=previous,
                                   action="rollback", reason=reason or "",
                                   evidence={"restores": previous}) as entry:
                self.client.set_registered_model_alias(name, alias, str(previous))
        return entry

    def demote(self, name: str, alias: str, reason: str, evidence: dict[str, Any] | None = None) -> AuditEntry | None:
        """Remove ``alias`` (e.g. a failing canary) so it serves nothing; audited with ``reason``.
        Taking a version out of service needs no eval evidence. None when the alias is not set."""
        _check_alias(alias)
        if not (reason and reason.strip()):
            raise RegistryError("a demotion needs a reason", where=f"{name}@{alias}", fix="say why: reason=TEXT")
        with self.lock(name):
            current = self._alias_target(name, alias)
            if current is None:
                return None
            with self.audit.append(model=name, alias=alias, from_version=current, to_version=None,
                                   action="demote", reason=reason, evidence=evidence or {}) as entry:
                self.client.delete_registered_model_alias(name, alias)
        return entry

    # ------------------------------------------------------------------ internals

    def _registered(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        _check_name(name)
        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            raise RegistryError(f"no registered model named {name}", where=name,
                                fix="see `tuneforge registry list`, or register one with "
                                f"`tuneforge registry register ADAPTER --name {name}`") from None

    def _version(self, name: str, version: int, ref: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        self._registered(name)
        try:
            return _from_mlflow(self.client.get_model_version(name, str(version)))
        except MlflowException:
            have = [v.version for v in self.versions(name)]
            raise RegistryError(f"model {name} has no version {version}", where=ref,
                                fix=f"versions: {', '.join(map(str, have)) or 'none'}") from None

    def _download(self, run_id: str, artifact: str, dst: Path) -> Path:
        # mlflow draws a tqdm bar per download unless told not to; the CLI has its own output.
        quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
        if quiet:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            return Path(self.client.download_artifacts(run_id, artifact, str(dst)))
        finally:
            if quiet:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)

    def _alias_target(self, name: str, alias: str) -> int | None:
        return self.aliases(name).get(alias)

    def _ensure_registered(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name, description="Registered by tuneforge.")
            except MlflowException:
                self.client.get_registered_model(name)  # created concurrently elsewhere (e.g. another host)

    def _create_version(self, adapter_dir: Path, name: str, manifest: dict[str, FileEntry],
                        meta: dict[str, Any], checksum: str) -> ModelVersion:
        client = self.client
        exp = self.store.experiment_id(self.experiment)
        training_run = (meta.get("tracking") or {}).get("run_id")
        base = meta.get("base_model") or {}
        contract = {k: v for k, v in (meta.get("contract") or {}).items() if k != "chat_template"}
        tags = {
            "checksum": checksum,
            "kind": str(meta.get("kind", "adapter")),
            "files": json.dumps({p: [e.sha256, e.size] for p, e in manifest.items()}, sort_keys=True),
            "training_run_id": training_run or "",
            "dataset_fingerprint": str((meta.get("dataset") or {}).get("fingerprint") or ""),
            "base_model": json.dumps(base, sort_keys=True),
            "base_identity": str(base.get("identity") or ""),
            "contract": json.dumps(contract, sort_keys=True),
            "template_sha256": str(contract.get("chat_template_sha256") or ""),
            "metrics": json.dumps(meta.get("metrics") or {}, sort_keys=True),
            "evals": "[]",
        }
        run = client.create_run(exp, run_name=f"register-{name}-{checksum[:12]}",
                                tags={"tuneforge.registered_model": name, "tuneforge.checksum": checksum,
                                      **({"tuneforge.training_run_id": training_run} if training_run else {})})
        try:
            client.log_artifacts(run.info.run_id, str(adapter_dir), ADAPTER_ARTIFACT)
            client.set_terminated(run.info.run_id)
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        source = f"{run.info.artifact_uri.rstrip('/')}/{ADAPTER_ARTIFACT}"
        mv = client.create_model_version(name, source, run_id=run.info.run_id,
                                         tags={_TAG + k: v for k, v in tags.items()},
                                         description=f"checksum {checksum}")
        return _from_mlflow(mv)

    def _attach(self, mv: ModelVersion, path: Path, report: dict[str, Any]) -> EvalRecord:
        sha = integrity.sha256_file(path)
        for r in mv.evals:
            if r.sha256 == sha:
                return r
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / f"eval-{sha[:16]}.json"
            shutil.copyfile(path, copy)
            self.client.log_artifact(mv.run_id, str(copy), EVAL_ARTIFACT)
        record = promotion.record_for(report, sha, f"{EVAL_ARTIFACT}/{copy.name}", _now())
        evals = [*mv.evals, record]
        with self.audit.append(model=mv.name, alias="", from_version=None, to_version=mv.version,
                               action="attach-eval", evidence={"eval_report": sha, "passed": record.passed,
                                                                "suites": list(record.suites)}):
            self.client.set_model_version_tag(mv.name, str(mv.version), _TAG + "evals",
                                              json.dumps([r.to_dict() for r in evals]))
        return record

    def _read_report(self, mv: ModelVersion, record: EvalRecord) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(mv.run_id, record.artifact, Path(tmp))
            if integrity.sha256_file(local) != record.sha256:
                raise IntegrityError(f"{mv.ref}: attached eval report {record.artifact} does not match its "
                                     "recorded sha256; refusing to use it as evidence",
                                     where=f"{mv.source.rsplit('/', 1)[0]}/{record.artifact}",
                                     fix="attach the original report again with `tuneforge registry attach-eval`")
            return json.loads(local.read_text())


# ---------------------------------------------------------------------- helpers


def _paged(call: Any) -> list[Any]:
    out, token = [], None
    while True:
        page = call(token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _replace(mv: ModelVersion, **changes: Any) -> ModelVersion:
    from dataclasses import replace

    return replace(mv, **changes)


def _check_name(name: str, where: str | None = None) -> None:
    if not _NAME_RE.match(name or ""):
        raise RegistryError(f"invalid model name {name!r}", where=where or name,
                            fix="use letters, digits, '.', '_' and '-' (starting with a letter or digit)")


def _check_alias(alias: str) -> None:
    if not _ALIAS_RE.match(alias or "") or alias == "latest" or re.fullmatch(r"v\d+", alias):
        raise RegistryError(f"invalid alias {alias!r}", where=alias,
                            fix="use a word such as staging, canary or production (not 'latest' or v<number>, "
                            "which name versions)")


def _read_meta(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        raise RegistryError(f"{adapter_dir} has no readable {META}", where=str(path),
                            fix="register a directory written by `tuneforge train`") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or not meta.get("checksum"):
        raise RegistryError(f"{path} lacks the files/checksum record", where=str(path),
                            fix="register a directory written by `tuneforge train`")
    return meta


def _adapter_checksum(adapter_dir: Path, manifest: dict[str, FileEntry], meta: dict[str, Any]) -> str:
    """The adapter's checksum, after checking every file against what training recorded."""
    from tuneforge.train._artifacts import checksum

    recorded: dict[str, str] = meta["files"]
    found = {p: e.sha256 for p, e in manifest.items() if p != META}
    for rel in sorted(set(found) | set(recorded)):
        if found.get(rel) != recorded.get(rel):
            state = "is missing" if rel not in found else "was added" if rel not in recorded else "was modified"
            raise IntegrityError(f"{rel} {state} since training wrote {META}", where=f"{adapter_dir}/{rel}",
                                 fix="register the adapter exactly as `tuneforge train` wrote it")
    value = checksum(found)
    if value != meta["checksum"]:
        raise IntegrityError(f"{META} checksum does not match its file list", where=str(adapter_dir / META),
                             fix="register the adapter exactly as `tuneforge train` wrote it")
    return value


def _check_report_model(report: dict[str, Any], checksum: str, path: Path | None) -> None:
    got = report["model"]["checksum"]
    if got != checksum:
        raise RegistryError(
            f"eval report {path} is for another model (model.checksum {got[:16]}…, this version {checksum[:16]}…)",
            where=str(path), fix="evaluate this exact version (tuneforge eval NAME@VERSION) and attach that report")


def _previous(moves: list[AuditEntry], current: int) -> int | None:
    """The version the alias held before the forward move that brought ``current`` (rollbacks skipped,
    so successive rollbacks walk further back)."""
    for e in reversed(moves):
        if e.action != "rollback" and e.to_version == current:
            return e.from_version
    return None


def _from_mlflow(mv: Any) -> ModelVersion:
    t = {k[len(_TAG):]: v for k, v in (mv.tags or {}).items() if k.startswith(_TAG)}

    def js(key: str, default: Any) -> Any:
        try:
            return json.loads(t[key]) if t.get(key) else default
        except ValueError:
            return default

    files = {p: FileEntry(p, h, int(size)) for p, (h, size) in js("files", {}).items()}
    created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, UTC).isoformat(timespec="seconds")
    return ModelVersion(
        name=mv.name, version=int(mv.version), checksum=t.get("checksum", ""), source=mv.source,
        run_id=mv.run_id or "", created=created, aliases=tuple(sorted(mv.aliases or ())),
        kind=t.get("kind", "adapter"), training_run_id=t.get("training_run_id") or None,
        dataset_fingerprint=t.get("dataset_fingerprint") or None, base_model=js("base_model", {}),
        contract=js("contract", {}), metrics=js("metrics", {}), files=files,
        evals=tuple(EvalRecord.from_dict(d) for d in js("evals", [])),
    )


def resolve_model_ref(ref: str, workspace: Workspace | None = None, tracking_uri: str | None = None) -> Path:
    """A verified local directory for a registry reference (``name``, ``name@3``, ``name@production``),
    for stages (eval, serve) that take a model by registry name."""
    return Registry(workspace, tracking_uri).local_path(ref)
