"""Fixture lakes for the dashboard's tests: healthy, failing checks, quarantined runs, empty.

Each is a real root: runs staged with the producer API and loaded by the real loader, then
published. What today's loader cannot write yet is written by hand into ``lake.duckdb`` with
a plain DuckDB connection and published again (marked STAND-IN below):

- STAND-IN for migration 4 (issue 14, the run log): ``meta.staged_runs.producer_version``;
  ``ingestion_runs`` rows of the jobs other than load (compact, cleanup, export,
  quarantine_replay); a killed run (status ``failed``, error_type ``killed``).
- STAND-IN for migration 5 (issue 14): ``meta.asset_checks.column_name``, ``failure_count``,
  ``examples_json``; the table-level checks (freshness, no_duplicate_keys, max_row_drop,
  no_gaps), the freshness row's metrics ``{"max_age_seconds", "age_seconds", "watermark"}``;
  per-value watermark scopes beside ``ALL``.

The columns are added with ``ADD COLUMN IF NOT EXISTS``, so the same fixtures hold once the
migrations have landed.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from conftest import Lake, make_root

DASHBOARD_TOML = """
[lake]
retention_days = 7

[tables.events]
schema = "contracts.events:EventSchema"
primary_key = ["event_id"]
partition_by = { column = "ts", granularity = "month" }
merge = "upsert"

[tables.logs]
primary_key = ["id"]
partition_by = { column = "ts", granularity = "day" }
merge = "append"
"""

TABLES = ("events", "logs")


def now_naive() -> datetime:
    """Now as naive UTC, like ``meta``."""
    return datetime.now(UTC).replace(tzinfo=None)


def events(start: int, n: int, when: datetime, kind: str = "view") -> pa.Table:
    """``n`` events from id ``start``, an hour apart back from ``when`` (naive UTC)."""
    return pa.table({
        "event_id": pa.array(range(start, start + n), pa.int64()),
        "ts": pa.array([when - timedelta(hours=i) for i in range(n)], pa.timestamp("us")),
        "kind": [kind] * n, "amount": [1.5] * n})


def logs(start: int, n: int, when: datetime) -> pa.Table:
    """``n`` log lines from id ``start``, one a day back from ``when``."""
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()),
                     "ts": pa.array([when - timedelta(days=i) for i in range(n)],
                                    pa.timestamp("us")),
                     "line": [f"line {i}" for i in range(start, start + n)]})


def new_lake(root: Path, toml: str = DASHBOARD_TOML) -> Lake:
    """An initialised root with the events and logs tables (the lake before its first load),
    with the final schema's columns."""
    lake = Lake(make_root(root, toml))
    lake.init()
    return finish(lake, lambda con: None)


def loaded_lake(root: Path) -> Lake:
    """Two real loads into both tables."""
    lake = new_lake(root)
    now = now_naive()
    lake.stage("events", events(0, 50, now - timedelta(minutes=5)), producer="web-1")
    lake.stage("logs", logs(0, 3, now - timedelta(minutes=5)), producer="cron")
    lake.load()
    lake.stage("events", events(50, 30, now - timedelta(minutes=2)), producer="web-2")
    lake.load()
    return lake


# -- STAND-IN rows for migrations 4 and 5 -------------------------------------------------
def add_final_columns(con: duckdb.DuckDBPyConnection) -> None:
    """The columns migrations 4 and 5 add (STAND-IN until they land)."""
    for sql in ["ALTER TABLE meta.staged_runs ADD COLUMN IF NOT EXISTS producer_version VARCHAR",
                "ALTER TABLE meta.asset_checks ADD COLUMN IF NOT EXISTS column_name VARCHAR",
                "ALTER TABLE meta.asset_checks ADD COLUMN IF NOT EXISTS failure_count BIGINT",
                "ALTER TABLE meta.asset_checks ADD COLUMN IF NOT EXISTS examples_json VARCHAR"]:
        con.execute(sql)


def add_run(con: duckdb.DuckDBPyConnection, job: str, status: str, started: datetime, *,
            seconds: float = 1.0, error_type: str | None = None,
            error_message: str | None = None) -> str:
    """One ``meta.ingestion_runs`` row (STAND-IN: today only loads write them)."""
    run_id = str(uuid.uuid4())
    con.execute(
        "INSERT INTO meta.ingestion_runs (run_id, job_name, triggered_by, status, started_at, "
        "ended_at, duration_ms, error_type, error_message) VALUES (?, ?, 'cli', ?, ?, ?, ?, ?, ?)",
        [run_id, job, status, started, started + timedelta(seconds=seconds),
         int(seconds * 1000), error_type, error_message])
    return run_id


def add_check(con: duckdb.DuckDBPyConnection, run_id: str, table: str, check: str,
              status: str, *, severity: str = "error", partition: str | None = None,
              column: str | None = None, failures: int | None = None,
              metrics: dict[str, Any] | None = None, message: str | None = None,
              examples: list[Any] | None = None, at: datetime | None = None) -> None:
    """One ``meta.asset_checks`` row of the final schema (STAND-IN for migration 5)."""
    con.execute(
        "INSERT INTO meta.asset_checks (check_id, asset_key, partition_key, check_name, "
        "severity, status, checked_at, metrics_json, message, run_id, column_name, "
        "failure_count, examples_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [str(uuid.uuid4()), table, partition, check, severity, status, at or now_naive(),
         json.dumps(metrics) if metrics else None, message, run_id, column, failures,
         json.dumps(examples) if examples else None])


def latest_load(con: duckdb.DuckDBPyConnection) -> str:
    """The run id of the newest load."""
    row = con.execute("SELECT run_id FROM meta.ingestion_runs WHERE job_name = 'load' "
                      "ORDER BY started_at DESC LIMIT 1").fetchone()
    assert row is not None
    return str(row[0])


def table_checks(con: duckdb.DuckDBPyConnection, run_id: str, *, sla_seconds: float,
                 failing: bool) -> None:
    """The table-level checks of one load for both tables; ``failing``: events has duplicate
    keys (error) and is stale (freshness error), logs has a gap (warn)."""
    now = now_naive()
    for table in TABLES:
        mark = con.execute("SELECT watermark_ts FROM meta.asset_watermarks WHERE asset_key = ? "
                           "AND scope_key = 'ALL'", [table]).fetchone()
        watermark = mark[0] if mark else now
        stale = failing and table == "events"
        add_check(con, run_id, table, "freshness", "fail" if stale else "pass",
                  metrics={"max_age_seconds": sla_seconds if not stale else 60,
                           "age_seconds": (now - watermark).total_seconds(),
                           "watermark": watermark.isoformat()},
                  message="older than its SLA" if stale else None)
        dup = failing and table == "events"
        add_check(con, run_id, table, "no_duplicate_keys", "fail" if dup else "pass",
                  column="event_id" if table == "events" else "id", failures=3 if dup else 0,
                  examples=[7, 8, 9] if dup else None,
                  message="3 keys have more than one row" if dup else None)
        add_check(con, run_id, table, "max_row_drop", "pass")
        gap = failing and table == "logs"
        add_check(con, run_id, table, "no_gaps", "fail" if gap else "pass", severity="warn",
                  partition="2026-12-01" if gap else None, failures=1 if gap else 0,
                  message="no rows for 2026-12-01" if gap else None)


def scoped_watermarks(con: duckdb.DuckDBPyConnection) -> None:
    """Per-value watermark scopes beside ``ALL`` (STAND-IN for the final run log)."""
    for table, _scope, ts in con.execute(
            "SELECT asset_key, scope_key, watermark_ts FROM meta.asset_watermarks").fetchall():
        for kind in ("kind=view", "kind=click"):
            con.execute("INSERT INTO meta.asset_watermarks VALUES (?, ?, ?, ?, NULL) "
                        "ON CONFLICT DO NOTHING", [table, kind, ts, now_naive()])


def finish(lake: Lake, edit: Any) -> Lake:
    """Apply ``edit(con)`` to lake.duckdb by hand, then publish a new snapshot."""
    from lakehouse.layout import LakePaths
    from lakehouse.publish import publish_snapshot

    con = duckdb.connect(str(lake.root / "warehouse" / "lake.duckdb"))
    try:
        add_final_columns(con)
        edit(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    publish_snapshot(LakePaths.at(lake.root))
    return lake


def healthy_lake(root: Path) -> Lake:
    """Two loads, every check passing, fresh within a day; other jobs ran fine."""
    def edit(con: duckdb.DuckDBPyConnection) -> None:
        now = now_naive()
        add_run(con, "compact", "success", now - timedelta(hours=3), seconds=4)
        add_run(con, "cleanup", "success", now - timedelta(hours=2))
        add_run(con, "export", "success", now - timedelta(hours=1), seconds=2)
        table_checks(con, latest_load(con), sla_seconds=86_400, failing=False)
        scoped_watermarks(con)
        con.execute("UPDATE meta.staged_runs SET producer_version = '0.1.0'")

    return finish(loaded_lake(root), edit)


def failing_lake(root: Path) -> Lake:
    """Like the healthy lake, but events' last checks fail (duplicate keys, stale), logs has
    a gap (warn), a load failed and another was killed."""
    def edit(con: duckdb.DuckDBPyConnection) -> None:
        now = now_naive()
        load = latest_load(con)
        # An older, passing round first: the history has a pass before the fail.
        earlier = add_run(con, "load", "success", now - timedelta(days=2), seconds=3)
        table_checks(con, earlier, sla_seconds=86_400, failing=False)
        con.execute("UPDATE meta.asset_checks SET checked_at = ? WHERE run_id = ?",
                    [now - timedelta(days=2), earlier])
        table_checks(con, load, sla_seconds=86_400, failing=True)
        add_run(con, "load", "failed", now - timedelta(days=1), error_type="WarehouseError",
                error_message="warehouse error while merging: disk full")
        add_run(con, "compact", "failed", now - timedelta(hours=5), error_type="killed",
                error_message="the process died before it closed its run")
        scoped_watermarks(con)

    return finish(loaded_lake(root), edit)


def quarantined_lake(root: Path) -> Lake:
    """A healthy load, then a run that breaks the events contract (quarantined)."""
    lake = loaded_lake(root)
    lake.stage("events", events(100, 5, now_naive(), kind="bogus"), producer="web-3")
    lake.load()
    return finish(lake, lambda con: None)
