"""The one Markdown table writer (results/*.md, run reports, notebook tables)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(head: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """Lines of a GitHub Markdown table: ``| a | b |``, the rule ``|---|---|``, one line per row.

    Cells are written with ``str``; format numbers before. Every row must have one cell per column.
    """
    head = [str(h) for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows):
        cells = [str(c) for c in row]
        if len(cells) != len(head):
            raise ValueError(f"row {i} has {len(cells)} cells for {len(head)} columns: {cells[:3]}...")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
