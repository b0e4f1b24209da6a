"""The adapter directory: naming, writing, checksums and the tuneforge.json completion marker.

An adapter directory holds what plain PEFT (or transformers, for a full fine-tune) loads, the
tokenizer, and tuneforge.json: chat contract, dataset fingerprint, resolved config, versions,
metrics and a sha256 of every other file. tuneforge.json is written last, into a temporary
directory that is then renamed, so a directory with it is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tuneforge.errors import TrainError

META = "tuneforge.json"
CHECKPOINT_PREFIX = "checkpoint-"
# Bump when a change to the training stage changes its output for the same inputs.
TRAIN_VERSION = 1
# Keys that change where or how a run is reported, not what it produces.
# train.distributed enters the key only with more than one process (see _train.train).
_NOT_IN_KEY = {"name", "data", "report_to", "price_per_device_hour", "save_every_steps", "keep_checkpoints",
               "distributed", "oom_retries"}
_LIBRARIES = ("tuneforge", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers")


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def run_key(cfg: Any, dataset_fingerprint: str, contract: Any, prec: str) -> str:
    """Content address of a run: what it trains on, from which base, with which settings."""
    train = cfg.train.model_dump(mode="json", exclude=_NOT_IN_KEY)
    return sha256_json({
        "version": TRAIN_VERSION,
        "dataset": dataset_fingerprint,
        "base": contract.base_weights_sha256,
        "tokenizer": contract.tokenizer_sha256,
        "template": contract.chat_template_sha256,
        "model": cfg.model.model_dump(mode="json", exclude={"base"}),
        "train": train,
        "precision": prec,
    })


def default_name(cfg: Any, base_name: str) -> str:
    t = cfg.train
    raw = t.name or f"{base_name.split('/')[-1]}-{t.method}-{t.peft}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.") or "adapter"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "not installed"
    return out


def file_digests(directory: Path) -> dict[str, str]:
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != META:
            h = hashlib.sha256()
            with p.open("rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            out[p.relative_to(directory).as_posix()] = h.hexdigest()
    return out


def checksum(digests: dict[str, str]) -> str:
    return sha256_json(digests)


def read_meta(directory: Path) -> dict[str, Any] | None:
    path = directory / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def check_out_dir(out: Path) -> None:
    """Refuse to replace a non-empty directory that is not a tuneforge adapter."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and read_meta(out) is None)):
        raise TrainError(
            f"{out} exists and is not a tuneforge adapter directory",
            where="--out / train output",
            fix="choose a new directory, or delete it first",
        )


def save(model: Any, tokenizer: Any, target: Path, meta: dict[str, Any], *, full: bool) -> dict[str, Any]:
    """Write weights, tokenizer and tuneforge.json (last) into ``target`` via a temp dir + rename."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _verify_saved(model, tmp, full=full)
        digests = file_digests(tmp)
        meta = {**meta, "files": digests, "checksum": checksum(digests)}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _verify_saved(model: Any, directory: Path, *, full: bool) -> None:
    """Every saved tensor equals the in-memory one, and no adapter saves whole modules."""
    from safetensors import safe_open

    if full:
        expected = dict(model.state_dict())
        files = sorted(directory.glob("*.safetensors"))
    else:
        from peft import get_peft_model_state_dict

        expected = get_peft_model_state_dict(model)
        files = [directory / "adapter_model.safetensors"]
        config = json.loads((directory / "adapter_config.json").read_text())
        if config.get("modules_to_save"):
            raise TrainError(f"the adapter saves whole modules {config['modules_to_save']}, which vLLM rejects",
                             where=str(directory), fix="remove modules_to_save from train.peft_config")
    seen = 0
    for f in files:
        if not f.is_file():
            raise AssertionError(f"save_pretrained wrote no {f.name}")
        with safe_open(f, framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open is not iterable
                ref = expected.get(name)
                if ref is None:
                    continue
                seen += 1
                if not ref.detach().cpu().equal(st.get_tensor(name)):
                    raise AssertionError(f"saved tensor {name} differs from the trained one")
    if seen == 0:
        raise AssertionError(f"no saved tensor matched the trained model in {directory}")


def verify_checksum(directory: Path) -> bool:
    """True when every file listed in tuneforge.json is present with the recorded sha256."""
    meta = read_meta(directory)
    if meta is None:
        return False
    return file_digests(directory) == meta.get("files") and checksum(meta["files"]) == meta.get("checksum")


@dataclass(frozen=True)
class RunDirs:
    """Where one run keeps its resumable state: <workspace>/runs/<run key>/."""

    root: Path

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def list(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir()
                 if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def last(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

    def commit(self, step: int, keep: int) -> Path:
        src = self.staging / f"{CHECKPOINT_PREFIX}{step}"
        dst = self.checkpoints / src.name
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(src, dst)
        for old in self.list()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return dst
