"""The append-only audit log of registry events (alias moves, registrations, attached evidence).

MLflow keeps only the current target of an alias, so who moved it, when, from where and why is
recorded here: a SQLite file in the workspace. Triggers abort any UPDATE or DELETE, and every entry
carries a sha256 over its content and the previous entry's hash, so an edit made by someone who
drops the triggers (or edits the file) is found by ``verify``.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ACTOR_ENV = "TUNEFORGE_ACTOR"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_model ON entries (model, alias, id);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
_COLUMNS = ("id", "time", "actor", "model", "alias", "from_version", "to_version", "action", "reason",
            "evidence", "prev_hash", "hash")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: str  # ISO 8601, UTC
    actor: str
    model: str
    alias: str  # "" for events that move no alias (register, attach-eval)
    from_version: int | None
    to_version: int | None
    action: str  # register | attach-eval | promote | force | rollback
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_actor() -> str:
    """$TUNEFORGE_ACTOR, else user@host."""
    if actor := os.environ.get(ACTOR_ENV):
        return actor
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _entry_hash(e: AuditEntry) -> str:
    body = [e.prev_hash, e.id, e.time, e.actor, e.model, e.alias, e.from_version, e.to_version, e.action,
            e.reason, e.evidence]
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as con:
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so an append is atomic.
        return sqlite3.connect(self.path, timeout=60, isolation_level=None)

    @contextlib.contextmanager
    def append(self, *, model: str, alias: str, from_version: int | None, to_version: int | None,
               action: str, reason: str = "", evidence: dict[str, Any] | None = None,
               actor: str | None = None) -> Iterator[AuditEntry]:
        """Write one entry; it is committed only if the body of the ``with`` succeeds.

        The caller makes its change (e.g. moves the alias) inside the block, so an entry never
        records a change that did not happen and a change never goes unrecorded by a failure here.
        """
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
            new_id, prev = (row[0] + 1, row[1]) if row else (1, "")
            entry = AuditEntry(new_id, datetime.now(UTC).isoformat(timespec="microseconds"),
                               actor or default_actor(), model, alias, from_version, to_version, action,
                               reason or "", evidence or {}, prev)
            entry = AuditEntry(**{**asdict(entry), "hash": _entry_hash(entry)})
            con.execute(f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                        _row(entry))
            try:
                yield entry
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def entries(self, model: str | None = None, alias: str | None = None) -> list[AuditEntry]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM entries"
        where, args = [], []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if alias is not None:
            where.append("alias = ?")
            args.append(alias)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with contextlib.closing(self._connect()) as con:
            return [_entry(r) for r in con.execute(sql + " ORDER BY id", args)]

    def verify(self) -> list[str]:
        """Problems in the hash chain (edited, inserted or removed entries); empty when intact."""
        problems = []
        prev, expected_id = "", 1
        for e in self.entries():
            if e.id != expected_id:
                problems.append(f"entry {e.id}: expected id {expected_id} (entries removed or inserted)")
            if e.prev_hash != prev:
                problems.append(f"entry {e.id}: previous-hash link broken (an earlier entry was changed or removed)")
            if _entry_hash(e) != e.hash:
                problems.append(f"entry {e.id}: content does not match its hash (edited outside tuneforge)")
            prev, expected_id = e.hash, e.id + 1
        return problems


def _row(e: AuditEntry) -> tuple[Any, ...]:
    return (e.id, e.time, e.actor, e.model, e.alias, e.from_version, e.to_version, e.action, e.reason,
            json.dumps(e.evidence, sort_keys=True), e.prev_hash, e.hash)


def _entry(r: tuple[Any, ...]) -> AuditEntry:
    d = dict(zip(_COLUMNS, r, strict=True))
    try:
        d["evidence"] = json.loads(d["evidence"])
    except ValueError:
        d["evidence"] = {"unparseable": d["evidence"]}
    return AuditEntry(**d)
