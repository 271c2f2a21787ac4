"""`lake health`: the run log's health queries on the published snapshot (read-only, no lock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lakehouse.db import Warehouse
from lakehouse.errors import UsageError
from lakehouse.layout import LakePaths
from lakehouse.observability import HEALTH_QUERIES
from lakehouse.publish import open_snapshot


def check_health(root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Run the health queries on the root's published snapshot; rows as dicts by query name.

    Raises:
        UsageError: no snapshot is published yet (run `lake init` and `lake load` first).
    """
    paths = LakePaths.at(root)
    if not paths.read_snapshot.exists():
        raise UsageError(f"no published snapshot at {paths.read_snapshot}: run `lake init` "
                         "and `lake load` first")
    wh = open_snapshot(paths)
    try:
        return health_report(wh)
    finally:
        wh.close()


def health_report(wh: Warehouse) -> dict[str, list[dict[str, Any]]]:
    """Run the health queries of the observability spec; rows as dicts."""
    report: dict[str, list[dict[str, Any]]] = {}
    for name, sql in HEALTH_QUERIES.items():
        cols, rows = wh.query(sql, action=f"running health query {name}")
        report[name] = [dict(zip(cols, row, strict=True)) for row in rows]
    return report
