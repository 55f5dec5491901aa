"""The table of runs in a folder (``medclass runs``): what each run is, how it ended, how it scored.

The rows are :func:`medclass.core.run_index.describe_run` of each run folder
(:func:`medclass.core.run_index.find_runs`); this module sorts and formats them. Torch-free:
``medclass runs`` answers at once.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.run_index import describe_run, find_runs

__all__ = ["RUN_COLUMNS", "RUNS_FORMATS", "runs_table", "format_runs"]

#: Columns of the table, in order (``--sort`` takes any of them).
RUN_COLUMNS = ("name", "status", "data", "model", "image_size", "epochs", "budget", "wall_seconds",
               "test_accuracy", "balanced_accuracy", "auroc", "path")
#: Columns sorted best-first (descending) by ``--sort``; the others ascending.
DESCENDING = frozenset({"test_accuracy", "balanced_accuracy", "auroc", "epochs", "image_size", "wall_seconds"})
RUNS_FORMATS = ("table", "csv", "json")


def runs_table(runs_dir: Path, sort: Optional[str] = None) -> list[dict[str, Any]]:
    """:func:`describe_run` of every run in ``runs_dir`` (:func:`find_runs`), sorted by the column
    ``sort`` (metrics, epochs, size and time best/largest first, the others A-Z; missing values
    last) or by name.

    Raises:
        RunError: see :func:`find_runs`.
        ValueError: ``sort`` is not a column of :data:`RUN_COLUMNS` (the message lists them).
    """
    if sort is not None and sort not in RUN_COLUMNS:
        raise ValueError(f"--sort must be one of {', '.join(RUN_COLUMNS)}, got {sort!r}")
    rows = [describe_run(p) for p in find_runs(runs_dir)]
    if sort:
        present = [r for r in rows if r[sort] is not None]
        missing = [r for r in rows if r[sort] is None]
        present.sort(key=lambda r: r[sort], reverse=sort in DESCENDING)
        rows = present + missing
    return rows


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("test_accuracy", "balanced_accuracy", "auroc"):
        return f"{value:.3f}"
    if column == "wall_seconds":
        return f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"
    return str(value)


_HEADERS = {"image_size": "size", "wall_seconds": "time", "test_accuracy": "test acc",
            "balanced_accuracy": "bal acc", "auroc": "AUROC"}


def format_runs(rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    """The rows as text ending in a newline: an aligned ``table`` (no path column; numbers to
    three decimals, time in minutes), ``csv`` (every column, raw values) or ``json`` (a list of objects).

    Raises:
        ValueError: ``fmt`` is not one of :data:`RUNS_FORMATS`.
    """
    if fmt == "json":
        return json.dumps(list(rows), indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RUN_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if r[k] is None else r[k]) for k in RUN_COLUMNS} for r in rows)
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"--format must be table, csv or json, got {fmt!r}")
    columns = [c for c in RUN_COLUMNS if c != "path"]
    cells = [[_HEADERS.get(c, c) for c in columns]] + [[_cell(c, r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = {"image_size", "epochs", "wall_seconds", "test_accuracy", "balanced_accuracy", "auroc"}
    lines = ["  ".join(v.rjust(w) if c in numeric else v.ljust(w) for c, v, w in zip(columns, row, widths)).rstrip()
             for row in cells]
    if not rows:
        lines.append("(no runs)")
    return "\n".join(lines) + "\n"
