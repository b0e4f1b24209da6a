"""`tuneforge data prepare`: raw files in, a fingerprinted, split, audited dataset out.

Invariant (checked before the manifest is written): for every run,
rows read = rows kept + rows rejected, and each rejected row is in rejected.jsonl with its source
file, line and reason.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import os
import shutil
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tuneforge
from tuneforge.config import DataConfig, TuneforgeConfig
from tuneforge.data._jsonl import LineChunk
from tuneforge.data._process import ChunkProcessor, ChunkResult, Kept, ProcessSpec, init_worker, run_in_worker
from tuneforge.data._split import SPLITS, mix_rank
from tuneforge.data._stats import token_stats
from tuneforge.data._types import RawRow, Reject, RejectReason
from tuneforge.errors import DataError
from tuneforge.models._hashing import sha256_file
from tuneforge.outputs import output_dir
from tuneforge.workspace import Workspace

# Bump when a change to this stage changes its output for the same input.
PIPELINE_VERSION = 1
MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
# Below this many rows, starting worker processes costs more than it saves.
PARALLEL_MIN_ROWS = 20_000

ProgressFn = Callable[[int, int | None], None]


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset on disk: train/val/test JSONL, rejected.jsonl and manifest.json."""

    path: Path
    fingerprint: str
    manifest: dict[str, Any]
    reused: bool = False

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]

    def split_path(self, split: str) -> Path:
        return self.path / f"{split}.jsonl"

    @classmethod
    def load(cls, path: str | Path) -> PreparedDataset:
        p = Path(path)
        manifest_path = p / MANIFEST
        if not manifest_path.is_file():
            raise DataError(
                f"{p} is not a prepared dataset (no {MANIFEST})",
                where=str(p),
                fix="run `tuneforge data prepare INPUT...` and pass the directory it prints",
            )
        manifest = json.loads(manifest_path.read_text())
        return cls(p, manifest["fingerprint"], manifest)


@dataclass
class _Input:
    path: Path
    format: str
    origin: str  # "domain" or "general"
    sha256: str = ""
    newlines: int = 0  # for the progress bar's row estimate (JSONL, CSV)


@dataclass
class _Tally:
    read: Counter = field(default_factory=Counter)  # per origin
    kept: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # per reason
    rejected_by_origin: Counter = field(default_factory=Counter)
    split: Counter = field(default_factory=Counter)
    split_tokens: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    pii_rows: int = 0
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare(
    cfg: TuneforgeConfig,
    inputs: list[str] | None = None,
    *,
    out: str | Path | None = None,
    workspace: Workspace | None = None,
    progress: ProgressFn | None = None,
) -> PreparedDataset:
    """Prepare ``inputs`` (or ``cfg.data.inputs``) for training; a no-op when nothing changed."""
    from tuneforge.models import load_contract, load_tokenizer, resolve_model

    started = time.time()
    ws = workspace or Workspace.from_env()
    dcfg = cfg.data
    specs = _input_specs(dcfg, inputs)
    model = resolve_model(cfg.model.base, ws, revision=cfg.model.revision)
    tokenizer = load_tokenizer(model)
    contract = load_contract(model, tokenizer)

    for spec in specs:
        spec.sha256, spec.newlines = _hash_and_count_lines(spec.path)
    eval_files = [Path(p) for p in dcfg.decontaminate.eval_sets]
    for p in eval_files:
        if not p.is_file():
            raise DataError(f"eval set {p} does not exist", where="data.decontaminate.eval_sets",
                            fix="fix the path or remove it from the list")
    input_key = _sha256_json({
        "version": PIPELINE_VERSION,
        "inputs": [(str(s.path), s.format, s.origin, s.sha256) for s in specs],
        "eval_sets": [sha256_file(p) for p in eval_files],
        "config": _output_config(dcfg),
        "tokenizer": contract.tokenizer_sha256,
        "template": contract.chat_template_sha256,
    })

    found = _find_existing(ws, out, input_key)
    if found is not None:
        return _trainable(found)

    ws.ensure(ws.datasets_dir)
    if out is not None:
        _check_out(Path(out).resolve())
    parent = Path(out).resolve().parent if out else ws.datasets_dir
    tmp = parent / f".prepare-{input_key[:12]}-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _run(cfg, dcfg, specs, eval_files, model, tokenizer, contract, tmp, input_key, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["timings"]["total_s"] = round(time.time() - started, 2)
    fingerprint = manifest["fingerprint"]
    # Named by content, except a run that kept nothing: every such run has the same (empty) content,
    # and each one's rejection report must survive the next.
    kept = manifest["counts"]["kept_by_source"].get("domain", 0)
    name = fingerprint[:16] if kept else f"rejected-{input_key[:16]}"
    final = Path(out).resolve() if out else ws.datasets_dir / name
    # manifest.json is written last: its presence marks a complete dataset.
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _remember(ws, input_key, final, indexed=out is None)
    return _trainable(PreparedDataset(final, fingerprint, manifest))


def _check_out(path: Path) -> None:
    """``--out`` may be new, empty or an earlier prepared dataset (replaced); never a directory of the
    user's own files, which preparing would delete."""
    if path.exists() and not path.is_dir():
        raise DataError(f"--out {path} is a file, not a directory", where="--out",
                        fix="choose a directory path (it is created)")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise DataError(f"--out {path} holds files that are not a prepared dataset, and preparing would replace "
                        "the directory", where="--out", fix="choose a new or empty directory")
    output_dir(path.parent, where="--out")


def _trainable(ds: PreparedDataset) -> PreparedDataset:
    """The dataset, or an error when every domain row was rejected (the report is still on disk)."""
    c = ds.counts
    if c["read_by_source"].get("domain", 0) == 0:
        raise DataError("nothing to train on: the input files have no rows", where=str(ds.path / MANIFEST),
                        fix="check that the inputs are the right files and not empty")
    if c["kept_by_source"].get("domain", 0) == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in c["rejected_by_reason"].items())
        raise DataError(
            f"nothing left to train on: all {c['read_by_source'].get('domain', 0)} input rows were rejected ({reasons})",
            where=str(ds.path / REJECTED),
            fix="each line of rejected.jsonl names the file, line and reason; fix the inputs or the data config",
        )
    return ds


def _input_specs(dcfg: DataConfig, inputs: list[str] | None) -> list[_Input]:
    if inputs:
        specs = [_Input(Path(p), dcfg.format, "domain") for p in inputs]
    else:
        specs = [_Input(Path(i.path), i.format if i.format != "auto" else dcfg.format, "domain") for i in dcfg.inputs]
    if not specs:
        raise DataError("no input files", where="data.inputs",
                        fix="pass files: `tuneforge data prepare FILE...`, or list them under data.inputs")
    if dcfg.mix.path and dcfg.mix.ratio > 0:
        specs.append(_Input(Path(dcfg.mix.path), dcfg.mix.format, "general"))
    for s in specs:
        if s.path.is_dir():
            raise DataError(f"input {s.path} is a directory, not a file", where=str(s.path),
                            fix=f"name the files in it, e.g. {s.path}/*.jsonl")
        if not s.path.is_file():
            raise DataError(f"input file {s.path} does not exist", where=str(s.path),
                            fix="check the path (relative paths are taken from the current directory)")
    return specs


def _hash_and_count_lines(path: Path) -> tuple[str, int]:
    """sha256 and newline count of a file in one read (the hash keys the cache, the count the ETA)."""
    h = hashlib.sha256()
    lines = 0
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
            lines += block.count(b"\n")
    return h.hexdigest(), lines


def _output_config(dcfg: DataConfig) -> dict[str, Any]:
    """The data settings that change the output (not where inputs come from, nor parallelism)."""
    return dcfg.model_dump(mode="json", exclude={"inputs", "workers", "chunk_size"})


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _index_file(ws: Workspace, input_key: str) -> Path:
    return ws.datasets_dir / ".inputs" / f"{input_key[:32]}.json"


def _find_existing(ws: Workspace, out: str | Path | None, input_key: str) -> PreparedDataset | None:
    """The dataset an identical earlier run produced, if it is still complete on disk."""
    candidates: list[Path] = []
    if out:
        candidates.append(Path(out).resolve())
    else:
        idx = _index_file(ws, input_key)
        if idx.is_file():
            candidates.append(Path(json.loads(idx.read_text())["path"]))
    for c in candidates:
        mpath = c / MANIFEST
        if mpath.is_file():
            manifest = json.loads(mpath.read_text())
            if manifest.get("input_key") == input_key:
                return PreparedDataset(c, manifest["fingerprint"], manifest, reused=True)
    return None


def _remember(ws: Workspace, input_key: str, path: Path, *, indexed: bool) -> None:
    """Point `latest` at the dataset; index fingerprint-named ones so a rerun finds them.

    A dataset written to an explicit --out is not indexed: the user owns that directory and may
    move or edit it, so later runs without --out write their own copy.
    """
    if indexed:
        idx = _index_file(ws, input_key)
        idx.parent.mkdir(parents=True, exist_ok=True)
        idx.write_text(json.dumps({"path": str(path)}))
    ws.ensure(ws.datasets_dir)
    (ws.datasets_dir / "latest").write_text(str(path) + "\n")


def _count_rows(spec: _Input) -> int | None:
    """A cheap row-count estimate for the progress bar's ETA."""
    suffix = spec.path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(spec.path).metadata.num_rows
        except (pa.ArrowException, OSError):
            return None  # not readable as Parquet: the reader says so with the file's name
    if suffix in (".jsonl", ".ndjson", ".csv"):
        return spec.newlines
    return None


def _chunks_with_format(spec: _Input, chunk_size: int) -> Iterator[tuple[list[RawRow] | LineChunk, str]]:
    """Read chunks, fixing the file's format from its first chunk when it is auto.

    JSON Lines chunks stay unparsed (LineChunk) once the format is known: the process that
    handles the chunk parses it, so the reading process, which every row passes through, only
    splits lines.
    """
    from tuneforge.data._formats import detect_format
    from tuneforge.data._jsonl import read_jsonl_lines
    from tuneforge.data._readers import _JSONL_SUFFIXES, read_rows

    fmt = spec.format
    chunks: Iterator[list[RawRow] | LineChunk]
    if spec.path.suffix.lower() in _JSONL_SUFFIXES:
        chunks = read_jsonl_lines(spec.path, chunk_size)
    else:
        chunks = read_rows(spec.path, chunk_size)
    for chunk in chunks:
        if fmt == "auto":
            if isinstance(chunk, LineChunk):
                chunk = chunk.parse()
            detected = detect_format([r.value for r in chunk if r.error is None])
            # Until a recognisable row appears, every row is rejected as unknown_format.
            yield chunk, detected or "auto"
            if detected:
                fmt = detected
            continue
        yield chunk, fmt


def _run(
    cfg: TuneforgeConfig,
    dcfg: DataConfig,
    specs: list[_Input],
    eval_files: list[Path],
    model: Any,
    tokenizer: Any,
    contract: Any,
    tmp: Path,
    input_key: str,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    from tuneforge.data._dedup import NearDuplicateIndex

    eval_items = tuple(_eval_items(eval_files, dcfg)) if eval_files else ()
    pspec = ProcessSpec(
        tokenizer_path=str(model.path),
        max_tokens=dcfg.max_tokens,
        system_prompt=dcfg.system_prompt,
        pii_mode=dcfg.pii.mode,
        pii_entities=tuple(dcfg.pii.entities),
        pii_threshold=dcfg.pii.score_threshold,
        near_dedup=dcfg.dedup.near,
        threshold=dcfg.dedup.threshold,
        num_perm=dcfg.dedup.num_perm,
        shingle_size=dcfg.dedup.shingle_size,
        eval_items=eval_items,
        ngram=dcfg.decontaminate.ngram,
        split_seed=dcfg.split.seed,
        split_train=dcfg.split.train,
        split_val=dcfg.split.val,
    )
    estimates = [_count_rows(s) for s in specs]
    total = None if any(e is None for e in estimates) else sum(e or 0 for e in estimates)
    workers = dcfg.workers or (os.cpu_count() or 1)
    if not dcfg.workers and total is not None and total < PARALLEL_MIN_ROWS:
        workers = 1

    tally = _Tally()
    seen: dict[bytes, str] = {}  # exact-dedup key -> "file:line" of the first occurrence
    near = NearDuplicateIndex(dcfg.dedup.threshold, dcfg.dedup.num_perm) if dcfg.dedup.near else None
    lengths = array("I")
    row_hash = hashlib.sha256()
    writers = {s: (tmp / f"{s}.jsonl").open("w", encoding="utf-8") for s in SPLITS}
    rejected = (tmp / REJECTED).open("w", encoding="utf-8")
    general_tmp = (tmp / ".general.jsonl").open("w+", encoding="utf-8")
    general_ranked: list[tuple[int, int, int]] = []  # (rank, file offset, tokens) of general rows kept so far
    done = 0
    stage_time = Counter()

    def reject(rj: Reject, origin: str) -> None:
        tally.rejected[rj.reason] += 1
        tally.rejected_by_origin[origin] += 1
        rejected.write(json.dumps({"source": rj.source, "line": rj.line, "reason": rj.reason,
                                   "detail": rj.detail, "row": rj.row}, ensure_ascii=False) + "\n")

    def write_kept(k: Kept) -> None:
        writers[k.split].write(k.record + "\n")
        row_hash.update(k.record.encode())
        tally.kept[k.origin] += 1
        tally.split[k.split] += 1
        tally.split_tokens[k.split] += k.num_tokens
        tally.kinds[k.kind] += 1
        lengths.append(k.num_tokens)

    def consume(res: ChunkResult, origin: str) -> None:
        t0 = time.perf_counter()
        for rj in res.rejects:
            reject(rj, origin)
        for i, k in enumerate(res.kept):
            where = f"{k.source}:{k.line}"
            first = seen.get(k.key)
            if first is not None and dcfg.dedup.exact:
                reject(Reject(k.source, k.line, RejectReason.EXACT_DUPLICATE, f"duplicate of {first}",
                              k.content()), origin)
                continue
            if near is not None and res.signatures is not None and res.band_keys is not None:
                match = near.add_or_match(where, res.signatures[i], res.band_keys[i])
                if match is not None:
                    reject(Reject(k.source, k.line, RejectReason.NEAR_DUPLICATE,
                                  f"near-duplicate of {match} (Jaccard >= {dcfg.dedup.threshold})",
                                  k.content()), origin)
                    continue
            seen.setdefault(k.key, where)
            if k.pii:
                tally.pii_rows += 1
                tally.pii.update(k.pii)
            if origin == "general":
                # Held back until the domain total is known; see the mixing step below.
                offset = general_tmp.tell()
                general_tmp.write(json.dumps([k.source, k.line, k.kind, k.origin, k.num_tokens, k.key.hex(),
                                              k.split, k.record], ensure_ascii=False) + "\n")
                general_ranked.append((mix_rank(k.key, dcfg.split.seed), offset, k.num_tokens))
            else:
                write_kept(k)
        tally.pii.update(res.pii_dropped)
        stage_time["dedup_s"] += time.perf_counter() - t0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    t_proc = time.perf_counter()
    # Built once here; forked workers inherit it (and the tokenizer loaded above) instead of
    # each loading the tokenizer and recognizers again.
    proc = ChunkProcessor(pspec, tokenizer)
    if workers <= 1:
        for spec in specs:
            for chunk, fmt in _counted(spec, dcfg.chunk_size, tally):
                consume(proc.run(chunk, fmt, spec.origin), spec.origin)
                tick(len(chunk))
    else:
        context = _pool_context()
        proc.warm_up()
        # Under fork, initargs are inherited, not pickled; spawned workers build their own.
        prebuilt = proc if context.get_start_method() == "fork" else None
        with _start_pool(workers, pspec, prebuilt, context) as pool:
            pending: deque[tuple[Future, str, int]] = deque()
            for spec in specs:
                for chunk, fmt in _counted(spec, dcfg.chunk_size, tally):
                    pending.append((pool.submit(run_in_worker, chunk, fmt, spec.origin), spec.origin, len(chunk)))
                    # Bounded look-ahead keeps memory flat however large the input is.
                    while len(pending) > 2 * workers:
                        fut, origin, n = pending.popleft()
                        consume(fut.result(), origin)
                        tick(n)
            while pending:
                fut, origin, n = pending.popleft()
                consume(fut.result(), origin)
                tick(n)
    stage_time["process_s"] = time.perf_counter() - t_proc - stage_time["dedup_s"]

    # Mixing: take the general rows with the smallest seeded rank until they are `ratio` of the total.
    if general_ranked:
        ratio = dcfg.mix.ratio
        want = int(round(tally.kept["domain"] * ratio / (1 - ratio)))
        chosen = {off for _, off, _ in heapq.nsmallest(want, general_ranked)}
        general_tmp.seek(0)
        while True:
            offset = general_tmp.tell()
            line = general_tmp.readline()
            if not line:
                break
            source, lineno, kind, origin, n, key, split, record = json.loads(line)
            k = Kept(source, lineno, kind, origin, n, bytes.fromhex(key), {}, split, record)
            if offset in chosen:
                write_kept(k)
            else:
                reject(Reject(source, lineno, RejectReason.MIX_SURPLUS,
                              f"not sampled: the mix needs {want} general rows for ratio {ratio}",
                              k.content()), "general")
    general_tmp.close()
    (tmp / ".general.jsonl").unlink()
    for w in writers.values():
        w.close()
    rejected.close()

    read_total = sum(tally.read.values())
    kept_total = sum(tally.split.values())
    rejected_total = sum(tally.rejected.values())
    if read_total != kept_total + rejected_total:
        raise AssertionError(f"row accounting broken: read {read_total} != kept {kept_total} + rejected {rejected_total}")
    fingerprint = _sha256_json({
        "rows": row_hash.hexdigest(),
        "tokenizer": contract.tokenizer_sha256,
        "template": contract.chat_template_sha256,
        "config": _output_config(dcfg),
        "version": PIPELINE_VERSION,
    })
    return {
        "fingerprint": fingerprint,
        "input_key": input_key,
        "tuneforge_version": tuneforge.__version__,
        "pipeline_version": PIPELINE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": {"ref": model.ref, "identity": model.identity, "path": str(model.path)},
        "contract": {k: v for k, v in contract.to_dict().items() if k != "chat_template"},
        "inputs": [{"path": str(s.path), "sha256": s.sha256, "origin": s.origin, **tally.formats.get(str(s.path), {})}
                   for s in specs],
        "counts": {
            "read": read_total,
            "kept": kept_total,
            "rejected": rejected_total,
            "read_by_source": dict(tally.read),
            "kept_by_source": dict(tally.kept),
            "rejected_by_source": dict(tally.rejected_by_origin),
            "rejected_by_reason": dict(tally.rejected.most_common()),
            "funnel": _funnel(read_total, tally.rejected),
            "splits": {s: tally.split[s] for s in SPLITS},
            "kinds": dict(tally.kinds),
        },
        "pii": {"mode": dcfg.pii.mode, "rows_with_findings": tally.pii_rows, "findings": dict(tally.pii.most_common())},
        "tokens": {"stats": token_stats(lengths).to_dict(), "by_split": {s: tally.split_tokens[s] for s in SPLITS}},
        "config": {"model": cfg.model.model_dump(mode="json"), "data": dcfg.model_dump(mode="json")},
        "timings": {"workers": workers, **{k: round(v, 2) for k, v in stage_time.items()}},
    }


# The order in which reasons are checked; the funnel shows the rows left after each stage.
_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("parse", (RejectReason.INVALID_JSON, RejectReason.NOT_AN_OBJECT, RejectReason.UNKNOWN_FORMAT)),
    ("validate", (RejectReason.MISSING_FIELD, RejectReason.EMPTY_FIELD, RejectReason.NON_STRING_CONTENT,
                  RejectReason.UNKNOWN_ROLE, RejectReason.BAD_ROLE_ORDER, RejectReason.NO_ASSISTANT_TURN)),
    ("decontaminate", (RejectReason.CONTAMINATED,)),
    ("pii", (RejectReason.PII,)),
    ("length", (RejectReason.TOO_MANY_TOKENS,)),
    ("exact_dedup", (RejectReason.EXACT_DUPLICATE,)),
    ("near_dedup", (RejectReason.NEAR_DUPLICATE,)),
    ("mix", (RejectReason.MIX_SURPLUS,)),
)


def _funnel(read: int, rejected: Counter) -> list[dict[str, Any]]:
    left = read
    rows = [{"stage": "read", "removed": 0, "left": read}]
    for stage, reasons in _STAGES:
        removed = sum(rejected[r] for r in reasons)
        left -= removed
        rows.append({"stage": stage, "removed": removed, "left": left})
    return rows


def _counted(spec: _Input, chunk_size: int, tally: _Tally) -> Iterator[tuple[list[RawRow] | LineChunk, str]]:
    key = str(spec.path)
    info = tally.formats.setdefault(key, {"format": spec.format, "rows": 0})
    for chunk, fmt in _chunks_with_format(spec, chunk_size):
        tally.read[spec.origin] += len(chunk)
        info["rows"] += len(chunk)
        if fmt != "auto":
            info["format"] = fmt
        yield chunk, fmt


def _eval_items(files: list[Path], dcfg: DataConfig) -> Iterator[tuple[str, str]]:
    """(id, prompt text) of every eval item, read with the same readers as training data.

    Only the prompt side is indexed (user turns, prompt/instruction/input fields; no system turn,
    no reference answer): leakage means the eval *questions* appear in training data, while answers
    in a fixed output format share boilerplate n-grams with every training answer.
    """
    from tuneforge.data._readers import read_rows

    for path in files:
        for chunk in read_rows(path, dcfg.chunk_size):
            for raw in chunk:
                if raw.error is None and isinstance(raw.value, dict):
                    text = _prompt_text(raw.value)
                    if text:
                        yield f"{path.name}:{raw.line}", text


def _prompt_text(value: dict[str, Any]) -> str:
    parts: list[str] = []
    for key, role_key, text_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        for m in value.get(key) or []:
            if isinstance(m, dict) and m.get(role_key) in ("user", "human") and isinstance(m.get(text_key), str):
                parts.append(m[text_key])
    prompt = value.get("prompt")
    if isinstance(prompt, list):
        parts += [m["content"] for m in prompt if isinstance(m, dict) and m.get("role") == "user"
                  and isinstance(m.get("content"), str)]
    for k in ("prompt", "instruction", "input", "question", "text"):
        if isinstance(value.get(k), str):
            parts.append(value[k])
    return "\n".join(parts)


def _start_pool(workers: int, spec: ProcessSpec, prebuilt: ChunkProcessor | None, context: Any) -> ProcessPoolExecutor:
    """A pool whose workers are already running, forked with the parent's heap frozen.

    The parent holds millions of objects from importing torch, transformers and presidio. A
    forked worker's collector would walk all of them (and touch their pages, un-sharing them
    copy-on-write) whenever it collects its oldest generation; frozen before the fork, they are
    skipped, as Python's gc documentation recommends for fork without exec. A fork pool starts
    every worker on its first submit, so the parent unfreezes right after and its own heap is
    collected as usual (a worker the pool started later would only miss the saving).
    """
    pool = ProcessPoolExecutor(workers, initializer=init_worker, initargs=(spec, prebuilt), mp_context=context)
    # No gc.collect() first (a quarter second on this heap): garbage frozen now is collected in the
    # parent after unfreezing, and in a worker it only stays in pages it shares with the parent.
    gc.freeze()
    try:
        pool.submit(os.getpid).result()
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    finally:
        gc.unfreeze()
    return pool


def _pool_context() -> Any:
    """Fork where available, after importing the heavy modules once in the parent.

    presidio-analyzer imports spaCy, transformers and torch on import (several seconds); forked
    workers inherit them instead of paying that again. The parent has not run the tokenizer yet
    (only loaded it), so no tokenizer thread pool exists to be copied.
    """
    import multiprocessing

    import presidio_analyzer.predefined_recognizers  # noqa: F401 - loaded once, inherited by workers

    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
