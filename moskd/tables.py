"""Markdown tables: the one builder every report, results page and summary uses."""
from __future__ import annotations

from typing import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """The lines of a GitHub markdown table. `align`: one letter per column, `l` (left, the default
    for a column not named) or `r` (right: numbers); cells are written with str()."""
    line = lambda cells: "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"  # noqa: E731
    rule = "|" + "".join("---:|" if align[i:i + 1] == "r" else "---|" for i in range(len(header)))
    return [line(header), rule, *(line(r) for r in rows)]
