"""Markdown and CSV tables: the one formatter every command, script and the report print with.

`format_table` writes a DataFrame, `markdown_table` a list of rows under a header in the same style, and
`parse_table` reads the first markdown table of a text back (for tests and scripts that check printed output).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

FORMATS = ("md", "csv")


def format_table(df: pd.DataFrame, fmt: str = "md", digits: int = 4) -> str:
    """``df`` as text.

    Args:
        df: the table; its index is not written.
        fmt: ``"md"`` (a GitHub markdown table, floats to ``digits`` significant digits, an empty table as
            ``_(no rows)_``) or ``"csv"`` (every value as pandas writes it).
        digits: significant digits of floats in markdown.

    Returns:
        The table, ending in a newline.

    Raises:
        ValueError: ``fmt`` is not one of ``FORMATS``.
    """
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt != "md":
        raise ValueError(f"table format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if df.empty:
        return "_(no rows)_\n"

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows of cells under ``header`` as ``format_table`` writes a DataFrame, without the final newline."""
    return format_table(pd.DataFrame([list(row) for row in rows], columns=list(header))).rstrip("\n")


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text``, each a dict of header -> cell text (stripped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return []
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
