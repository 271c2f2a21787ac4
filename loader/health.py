"""`lake health`: the run log's health queries on the published snapshot (read-only, no lock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lakehouse.db import Warehouse
from lakehouse.layout import LakePaths
from lakehouse.publish import open_snapshot, require_snapshot

# The run log's standard questions: `lake health` prints all four; `lake audit` reports the
# first two (loader/audit.py).
HEALTH_QUERIES = {
    "latest_runs": """
        SELECT job_name, status, started_at, ended_at, duration_ms
        FROM meta.ingestion_runs
        QUALIFY row_number() OVER (PARTITION BY job_name ORDER BY started_at DESC) = 1
        ORDER BY job_name""",
    "failures_7d": """
        SELECT started_at, job_name, error_type, error_message
        FROM meta.ingestion_runs
        WHERE status = 'failed' AND started_at >= (now()::TIMESTAMP - INTERVAL '7 days')
        ORDER BY started_at DESC""",
    "freshness": """
        SELECT asset_key, scope_key, watermark_ts, updated_at,
               date_diff('day', watermark_ts, now()::TIMESTAMP) AS staleness_days
        FROM meta.asset_watermarks ORDER BY asset_key, scope_key""",
    "failing_checks": """
        SELECT checked_at, asset_key, partition_key, check_name, severity, message
        FROM meta.asset_checks WHERE status = 'fail'
        ORDER BY checked_at DESC LIMIT 200""",
}

# Issue 14: the table-level checks' current state (the latest result of each declared check
# of each table, pass or fail), and the failed checks' details (column, count, examples).
CHECK_QUERIES = {
    "table_checks": """
        SELECT asset_key, check_name, severity, status, checked_at, failure_count, message,
               metrics_json
        FROM meta.asset_checks
        WHERE check_name IN ('freshness', 'no_duplicate_keys', 'max_row_drop', 'no_gaps')
        QUALIFY row_number() OVER (PARTITION BY asset_key, check_name
                                   ORDER BY checked_at DESC) = 1
        ORDER BY status = 'pass', asset_key, check_name""",
    "check_failures_7d": """
        SELECT checked_at, asset_key, partition_key, check_name, column_name, severity,
               failure_count, examples_json, run_id
        FROM meta.asset_checks
        WHERE status = 'fail' AND checked_at >= (now()::TIMESTAMP - INTERVAL '7 days')
        ORDER BY checked_at DESC LIMIT 200""",
}


# The run log by job and the producers' versions (issue 14). Each needs the columns of
# migration 4: a snapshot published before it reports none (see run_log_report).
RUN_LOG_QUERIES = {
    "last_run_per_job": """
        SELECT job_name, status, error_type, triggered_by, app_version, started_at,
               duration_ms, runs_7d, failed_7d, killed_7d
        FROM (SELECT *,
                count(*) FILTER (WHERE recent) OVER w AS runs_7d,
                count(*) FILTER (WHERE recent AND status = 'failed') OVER w AS failed_7d,
                count(*) FILTER (WHERE recent AND error_type = 'killed') OVER w AS killed_7d,
                row_number() OVER (PARTITION BY job_name
                                   ORDER BY started_at DESC, run_id DESC) AS newest
              FROM (SELECT *, started_at >= now()::TIMESTAMP - INTERVAL '7 days' AS recent
                    FROM meta.ingestion_runs)
              WINDOW w AS (PARTITION BY job_name))
        WHERE newest = 1
        ORDER BY job_name""",
    "producer_versions": """
        SELECT table_name, producer, producer_version, count(*) AS runs,
               max(coalesce(committed_at, recorded_at)) AS last_seen
        FROM meta.staged_runs
        WHERE recorded_at >= now()::TIMESTAMP - INTERVAL '30 days'
        GROUP BY ALL
        ORDER BY table_name, producer, last_seen DESC, producer_version""",
}
RUN_LOG_COLUMNS = (("ingestion_runs", "pid"), ("staged_runs", "producer_version"))


def check_health(root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Run the health queries on the root's published snapshot; rows as dicts by query name.

    Raises:
        UsageError: no snapshot is published yet (run `lake init` and `lake load` first).
    """
    paths = LakePaths.at(root)
    require_snapshot(paths)
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
    report.update(check_report(wh))
    report.update(run_log_report(wh))
    return report


def check_report(wh: Warehouse) -> dict[str, list[dict[str, Any]]]:
    """The checks' part of `lake health` (CHECK_QUERIES); rows as dicts."""
    report: dict[str, list[dict[str, Any]]] = {}
    for name, sql in CHECK_QUERIES.items():
        cols, rows = wh.query(sql, action=f"running health query {name}")
        report[name] = [dict(zip(cols, row, strict=True)) for row in rows]
    return report



def run_log_report(wh: Warehouse) -> dict[str, list[dict[str, Any]]]:
    """The last run of each job (a killed one shows ``error_type = killed``) with its 7-day
    counts, and the producer versions seen in 30 days; empty on a pre-v4 snapshot."""
    migrated = all(any(c == column for c, _ in wh.columns("meta", table))
                   for table, column in RUN_LOG_COLUMNS)
    report: dict[str, list[dict[str, Any]]] = {}
    for name, sql in RUN_LOG_QUERIES.items():
        if not migrated:
            report[name] = []
            continue
        cols, rows = wh.query(sql, action=f"running health query {name}")
        report[name] = [dict(zip(cols, row, strict=True)) for row in rows]
    return report
