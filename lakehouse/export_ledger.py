"""An export's rows in ``meta``: one ``meta.exports`` row per export and one
``meta.export_partitions`` row per partition it wrote, carried over or removed."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from lakehouse.db import Warehouse
from lakehouse.export_plan import Partition, pointer_partitions
from lakehouse.export_target import ExportTarget
from lakehouse.ledger import utcnow

_PARTITION_COLUMNS = ("export_id", "table_name", "target", "partition_value", "folder",
                      "action", "rows", "bytes", "files", "fingerprint", "written_by")
_INSERT_CHUNK = 500  # partition rows per INSERT statement


def recorded_exports(wh: Warehouse, export_ids: list[str]) -> set[str]:
    """Which of ``export_ids`` ``meta.exports`` already holds."""
    return {r[0] for r in wh.fetchall(
        "SELECT export_id FROM meta.exports WHERE export_id IN (SELECT unnest(?::VARCHAR[]))",
        [export_ids], action="reading meta.exports")}


def insert_export(wh: Warehouse, target: ExportTarget, doc: dict[str, Any], status: str,
                   started: float | None, removed: list[Partition]) -> None:
    """Insert one export's ``meta.exports`` row and a ``meta.export_partitions`` row per
    partition (written, carried or removed); the caller holds the transaction.

    Args:
        doc: the export's pointer document.
        status: ``published``, or ``recovered`` for one the pointer names but meta missed.
        started: ``time.monotonic()`` when the export began (None: not timed).
        removed: the previous version's partitions this export dropped.
    """
    partitions = pointer_partitions(doc)
    written = set(doc.get("written", []))
    now = utcnow()
    seconds = time.monotonic() - started if started is not None else None
    began = now - timedelta(seconds=seconds) if seconds is not None else None
    fresh = [p for p in partitions if p.folder in written]
    wh.execute(
        "INSERT INTO meta.exports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?)",
        [doc["export_id"], doc["table"], target.url, doc["path"], doc.get("partition_key"),
         bool(doc.get("full")), status, doc.get("rows"), doc.get("bytes"), doc.get("files"),
         len(fresh), len(partitions) - len(fresh), len(doc.get("removed", [])),
         sum(p.rows for p in fresh), sum(p.bytes for p in fresh), began,
         now if began else None, int(seconds * 1000) if seconds is not None else None, now],
        action="recording the export")
    rows = [_partition_row(doc, target, p, "written" if p.folder in written else "carried")
            for p in partitions]
    rows += [_partition_row(doc, target, p, "removed") for p in removed]
    # Plain parameters, not an Arrow table: registering one makes DuckDB import pandas,
    # which costs a CLI process more than the whole export of a small table.
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start:start + _INSERT_CHUNK]
        marks = ", ".join(["(" + ", ".join(["?"] * len(_PARTITION_COLUMNS)) + ")"] * len(chunk))
        wh.execute(f"INSERT INTO meta.export_partitions ({', '.join(_PARTITION_COLUMNS)}) "
                   f"VALUES {marks}", [r[c] for r in chunk for c in _PARTITION_COLUMNS],
                   action="recording the export's partitions")


def _partition_row(doc: dict[str, Any], target: ExportTarget, p: Partition,
                   action: str) -> dict[str, Any]:
    return {"export_id": doc["export_id"], "table_name": doc["table"], "target": target.url,
            "partition_value": p.value, "folder": p.folder, "action": action, "rows": p.rows,
            "bytes": p.bytes, "files": len(p.files), "fingerprint": p.fingerprint,
            "written_by": p.written_by}
