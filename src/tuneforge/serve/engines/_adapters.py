"""Adapter residency for both engines: verification, an LRU of loaded adapters, refcounts.

Verification (checksum, contract against the loaded base) runs before any weight touches the
model, so a refused adapter leaves the engine exactly as it was. The table itself is shared by
the event loop (which takes references when a request is accepted) and the local engine's
scheduler thread (which drops them when the request ends), hence the lock. ``load`` and
``drain`` hold the protocol every engine follows; the engines supply only how an adapter is
installed in (or removed from) what actually serves it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.serve.engines.base import AdapterSpec, EngineError


@dataclass
class Resident:
    spec: AdapterSpec
    refs: int = 0
    draining: bool = False
    last_used: float = 0.0


def verify(spec: AdapterSpec, contract: Any) -> dict[str, Any]:
    """Check an adapter directory against its checksum and the loaded base; return its tuneforge.json."""
    from tuneforge.models import ChatContract
    from tuneforge.train._artifacts import META, read_meta, verify_checksum

    path = Path(spec.path)
    where = f"adapter {spec.name} at {path}"
    meta = read_meta(path) if path.is_dir() else None
    if meta is None:
        raise EngineError(f"{where} is not a tuneforge adapter directory (no readable {META})",
                          status=400, code="adapter_invalid")
    if meta.get("kind", "adapter") != "adapter" or not (path / "adapter_config.json").is_file():
        raise EngineError(f"{where} is a full model, not a LoRA adapter; serve it as a base model instead",
                          status=400, code="adapter_invalid")
    if spec.checksum and spec.checksum != meta.get("checksum"):
        raise EngineError(f"{where}: checksum {meta.get('checksum')} is not the registered {spec.checksum}",
                          status=400, code="adapter_checksum_mismatch")
    if not verify_checksum(path):
        raise EngineError(f"{where}: files do not match the sha256 recorded in {META} "
                          "(changed or incomplete after training)", status=400, code="adapter_checksum_mismatch")
    recorded = meta.get("contract")
    if not isinstance(recorded, dict):
        raise EngineError(f"{where}: {META} records no chat contract", status=400, code="adapter_invalid")
    diffs = ChatContract.from_dict(recorded).differences(contract)
    if diffs:
        trained_on = (meta.get("base_model") or {}).get("identity", "another base")
        raise EngineError(f"{where} was trained on {trained_on}, which does not match the served base "
                          f"{contract.base_model}: " + "; ".join(diffs), status=400, code="adapter_contract_mismatch")
    return meta


class AdapterTable:
    """Names → resident adapters, in least-recently-used order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Resident] = OrderedDict()
        self._loading: set[str] = set()

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._items)

    def get(self, name: str) -> Resident | None:
        with self._lock:
            return self._items.get(name)

    def acquire(self, name: str) -> None:
        """Take a reference for a request; refuses unknown and draining adapters."""
        with self._lock:
            item = self._items.get(name)
            if item is None:
                raise EngineError(f"adapter '{name}' is not loaded", status=404, code="model_not_found",
                                  param="model")
            if item.draining:
                raise EngineError(f"adapter '{name}' is being unloaded", status=503, code="adapter_unloading",
                                  param="model")
            item.refs += 1
            item.last_used = time.monotonic()
            self._items.move_to_end(name)

    def release(self, name: str) -> None:
        with self._lock:
            item = self._items.get(name)
            if item is not None and item.refs > 0:
                item.refs -= 1

    async def load(self, adapter: AdapterSpec, install: Callable[[], Awaitable[None]]) -> None:
        """Make ``adapter`` resident once: a name already loaded from another path is refused (409),
        a concurrent load of the same name is shared, and ``install`` (verify, evict with
        ``pick_victim``, attach) runs only for the first caller; the adapter counts as resident
        only if it returned."""
        resident = self.get(adapter.name)
        if resident is not None and resident.spec.path != adapter.path and not resident.draining:
            raise EngineError(f"adapter name '{adapter.name}' is already loaded from {resident.spec.path}",
                              status=409, code="adapter_name_in_use", param="model")
        while self.loading(adapter.name):
            await asyncio.sleep(0.02)
        if not self.begin_load(adapter.name):
            if self.get(adapter.name) is None:
                raise EngineError(f"adapter '{adapter.name}' failed to load", status=400, code="adapter_invalid")
            return
        loaded = None
        try:
            await install()
            loaded = adapter
        finally:
            self.end_load(adapter.name, loaded)

    async def drain(self, name: str) -> None:
        """Refuse new requests for ``name`` and wait until the running ones are done with it."""
        self.start_drain(name)
        while self.refs(name) > 0:
            await asyncio.sleep(0.02)

    def begin_load(self, name: str) -> bool:
        """Reserve ``name`` for loading; False if it is resident or already loading."""
        with self._lock:
            if name in self._items:
                self._items.move_to_end(name)
                return False
            if name in self._loading:
                return False
            self._loading.add(name)
            return True

    def end_load(self, name: str, spec: AdapterSpec | None) -> None:
        with self._lock:
            self._loading.discard(name)
            if spec is not None:
                self._items[name] = Resident(spec, last_used=time.monotonic())

    def loading(self, name: str) -> bool:
        with self._lock:
            return name in self._loading

    def pick_victim(self) -> str | None:
        """Mark the least recently used idle adapter as draining when the table is full.

        Returns its name (the caller unloads it), or None when there is room. Raises 503 when the
        table is full of adapters that requests are using.
        """
        with self._lock:
            if len(self._items) + len(self._loading) <= self.capacity:
                return None
            for name, item in self._items.items():
                if item.refs == 0 and not item.draining:
                    item.draining = True
                    return name
        raise EngineError(f"all {self.capacity} adapter slots are in use by running requests",
                          status=503, code="adapter_capacity")

    def start_drain(self, name: str) -> Resident:
        with self._lock:
            item = self._items.get(name)
            if item is None:
                raise EngineError(f"adapter '{name}' is not loaded", status=404, code="model_not_found",
                                  param="model")
            item.draining = True
            return item

    def refs(self, name: str) -> int:
        with self._lock:
            item = self._items.get(name)
            return 0 if item is None else item.refs

    def remove(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)
