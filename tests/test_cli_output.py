"""The CLI's tables and cut lines measure text in terminal columns: a Chinese, Japanese or
Korean character takes two, a combining accent none, so columns stay in line."""

from __future__ import annotations

from wcwidth import wcswidth

from embedcache.cli.output import cut, format_table, text_width
from embedcache.cli.progress import fit_line


def test_a_table_of_wide_characters_keeps_its_columns_in_line() -> None:
    lines = format_table(["NAME", "SIZE"], [["日本語の文書", "12"], ["plain", "3"], ["é", "4"]])
    # Where SIZE starts, in columns, is the same on every line.
    starts = {wcswidth(line[: line.rindex(" ") + 1]) for line in lines}
    assert len(starts) == 1, lines


def test_right_aligned_numbers_after_wide_text_end_in_one_column() -> None:
    lines = format_table(["DOC", "N"], [["中文", "1"], ["x", "22"]], right=[1])
    assert {wcswidth(line) for line in lines} == {wcswidth(lines[0])}


def test_a_cut_text_fits_its_columns_counting_wide_characters_twice() -> None:
    text = "向量数据库" * 10
    for columns in range(1, 30):
        shown = cut(text, columns)
        assert wcswidth(shown) <= columns
        assert shown.endswith("…")
    assert cut("short", 10) == "short"
    assert text_width("e\u0301") == 1  # e and a combining acute accent: one column


def test_a_progress_line_of_a_wide_file_name_fits_the_terminal() -> None:
    line = fit_line("prewarm 文档集合文档集合文档集合.txt", [(0, "1,024 texts"), (1, "3 MB")], 30)
    assert wcswidth(line) <= 30
