"""The request log: one SQLite row per request (and per shadow request), bounded by deleting the oldest.

It records the key id (never the key), a hash of the user, the model asked for, the version and
variant that served it, text (optionally PII-redacted), tokens, latencies, finish reason and an
estimated cost, so A/B analysis and retraining can read it back (`tuneforge logs --export`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tuneforge.workspace import Workspace

# Deleting beyond max_rows on every insert would cost a delete per request; trimming every
# max_rows/10 inserts (at most 100) bounds the table at 1.1 * max_rows.
_TRIM_EVERY = 100


def log_path(ws: Workspace) -> Path:
    return ws.root / "serve" / "requests.db"


def user_hash(user: str | None) -> str | None:
    return hashlib.sha256(user.encode("utf-8")).hexdigest()[:16] if user else None


@dataclass
class LogRecord:
    request_id: str
    time: float
    endpoint: str
    key_id: str
    user_hash: str | None
    model_requested: str
    model_served: str | None
    version: str | None
    variant: str | None
    shadow: bool = False
    status: int = 200
    prompt: str | None = None
    response: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    latency_s: float | None = None
    queue_s: float | None = None
    finish_reason: str | None = None
    cost: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = [f.name for f in fields(LogRecord)]
_TYPES = {"time": "REAL", "ttft_s": "REAL", "latency_s": "REAL", "queue_s": "REAL", "cost": "REAL",
          "status": "INTEGER", "prompt_tokens": "INTEGER", "completion_tokens": "INTEGER",
          "shadow": "INTEGER"}


class RequestLog:
    def __init__(self, path: Path, *, max_rows: int = 100_000, store_text: bool = True,
                 redactor: Any = None) -> None:
        self.path = path
        self.max_rows = max_rows
        self.store_text = store_text
        self._redactor = redactor  # object with .redact(text) -> (text, counts), e.g. data's PiiScanner
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        cols = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in _COLUMNS)
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, {cols})")
        self._conn.execute("CREATE INDEX IF NOT EXISTS requests_model ON requests (model_requested)")
        self._conn.commit()
        self._since_trim = 0
        self._trim_every = max(1, min(_TRIM_EVERY, max_rows // 10))

    @classmethod
    def open(cls, ws: Workspace, cfg: Any, pii_entities: list[str] | None = None) -> RequestLog:
        redactor = None
        if cfg.redact_pii:
            from tuneforge.data._pii import PiiScanner

            redactor = PiiScanner(pii_entities or [])
        return cls(log_path(ws), max_rows=cfg.max_rows, store_text=cfg.store_text, redactor=redactor)

    def write(self, rec: LogRecord) -> None:
        row = rec.to_dict()
        if not self.store_text:
            row["prompt"] = row["response"] = None
        elif self._redactor is not None:
            for k in ("prompt", "response"):
                if row[k]:
                    row[k] = self._redactor.redact(row[k])[0]
        row["shadow"] = int(row["shadow"])
        with self._lock:
            self._conn.execute(
                f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                [row[c] for c in _COLUMNS],
            )
            self._since_trim += 1
            if self._since_trim >= self._trim_every:
                self._trim()
            self._conn.commit()

    def _trim(self) -> None:
        self._since_trim = 0
        self._conn.execute(
            "DELETE FROM requests WHERE seq <= (SELECT MAX(seq) FROM requests) - ?", (self.max_rows,)
        )

    def flush(self) -> None:
        with self._lock:
            self._trim()
            self._conn.commit()

    def close(self) -> None:
        with self._lock:
            self._trim()
            self._conn.commit()
            self._conn.close()


def read_log(path: Path, *, limit: int | None = None, model: str | None = None,
             newest_first: bool = True) -> Iterator[dict[str, Any]]:
    """Rows as dicts (``model`` matches the name asked for or served, with or without @version)."""
    if not path.is_file():
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM requests"
        args: list[Any] = []
        if model:
            sql += (" WHERE model_requested = ? OR model_served = ? OR model_requested LIKE ? "
                    "OR model_served LIKE ?")
            args += [model, model, f"{model}@%", f"{model}@%"]
        sql += " ORDER BY seq " + ("DESC" if newest_first else "ASC")
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        for values in conn.execute(sql, args):
            row = dict(zip(_COLUMNS, values, strict=True))
            row["shadow"] = bool(row["shadow"])
            yield row
    finally:
        conn.close()


def export_jsonl(path: Path, out: Path, *, limit: int | None = None, model: str | None = None) -> int:
    """Write the newest ``limit`` rows (all when None), oldest first, one JSON object per line."""
    rows = list(read_log(path, limit=limit, model=model))
    rows.reverse()
    n = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
