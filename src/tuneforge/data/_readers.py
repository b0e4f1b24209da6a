"""Read input files as a stream of RawRow chunks, in bounded memory whatever the file size.

Readers only parse; they never interpret fields (that is ``_formats``). A row that cannot be
parsed becomes a RawRow with ``error`` set so the caller can reject it with its line number,
instead of the whole file failing. Only problems that make the rest of the file unreadable
(a broken JSON array, an unreadable CSV or Parquet file) raise DataError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tuneforge.data._jsonl import jsonl_lines, parse_jsonl_line
from tuneforge.data._types import RawRow
from tuneforge.errors import DataError

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")  # .ndjson is the same format under another name

# JSON arrays are decoded from a sliding text window; it grows only while one element is
# incomplete, so memory is bounded by the largest element, and this caps even that.
_JSON_BLOCK_CHARS = 1 << 20
_MAX_JSON_VALUE_CHARS = 64 << 20
# A decode error this close to the end of the window may just mean the element continues in
# the next block (a number, literal or escape cut in half), so read more before judging.
_TRUNCATION_MARGIN = 16
_JSON_WS = re.compile(r"[ \t\n\r]*")

# pyarrow fails on a CSV record longer than its block, so the block is generous; rows are
# converted to Python objects chunk_size at a time, so this does not multiply memory use.
_CSV_BLOCK_BYTES = 16 << 20


def read_rows(path: Path | str, chunk_size: int = 2000) -> Iterator[list[RawRow]]:
    """Yield the rows of ``path`` as lists of at most ``chunk_size`` RawRows, in file order.

    The extension picks the reader (.jsonl/.ndjson, .json, .csv, .parquet). A missing file or
    an unsupported extension raises DataError here; a file whose content is unreadable as a
    whole (e.g. a .json file that is not an array) raises DataError while iterating.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    source = str(path)
    path = Path(path)
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[Path, str], Iterator[RawRow]]] = {
        **dict.fromkeys(_JSONL_SUFFIXES, _read_jsonl),
        ".json": _read_json,
        ".csv": _read_csv,
        ".parquet": _read_parquet,
    }
    reader = readers.get(suffix)
    supported = ", ".join((*SUPPORTED, ".ndjson"))
    if reader is None:
        raise DataError(
            f"unsupported input file type {suffix or '(no extension)'!r}",
            where=source,
            fix=f"convert it to one of: {supported} (the extension selects the reader)",
        )
    if not path.is_file():
        raise DataError(
            "input file not found" if not path.exists() else "input path is not a file",
            where=source,
            fix=f"check the path; inputs are single files of type {supported}",
        )
    return _chunked(reader(path, source), chunk_size)


def _chunked(rows: Iterable[RawRow], size: int) -> Iterator[list[RawRow]]:
    chunk: list[RawRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- JSON Lines -------------------------------------------------------------------------------


def _read_jsonl(path: Path, source: str) -> Iterator[RawRow]:
    for number, raw in jsonl_lines(path):
        yield parse_jsonl_line(source, number, raw)


# --- JSON array -------------------------------------------------------------------------------


class _JsonWindow:
    """A text window over a file that decodes one JSON value at a time.

    Consumed text is dropped when more is read, so only the current element (plus one block)
    is ever held. Line/column of the read position are tracked for error messages.
    """

    def __init__(self, fh: TextIO, source: str) -> None:
        self._fh = fh
        self.source = source
        self.skipped_newline = False  # whether the last peek() crossed a line break
        self._decoder = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self._eof = False
        self._line_base = 1  # physical line of buf[0]
        self._col_base = 0  # 0-based column of buf[0] on that line

    def _fill(self) -> bool:
        """Read more text, dropping what was consumed. False (and nothing moved) at EOF."""
        if self._eof:
            return False
        # Grow geometrically while one element is incomplete, so re-decoding it from its start
        # after each read costs linear, not quadratic, time in its size.
        try:
            more = self._fh.read(max(_JSON_BLOCK_CHARS, len(self.buf) - self.pos))
        except UnicodeDecodeError as exc:
            raise DataError(
                f"the file is not valid UTF-8 ({exc.reason})",
                where=self.where(len(self.buf)),
                fix="re-save it as UTF-8",
            ) from exc
        if not more:
            self._eof = True
            return False
        # Counted in place: slicing the consumed text out would copy up to a whole block.
        newlines = self.buf.count("\n", 0, self.pos)
        if newlines:
            self._line_base += newlines
            self._col_base = self.pos - self.buf.rfind("\n", 0, self.pos) - 1
        else:
            self._col_base += self.pos
        self.buf = self.buf[self.pos :] + more
        self.pos = 0
        return True

    def where(self, pos: int | None = None) -> str:
        pos = self.pos if pos is None else pos
        newlines = self.buf.count("\n", 0, pos)
        # Past a newline in the window the column is local; before it, continue the line
        # that started in text already dropped.
        column = pos - self.buf.rfind("\n", 0, pos) if newlines else self._col_base + pos + 1
        return f"{self.source}:{self._line_base + newlines}:{column}"

    def peek(self) -> str:
        """Skip whitespace and return the next character without consuming it ("" at EOF)."""
        self.skipped_newline = False
        while True:
            match = _JSON_WS.match(self.buf, self.pos)
            if match and match.end() > self.pos:
                self.skipped_newline |= "\n" in match.group()
                self.pos = match.end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def take(self) -> None:
        self.pos += 1

    def value(self, what: str) -> tuple[Any, int]:
        """Decode the value at the read position; return it and where it started in buf."""
        self.peek()
        while True:
            try:
                obj, end = self._decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                truncated = exc.msg.startswith("Unterminated string") or (
                    exc.pos >= len(self.buf) - _TRUNCATION_MARGIN
                )
                offset = exc.pos - self.pos  # reading more shifts the window, not this
                if truncated and self._grow(what):
                    continue
                raise DataError(
                    f"invalid JSON in {what}: {exc.msg}",
                    where=self.where(self.pos + offset),
                    fix="fix the syntax there. A JSON array is one document, so one error makes "
                    "the rest unreadable; JSON Lines (.jsonl) would reject just that row",
                ) from exc
            # A number cut at the window's end decodes "successfully" as a shorter number.
            if end == len(self.buf) and self._grow(what):
                continue
            start, self.pos = self.pos, end
            return obj, start

    def _grow(self, what: str) -> bool:
        if len(self.buf) - self.pos > _MAX_JSON_VALUE_CHARS:
            raise DataError(
                f"{what} is larger than {_MAX_JSON_VALUE_CHARS >> 20} Mi characters or never ends",
                where=self.where(),
                fix="check the JSON syntax there, or split the data into smaller rows",
            )
        return self._fill()


def _read_json(path: Path, source: str) -> Iterator[RawRow]:
    # utf-8-sig drops a byte-order mark, which editors on Windows like to add.
    with path.open(encoding="utf-8-sig") as fh:
        window = _JsonWindow(fh, source)
        first = window.peek()
        if first == "[":
            yield from _json_array(window, source)
            return
        if first != "{":
            _not_an_array(first, source)
        _require_jsonl(window)
    # Many tools (datasets' to_json among them) write JSON Lines into .json files.
    yield from _read_jsonl(path, source)


def _require_jsonl(window: _JsonWindow) -> None:
    """Return if the file holds one-line objects, one per line (JSON Lines); raise otherwise."""
    _, start = window.value("the first object")
    one_line = "\n" not in window.buf[start : window.pos]
    if not window.peek():
        raise DataError(
            "the .json file holds a single JSON object, not an array of rows",
            where=window.source,
            fix="put the rows in a top-level array ([{...}, {...}]); if they sit under a key, "
            "extract it, e.g. jq '.data' in.json > out.json",
        )
    if not (one_line and window.skipped_newline):
        raise DataError(
            "the .json file holds several JSON values, not one array of rows",
            where=window.where(),
            fix="wrap them in [ ] separated by commas, or write one object per line to a .jsonl "
            "file",
        )


def _not_an_array(first: str, source: str) -> NoReturn:
    found = "is empty" if not first else f"starts with {first!r}, not '['"
    raise DataError(
        f"the .json file {found}; tuneforge expects a top-level JSON array of row objects",
        where=source,
        fix="write the rows as [{...}, {...}], or one object per line in a .jsonl file",
    )


def _json_array(window: _JsonWindow, source: str) -> Iterator[RawRow]:
    window.take()  # the opening "["
    if window.peek() == "]":
        window.take()
    else:
        index = 0
        while True:
            index += 1
            value, _ = window.value(f"array element {index}")
            yield RawRow(source, index, value=value)
            sep = window.peek()
            window.take()
            if sep == "]":
                break
            if sep != ",":
                found = repr(sep) if sep else "the end of the file"
                raise DataError(
                    f"expected ',' or ']' after array element {index}, found {found}",
                    where=window.where(window.pos - 1),
                    fix="fix the JSON syntax there (a missing comma or bracket?)",
                )
            if window.peek() == "]":
                raise DataError(
                    f"trailing comma after array element {index}",
                    where=window.where(),
                    fix="remove the comma; JSON does not allow one before ']'",
                )
    if window.peek():
        raise DataError(
            "unexpected text after the closing ']' of the array",
            where=window.where(),
            fix="a .json file must hold exactly one array; remove the extra text",
        )


# --- CSV --------------------------------------------------------------------------------------


def _read_csv(path: Path, source: str) -> Iterator[RawRow]:
    if path.stat().st_size == 0:
        return
    names = _csv_header(path, source)
    bad: dict[int | None, list[tuple[str, int]]] = {}  # record ordinal -> (error, newlines)

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # Keep malformed records as error rows (with their line) rather than failing the file.
        error = f"CSV row has {row.actual_columns} fields, expected {row.expected_columns}"
        bad.setdefault(row.number, []).append((f"{error}: {row.text[:200]!r}", row.text.count("\n")))
        return "skip"

    reader = _open_csv(
        path,
        source,
        on_invalid,
        pacsv.ConvertOptions(
            # Everything stays a string: type inference would turn "007" into 7 and "null"
            # into None, and JSON-in-a-cell is decoded later by the normaliser.
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    # pyarrow reports no line numbers for good rows, so count them: each record takes one
    # line plus the newlines inside its quoted cells. InvalidRow.number is the record's
    # ordinal (header = 1, blank lines included), which places malformed rows among the rest.
    line = 1 + sum(name.count("\n") for name in names) + 1
    record = 2
    with reader:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowException as exc:
                raise _csv_error(source, exc) from exc
            newlines = _newlines_per_row(batch)
            for start in range(0, batch.num_rows, 4096):
                for offset, values in enumerate(batch.slice(start, 4096).to_pylist()):
                    while record in bad:
                        for error, extra_lines in bad.pop(record):
                            yield RawRow(source, line, error=error)
                            line += 1 + extra_lines
                        record += 1
                    # A blank line (or a record of only empty cells) holds no data: skip it,
                    # as blank lines are skipped in JSON Lines.
                    if any(values.values()):
                        yield RawRow(source, line, value=values)
                    line += 1 + newlines[start + offset]
                    record += 1
        for number in sorted(bad, key=lambda n: (n is None, n or 0)):
            for error, extra_lines in bad[number]:
                yield RawRow(source, line, error=error)
                line += 1 + extra_lines


def _csv_header(path: Path, source: str) -> list[str]:
    # The column names are needed up front to read every column as a string; opening the
    # file parses only its first block.
    try:
        with _open_csv(path, source, lambda _row: "skip", None) as probe:
            names = list(probe.schema.names)
    except UnicodeDecodeError as exc:
        raise DataError(f"the CSV file is not UTF-8 text (byte {exc.start} of its header)", where=source,
                        fix="save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(
                f"column {name!r} appears twice in the CSV header",
                where=f"{source}:1",
                fix="give every column a distinct name",
            )
        seen.add(name)
    return names


def _open_csv(
    path: Path,
    source: str,
    on_invalid: Callable[[pacsv.InvalidRow], str],
    convert: pacsv.ConvertOptions | None,
) -> pacsv.CSVStreamingReader:
    try:
        return pacsv.open_csv(
            path,
            # One thread keeps InvalidRow.number meaningful and rows in order.
            read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True,
                ignore_empty_lines=False,  # counted, so line numbers stay physical
                invalid_row_handler=on_invalid,
            ),
            convert_options=convert,
        )
    except pa.ArrowException as exc:
        raise _csv_error(source, exc) from exc


def _csv_error(source: str, exc: Exception) -> DataError:
    return DataError(
        f"cannot read the CSV file: {exc}",
        where=source,
        fix="check that it is UTF-8, comma-separated, with a header row, and that quotes are "
        "balanced",
    )


def _newlines_per_row(batch: pa.RecordBatch) -> list[int]:
    if batch.num_columns == 0:
        return [0] * batch.num_rows
    total = None
    for column in batch.columns:
        counts = pc.count_substring(column, "\n")
        total = counts if total is None else pc.add(total, counts)
    return total.to_pylist()


# --- Parquet ----------------------------------------------------------------------------------


def _read_parquet(path: Path, source: str) -> Iterator[RawRow]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"cannot read the Parquet file: {exc}",
            where=source,
            fix="check that it is a complete Parquet file (not truncated or another format)",
        ) from exc
    line = 0
    with parquet:
        # iter_batches decodes one row group at a time, so memory is bounded by the
        # largest row group, not the file.
        batches = parquet.iter_batches(batch_size=4096)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:
                raise DataError(
                    f"cannot read the Parquet file after row {line}: {exc}",
                    where=source,
                    fix="the file looks corrupt; write it again",
                ) from exc
            for value in batch.to_pylist():
                line += 1
                yield RawRow(source, line, value=value)
