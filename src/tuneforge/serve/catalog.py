"""What the gateway can serve: the base model plus registered model versions and their aliases.

Everything the registry knows reaches the gateway through this module, so a registry API change is
adapted here only. A catalog holds an immutable snapshot; ``refresh()`` builds a new one and swaps
it in one assignment, so an alias move is seen atomically by every later request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuneforge.serve.errors import ApiError, model_not_found


@dataclass(frozen=True)
class ServedVersion:
    model: str  # registered name
    version: int
    checksum: str | None = None
    dataset_fingerprint: str | None = None
    eval_summary: dict[str, Any] | None = None
    created: int = 0
    path: Path | None = None  # known up front for static adapters; registry copies are fetched lazily

    @property
    def name(self) -> str:
        return f"{self.model}@{self.version}"


@dataclass(frozen=True)
class Snapshot:
    versions: dict[str, dict[int, ServedVersion]] = field(default_factory=dict)
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """A concrete thing to run a request on: the base (``version is None``) or one model version."""

    served_name: str  # what the response's `model` says
    version: ServedVersion | None
    variant: str  # base | alias name | pinned | version label from a policy


class ModelSource(Protocol):
    def snapshot(self) -> Snapshot: ...

    def local_path(self, version: ServedVersion) -> Path: ...


class StaticSource:
    """Adapter directories named in config (``serve.adapters``), each served as NAME@1."""

    def __init__(self, adapters: dict[str, Path]) -> None:
        from tuneforge.train._artifacts import read_meta

        versions: dict[str, dict[int, ServedVersion]] = {}
        for name, path in adapters.items():
            meta = read_meta(Path(path))
            if meta is None:
                from tuneforge.errors import ModelError

                raise ModelError(f"{path} is not a trained adapter (no readable tuneforge.json)",
                                 where=f"serve.adapters.{name}", fix="point it at a `tuneforge train` output")
            versions[name] = {1: ServedVersion(
                name, 1, checksum=meta.get("checksum"),
                dataset_fingerprint=(meta.get("dataset") or {}).get("fingerprint")
                if isinstance(meta.get("dataset"), dict) else meta.get("dataset_fingerprint"),
                eval_summary=meta.get("eval"), path=Path(path),
            )}
        self._snap = Snapshot(versions, {})

    def snapshot(self) -> Snapshot:
        return self._snap

    def local_path(self, version: ServedVersion) -> Path:
        assert version.path is not None
        return version.path


class RegistrySource:
    """Registered models from ``tuneforge.registry.Registry``; ``names`` limits which ones."""

    def __init__(self, registry: Any, names: list[str] | None = None) -> None:
        self._registry = registry
        self._names = set(names or [])

    def snapshot(self) -> Snapshot:
        versions: dict[str, dict[int, ServedVersion]] = {}
        aliases: dict[str, dict[str, int]] = {}
        for entry in self._registry.list_models():
            if self._names and entry.name not in self._names:
                continue
            found = {}
            for v in self._registry.versions(entry.name):
                if getattr(v, "kind", "adapter") != "adapter":
                    continue  # a full fine-tune is served as a base model, not as an adapter
                found[v.version] = ServedVersion(
                    entry.name, v.version, checksum=v.checksum, dataset_fingerprint=v.dataset_fingerprint,
                    eval_summary=_eval_summary(v), created=_epoch(v.created),
                )
            if found:
                versions[entry.name] = found
                aliases[entry.name] = {a: n for a, n in entry.aliases.items() if n in found}
        return Snapshot(versions, aliases)

    def local_path(self, version: ServedVersion) -> Path:
        return Path(self._registry.local_path(version.name))


def _eval_summary(v: Any) -> dict[str, Any] | None:
    if not v.evals:
        return None
    last = v.evals[-1]
    return {"passed": last.passed, "suites": list(last.suites),
            "gates": f"{last.gates_passed}/{last.gates_total} passed", "report_sha256": last.sha256}


def _epoch(iso: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except (ValueError, AttributeError):
        return 0


class MultiSource:
    def __init__(self, sources: list[ModelSource]) -> None:
        self._sources = sources
        self._owner: dict[str, ModelSource] = {}

    def snapshot(self) -> Snapshot:
        versions: dict[str, dict[int, ServedVersion]] = {}
        aliases: dict[str, dict[str, int]] = {}
        owner: dict[str, ModelSource] = {}
        for src in self._sources:
            snap = src.snapshot()
            for name, vs in snap.versions.items():
                versions[name] = vs
                aliases[name] = snap.aliases.get(name, {})
                owner[name] = src
        self._owner = owner
        return Snapshot(versions, aliases)

    def local_path(self, version: ServedVersion) -> Path:
        return self._owner[version.model].local_path(version)


class Catalog:
    def __init__(self, base_name: str, base_ref: str, source: ModelSource | None = None) -> None:
        self.base_name = base_name
        self.base_ref = base_ref
        self._source = source
        self._snap = Snapshot()
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}
        self.refresh()

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    def refresh(self) -> bool:
        """Re-read the source; True when anything changed."""
        if self._source is None:
            return False
        with self._lock:
            new = self._source.snapshot()
            changed = new != self._snap
            self._snap = new  # one assignment: readers see the old or the new snapshot, never a mix
            return changed

    def base_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.base_name, self.base_ref)))

    def model_names(self) -> list[str]:
        return sorted(self._snap.versions)

    def all_names(self) -> list[str]:
        snap = self._snap
        names = list(self.base_names())
        for m in sorted(snap.versions):
            names.append(m)
            names += [f"{m}@{v}" for v in sorted(snap.versions[m])]
            names += [f"{m}@{a}" for a in sorted(snap.aliases.get(m, {}))]
        return names

    def default_variant(self, name: str) -> str:
        """What a bare NAME serves without a policy: the production alias, else the latest version."""
        snap = self._snap
        if "production" in snap.aliases.get(name, {}):
            return "production"
        return str(max(snap.versions[name]))

    def lookup(self, name: str, selector: str, *, variant: str | None = None) -> Target:
        """``selector`` is a version number or an alias of model ``name``."""
        snap = self._snap
        versions = snap.versions.get(name)
        if versions is None:
            raise model_not_found(f"{name}@{selector}", self.all_names())
        if selector.isdigit():
            number = int(selector)
            label = variant or "pinned"
        else:
            number = snap.aliases.get(name, {}).get(selector)  # type: ignore[assignment]
            label = variant or selector
            if number is None:
                raise model_not_found(f"{name}@{selector}", self.all_names())
        found = versions.get(number)
        if found is None:
            raise model_not_found(f"{name}@{selector}", self.all_names())
        return Target(found.name, found, label)

    def resolve(self, requested: str, pick: Callable[[str], str | None] | None = None) -> Target:
        """Map a request's ``model`` to a target; ``pick(name)`` returns the routed variant of a bare NAME."""
        if requested in self.base_names():
            return Target(self.base_name, None, "base")
        name, at, selector = requested.partition("@")
        if at:
            if not selector:
                raise ApiError(400, f"'{requested}' has an empty version after '@'.", param="model")
            return self.lookup(name, selector)
        if name not in self._snap.versions:
            raise model_not_found(requested, self.all_names())
        variant = (pick(name) if pick else None) or self.default_variant(name)
        return self.lookup(name, variant, variant=variant)

    def cached_path(self, version: ServedVersion) -> Path | None:
        """The adapter directory of ``version`` when it is known without a registry call."""
        return version.path if version.path is not None else self._paths.get(version.name)

    def local_path(self, version: ServedVersion) -> Path:
        """The adapter directory of ``version`` (fetched and verified by the registry once)."""
        if version.path is not None:
            return version.path
        cached = self._paths.get(version.name)
        if cached is None:
            assert self._source is not None
            cached = self._source.local_path(version)
            self._paths[version.name] = cached
        return cached
