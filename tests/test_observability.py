"""The `meta` observability tables after real loads: runs, checks, watermarks, assets."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import LAKE_TOML, Lake, make_root

from lakehouse.db import open_warehouse
from lakehouse.errors import LoadAbortedError
from loader.health import health_report

D = dt.datetime


def events(*rows: tuple[int, dt.datetime, str, float | None]) -> pa.Table:
    return pa.table({"event_id": pa.array([r[0] for r in rows], pa.int64()),
                     "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "kind": pa.array([r[2] for r in rows], pa.string()),
                     "amount": pa.array([r[3] for r in rows], pa.float64())})


def logs(*rows: tuple[int, dt.datetime]) -> pa.Table:
    return pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                     "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "msg": pa.array(["m"] * len(rows), pa.string())})


def bad_readings() -> pa.Table:
    return pa.table({"sensor": ["s-1", "bad"],
                     "ts": pa.array([D(2026, 1, 1), D(2026, 1, 2)], pa.timestamp("us")),
                     "celsius": [20.0, 500.0]})


def dicts(lake: Lake, sql: str) -> list[dict[str, Any]]:
    import duckdb

    con = duckdb.connect(str(lake.root / "warehouse" / "lake.duckdb"), read_only=True)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


# -- meta.ingestion_runs ---------------------------------------------------------------
def test_each_load_records_a_successful_run(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    first = lake.load()
    second = lake.load(max_runs=5)  # nothing to do: still a run of the job
    runs = dicts(lake, "SELECT * FROM meta.ingestion_runs ORDER BY started_at")
    assert [r["run_id"] for r in runs] == [first.load_run_id, second.load_run_id]
    for r in runs:
        assert r["job_name"] == "load" and r["status"] == "success"
        assert r["triggered_by"] and r["storage_backend"] == "duckdb" and r["app_version"]
        assert r["ended_at"] is not None and r["ended_at"] >= r["started_at"]
        assert r["duration_ms"] is not None and r["duration_ms"] >= 0
        assert abs((r["ended_at"] - r["started_at"]).total_seconds() * 1000
                   - r["duration_ms"]) <= 1
        assert r["error_type"] is None and r["error_message"] is None
        assert r["error_stack_hash"] is None
    assert json.loads(runs[1]["args_json"]) == {"table": None, "max_runs": 5}
    # the ledger names the load that loaded each run
    assert lake.rows("SELECT load_run_id FROM meta.staged_runs") == [(first.load_run_id,)]


def test_a_dry_run_records_no_run(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    lake.load(dry_run=True)
    assert lake.rows("SELECT count(*) FROM meta.ingestion_runs") == [(0,)]


def test_an_aborted_load_is_recorded_as_failed(lake: Lake) -> None:
    committed = lake.stage("logs", logs((1, D(2026, 1, 1))))
    stuck = lake.stage("strict", bad_readings())
    with pytest.raises(LoadAbortedError):
        lake.load()
    with pytest.raises(LoadAbortedError):
        lake.load()  # the run stays in staging: the next load fails the same way
    runs = dicts(lake, "SELECT * FROM meta.ingestion_runs ORDER BY started_at")
    assert [r["status"] for r in runs] == ["failed", "failed"]
    for r in runs:
        assert r["error_type"] == "LoadAbortedError"
        assert stuck.run_id in r["error_message"] and "strict" in r["error_message"]
        assert len(r["error_stack_hash"]) == 12
        int(r["error_stack_hash"], 16)
        assert r["ended_at"] is not None and r["duration_ms"] >= 0
    assert runs[0]["error_stack_hash"] == runs[1]["error_stack_hash"]  # same place, same hash
    assert lake.ledger() == {committed.run_id: "loaded"}
    assert lake.staged("strict") == [stuck.run_id]
    # the library health report (on the warehouse) lists the failure
    wh = open_warehouse(lake.root / "warehouse" / "lake.duckdb", read_only=True)
    try:
        report = health_report(wh)
    finally:
        wh.close()
    assert [(r["job_name"], r["status"]) for r in report["latest_runs"]] == [("load", "failed")]
    assert [r["error_type"] for r in report["failures_7d"]] == ["LoadAbortedError"] * 2


# -- meta.asset_checks -----------------------------------------------------------------
def test_checks_pass_for_loaded_runs_and_fail_for_quarantined_ones(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    lake.stage("events", events((3, D(2026, 1, 1), "click", 1.0)))
    bad = lake.stage("events", events((2, D(2026, 1, 2), "bogus", -5.0)))
    report = lake.load()
    checks = dicts(lake, "SELECT * FROM meta.asset_checks ORDER BY check_name")
    for c in checks:
        assert c["run_id"] == report.load_run_id and c["asset_key"] == "events"
        assert c["checked_at"] is not None
    # Passing checks: one row per table per load, whatever the number of runs (issue 14).
    passes = {c["check_name"]: json.loads(c["metrics_json"]) for c in checks
              if c["status"] == "pass"}
    assert passes == {"contract": {"runs": 2, "rows": 2}, "manifest_verified": {"runs": 2}}
    # One failing row per failed pandera check, with its column, count and examples.
    failing = sorted((c["column_name"], c["failure_count"], json.loads(c["examples_json"]),
                      c["partition_key"], json.loads(c["metrics_json"])["run_id"])
                     for c in checks if c["status"] == "fail")
    assert failing == [("amount", 1, ["-5.0"], "2026-01", bad.run_id),
                       ("kind", 1, ["bogus"], "2026-01", bad.run_id)]


def test_checks_for_skipped_and_partly_loaded_runs(lake: Lake) -> None:
    lake.stage("logs", logs((1, D(2026, 1, 1))))
    repeat = lake.stage("logs", logs((1, D(2026, 1, 1))))
    partly = lake.stage("readings", bad_readings())
    lake.load()
    rows = lake.rows("SELECT asset_key, check_name, status, severity, "
                     "json_extract_string(metrics_json, '$.run_id') FROM meta.asset_checks "
                     "ORDER BY 1, 2")
    assert ("logs", "duplicate_content", "fail", "warn", repeat.run_id) in rows
    assert ("logs", "contract", "pass", "error", None) in rows
    assert any(r[0] == "readings" and r[2] == "fail" and r[4] == partly.run_id for r in rows)


# -- meta.asset_watermarks -------------------------------------------------------------
def watermarks(lake: Lake) -> dict[str, dt.datetime]:
    return {k: v for k, _, v in lake.rows(
        "SELECT asset_key, scope_key, watermark_ts FROM meta.asset_watermarks "
        "WHERE scope_key = 'ALL'")}


def test_watermark_is_the_max_event_time_and_never_goes_back(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 3, 10, 12), "view", None),
                                (2, D(2026, 1, 5), "click", None)))
    lake.stage("logs", logs((1, D(2026, 2, 1, 6)), (2, D(2026, 1, 31))))
    lake.load()
    assert watermarks(lake) == {"events": D(2026, 3, 10, 12), "logs": D(2026, 2, 1, 6)}
    # an older run loaded later does not move the watermark back
    lake.stage("events", events((3, D(2025, 12, 1), "view", None)))
    lake.load()
    assert watermarks(lake) == {"events": D(2026, 3, 10, 12), "logs": D(2026, 2, 1, 6)}
    # an upsert that rewrites the newest row to an older time does not either
    lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    lake.load()
    assert watermarks(lake)["events"] == D(2026, 3, 10, 12)
    # a newer run moves it forward
    lake.stage("events", events((4, D(2026, 4, 1), "purchase", 1.0)))
    report = lake.load()
    assert watermarks(lake)["events"] == D(2026, 4, 1)
    assert lake.rows("SELECT last_run_id FROM meta.asset_watermarks "
                     "WHERE asset_key = 'events'") == [(report.load_run_id,)]


def test_watermark_with_newer_then_older_run_in_one_load(lake: Lake) -> None:
    lake.stage("logs", logs((1, D(2026, 5, 5))))
    lake.stage("logs", logs((2, D(2026, 5, 1))))
    lake.load()
    assert watermarks(lake) == {"logs": D(2026, 5, 5)}
    assert lake.rows("SELECT count(*) FROM meta.asset_watermarks") == [(1,)]


def test_quarantined_runs_do_not_move_the_watermark(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    lake.stage("events", events((2, D(2030, 1, 1), "bogus", None)))
    lake.load()
    assert watermarks(lake) == {"events": D(2026, 1, 1)}


# -- meta.ingestion_run_assets ---------------------------------------------------------
def test_one_asset_row_per_touched_partition(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 5), "view", None), (2, D(2026, 1, 20), "click", 1.0),
                                (3, D(2026, 3, 1, 7), "view", None)))
    lake.stage("logs", logs((1, D(2026, 1, 1, 1)), (2, D(2026, 1, 1, 2)), (3, D(2026, 1, 2))))
    report = lake.load()
    assets = lake.rows(
        "SELECT asset_key, asset_kind, partition_key, status, rows_inserted, min_event_ts, "
        f"max_event_ts FROM meta.ingestion_run_assets WHERE run_id = '{report.load_run_id}' "
        "ORDER BY 1, 3")
    assert assets == [
        ("events", "table", "2026-01", "success", 2, D(2026, 1, 5), D(2026, 1, 20)),
        ("events", "table", "2026-03", "success", 1, D(2026, 3, 1, 7), D(2026, 3, 1, 7)),
        ("logs", "table", "2026-01-01", "success", 2, D(2026, 1, 1, 1), D(2026, 1, 1, 2)),
        ("logs", "table", "2026-01-02", "success", 1, D(2026, 1, 2), D(2026, 1, 2)),
    ]
    # a load with nothing to do touches nothing
    again = lake.load()
    assert lake.rows("SELECT count(*) FROM meta.ingestion_run_assets "
                     f"WHERE run_id = '{again.load_run_id}'") == [(0,)]


def test_one_asset_row_per_partition_even_when_a_load_commits_in_batches(tmp_path: Path) -> None:
    lake = Lake(make_root(tmp_path / "lake", LAKE_TOML.replace("[lake]",
                                                               "[lake]\nbatch_max_runs = 1")))
    lake.init()
    for hour in (3, 1, 2):
        lake.stage("logs", logs((hour, D(2026, 1, 1, hour))))
    lake.stage("logs", logs((9, D(2026, 1, 2))))
    report = lake.load()
    assert report.count("loaded") == 4
    assert lake.rows(
        "SELECT asset_key, partition_key, rows_inserted, min_event_ts, max_event_ts "
        f"FROM meta.ingestion_run_assets WHERE run_id = '{report.load_run_id}' ORDER BY 2") == [
        ("logs", "2026-01-01", 3, D(2026, 1, 1, 1), D(2026, 1, 1, 3)),
        ("logs", "2026-01-02", 1, D(2026, 1, 2), D(2026, 1, 2)),
    ]


def test_replace_partition_assets(lake: Lake) -> None:
    lake.stage("snap", pa.table({"day": ["2026-01-01", "2026-01-01", "2026-01-02"],
                                 "v": [1, 2, 3]}))
    report = lake.load()
    assert lake.rows(
        "SELECT asset_key, partition_key, rows_inserted FROM meta.ingestion_run_assets "
        f"WHERE run_id = '{report.load_run_id}' ORDER BY 2") == [
        ("snap", "2026-01-01", 2), ("snap", "2026-01-02", 1)]


# -- meta.schema_migrations ------------------------------------------------------------
def test_schema_migrations_hold_each_version_once(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    lake.load()
    lake.init()
    rows = lake.rows("SELECT version, name, applied_at FROM meta.schema_migrations "
                     "ORDER BY version")
    from lakehouse.migrations import MIGRATIONS

    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert isinstance(rows[0][2], dt.datetime)
    tables = {r[0] for r in lake.rows(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'meta'")}
    assert {"ingestion_runs", "ingestion_run_assets", "asset_watermarks", "asset_checks",
            "staged_runs", "schema_migrations"} <= tables


def test_a_version_1_warehouse_is_migrated_with_its_ledger(tmp_path: Path) -> None:
    """Migration 2 re-keys the ledger by (table, run id) and keeps every row."""
    import duckdb

    from lakehouse.migrations import MIGRATIONS

    root = make_root(tmp_path / "lake")
    (root / "warehouse").mkdir()
    con = duckdb.connect(str(root / "warehouse" / "lake.duckdb"))
    con.execute("CREATE SCHEMA meta")
    con.execute("CREATE TABLE meta.schema_migrations (version INTEGER PRIMARY KEY, "
                "name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)")
    from lakehouse.db import Warehouse

    wh = Warehouse(con, root / "warehouse" / "lake.duckdb", read_only=False)
    MIGRATIONS[0].apply(wh)  # the version 1 schema, as an older Lake left it
    con.execute("INSERT INTO meta.schema_migrations VALUES (1, 'meta_schema', now())")
    con.execute("INSERT INTO meta.staged_runs (run_id, table_name, status, recorded_at) "
                "VALUES ('r1', 'plain', 'loaded', now())")
    con.close()
    lk = Lake(root)
    lk.init()
    assert lk.rows("SELECT table_name, run_id, status FROM meta.staged_runs") == [
        ("plain", "r1", "loaded")]
    assert lk.rows("SELECT max(version) FROM meta.schema_migrations") == [
        (MIGRATIONS[-1].version,)]
