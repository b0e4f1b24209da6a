"""JSON Lines rows split from a file without parsing them, and the parsing of one line.

``data prepare`` sends JSON Lines chunks unparsed to its worker processes (LineChunk), which
parse them there; ``_readers`` parses the same lines in process. Both use ``parse_jsonl_line``,
so a row is read the same way on either path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data._types import RawRow


def jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its line break) of each non-blank line."""
    # Binary lines split on b"\n" only, so a stray "\r" or U+2028 inside a record cannot cut it
    # in two, and a line that is not UTF-8 becomes one bad row instead of a crash.
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if raw.strip():
                yield number, raw.rstrip(b"\r\n")


def parse_jsonl_line(source: str, number: int, raw: bytes) -> RawRow:
    """The RawRow of one non-blank JSON Lines line (``raw`` without its line break)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RawRow(source, number, value=raw.decode("utf-8", "replace"),
                      error=f"invalid JSON: not UTF-8 at byte {exc.start + 1}")
    if number == 1:
        text = text.removeprefix("\ufeff")
    try:
        return RawRow(source, number, value=json.loads(text))
    except json.JSONDecodeError as exc:
        # Without the line break, an error at the end of the line gets its column; the line's
        # text travels with the error so rejected.jsonl loses nothing.
        return RawRow(source, number, value=text, error=f"invalid JSON: {exc.msg} at column {exc.colno}")


@dataclass(frozen=True)
class LineChunk:
    """Unparsed JSON Lines rows: parsing them where they are processed (in a worker process)
    spares the reading process the decoding and the pickling of parsed objects."""

    source: str
    numbers: list[int]
    lines: list[bytes]

    def __len__(self) -> int:
        return len(self.lines)

    def parse(self) -> list[RawRow]:
        return [parse_jsonl_line(self.source, n, raw) for n, raw in zip(self.numbers, self.lines, strict=True)]


def read_jsonl_lines(path: Path | str, chunk_size: int = 2000) -> Iterator[LineChunk]:
    """A JSON Lines file as LineChunks: the rows ``read_rows`` yields, not yet parsed."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    source = str(path)
    numbers: list[int] = []
    lines: list[bytes] = []
    for number, raw in jsonl_lines(Path(path)):
        numbers.append(number)
        lines.append(raw)
        if len(lines) >= chunk_size:
            yield LineChunk(source, numbers, lines)
            numbers, lines = [], []
    if lines:
        yield LineChunk(source, numbers, lines)
