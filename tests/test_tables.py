"""The one plain-text table layout (compare's and sweep's tables)."""

from __future__ import annotations

from fmnist_ignite.tables import cell, format_table


def test_cells_show_none_floats_and_the_rest() -> None:
    assert [cell(None), cell(0.123456), cell(3), cell("x"), cell(True)] == ["-", "0.1235", "3", "x", "True"]


def test_columns_are_as_wide_as_their_widest_cell_and_lines_have_no_trailing_spaces() -> None:
    lines = format_table(["run", "acc", "note"], [["a-long-name", 0.5, ""], ["b", None, "x"]])
    assert lines == ["run          acc     note", "a-long-name  0.5000", "b            -       x"]


def test_a_table_without_rows_is_its_header() -> None:
    assert format_table(["run", "acc"], []) == ["run  acc"]
