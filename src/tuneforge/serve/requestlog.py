"""The request log: one SQLite row per request (and per shadow request), bounded by deleting the oldest.

It records the key id (never the key), a hash of the user, the model asked for, the version and
variant that served it, text (optionally PII-redacted; chat requests also keep their messages as
JSON so a conversation can be rebuilt), tokens, latencies, finish reason and an estimated cost, so
A/B analysis and retraining can read it back (`tuneforge logs --export`). User feedback
(`POST /v1/feedback`) is kept in a second table of the same database, keyed by request id.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
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
    messages: str | None = None  # the chat request's messages as JSON (None for /v1/completions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeedbackRow:
    """One piece of user feedback on a logged request; ``score`` is normalised to [0, 1]."""

    id: str
    request_id: str
    time: float
    key_id: str
    score: float
    comment: str | None = None
    correction: str | None = None  # the answer the user wanted instead: retraining trains on it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = [f.name for f in fields(LogRecord)]
_FEEDBACK_COLUMNS = [f.name for f in fields(FeedbackRow)]
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
        # In WAL mode NORMAL cannot corrupt the database; a power cut may lose the last few rows, which
        # a request log can afford, and each request no longer waits for an fsync.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in _COLUMNS)
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, {cols})")
        # A database written before a column existed gets it added (NULL in the old rows).
        have = set(_columns(self._conn, "requests"))
        for c in _COLUMNS:
            if c not in have:
                self._conn.execute(f"ALTER TABLE requests ADD COLUMN {c} {_TYPES.get(c, 'TEXT')}")
        self._conn.execute("CREATE INDEX IF NOT EXISTS requests_model ON requests (model_requested)")
        self._conn.execute("CREATE INDEX IF NOT EXISTS requests_rid ON requests (request_id)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, "
                           "request_id TEXT, time REAL, key_id TEXT, score REAL, comment TEXT, correction TEXT)")
        if "correction" not in _columns(self._conn, "feedback"):  # written before corrections existed
            self._conn.execute("ALTER TABLE feedback ADD COLUMN correction TEXT")
        self._conn.execute("CREATE INDEX IF NOT EXISTS feedback_rid ON feedback (request_id)")
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
            row["prompt"] = row["response"] = row["messages"] = None
        elif self._redactor is not None:
            for k in ("prompt", "response"):
                if row[k]:
                    row[k] = self._redactor.redact(row[k])[0]
            if row["messages"]:
                row["messages"] = self._redact_messages(row["messages"])
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

    def _redact_messages(self, raw: str) -> str:
        try:
            messages = json.loads(raw)
        except ValueError:
            return str(self._redactor.redact(raw)[0])
        for m in messages if isinstance(messages, list) else []:
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                m["content"] = self._redactor.redact(m["content"])[0]
        return json.dumps(messages, ensure_ascii=False)

    def find_request(self, request_id: str) -> dict[str, Any] | None:
        """The logged (non-shadow) request with this id; None when it is not in the log."""
        with self._lock:
            values = self._conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM requests WHERE request_id = ? AND shadow = 0 "
                "ORDER BY seq DESC LIMIT 1", (request_id,)).fetchone()
        return _row(values) if values else None

    def write_feedback(self, request_id: str, key_id: str, score: float, comment: str | None = None,
                       correction: str | None = None) -> FeedbackRow:
        """Store feedback on a logged request (``score`` already normalised to [0, 1])."""
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {score}")
        # comments and corrections are free text like a prompt: kept only where text is, redacted the same way
        if not self.store_text:
            comment = correction = None
        elif self._redactor is not None:
            comment = self._redactor.redact(comment)[0] if comment else comment
            correction = self._redactor.redact(correction)[0] if correction else correction
        fb = FeedbackRow(f"fb-{uuid.uuid4().hex}", request_id, time.time(), key_id, float(score), comment,
                         correction)
        with self._lock:
            self._conn.execute(
                f"INSERT INTO feedback ({', '.join(_FEEDBACK_COLUMNS)}) VALUES "
                f"({', '.join('?' * len(_FEEDBACK_COLUMNS))})", [getattr(fb, c) for c in _FEEDBACK_COLUMNS])
            self._conn.commit()
        return fb

    def _trim(self) -> None:
        self._since_trim = 0
        self._conn.execute(
            "DELETE FROM requests WHERE seq <= (SELECT MAX(seq) FROM requests) - ?", (self.max_rows,)
        )
        self._conn.execute(
            "DELETE FROM feedback WHERE seq <= (SELECT MAX(seq) FROM feedback) - ?", (self.max_rows,)
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


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _row(values: Any) -> dict[str, Any]:
    row = dict(zip(_COLUMNS, values, strict=True))
    row["shadow"] = bool(row["shadow"])
    if row["messages"]:
        try:
            row["messages"] = json.loads(row["messages"])
        except ValueError:
            row["messages"] = None
    return row


def read_log(path: Path, *, limit: int | None = None, model: str | None = None,
             newest_first: bool = True, since: float | None = None) -> Iterator[dict[str, Any]]:
    """Rows as dicts (``model`` matches the name asked for or served, with or without @version;
    ``since`` keeps rows logged at or after that epoch time). ``messages`` is the chat request's
    message list (None for completions and for rows logged before messages were recorded)."""
    if not path.is_file():
        return
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        have = set(_columns(conn, "requests"))  # a database from an older version lacks new columns
        cols = [c if c in have else f"NULL AS {c}" for c in _COLUMNS]
        sql = f"SELECT {', '.join(cols)} FROM requests"
        where: list[str] = []
        args: list[Any] = []
        if model:
            where.append("(model_requested = ? OR model_served = ? OR model_requested LIKE ? "
                         "OR model_served LIKE ?)")
            args += [model, model, f"{model}@%", f"{model}@%"]
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq " + ("DESC" if newest_first else "ASC")
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        for values in conn.execute(sql, args):
            yield _row(values)
    finally:
        conn.close()


def read_feedback(path: Path, *, since: float | None = None) -> dict[str, FeedbackRow]:
    """Feedback by request id (the latest when a request got several); empty without any."""
    if not path.is_file():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        have = _columns(conn, "feedback")
        if not have:  # a log written before feedback existed
            return {}
        sql = f"SELECT {', '.join(c if c in have else 'NULL' for c in _FEEDBACK_COLUMNS)} FROM feedback"
        args: list[Any] = []
        if since is not None:
            sql += " WHERE time >= ?"
            args.append(since)
        out: dict[str, FeedbackRow] = {}
        for values in conn.execute(sql + " ORDER BY seq ASC", args):
            fb = FeedbackRow(*values)
            out[fb.request_id] = fb
        return out
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
