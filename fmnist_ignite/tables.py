"""Plain-text tables, as ``compare`` and ``sweep`` print them: left-aligned columns, two spaces apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any) -> str:
    """A value as a table shows it: ``-`` for none, four decimals for a float, else its text."""
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The header and one line per row, each column as wide as its widest cell; no trailing spaces.

    Example:
        >>> from fmnist_ignite.tables import format_table
        >>> print("\\n".join(format_table(["run", "accuracy"], [["base", 0.85], ["lr-0.1", None]])))
        run     accuracy
        base    0.8500
        lr-0.1  -
    """
    texts = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in texts)]) for i, c in enumerate(columns)]
    return ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in [columns, *texts]]
