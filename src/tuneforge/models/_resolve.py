"""Base-model resolution shared by every stage: hub id, local directory or bundled package.

Whatever the reference, the result is a local directory that ``from_pretrained`` loads, so hub
ids and local directories go through one code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tuneforge.errors import ModelError
from tuneforge.models._bundled import BUNDLED, BUNDLED_PREFIX, BundledModel
from tuneforge.models._hashing import memo_sha256
from tuneforge.workspace import Workspace

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
META = "tuneforge-model.json"  # written last: marks a finished conversion


@dataclass(frozen=True)
class ResolvedModel:
    """A base model ready to load: where it is and what it is."""

    ref: str  # as the user wrote it
    kind: Literal["bundled", "local", "hub"]
    name: str  # short identity, e.g. smollm2-135m-instruct or org/name
    path: Path  # a directory with config.json, tokenizer files and weights
    weights_sha256: str  # identity of the weights (the GGUF for bundled models)
    revision: str | None = None

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.weights_sha256[:12]}"


def resolve_model(ref: str, workspace: Workspace, *, revision: str | None = None) -> ResolvedModel:
    """Resolve ``ref`` to a loadable local directory, converting bundled models once."""
    if ref.startswith(BUNDLED_PREFIX):
        return _resolve_bundled(ref, workspace)
    local = Path(ref).expanduser()
    if local.exists() or ref.startswith((".", "/", "~")):
        return _resolve_local(ref, local, workspace)
    if ref.count("/") == 1:
        return _resolve_hub(ref, workspace, revision)
    raise ModelError(
        f"'{ref}' is not a base model reference",
        where="model.base",
        fix="use bundled:smollm2-135m-instruct, a local directory with config.json, or a hub id "
        "like org/name; `tuneforge models list` shows what is available",
    )


def _resolve_bundled(ref: str, workspace: Workspace) -> ResolvedModel:
    name = ref[len(BUNDLED_PREFIX):]
    spec = BUNDLED.get(name)
    if spec is None:
        raise ModelError(
            f"unknown bundled model '{name}'",
            where="model.base",
            fix=f"bundled models: {', '.join(BUNDLED_PREFIX + n for n in BUNDLED)}",
        )
    gguf = spec.locate()
    if gguf is None:
        raise ModelError(
            f"the bundled model {ref} is not installed (package {spec.package} not found)",
            where="model.base",
            fix=spec.pip_install,
        )
    digest = memo_sha256(gguf, workspace.root / "cache" / "sha256")
    target = workspace.models_dir / f"{name}-{digest[:16]}"
    if not (target / META).is_file():
        _convert_gguf(spec, gguf, digest, target)
    return ResolvedModel(ref=ref, kind="bundled", name=name, path=target, weights_sha256=digest)


def _convert_gguf(spec: BundledModel, gguf: Path, digest: str, target: Path) -> None:
    """Dequantise the GGUF once into a safetensors directory (≈15 s) so later loads take ≈1 s."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # float32 keeps the dequantised values exactly; callers cast to their training dtype.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    meta = {
        "name": spec.name,
        "source": str(gguf),
        "source_sha256": digest,
        "converted_in_s": round(time.time() - started, 1),
    }
    (tmp / META).write_text(json.dumps(meta, indent=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:
        # Another process finished the same conversion first; theirs is identical.
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve_local(ref: str, path: Path, workspace: Workspace) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise ModelError(
            f"'{ref}' is not a model directory (no config.json in it)",
            where="model.base",
            fix="point model.base at a directory saved with save_pretrained(), or use "
            "bundled:smollm2-135m-instruct",
        )
    weights = [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    if not weights:
        raise ModelError(
            f"'{ref}' has no weight files (*.safetensors)",
            where="model.base",
            fix="save the model with save_pretrained() into that directory",
        )
    digest = _weights_digest(weights, path, workspace)
    name = path.resolve().name
    return ResolvedModel(ref=ref, kind="local", name=name, path=path.resolve(), weights_sha256=digest)


def _weights_digest(weights: list[Path], root: Path, workspace: Workspace) -> str:
    memo = workspace.root / "cache" / "sha256"
    if len(weights) == 1:
        return memo_sha256(weights[0], memo)
    # Hash each file through the memo, then combine: a multi-shard model is hashed once.
    h = hashlib.sha256()
    for p in sorted(weights):
        h.update(p.name.encode() + b"\0" + memo_sha256(p, memo).encode())
    return h.hexdigest()


def _resolve_hub(ref: str, workspace: Workspace, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(ref, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure here means "not in the local cache"
        local = None
    if local is None:
        try:
            local = snapshot_download(ref, revision=revision)
        except Exception as exc:  # noqa: BLE001 - network, auth and missing repos look alike
            raise ModelError(
                f"cannot get hub model '{ref}': {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                where="model.base",
                fix="on a machine with hub access run `huggingface-cli download "
                f"{ref} --local-dir DIR` (set HF_TOKEN for gated models), copy DIR here and set "
                "model.base to DIR; or use bundled:smollm2-135m-instruct",
            ) from None
    path = Path(local)
    resolved = _resolve_local(ref, path, workspace)
    return ResolvedModel(
        ref=ref, kind="hub", name=ref, path=path, weights_sha256=resolved.weights_sha256,
        revision=path.name,
    )

