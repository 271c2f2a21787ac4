"""The dashboard's questions, asked of an open read snapshot: meta rows and small aggregates.

Each function runs one or two queries on a :class:`~lakehouse.db.Warehouse` (the dashboard
opens the published snapshot read-only, never ``lake.duckdb``) and returns plain records;
colours, layout and wording are the app's (``loader/dashboard_app.py``). Only
:func:`partition_rows` reads a data table, and only one column of it (``_lake_partition``),
grouped: on a 20M-row table it is the dearest query of a page (``make bench`` measures them
all, docs/BENCHMARKS.md).

Times in ``meta`` are naive UTC; ``now`` is passed in (naive UTC) so ages are computed the
same way in a test and on a page.

Which checks are failing (docs/DASHBOARD.md) depends on what a check judges:

- a table-level check (``freshness``, ``no_duplicate_keys``, ``max_row_drop``, ``no_gaps``)
  judges the whole table, and only a load that wrote rows to the table runs it: its latest
  result stands until the next one (a load that only rejected runs does not clear it);
- every other check (``contract``, ``manifest_verified``, pandera's own checks such as
  ``isin([...])``, Lake's ``key_not_null``, a rejection's reason code) judges runs: for each
  table, those of the last run that validated runs of it. A run rejected in an earlier load
  stays on the Quarantine page, not as a failing check forever.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lakehouse import layout
from lakehouse.config import CHECK_NAMES, TableCheck
from lakehouse.db import Warehouse, quote

# The table-level checks of the run log (migration 5); "freshness" carries the SLA in its
# metrics: {"max_age_seconds", "age_seconds", "watermark"}.
FRESHNESS_CHECK = "freshness"
STATUS_OK, STATUS_WARN, STATUS_ERROR, STATUS_EMPTY = "ok", "warn", "error", "empty"


@dataclass
class TableTile:
    """One table on the Overview: what it holds and how healthy it is."""

    table: str
    exists: bool  # False: declared in lake.toml but nothing loaded yet
    rows: int = 0
    partitions: int = 0
    last_load: datetime | None = None
    watermark: datetime | None = None
    age_seconds: float | None = None  # now - watermark
    max_age_seconds: float | None = None  # the freshness SLA (None: no freshness check)
    stale: bool = False
    failing_errors: int = 0
    failing_warnings: int = 0
    freshness_severity: str = "error"
    status: str = STATUS_EMPTY

    def __post_init__(self) -> None:
        self.status = self.judge()

    def judge(self) -> str:
        """ok / warn / error, or empty before the table's first load."""
        if not self.exists:
            return STATUS_EMPTY
        if self.failing_errors or (self.stale and self.freshness_severity == "error"):
            return STATUS_ERROR
        if self.failing_warnings or self.stale:
            return STATUS_WARN
        return STATUS_OK


@dataclass
class Overview:
    """The Overview page: a tile per table."""

    tiles: list[TableTile] = field(default_factory=list)
    loads: int = 0  # load runs in the run log (0: the lake before its first load)


def records(wh: Warehouse, sql: str, params: list[Any] | None = None, *,
            action: str) -> list[dict[str, Any]]:
    """A query's rows as column -> value maps."""
    cols, rows = wh.query(sql, params, action=action)
    return [dict(zip(cols, r, strict=True)) for r in rows]


def data_tables(wh: Warehouse) -> list[str]:
    """The data tables (schema ``main``) the snapshot holds, by name."""
    return sorted(r[0] for r in wh.fetchall(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_type = 'BASE TABLE'", action="listing tables"))


def partition_rows(wh: Warehouse, table: str) -> list[dict[str, Any]]:
    """Rows per partition of one table (one group-by of ``_lake_partition``; a table
    without partitions is one partition, ``None``)."""
    q = quote(table)
    columns = {c.lower() for c, _ in wh.columns("main", table)}
    if layout.PARTITION_COLUMN not in columns:
        n = (wh.fetchone(f"SELECT count(*) FROM {q}", action=f"counting {table}") or (0,))[0]
        return [{"partition": None, "rows": int(n)}] if n else []
    return records(wh, f"SELECT {layout.PARTITION_COLUMN} AS partition, count(*) AS rows "
                       f"FROM {q} GROUP BY 1 ORDER BY 1", action=f"counting {table}")


def failing_checks(wh: Warehouse, declared: Mapping[str, Sequence[TableCheck]] | None = None
                   ) -> list[dict[str, Any]]:
    """The checks failing now, errors first: the latest result of each table-level check of
    each table, and the results of each table's last run-validating run (module docstring).
    ``examples`` is the failing values as one line of text.

    ``declared``: lake.toml's checks per table; a table-level check no longer declared for a
    table declared there is not failing (its last result would otherwise stay for good)."""
    rows = records(wh, """
        WITH run_checks AS (
            SELECT * FROM meta.asset_checks WHERE NOT list_contains(?, check_name)),
        last_run AS (
            SELECT asset_key, arg_max(run_id, checked_at) AS run_id
            FROM run_checks GROUP BY asset_key),
        current AS (
            SELECT c.* FROM run_checks c JOIN last_run USING (asset_key, run_id)
            UNION ALL BY NAME
            SELECT * FROM (
                SELECT * FROM meta.asset_checks WHERE list_contains(?, check_name)
                QUALIFY row_number() OVER (PARTITION BY asset_key, check_name
                                           ORDER BY checked_at DESC) = 1))
        SELECT asset_key AS "table", partition_key AS "partition", check_name AS "check",
               column_name AS "column", severity, failure_count, message, examples_json,
               checked_at, run_id
        FROM current WHERE status = 'fail'
        ORDER BY severity = 'error' DESC, asset_key, partition_key NULLS FIRST, check_name,
                 column_name NULLS FIRST""", [list(CHECK_NAMES), list(CHECK_NAMES)],
        action="reading failing checks")
    if declared is not None:
        rows = [r for r in rows if r["check"] not in CHECK_NAMES or r["table"] not in declared
                or r["check"] in {c.name for c in declared[r["table"]]}]
    return [{**{k: v for k, v in row.items() if k not in ("examples_json", "checked_at",
                                                          "run_id")},
             "examples": _examples(row["examples_json"]), "checked_at": row["checked_at"],
             "run_id": row["run_id"]} for row in rows]


def _examples(raw: str | None) -> str:
    """``examples_json`` (a JSON list of values) as one line: ``7, 8, 9``."""
    try:
        values = json.loads(raw) if raw else []
    except ValueError:
        return str(raw)
    return ", ".join(str(v) for v in values) if isinstance(values, list) else str(values)


def check_history(wh: Warehouse, table: str, check: str, limit: int = 500
                  ) -> list[dict[str, Any]]:
    """Every result of one check of one table, newest first (at most ``limit``)."""
    return records(wh, """
        SELECT checked_at, partition_key AS "partition", column_name AS "column", status,
               severity, failure_count, message, run_id
        FROM meta.asset_checks WHERE asset_key = ? AND check_name = ?
        ORDER BY checked_at DESC LIMIT ?""", [table, check, limit],
        action="reading a check's history")


def freshness_slas(wh: Warehouse) -> dict[str, tuple[float | None, str]]:
    """Each table's freshness SLA as recorded (``max_age_seconds`` of its latest freshness
    result) and that check's severity: for a table lake.toml no longer declares."""
    rows = wh.fetchall("""
        SELECT asset_key, arg_max(metrics_json, checked_at), arg_max(severity, checked_at)
        FROM meta.asset_checks WHERE check_name = ? AND partition_key IS NULL
        GROUP BY asset_key""", [FRESHNESS_CHECK], action="reading freshness SLAs")
    out: dict[str, tuple[float | None, str]] = {}
    for table, metrics, severity in rows:
        try:
            sla = json.loads(metrics or "{}").get("max_age_seconds")
        except (ValueError, AttributeError):
            sla = None
        out[table] = (float(sla) if isinstance(sla, int | float) else None, severity or "error")
    return out


def overview(wh: Warehouse, declared: Mapping[str, Sequence[TableCheck]],
             now: datetime) -> Overview:
    """A tile per table (declared in lake.toml, or present in the snapshot). ``declared``:
    the tables of lake.toml and their checks; a declared table's freshness SLA is the one
    lake.toml declares now (none: no SLA), another's the one last recorded."""
    present = set(data_tables(wh))
    marks = {r[0]: r[1] for r in wh.fetchall(
        "SELECT asset_key, watermark_ts FROM meta.asset_watermarks WHERE scope_key = 'ALL'",
        action="reading watermarks")}
    last_loads = dict(wh.fetchall(
        "SELECT table_name, max(recorded_at) FROM meta.staged_runs WHERE status = 'loaded' "
        "GROUP BY 1", action="reading the ledger"))
    failing: dict[str, list[int]] = {}
    for check in failing_checks(wh, declared):
        counts = failing.setdefault(check["table"], [0, 0])
        counts[0 if check["severity"] == "error" else 1] += 1
    slas = freshness_slas(wh)
    loads = (wh.fetchone("SELECT count(*) FROM meta.ingestion_runs WHERE job_name = 'load'",
                         action="counting loads") or (0,))[0]
    tiles = []
    for table in sorted(set(declared) | present):
        parts = partition_rows(wh, table) if table in present else []
        mark = marks.get(table)
        age = (now - mark).total_seconds() if mark is not None else None
        if table in declared:
            fresh = [c for c in declared[table] if c.name == FRESHNESS_CHECK]
            sla, severity = ((float(fresh[0].value), fresh[0].severity) if fresh
                             else (None, "error"))
        else:
            sla, severity = slas.get(table, (None, "error"))
        errors, warnings = failing.get(table, [0, 0])
        tiles.append(TableTile(
            table=table, exists=table in present, rows=sum(p["rows"] for p in parts),
            partitions=len(parts), last_load=last_loads.get(table), watermark=mark,
            age_seconds=age, max_age_seconds=sla,
            stale=sla is not None and age is not None and age > sla,
            failing_errors=errors, failing_warnings=warnings, freshness_severity=severity))
    return Overview(tiles, int(loads))


def latest_runs(wh: Warehouse) -> list[dict[str, Any]]:
    """The latest run of each job (load, compact, cleanup, export, quarantine_replay, ...)."""
    return records(wh, """
        SELECT job_name AS job, status, started_at, ended_at, duration_ms, error_type,
               error_message
        FROM meta.ingestion_runs
        QUALIFY row_number() OVER (PARTITION BY job_name ORDER BY started_at DESC) = 1
        ORDER BY job_name""", action="reading the latest runs")


def load_timeline(wh: Warehouse, since: datetime) -> list[dict[str, Any]]:
    """Each load since ``since``: when, how long, its status and the rows it wrote."""
    return records(wh, """
        WITH written AS (
            SELECT run_id, sum(coalesce(rows_inserted, 0) + coalesce(rows_updated, 0))
                       AS rows_loaded
            FROM meta.ingestion_run_assets GROUP BY run_id)
        SELECT r.started_at, r.duration_ms, r.status, coalesce(w.rows_loaded, 0) AS rows_loaded,
               r.run_id
        FROM meta.ingestion_runs r LEFT JOIN written w USING (run_id)
        WHERE r.job_name = 'load' AND r.started_at >= ?
        ORDER BY r.started_at""", [since], action="reading the load timeline")


def failed_runs(wh: Warehouse, since: datetime) -> list[dict[str, Any]]:
    """Failed runs of every job since ``since``, newest first; a killed run is one whose
    ``error_type`` is ``killed`` (the run log closes it so when the next job finds it)."""
    return records(wh, """
        SELECT started_at, job_name AS job, error_type, error_message,
               error_type = 'killed' AS killed, run_id
        FROM meta.ingestion_runs
        WHERE status = 'failed' AND started_at >= ?
        ORDER BY started_at DESC LIMIT 500""", [since], action="reading failed runs")


def producer_versions(wh: Warehouse, since: datetime) -> list[dict[str, Any]]:
    """Which producer versions staged the runs that left staging since ``since``: per table,
    producer and version, the runs and when the newest was committed. Empty for a snapshot
    older than the column (migration 4)."""
    if "producer_version" not in {c.lower() for c, _ in wh.columns("meta", "staged_runs")}:
        return []
    return records(wh, """
        SELECT table_name AS "table", producer, producer_version AS version,
               count(*) AS runs, max(coalesce(committed_at, recorded_at)) AS last_seen
        FROM meta.staged_runs WHERE recorded_at >= ?
        GROUP BY ALL ORDER BY "table", producer, last_seen DESC, version NULLS LAST""",
        [since], action="reading producer versions")


def watermarks(wh: Warehouse, table: str) -> list[dict[str, Any]]:
    """A table's watermarks: ``ALL`` first, then one per scope value."""
    return records(wh, """
        SELECT scope_key AS scope, watermark_ts AS watermark, updated_at, last_run_id
        FROM meta.asset_watermarks WHERE asset_key = ?
        ORDER BY scope_key <> 'ALL', scope_key""", [table], action="reading watermarks")


def table_schema(wh: Warehouse, table: str) -> list[dict[str, Any]]:
    """A table's columns in order, with their types and nullability."""
    return records(wh, """
        SELECT column_name AS "column", data_type AS type, is_nullable = 'YES' AS nullable
        FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?
        ORDER BY ordinal_position""", [table], action="reading a table's schema")


def table_meta(wh: Warehouse, table: str) -> dict[str, Any] | None:
    """What Lake recorded when it created the table (``meta.tables``)."""
    rows = records(wh, "SELECT * FROM meta.tables WHERE table_name = ?", [table],
                   action="reading meta.tables")
    return rows[0] if rows else None


def days_ago(now: datetime, days: int) -> datetime:
    """``now`` less ``days`` days (a window's start)."""
    return now - timedelta(days=days)


__all__ = ["FRESHNESS_CHECK", "STATUS_EMPTY", "STATUS_ERROR", "STATUS_OK", "STATUS_WARN",
           "Overview", "TableTile", "check_history", "data_tables", "days_ago",
           "failed_runs", "failing_checks", "freshness_slas", "latest_runs", "load_timeline",
           "overview", "partition_rows", "producer_versions", "records", "table_meta",
           "table_schema", "watermarks"]
