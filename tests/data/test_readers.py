"""Tests for tuneforge.data._readers: every input format, line numbers, errors, streaming."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.data import _readers
from tuneforge.data._readers import SUPPORTED, read_rows
from tuneforge.data._types import RawRow
from tuneforge.errors import DataError


def read_all(path: Path | str, chunk_size: int = 2000) -> list[RawRow]:
    return [row for chunk in read_rows(path, chunk_size) for row in chunk]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- dispatch and errors ----------------------------------------------------------------------


def test_supported_formats() -> None:
    assert SUPPORTED == (".jsonl", ".json", ".csv", ".parquet")


@pytest.mark.parametrize("name", ["data.txt", "data.xlsx", "data"])
def test_unsupported_extension_names_file_and_formats(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "{}\n")
    with pytest.raises(DataError) as info:
        read_rows(path)
    message = str(info.value)
    assert str(path) in message
    for suffix in (*SUPPORTED, ".ndjson"):
        assert suffix in message


def test_missing_file_names_file_and_formats(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as info:
        read_rows(path)  # raised on the call, before iterating
    assert "not found" in str(info.value)
    assert str(path) in str(info.value)
    assert ".parquet" in str(info.value)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match="not a file"):
        read_rows(folder)


def test_chunk_size_must_be_positive(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", "{}\n")
    with pytest.raises(ValueError):
        read_rows(path, chunk_size=0)


def test_uppercase_extension_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "A.JSONL", '{"a": 1}\n')
    assert [r.value for r in read_all(path)] == [{"a": 1}]


# --- JSON Lines -------------------------------------------------------------------------------


def test_jsonl_values_lines_and_source(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"a": 1}\n\n   \n{"a": 2}\n[1, 2]\n"s"\n')
    rows = read_all(str(path))
    assert [(r.line, r.value, r.error) for r in rows] == [
        (1, {"a": 1}, None),
        (4, {"a": 2}, None),
        (5, [1, 2], None),  # parsed; the normaliser decides it is not an object
        (6, "s", None),
    ]
    assert all(r.source == str(path) for r in rows)


def test_jsonl_source_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "d.jsonl", '{"a": 1}\n')
    monkeypatch.chdir(tmp_path)
    assert read_all("d.jsonl")[0].source == "d.jsonl"
    assert read_all(Path("./d.jsonl"))[0].source == "d.jsonl"  # str(Path) normalises "./"


def test_jsonl_invalid_lines_become_error_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"a": 1}\n{"a": \n{"a" 1}\nnot json\n{"a": 5}\n')
    rows = read_all(path)
    assert [r.line for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].value == {"a": 1} and rows[4].value == {"a": 5}
    assert rows[1].value == "{\"a\": " and rows[3].value == "not json"  # raw text kept
    assert rows[1].error == "invalid JSON: Expecting value at column 7"
    assert rows[2].error == "invalid JSON: Expecting ':' delimiter at column 6"
    assert rows[3].error == "invalid JSON: Expecting value at column 1"


def test_jsonl_crlf_bom_and_unicode_separators(tmp_path: Path) -> None:
    # U+2028 is a line break for str.splitlines but not for JSON Lines.
    text = '\ufeff{"a": "x\u2028y"}\r\n\r\n{"a": 2}\r\n'
    path = tmp_path / "d.jsonl"
    path.write_bytes(text.encode("utf-8"))
    rows = read_all(path)
    assert [(r.line, r.value) for r in rows] == [(1, {"a": "x\u2028y"}), (3, {"a": 2})]


def test_jsonl_non_utf8_line_is_an_error_row(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n{"a": 3}\n')
    rows = read_all(path)
    assert [r.value for r in rows] == [{"a": 1}, '{"a": "\ufffd"}', {"a": 3}]
    assert rows[1].error == "invalid JSON: not UTF-8 at byte 8"


def test_ndjson_is_read_as_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "d.ndjson", '{"a": 1}\n{"a": 2}\n')
    assert [r.value for r in read_all(path)] == [{"a": 1}, {"a": 2}]


def test_jsonl_without_trailing_newline_and_empty_file(tmp_path: Path) -> None:
    assert [r.value for r in read_all(write(tmp_path / "a.jsonl", '{"a": 1}'))] == [{"a": 1}]
    assert list(read_rows(write(tmp_path / "b.jsonl", ""))) == []


def test_chunks_have_at_most_chunk_size_rows_in_order(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", "".join(f'{{"i": {i}}}\n' for i in range(7)))
    chunks = list(read_rows(path, chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [r.value["i"] for c in chunks for r in c] == list(range(7))


# --- JSON array -------------------------------------------------------------------------------

ARRAY_ROWS = [
    {"instruction": "Say hi", "output": "Hi!"},
    {"n": -12.5e-3, "big": 12345678901234567890, "flags": [True, False, None]},
    {"text": 'quote " backslash \\ unicode \u00e9 \U0001f600 newline \n'},
    7,
    "a string",
    None,
    [1, [2, [3]]],
    {"nested": {"deep": [{"x": 1}]}},
]


def test_unparsed_jsonl_chunks_parse_to_the_rows_read_rows_gives(tmp_path: Path) -> None:
    # data prepare sends JSON Lines chunks unparsed to its workers; they must read the same rows.
    from tuneforge.data._jsonl import read_jsonl_lines

    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([
        b'{"a": 1}', b"", b"   ", b'{"b": "\xc3\xa9\xe2\x80\xa8x"}', b"{broken", b"[1, 2]", b"\xff\xfe not utf-8",
        b'"just a string"', b'{"c": null}  ', b"\n", b'{"d": [1, {"e": 2}]}',
    ]))
    for size in (1, 3, 2000):
        chunks = list(read_jsonl_lines(path, size))
        assert [len(c) for c in chunks] == [len(c) for c in read_rows(path, size)]
        assert [r for c in chunks for r in c.parse()] == read_all(path, size)
    assert any(r.error for r in read_all(path)) and read_all(path)[0].value == {"a": 1}
    with pytest.raises(ValueError, match="chunk_size"):
        next(read_jsonl_lines(path, 0))


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("block", [1, 2, 3, 5, 8, 13, 1 << 20])
def test_json_array_values_and_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, indent: int | None, block: int
) -> None:
    # Tiny windows put every element, number, escape and literal across read boundaries.
    monkeypatch.setattr(_readers, "_JSON_BLOCK_CHARS", block)
    path = write(tmp_path / "d.json", json.dumps(ARRAY_ROWS, indent=indent))
    rows = read_all(path, chunk_size=3)
    assert [r.value for r in rows] == ARRAY_ROWS
    assert [r.line for r in rows] == list(range(1, len(ARRAY_ROWS) + 1))  # element index + 1
    assert all(r.error is None and r.source == str(path) for r in rows)


def test_json_array_with_bom_and_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes('\ufeff \n [ {"a": 1} ,\n\t{"a": 2} ] \n'.encode())
    assert [r.value for r in read_all(path)] == [{"a": 1}, {"a": 2}]


def test_empty_json_array(tmp_path: Path) -> None:
    assert read_all(write(tmp_path / "d.json", " [ ] ")) == []


@pytest.mark.parametrize(
    ("text", "what", "where"),
    [
        ("", "is empty", ""),
        ("  \n", "is empty", ""),
        ('"rows"', "starts with '\"'", ""),
        ("42", "starts with '4'", ""),
        ('{"data": [{"a": 1}]}', "single JSON object", ""),
        ('{\n  "a": 1\n}\n', "single JSON object", ""),
        ('{"a":\n1}\n{"a": 2}\n', "several JSON values", ":3:1"),
        ('[{"a": 1},]', "trailing comma after array element 1", ":1:11"),
        ('[{"a": 1} {"a": 2}]', "expected ',' or ']' after array element 1, found '{'", ":1:11"),
        ('[{"a": 1}', "found the end of the file", ""),
        ('[{"a": 1}] extra', "unexpected text after the closing ']'", ":1:12"),
        ('[\n  {"a": 1},\n  {"a": nope}\n]', "invalid JSON in array element 2: Expecting value", ":3:9"),
        ('[{"a": "open}]', "invalid JSON in array element 1: Unterminated string", ":1:8"),
    ],
)
@pytest.mark.parametrize("block", [4, 1 << 20])
def test_json_that_is_not_a_readable_array_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, what: str, where: str, block: int
) -> None:
    monkeypatch.setattr(_readers, "_JSON_BLOCK_CHARS", block)
    path = write(tmp_path / "d.json", text)
    with pytest.raises(DataError) as info:
        read_all(path)
    error = info.value
    assert what in error.what
    assert error.where is not None and error.where.startswith(str(path))
    assert error.where.endswith(where)
    assert error.fix  # every error says how to fix it


def test_json_object_error_suggests_extracting_the_array(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_all(write(tmp_path / "d.json", '{"data": [{"a": 1}]}'))
    assert "[{...}, {...}]" in (info.value.fix or "")


def test_jsonl_content_in_a_json_file_is_read_as_jsonl(tmp_path: Path) -> None:
    # datasets' Dataset.to_json writes JSON Lines even to .json files.
    path = write(tmp_path / "d.json", '{"a": 1}\n{"a": 2}\nbroken\n\n{"a": 5}\n')
    rows = read_all(path)
    assert [(r.line, r.value) for r in rows] == [(1, {"a": 1}), (2, {"a": 2}), (3, "broken"), (5, {"a": 5})]
    assert rows[2].error == "invalid JSON: Expecting value at column 1"


def test_json_syntax_error_is_reported_without_reading_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a 64-character cap, reading on to the end would fail with "larger than" instead.
    monkeypatch.setattr(_readers, "_JSON_BLOCK_CHARS", 8)
    monkeypatch.setattr(_readers, "_MAX_JSON_VALUE_CHARS", 64)
    path = write(tmp_path / "d.json", '[{"a": 1}, {"a": oops, "b": "' + "x" * 500 + '"}]')
    rows = []
    with pytest.raises(DataError) as info:
        for chunk in read_rows(path, chunk_size=1):
            rows.extend(chunk)
    assert [r.value for r in rows] == [{"a": 1}]  # rows before the error were streamed out
    assert "array element 2: Expecting value" in info.value.what


def test_json_element_larger_than_the_cap_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_readers, "_JSON_BLOCK_CHARS", 16)
    monkeypatch.setattr(_readers, "_MAX_JSON_VALUE_CHARS", 100)
    path = write(tmp_path / "d.json", '[{"a": "' + "x" * 1000 + '"}]')
    with pytest.raises(DataError, match="array element 1 is larger than"):
        read_all(path)


def test_json_not_utf8_raises(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"a": "\xff\xfe"}]')
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_all(path)


# --- CSV --------------------------------------------------------------------------------------


def test_csv_values_are_strings_with_physical_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.csv",
        "instruction,output,n\n"  # line 1
        'Say hi,Hi!,007\n'  # line 2
        '"Two\nlines","a, b",null\n'  # lines 3-4
        "\n"  # line 5: blank, skipped
        'x,"say ""hi""",\n'  # line 6
        ",,\n"  # line 7: only empty cells, skipped like a blank line
        "last,row,1.5\n",  # line 8
    )
    rows = read_all(path)
    assert [(r.line, r.value) for r in rows] == [
        (2, {"instruction": "Say hi", "output": "Hi!", "n": "007"}),
        (3, {"instruction": "Two\nlines", "output": "a, b", "n": "null"}),
        (6, {"instruction": "x", "output": 'say "hi"', "n": ""}),
        (8, {"instruction": "last", "output": "row", "n": "1.5"}),
    ]
    assert all(r.source == str(path) and r.error is None for r in rows)


def test_csv_json_cell_is_left_as_a_string(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    cell = json.dumps(messages).replace('"', '""')
    path = write(tmp_path / "d.csv", f'messages\n"{cell}"\n')
    (row,) = read_all(path)
    assert row.value == {"messages": json.dumps(messages)}


def test_csv_malformed_row_becomes_an_error_row(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'a,b\n1,2\n3,4,5\n"6\nsix",7\n8\n9,10\n')
    rows = read_all(path)
    assert [(r.line, r.value) for r in rows] == [
        (2, {"a": "1", "b": "2"}),
        (3, None),
        (4, {"a": "6\nsix", "b": "7"}),
        (6, None),
        (7, {"a": "9", "b": "10"}),
    ]
    assert rows[1].error == "CSV row has 3 fields, expected 2: '3,4,5'"
    assert rows[3].error == "CSV row has 1 fields, expected 2: '8'"


@pytest.mark.parametrize("block", [32, 64, 1 << 24])
def test_csv_line_numbers_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Multi-line cells, blank lines and malformed rows, spread over many parser blocks."""
    monkeypatch.setattr(_readers, "_CSV_BLOCK_BYTES", block)
    lines = ["id,body"]
    expected: dict[str, int] = {}  # id -> physical line where its record starts
    for i in range(60):
        if i % 7 == 0:
            lines.append("")
        expected[str(i)] = sum(1 + line.count("\n") for line in lines) + 1
        if i % 5 == 0:
            lines.append(f'{i},"multi\nline\ncell"')
        elif i % 11 == 0:
            lines.append(f"{i},too,many")
        else:
            lines.append(f"{i},v{i}")
    path = write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    rows = read_all(path, chunk_size=7)
    assert len(rows) == 60
    for row in rows:
        key = row.value["id"] if row.value is not None else row.error.split("'")[1].split(",")[0]
        assert row.line == expected[key], row
    assert sum(r.error is not None for r in rows) == len([i for i in range(60) if i % 11 == 0 and i % 5])


def test_csv_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffa,b\r\n1,2\r\n3,4\r\n".encode())
    assert [(r.line, r.value) for r in read_all(path)] == [(2, {"a": "1", "b": "2"}), (3, {"a": "3", "b": "4"})]


def test_csv_empty_and_header_only(tmp_path: Path) -> None:
    assert read_all(write(tmp_path / "e.csv", "")) == []
    assert read_all(write(tmp_path / "h.csv", "a,b\n")) == []


def test_csv_duplicate_header_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'a' appears twice"):
        read_all(write(tmp_path / "d.csv", "a,a\n1,2\n"))


def test_csv_not_utf8_raises(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"a\n\xff\xfe\n")
    with pytest.raises(DataError) as info:
        read_all(path)
    assert "UTF8" in info.value.what and info.value.where == str(path)


# --- Parquet ----------------------------------------------------------------------------------


def test_parquet_rows_lines_and_nested_values(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    records = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ],
            "score": i,
        }
        for i in range(10)
    ]
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=3)
    rows = read_all(path, chunk_size=4)
    assert [r.line for r in rows] == list(range(1, 11))
    assert [r.value for r in rows] == records
    assert [len(c) for c in read_rows(path, chunk_size=4)] == [4, 4, 2]


def test_parquet_fills_absent_struct_fields_with_none(tmp_path: Path) -> None:
    # Parquet unifies struct fields across rows; the normaliser must treat None as absent.
    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"m": [{"role": "user"}, {"role": "tool", "tool_call_id": "1"}]}]), path
    )
    (row,) = read_all(path)
    assert row.value == {"m": [{"role": "user", "tool_call_id": None}, {"role": "tool", "tool_call_id": "1"}]}


def test_parquet_not_parquet_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "d.parquet", "this is not parquet")
    with pytest.raises(DataError) as info:
        read_all(path)
    assert "Parquet" in info.value.what and info.value.where == str(path)


# --- streaming --------------------------------------------------------------------------------


def _row(i: int) -> str:
    return json.dumps({"instruction": f"Question number {i}: what is {i} + {i}?", "output": f"It is {2 * i}."})


def test_large_jsonl_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    n, chunk_size = 200_000, 1000
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            fh.write(_row(i) + "\n")

    # What holding a tenth of the rows costs; holding all of them would cost ten times this.
    tracemalloc.start()
    try:
        held = []
        for chunk in read_rows(path, chunk_size):
            held.extend(chunk)
            if len(held) >= n // 10:
                break
        tenth = tracemalloc.get_traced_memory()[0]
        del held

        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        count = chunks = 0
        last = -1
        for chunk in read_rows(path, chunk_size):
            assert len(chunk) <= chunk_size
            chunks += 1
            count += len(chunk)
            last = chunk[-1].line
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert (count, chunks, last) == (n, n // chunk_size, n)
    # Streaming holds about one chunk: far below a tenth of the rows, let alone all of them.
    assert peak < tenth / 5, (peak, tenth)


def test_large_json_array_is_streamed_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A smaller window than the 1 Mi default lets a modest file show memory not growing with it.
    monkeypatch.setattr(_readers, "_JSON_BLOCK_CHARS", 64 << 10)
    n, chunk_size = 100_000, 500
    path = tmp_path / "big.json"
    with path.open("w") as fh:
        fh.write("[\n" + ",\n".join(_row(i) for i in range(n)) + "\n]\n")
    size = path.stat().st_size

    tracemalloc.start()
    try:
        count = 0
        for chunk in read_rows(path, chunk_size):
            count += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    # The file text alone would take `size` bytes as a str; the window holds ~64 Ki characters
    # plus about two chunks of rows (~1 MB here), a small fraction of the file.
    assert size > 8 << 20
    assert peak < size / 6, (peak, size)
