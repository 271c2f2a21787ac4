"""Facts read from a warehouse: blocks, tables, partitions, watermarks, ledger counts, runs.

Each function runs a few queries on an open :class:`~lakehouse.db.Warehouse` (the audit opens
the published snapshot) and returns what it found as DuckDB gave it (``json_value`` makes a
value JSON-ready); what counts as a problem is the caller's to decide (``loader/audit.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from lakehouse import layout
from lakehouse.db import Warehouse, quote


@dataclass
class TableFacts:
    """What a table holds: rows, partitions, the partition column's range, duplicate keys."""

    rows: int
    partitions: list[dict[str, Any]] = field(default_factory=list)  # partition, rows
    partition_count: int | None = None  # None: the table has no partition column
    partition_min: Any = None
    partition_max: Any = None
    duplicate_keys: int | None = None  # None: not counted


def as_utc(value: datetime) -> datetime:
    """A time read from DuckDB, which holds naive UTC, marked as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso_utc(value: datetime | None) -> str | None:
    """A time read from DuckDB in ISO 8601 with its UTC offset (None stays None)."""
    return None if value is None else as_utc(value).isoformat()


def json_value(value: Any) -> Any:
    """A JSON-ready form of a value read from DuckDB: times in UTC ISO 8601, other objects
    as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return iso_utc(value)
    return value.isoformat() if isinstance(value, date) else str(value)


def database_blocks(wh: Warehouse) -> dict[str, Any]:
    """The file's blocks (``pragma_database_size``): size, total, used, free, free ratio."""
    cols, rows = wh.query("SELECT * FROM pragma_database_size()", action="reading sizes")
    size = dict(zip(cols, rows[0], strict=True)) if rows else {}
    total, free = int(size.get("total_blocks") or 0), int(size.get("free_blocks") or 0)
    used = int(size.get("used_blocks") or (total - free))
    # 1 - used/total: free_blocks can also count blocks past the end of the file.
    ratio = round(max(total - used, 0) / total, 4) if total else 0.0
    return {"block_size": size.get("block_size"), "total_blocks": total,
            "used_blocks": size.get("used_blocks"), "free_blocks": free, "free_ratio": ratio}


def has_ledger(wh: Warehouse) -> bool:
    """True when the warehouse has ``meta.staged_runs`` (a schema older than the ledger has not)."""
    return bool(wh.columns("meta", "staged_runs"))


def base_tables(wh: Warehouse) -> set[str]:
    """The data tables (schema ``main``) the warehouse holds."""
    return {r[0] for r in wh.fetchall(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_type = 'BASE TABLE'")}


def watermarks(wh: Warehouse) -> dict[str, tuple[Any, Any]]:
    """Each table's whole-table watermark and when it was set: name -> (watermark, updated)."""
    return {r[0]: (r[1], r[2]) for r in wh.fetchall(
        "SELECT asset_key, watermark_ts, updated_at FROM meta.asset_watermarks "
        "WHERE scope_key = 'ALL'")}


def last_loads(wh: Warehouse) -> dict[str, datetime]:
    """When each table last loaded a run (by the ledger)."""
    return dict(wh.fetchall("SELECT table_name, max(recorded_at) FROM meta.staged_runs "
                            "WHERE status = 'loaded' GROUP BY 1"))


def table_facts(wh: Warehouse, name: str, partition_column: str | None,
                keys: list[str]) -> TableFacts:
    """Rows and partitions of one table, the range of ``partition_column``, and how many
    values of ``keys`` have more than one row (not counted without keys, or when a key
    column is missing)."""
    q, columns = quote(name), {c.lower() for c, _ in wh.columns("main", name)}
    facts = TableFacts(rows=int((wh.fetchone(f"SELECT count(*) FROM {q}") or (0,))[0]))
    if layout.PARTITION_COLUMN in columns:
        parts = wh.fetchall(f"SELECT {layout.PARTITION_COLUMN}, count(*) FROM {q} "
                            f"WHERE {layout.PARTITION_COLUMN} IS NOT NULL "
                            "GROUP BY 1 ORDER BY 1")
        facts.partitions = [{"partition": k, "rows": int(n)} for k, n in parts]
        facts.partition_count = len(parts)
    if partition_column and partition_column.lower() in columns:
        col = quote(partition_column)
        low, high = wh.fetchone(f"SELECT min({col}), max({col}) FROM {q}") or (None, None)
        facts.partition_min, facts.partition_max = low, high
    if keys and all(k.lower() in columns for k in keys):
        facts.duplicate_keys = int((wh.fetchone(
            f"SELECT count(*) FROM (SELECT 1 FROM {q} GROUP BY "
            f"{', '.join(quote(k) for k in keys)} HAVING count(*) > 1)") or (0,))[0])
    return facts


def ledger_counts(wh: Warehouse) -> tuple[dict[str, int], datetime | None]:
    """The ledger's runs by status, and when its newest row was recorded."""
    by_status = dict(wh.fetchall("SELECT status, count(*) FROM meta.staged_runs "
                                 "GROUP BY 1 ORDER BY 1"))
    newest = (wh.fetchone("SELECT max(recorded_at) FROM meta.staged_runs") or (None,))[0]
    return by_status, newest


def load_times(wh: Warehouse) -> tuple[datetime | None, datetime | None]:
    """When the last successful load ended, and when the first load started."""
    last, first = wh.fetchone(
        "SELECT max(ended_at) FILTER (WHERE status = 'success'), min(started_at) "
        "FROM meta.ingestion_runs WHERE job_name = 'load'") or (None, None)
    return last, first


def query_records(wh: Warehouse, sql: str, action: str) -> list[dict[str, Any]]:
    """A query's rows as column -> value maps (``action`` names it in errors)."""
    cols, rows = wh.query(sql, action=action)
    return [dict(zip(cols, r, strict=True)) for r in rows]


__all__ = ["TableFacts", "as_utc", "base_tables", "database_blocks", "has_ledger", "iso_utc",
           "json_value", "last_loads", "ledger_counts", "load_times", "query_records",
           "table_facts", "watermarks"]
