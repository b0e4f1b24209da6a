"""Per-row work of the data stage: normalise, validate, decontaminate, PII, token length.

It runs on chunks of rows, in worker processes for large inputs or in-process for small ones.
Cross-row decisions (deduplication, splitting, mixing) stay in the parent, which sees rows in
input order, so the result is the same whatever the number of workers.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneforge.data._jsonl import LineChunk
from tuneforge.data._split import assign_split
from tuneforge.data._tokens import TokenCounter
from tuneforge.data._types import RawRow, Reject, RejectReason, Row


@dataclass(frozen=True)
class ProcessSpec:
    """Everything a worker needs to build its tools; picklable."""

    tokenizer_path: str
    max_tokens: int
    system_prompt: str | None
    pii_mode: str
    pii_entities: tuple[str, ...]
    pii_threshold: float
    near_dedup: bool
    threshold: float
    num_perm: int
    shingle_size: int
    eval_items: tuple[tuple[str, str], ...]  # (item id, text) for decontamination
    ngram: int
    split_seed: int
    split_train: float
    split_val: float


@dataclass
class Kept:
    """A row that passed the per-row checks, already encoded as its output line.

    Encoding and split assignment happen in the worker (both depend only on the row), so the
    parent, which every row funnels through, only deduplicates and writes.
    """

    source: str
    line: int
    kind: str
    origin: str
    num_tokens: int
    key: bytes  # exact-dedup key of the normalised content
    pii: dict[str, int]  # findings per entity type (redacted or flagged)
    split: str
    record: str  # the JSONL line written to <split>.jsonl

    def content(self) -> dict[str, Any]:
        """The normalised row as rejected.jsonl stores it: its kind and fields."""
        rec = json.loads(self.record)
        return {k: rec[k] for k in ("kind", *_FIELDS) if k in rec}


_FIELDS = ("messages", "prompt", "chosen", "rejected", "text")


@dataclass
class ChunkResult:
    kept: list[Kept] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    signatures: np.ndarray | None = None  # (len(kept), num_perm) MinHash signatures
    band_keys: np.ndarray | None = None  # (len(kept), bands) LSH band keys of those signatures
    pii_dropped: dict[str, int] = field(default_factory=dict)


def body_text(row: Row) -> str:
    """The row's text without system turns.

    Near-duplicate and contamination checks use it because a system prompt shared by every row
    would otherwise make unrelated rows look alike and match every eval item.
    """
    from tuneforge.data._types import CHAT, PREFERENCE

    if row.kind == CHAT:
        msgs = row.data["messages"]
    elif row.kind == PREFERENCE:
        msgs = row.data["prompt"] + row.data["chosen"] + row.data["rejected"]
    else:
        return row.data["text"]
    return "\n".join(m.get("content") or "" for m in msgs if m.get("role") != "system")


class ChunkProcessor:
    """Holds the per-process tools (tokenizer, PII scanner, MinHasher, decontaminator)."""

    def __init__(self, spec: ProcessSpec, tokenizer: Any = None) -> None:
        """``tokenizer``: the base model's, already loaded from ``spec.tokenizer_path`` (else loaded here)."""
        from tuneforge.data._decontam import Decontaminator
        from tuneforge.data._dedup import MinHasher, lsh_bands
        from tuneforge.data._pii import PiiScanner

        self.spec = spec
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_path)
        self.tokenizer = tokenizer
        self.pii = PiiScanner(spec.pii_entities, spec.pii_threshold) if spec.pii_mode != "off" else None
        self.hasher = MinHasher(spec.num_perm, spec.shingle_size) if spec.near_dedup else None
        self.bands = lsh_bands(spec.threshold, spec.num_perm) if spec.near_dedup else (0, 0)
        self.decontam = Decontaminator(spec.eval_items, spec.ngram) if spec.eval_items else None
        # Datasets repeat strings (a shared system prompt, canned replies); scan each once.
        self._redact = functools.lru_cache(maxsize=4096)(self.pii.redact) if self.pii else None
        self.counter = TokenCounter(tokenizer)

    def warm_up(self) -> None:
        """Build what the PII recognizers load on first use, so forked workers inherit it.

        E-mail validation reads tldextract's suffix list into a trie on the first address
        (about half a second). The tokenizer is not run: a parent that ran it before forking
        would hand its workers a copied thread pool.
        """
        if self.pii is not None:
            self.pii.scan("write to jane.doe@example.com or call me on 020 7946 0958")

    def run(self, raws: list[RawRow] | LineChunk, fmt: str, origin: str) -> ChunkResult:
        from tuneforge.data._dedup import content_key
        from tuneforge.data._formats import map_text, normalise, row_text
        from tuneforge.data._render import render_texts_batch

        if isinstance(raws, LineChunk):
            raws = raws.parse()
        out = ChunkResult()
        survivors: list[tuple[Row, dict[str, int]]] = []
        for raw in raws:
            got = normalise(raw, fmt, self.spec.system_prompt)
            if isinstance(got, Reject):
                out.rejects.append(got)
                continue
            row = got
            row.origin = origin
            text = row_text(row)
            if self.decontam is not None and (hit := self.decontam.match(body_text(row))) is not None:
                out.rejects.append(self._reject(row, RejectReason.CONTAMINATED, f"overlaps eval item {hit}"))
                continue
            found: dict[str, int] = {}
            if self.pii is not None:
                row, found = self._apply_pii(row, text, map_text)
                if row is None:
                    for k, v in found.items():
                        out.pii_dropped[k] = out.pii_dropped.get(k, 0) + v
                    out.rejects.append(self._reject(got, RejectReason.PII, "contains " + ", ".join(sorted(found))))
                    continue
            survivors.append((row, found))

        # Token lengths of the rendered training text: one batched render and one batched
        # tokenizer call per chunk.
        rendered = render_texts_batch(self.tokenizer, [row for row, _ in survivors])
        counts = self.counter.counts([t for texts in rendered for t in texts])
        lengths: list[int] = []
        at = 0
        for texts in rendered:
            lengths.append(max(counts[at : at + len(texts)]))
            at += len(texts)

        dedup_texts: list[str] = []
        for (row, found), n in zip(survivors, lengths, strict=True):
            if n > self.spec.max_tokens:
                out.rejects.append(
                    self._reject(row, RejectReason.TOO_MANY_TOKENS, f"{n} tokens > data.max_tokens={self.spec.max_tokens}")
                )
                continue
            key = content_key(row_text(row))
            record = {"id": key.hex()[:16], "kind": row.kind, **row.data, "source": row.origin,
                      "num_tokens": n, "origin": f"{row.source}:{row.line}"}
            out.kept.append(Kept(
                row.source, row.line, row.kind, row.origin, n, key, found,
                assign_split(key, self.spec.split_seed, self.spec.split_train, self.spec.split_val),
                json.dumps(record, ensure_ascii=False, sort_keys=True),
            ))
            dedup_texts.append(body_text(row))
        if self.hasher is not None and dedup_texts:
            from tuneforge.data._dedup import band_keys

            out.signatures = self.hasher.signatures(dedup_texts)
            out.band_keys = band_keys(out.signatures, *self.bands)
        return out

    def _apply_pii(self, row: Row, text: str, map_text: Any) -> tuple[Row | None, dict[str, int]]:
        assert self.pii is not None
        mode = self.spec.pii_mode
        if mode == "redact":
            counts: dict[str, int] = {}

            def redact(s: str) -> str:
                new, found = self._redact(s)
                for k, v in found.items():
                    counts[k] = counts.get(k, 0) + v
                return new

            return map_text(row, redact), counts
        counts = {}
        for f in self.pii.scan(text):
            counts[f.entity] = counts.get(f.entity, 0) + 1
        if mode == "drop" and counts:
            return None, counts
        return row, counts

    @staticmethod
    def _reject(row: Row, reason: str, detail: str) -> Reject:
        return Reject(row.source, row.line, reason, detail, {"kind": row.kind, **row.data})


# One processor per worker process, built by the pool initializer: the tokenizer and scanners
# are too costly to rebuild per chunk and cannot be shared across processes.
_WORKER: ChunkProcessor | None = None


def init_worker(spec: ProcessSpec, prebuilt: ChunkProcessor | None = None) -> None:
    """Set up this worker's processor: ``prebuilt`` when the pool forks from a parent that has one."""
    global _WORKER
    # Each worker already has a core; the tokenizer's own thread pool would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = prebuilt if prebuilt is not None else ChunkProcessor(spec)


def run_in_worker(raws: list[RawRow] | LineChunk, fmt: str, origin: str) -> ChunkResult:
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER.run(raws, fmt, origin)
