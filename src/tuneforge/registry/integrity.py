"""Which files a registered model may contain, and proof that they are the ones that were registered.

Only data formats are accepted: safetensors weights, JSON configs and the plain-text tokenizer and
template files an adapter directory holds. Pickle-capable formats (.bin, .pt, ...) run code when
loaded, so a registry that accepted them would let anyone with write access to the artifact store
execute code on every machine that loads the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import IntegrityError

_ALLOWED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".md")
_ALLOWED_NAMES = ("tokenizer.model",)  # sentencepiece: a protobuf, not a pickle
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5")


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, POSIX separators
    sha256: str
    size: int


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_allowed(rel: str, where: str) -> None:
    """Refuse a file name that is not on the allow-list, saying why."""
    name = rel.rsplit("/", 1)[-1]
    if name in _ALLOWED_NAMES or name.endswith(_ALLOWED_SUFFIXES):
        return
    if name.endswith(_PICKLE_SUFFIXES):
        why = "a pickle-capable format, which can run code when loaded"
        fix = "save weights as safetensors (save_pretrained(..., safe_serialization=True)) and remove this file"
    else:
        why = "not an allowed type"
        fix = "remove it; only *.safetensors, *.json, *.jinja, *.txt, *.md and tokenizer.model are accepted"
    raise IntegrityError(f"{rel} is {why}", where=f"{where}/{rel}", fix=fix)


def scan(directory: Path) -> dict[str, FileEntry]:
    """Every file under ``directory`` with its sha256 and size, after the allow-list check."""
    if not directory.is_dir():
        raise IntegrityError(f"{directory} is not a directory", where=str(directory),
                             fix="pass an adapter directory written by `tuneforge train`")
    out: dict[str, FileEntry] = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_symlink():
            raise IntegrityError(f"{rel} is a symbolic link", where=f"{directory}/{rel}",
                                 fix="replace the link with the file it points to")
        if p.is_dir():
            continue
        check_allowed(rel, str(directory))
        out[rel] = FileEntry(rel, sha256_file(p), p.stat().st_size)
    return out


def verify(directory: Path, expected: dict[str, FileEntry], what: str) -> None:
    """Raise naming the first file that is missing, extra or changed compared with ``expected``."""
    found = {p.relative_to(directory).as_posix(): p for p in directory.rglob("*") if not p.is_dir()}
    for rel in sorted(set(found) - set(expected)):
        raise IntegrityError(f"{what}: unexpected file {rel} (not in the registered manifest)",
                             where=f"{directory}/{rel}", fix="delete it; registered versions are immutable")
    for rel, entry in sorted(expected.items()):
        p = found.get(rel)
        if p is None:
            raise IntegrityError(f"{what}: registered file {rel} is missing", where=f"{directory}/{rel}",
                                 fix=f"delete {directory} so it is downloaded again from the registry")
        if p.is_symlink() or p.stat().st_size != entry.size or sha256_file(p) != entry.sha256:
            raise IntegrityError(
                f"{what}: checksum mismatch in {rel} (expected sha256 {entry.sha256[:16]}…); refusing to load",
                where=f"{directory}/{rel}",
                fix="the file was modified after registration; delete the local copy to download it again, "
                "and if the registry's artifact store itself was changed, re-register from a trusted adapter",
            )
