"""Paths a command writes to because the user named them, checked before the work that fills them.

An evaluation or a drift check that runs for minutes and then fails on a typo in its output path
loses that work; a file the user already had must not be silently replaced where replacing it is
not the point of the command.
"""

from __future__ import annotations

import os
from pathlib import Path

from tuneforge.errors import TuneforgeError


class OutputPathError(TuneforgeError):
    """A file or directory the user asked for cannot be written."""


def output_file(path: Path, *, where: str, replace: bool = True) -> Path:
    """``path``, ready to be written: not a directory, its parent created and writable, and, with
    ``replace=False``, not an existing non-empty file."""
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory", where=where, fix="name a file (in that directory or elsewhere)")
    if not replace and path.is_file() and path.stat().st_size > 0:
        raise OutputPathError(f"{path} already exists and would be overwritten", where=where,
                              fix="choose another file name, or delete the file first")
    _writable_dir(path.parent, where)
    return path


def output_dir(path: Path, *, where: str) -> Path:
    """``path`` as a directory that can be written: created if missing, never an existing file."""
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} is a file, not a directory", where=where, fix="name a directory (it is created)")
    _writable_dir(path, where)
    return path


def _writable_dir(path: Path, where: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the directory {path}: {exc.strerror}", where=where,
                              fix="choose a path you can write to") from None
    if not os.access(path, os.W_OK):
        raise OutputPathError(f"cannot write into {path}", where=where, fix="choose a path you can write to")
