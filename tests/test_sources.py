from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from embedcache.cli.sources import detect_format, read_items
from embedcache.errors import InvalidInputError


def test_format_follows_the_file_name_unless_given() -> None:
    assert detect_format("a.JSONL") == "jsonl"
    assert detect_format("a.ndjson") == "jsonl"
    assert detect_format("a.tsv") == "tsv"
    assert detect_format("notes.md") is None  # told by its first line
    assert detect_format("-") is None
    assert detect_format("a.csv", "txt") == "txt"


def test_txt_skips_blank_lines_and_keeps_inner_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("  indented\n\n\t\nlast  \r\n", encoding="utf-8")
    assert [i.text for i in read_items(str(path))] == ["  indented", "last  "]


def test_items_carry_their_origin(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("a\n\nb\n", encoding="utf-8")
    assert [i.origin for i in read_items(str(path))] == [f"{path}:1", f"{path}:3"]


def test_stdin_is_read_as_text_or_the_given_format() -> None:
    items = read_items("-", fmt="jsonl", stdin=io.StringIO('{"text": "x", "g": 1}\n'))
    assert [(i.text, i.group) for i in read_items("-", stdin=io.StringIO("a\nb\n"))] == [
        ("a", None),
        ("b", None),
    ]
    assert [i.text for i in items] == ["x"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json\n", "a.jsonl:1: not valid JSON"),
        ('["a list"]\n', "a.jsonl:1: expected a JSON object, got list"),
        ('{"text": 3}\n', "a.jsonl:1: field 'text' is int, not str"),
        ('{"text": "ok"}\n{"body": "x"}\n', "a.jsonl:2: no field 'text' (fields: body)"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        list(read_items(str(path)))


def test_group_field_is_read_from_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a", "doc": 7}\n{"text": "b"}\n', encoding="utf-8")
    items = read_items(str(path), group_field="doc")
    assert next(items).group == "7"
    with pytest.raises(InvalidInputError, match=r"a\.jsonl:2: no group field 'doc'"):
        next(items)


def test_group_field_outside_jsonl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("a\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"a\.txt: --group-field needs JSON Lines"):
        list(read_items(str(path), group_field="doc"))


def test_csv_cells_may_hold_long_multiline_documents(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    long_text = "line one\nline two " + "x" * 200_000
    path.write_text(f'text\n"{long_text}"\n', encoding="utf-8")
    assert [i.text for i in read_items(str(path))] == [long_text]


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        list(read_items(str(path)))
