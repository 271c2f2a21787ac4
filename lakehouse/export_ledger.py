"""An export's rows in ``meta``: one ``meta.exports`` row per export and one
``meta.export_partitions`` row per partition it wrote, carried over or removed."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from lakehouse.db import Warehouse
from lakehouse.export_plan import Partition, pointer_partitions
from lakehouse.export_target import ExportTarget
from lakehouse.ledger import utcnow

_PARTITION_COLUMNS = ("export_id", "table_name", "target", "partition_value", "folder",
                      "action", "rows", "bytes", "files", "fingerprint", "written_by")
_INSERT_CHUNK = 500
# meta.exports' columns of schema version 3, by name: later versions add columns with defaults.
EXPORT_COLUMNS = ("export_id", "table_name", "target", "path", "partition_key", "full_export",
                  "status", "rows", "bytes", "files", "partitions_written", "partitions_carried",
                  "partitions_removed", "rows_written", "bytes_written", "started_at",
                  "ended_at", "duration_ms", "recorded_at")  # partition rows per INSERT statement


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
        f"INSERT INTO meta.exports ({', '.join(EXPORT_COLUMNS)}) VALUES "
        f"({', '.join(['?'] * len(EXPORT_COLUMNS))})",
        [doc["export_id"], doc["table"], target.url, doc["path"], doc.get("partition_key"),
         bool(doc.get("full")), status, doc.get("rows"), doc.get("bytes"), doc.get("files"),
         len(fresh), len(partitions) - len(fresh), len(doc.get("removed", [])),
         sum(p.rows for p in fresh), sum(p.bytes for p in fresh), began,
         now if began else None, int(seconds * 1000) if seconds is not None else None, now],
        action="recording the export")
    rows = [_partition_row(doc, target, p, "written" if p.folder in written else "carried")
            for p in partitions]
    rows += [_partition_row(doc, target, p, "removed") for p in removed]
    _insert_partition_rows(wh, rows)


def _insert_partition_rows(wh: Warehouse, rows: list[dict[str, Any]]) -> None:
    """Insert ``meta.export_partitions`` rows in chunks of plain parameters (not an Arrow
    table: registering one makes DuckDB import pandas, which costs a CLI process more than
    the whole export of a small table)."""
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


def insert_delta_export(wh: Warehouse, target_url: str, meta: dict[str, Any], version: int,
                        status: str, started: float | None,
                        sizes: dict[tuple[str | None, ...], tuple[int, int]]) -> None:
    """Insert a Delta export's ``meta.exports`` row and its ``meta.export_partitions`` rows;
    the caller holds the transaction.

    Args:
        meta: the Lake commit's ``lake.*`` metadata, decoded (``lakehouse/export_delta.py``).
        version: the Delta version the export committed.
        status: ``published``, or ``recovered`` for a commit meta missed.
        sizes: (files, bytes) per tuple of Delta partition values, read from the log.
    """
    partitions = [_delta_partition(p) for p in meta.get("lake.partitions", [])]
    removed = [_delta_partition(p) for p in meta.get("lake.removed", [])]
    written = {json.dumps(v) for v in meta.get("lake.written", [])}
    key = meta.get("lake.partition_key")
    now = utcnow()
    seconds = time.monotonic() - started if started is not None else None
    began = now - timedelta(seconds=seconds) if seconds is not None else None
    fresh = [p for p in partitions if json.dumps(p[0]) in written]
    size = {k: sizes.get(tuple(p[1]), (0, 0)) for k, p in enumerate(partitions)}
    columns = (*EXPORT_COLUMNS, "format", "delta_version", "source_snapshot", "load_run_ids")
    wh.execute(
        f"INSERT INTO meta.exports ({', '.join(columns)}) VALUES "
        f"({', '.join(['?'] * len(columns))})",
        [meta["lake.export_id"], meta["lake.table"], target_url, ".", key,
         bool(meta.get("lake.full")), status, sum(p[2] for p in partitions),
         sum(s[1] for s in size.values()), sum(s[0] for s in size.values()), len(fresh),
         len(partitions) - len(fresh), len(removed), sum(p[2] for p in fresh),
         sum(size[k][1] for k, p in enumerate(partitions) if p in fresh), began,
         now if began else None, int(seconds * 1000) if seconds is not None else None, now,
         "delta", version, meta.get("lake.source_snapshot"),
         json.dumps(meta.get("lake.load_run_ids", []))],
        action="recording the export")
    rows = []
    for k, p in enumerate(partitions):
        action = "written" if p in fresh else "carried"
        rows.append(_delta_row(meta, target_url, p, action, size[k]))
    rows += [_delta_row(meta, target_url, p, "removed", (0, 0)) for p in removed]
    _insert_partition_rows(wh, rows)


def _delta_partition(item: list[Any]) -> tuple[Any, list[Any], int, str, str]:
    value, keys, rows, fp, by = item
    return (value, list(keys), int(rows), str(fp), str(by))


def _delta_row(meta: dict[str, Any], target_url: str, p: tuple[Any, list[Any], int, str, str],
               action: str, size: tuple[int, int]) -> dict[str, Any]:
    # The folder names the partition the way Delta's own file paths do (``ts_month=2026-03``),
    # unescaped: readers find files through the log, never by folder name.
    names = meta.get("lake.partition_columns", [])
    folder = "/".join(f"{n}={v}" for n, v in zip(names, p[1], strict=False))
    return {"export_id": meta["lake.export_id"], "table_name": meta["lake.table"],
            "target": target_url, "partition_value": p[0], "folder": folder, "action": action,
            "rows": p[2], "bytes": size[1], "files": size[0], "fingerprint": p[3],
            "written_by": p[4]}
