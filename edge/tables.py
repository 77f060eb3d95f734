"""Tables: aligned plain text for the terminal (what a user reads is a table) and Markdown for reports."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A simple aligned table with a header rule. Numbers are right-aligned unless ``align`` says otherwise."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def is_num(text: str) -> bool:
        try:
            float(text.replace(",", "").rstrip("%x"))
            return True
        except ValueError:
            return False

    lines = []
    for n, row in enumerate(cells):
        parts = []
        for i, cell in enumerate(row):
            right = (align[i] == "r") if align else (n > 0 and is_num(cell))
            parts.append(cell.rjust(widths[i]) if right else cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown (GitHub) table; ``|`` inside a cell is escaped."""

    def cell(value: object) -> str:
        return ("" if value is None else str(value)).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
