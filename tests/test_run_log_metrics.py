"""Issue 14, items 4-8: exact row counts per run, table and partition; one check row per
failed pandera check; table-level checks; per-scope watermarks; health and audit.

Real lakes under tmp_path; the real `lake` CLI in a subprocess where the exit code matters.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from conftest import LAKE_TOML, Lake, lake_cli, make_root

from lakehouse.config import parse_config
from lakehouse.errors import ConfigError
from lakehouse.layout import LakePaths

D = dt.datetime

CHECKS_TOML = LAKE_TOML + """
[tables.prices]
primary_key = ["symbol", "ts"]
partition_by = { column = "ts", granularity = "day" }
merge = "upsert"
watermark_scope = "symbol"
checks = { freshness = "2h", no_duplicate_keys = true, no_gaps = true }

[tables.feed]
partition_by = { column = "day", granularity = "identity" }
merge = "replace_partition"
checks = { max_row_drop = 0.2 }

[tables.soft]
partition_by = { column = "ts", granularity = "day" }
checks = { freshness = { value = "1h", severity = "warn" } }
"""


def events(*rows: tuple[int, dt.datetime, str, float | None]) -> pa.Table:
    return pa.table({"event_id": pa.array([r[0] for r in rows], pa.int64()),
                     "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "kind": pa.array([r[2] for r in rows], pa.string()),
                     "amount": pa.array([r[3] for r in rows], pa.float64())})


def prices(*rows: tuple[str, dt.datetime, float]) -> pa.Table:
    return pa.table({"symbol": pa.array([r[0] for r in rows], pa.string()),
                     "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "price": pa.array([r[2] for r in rows], pa.float64())})


def snap(day: str, n: int) -> pa.Table:
    return pa.table({"day": [day] * n, "v": list(range(n))})


def dicts(root: Path, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    con = duckdb.connect(str(root / "warehouse" / "lake.duckdb"), read_only=True)
    try:
        cur = con.execute(sql, params or [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def assets(lake: Lake, run_id: str) -> list[tuple[Any, ...]]:
    return lake.rows(
        "SELECT asset_key, partition_key, rows_inserted, rows_updated, rows_deleted "
        f"FROM meta.ingestion_run_assets WHERE run_id = '{run_id}' ORDER BY 1, 2")


@pytest.fixture
def checked(tmp_path: Path) -> Lake:
    lk = Lake(make_root(tmp_path / "lake", CHECKS_TOML))
    lk.init()
    return lk


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


# -- item 4: exact rows_inserted / rows_updated / rows_deleted ---------------------------------
def test_upsert_counts_an_existing_key_as_updated(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 1), "view", 1.0), (2, D(2026, 1, 2), "view", 2.0)))
    first = lake.load().load_run_id
    lake.stage("events", events((1, D(2026, 1, 5), "click", 3.0), (3, D(2026, 1, 6), "view", None),
                                (4, D(2026, 2, 1), "view", None)))
    second = lake.load().load_run_id
    assert assets(lake, first) == [("events", "2026-01", 2, 0, 0)]
    assert assets(lake, second) == [("events", "2026-01", 1, 1, 0), ("events", "2026-02", 1, 0, 0)]


def test_upsert_counts_across_batches_of_one_load(tmp_path: Path) -> None:
    """Two batches (batch_max_runs = 1) of one load: one asset row per partition, summed."""
    lk = Lake(make_root(tmp_path / "lake", LAKE_TOML.replace(
        "retention_days = 7", "retention_days = 7\nbatch_max_runs = 1")))
    lk.init()
    lk.stage("events", events((1, D(2026, 1, 1), "view", 1.0)))
    lk.stage("events", events((1, D(2026, 1, 3), "view", 2.0), (2, D(2026, 1, 4), "view", 2.0)))
    run = lk.load().load_run_id
    assert assets(lk, run) == [("events", "2026-01", 2, 1, 0)]


def test_replace_partition_counts_deleted_and_inserted(lake: Lake) -> None:
    lake.stage("snap", snap("2026-01-01", 5))
    lake.stage("snap", snap("2026-01-02", 2))
    first = lake.load().load_run_id
    lake.stage("snap", snap("2026-01-01", 3))
    second = lake.load().load_run_id
    assert assets(lake, first) == [("snap", "2026-01-01", 5, 0, 0), ("snap", "2026-01-02", 2, 0, 0)]
    assert assets(lake, second) == [("snap", "2026-01-01", 3, 0, 5)]


def test_append_counts_inserts(lake: Lake) -> None:
    lake.stage("plain", pa.table({"id": [1, 2, 2]}))
    run = lake.load().load_run_id
    assert assets(lake, run) == [("plain", "", 3, 0, 0)]


def test_run_assets_and_checks_have_primary_keys(lake: Lake) -> None:
    lake.stage("plain", pa.table({"id": [1]}))
    run = lake.load().load_run_id
    con = duckdb.connect(str(lake.root / "warehouse" / "lake.duckdb"))
    try:
        with pytest.raises(duckdb.ConstraintException):
            con.execute("INSERT INTO meta.ingestion_run_assets (run_id, asset_key, asset_kind, "
                        "partition_key, status) VALUES (?, 'plain', 'table', '', 'success')",
                        [run])
        check_id = con.execute("SELECT check_id FROM meta.asset_checks LIMIT 1").fetchone()[0]
        with pytest.raises(duckdb.ConstraintException):
            con.execute("INSERT INTO meta.asset_checks (check_id, asset_key, check_name, "
                        "severity, status, checked_at) VALUES (?, 'plain', 'x', 'warn', 'pass', "
                        "now())", [check_id])
    finally:
        con.close()


def test_migration_5_dedupes_and_keys_an_older_run_log(tmp_path: Path) -> None:
    from lakehouse.db import Warehouse
    from lakehouse.migrations import MIGRATIONS

    root = make_root(tmp_path / "lake")
    (root / "warehouse").mkdir()
    con = duckdb.connect(str(root / "warehouse" / "lake.duckdb"))
    con.execute("CREATE SCHEMA meta")
    con.execute("CREATE TABLE meta.schema_migrations (version INTEGER PRIMARY KEY, "
                "name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)")
    wh = Warehouse(con, root / "warehouse" / "lake.duckdb", read_only=False)
    for m in MIGRATIONS:
        if m.version < 5:
            m.apply(wh)
            con.execute("INSERT INTO meta.schema_migrations VALUES (?, ?, now())",
                        [m.version, m.name])
    for n in (1, 2):  # the same (run, table, partition) twice, as an older Lake could write
        con.execute("INSERT INTO meta.ingestion_run_assets (run_id, asset_key, asset_kind, "
                    "partition_key, status, rows_inserted, ended_at) VALUES ('r', 't', 'table', "
                    "'p', 'success', ?, TIMESTAMP '2026-01-01' + to_days(?))", [n, n])
        con.execute("INSERT INTO meta.asset_checks (check_id, asset_key, check_name, severity, "
                    "status, checked_at) VALUES ('c', 't', 'x', 'error', 'fail', now())")
    con.close()
    Lake(root).init()
    lk = Lake(root)
    assert lk.rows("SELECT run_id, rows_inserted FROM meta.ingestion_run_assets") == [("r", 2)]
    assert lk.rows("SELECT check_id, column_name, failure_count, examples_json "
                   "FROM meta.asset_checks") == [("c", None, None, None)]
    keys = {r[0]: r[1] for r in lk.rows(
        "SELECT table_name, constraint_type FROM information_schema.table_constraints "
        "WHERE table_schema = 'meta' AND constraint_type = 'PRIMARY KEY' "
        "AND table_name IN ('ingestion_run_assets', 'asset_checks')")}
    assert keys == {"ingestion_run_assets": "PRIMARY KEY", "asset_checks": "PRIMARY KEY"}


# -- item 5: one row per failed pandera check ---------------------------------------------------
def test_failed_checks_spanning_partitions_have_no_partition_and_five_examples(
        lake: Lake) -> None:
    celsius = [100.0 + i for i in range(7)]
    lake.stage("readings", pa.table({
        "sensor": [f"s-{i}" for i in range(7)] + ["bad"],
        "ts": pa.array([D(2026, 1, 1 + i) for i in range(7)] + [D(2026, 1, 9)],
                       pa.timestamp("us")),
        "celsius": [*celsius, 20.0]}))
    report = lake.load()
    assert report.rejected  # drop_rows: the invalid rows went to quarantine
    rows = {r["column_name"]: r for r in dicts(
        lake.root, "SELECT * FROM meta.asset_checks WHERE status = 'fail'")}
    assert set(rows) == {"celsius", "sensor"}
    hot = rows["celsius"]
    assert (hot["failure_count"], hot["partition_key"], hot["severity"]) == (7, None, "error")
    assert json.loads(hot["examples_json"]) == [str(c) for c in celsius[:5]]
    assert hot["check_name"].startswith("less_than_or_equal_to")
    sensor = rows["sensor"]
    assert (sensor["failure_count"], sensor["partition_key"]) == (1, "2026-01-09")
    assert json.loads(sensor["examples_json"]) == ["bad"]


# -- item 6: table-level checks ----------------------------------------------------------------
def table_checks(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["asset_key"], r["check_name"]): r for r in dicts(
        root, "SELECT * FROM meta.asset_checks WHERE check_name IN "
              "('freshness', 'no_duplicate_keys', 'max_row_drop', 'no_gaps')")}


def test_passing_table_checks_are_recorded_and_load_exits_0(checked: Lake) -> None:
    t = now() - dt.timedelta(minutes=5)
    checked.stage("prices", prices(("A", t, 1.0), ("B", t - dt.timedelta(days=1), 2.0)))
    done = lake_cli(checked.root, "load")
    assert done.returncode == 0, done.stderr
    found = table_checks(checked.root)
    assert {k: v["status"] for k, v in found.items()} == {
        ("prices", "freshness"): "pass", ("prices", "no_duplicate_keys"): "pass",
        ("prices", "no_gaps"): "pass"}
    metrics = json.loads(found[("prices", "freshness")]["metrics_json"])
    assert metrics["max_age_seconds"] == 7200
    assert 0 <= metrics["age_seconds"] < 7200
    assert metrics["watermark"] == t.isoformat()


def test_a_failing_error_check_exits_3_and_keeps_the_data(checked: Lake) -> None:
    old = D(2026, 1, 1)
    checked.stage("prices", prices(("A", old, 1.0), ("A", old + dt.timedelta(days=3), 1.0)))
    done = lake_cli(checked.root, "load")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "check failed (error) prices.freshness" in done.stdout
    assert "check failed (error) prices.no_gaps" in done.stdout
    assert checked.rows("SELECT count(*) FROM prices") == [(2,)]  # the data is kept
    found = table_checks(checked.root)
    gaps = found[("prices", "no_gaps")]
    assert (gaps["status"], gaps["failure_count"]) == ("fail", 2)
    assert json.loads(gaps["examples_json"]) == ["2026-01-02", "2026-01-03"]
    assert found[("prices", "freshness")]["status"] == "fail"
    health = lake_cli(checked.root, "health", "--json")
    assert health.returncode == 0, health.stderr
    latest = {(r["asset_key"], r["check_name"]): r["status"]
              for r in json.loads(health.stdout)["table_checks"]}
    assert latest[("prices", "freshness")] == "fail"
    assert latest[("prices", "no_duplicate_keys")] == "pass"


def test_a_failing_warn_check_exits_0(checked: Lake) -> None:
    checked.stage("soft", pa.table({"ts": pa.array([D(2026, 1, 1)], pa.timestamp("us"))}))
    done = lake_cli(checked.root, "load")
    assert done.returncode == 0, done.stderr
    assert "check failed (warn) soft.freshness" in done.stdout
    row = table_checks(checked.root)[("soft", "freshness")]
    assert (row["status"], row["severity"]) == ("fail", "warn")


def test_max_row_drop_fails_when_a_load_shrinks_the_table(checked: Lake) -> None:
    checked.stage("feed", snap("2026-01-01", 10))
    assert checked.load().checks[0].passed
    checked.stage("feed", snap("2026-01-01", 7))  # 30 % fewer rows
    report = checked.load()
    assert report.rejected and [(c.check, c.passed) for c in report.checks] == [
        ("max_row_drop", False)]
    assert report.checks[0].metrics == {"rows_before": 10, "rows_after": 7, "drop": 0.3,
                                        "max_row_drop": 0.2}
    assert checked.rows("SELECT count(*) FROM feed") == [(7,)]


def test_no_duplicate_keys_checks_the_whole_table(tmp_path: Path) -> None:
    """Rows that repeat a key outside any load (a hand edit of the warehouse; a load refuses
    a key added to a table that repeats it, see test_repartition.py): the check reads the
    whole table, not the batch (whose one row is unique)."""
    toml = LAKE_TOML + ("\n[tables.items]\nmerge = \"append\"\nprimary_key = [\"id\"]\n"
                        "checks = { no_duplicate_keys = true }\n")
    lk = Lake(make_root(tmp_path / "lake", toml))
    lk.init()
    lk.stage("items", pa.table({"id": [1, 2]}))
    assert lk.load().checks[0].passed
    con = duckdb.connect(str(lk.root / "warehouse" / "lake.duckdb"))
    con.execute("INSERT INTO items SELECT * FROM items")  # 1 and 2 twice: 4 rows
    con.execute("INSERT INTO items SELECT * FROM items WHERE id = 2")  # 2 four times
    con.close()
    lk.stage("items", pa.table({"id": [3]}))
    report = lk.load()
    assert [(c.check, c.passed, c.failure_count, c.examples) for c in report.checks] == [
        ("no_duplicate_keys", False, 2, ("1", "2"))]
    assert report.checks[0].metrics == {"duplicate_keys": 2, "duplicate_rows": 6}


def test_checks_run_only_for_tables_the_load_touched(checked: Lake) -> None:
    checked.stage("plain", pa.table({"id": [1]}))
    assert checked.load().checks == []
    assert table_checks(checked.root) == {}


@pytest.mark.parametrize(("checks", "key", "words"), [
    ('{ freshness = "soon" }', "checks.freshness", "duration"),
    ("{ max_row_drop = 2 }", "checks.max_row_drop", "fraction"),
    ("{ no_gaps = true }", "checks.no_gaps", "granularity day, month or year"),
    ("{ no_duplicate_keys = true }", "checks.no_duplicate_keys", "primary_key"),
    ('{ freshness = { value = "1h", severity = "fatal" } }', "checks.freshness.severity",
     "warn"),
    ("{ speed = 1 }", "checks.speed", "unknown check"),
])
def test_bad_check_settings_are_refused_naming_the_key(checks: str, key: str,
                                                       words: str) -> None:
    doc = {"tables": {"t": {"partition_by": {"column": "c"}}}}
    import tomllib

    doc["tables"]["t"]["checks"] = tomllib.loads(f"checks = {checks}")["checks"]
    with pytest.raises(ConfigError) as info:
        parse_config(doc, LakePaths.at("/nowhere"))
    assert f"'{key}'" in str(info.value) and words in str(info.value)


def test_a_bad_check_setting_makes_the_cli_exit_2(tmp_path: Path) -> None:
    root = make_root(tmp_path / "lake", LAKE_TOML + '\n[tables.x]\nchecks = { freshness = 3 }\n')
    done = lake_cli(root, "load")
    assert done.returncode == 2
    assert "checks.freshness" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# -- item 7: per-scope watermarks -------------------------------------------------------------
def test_watermark_scope_keeps_one_watermark_per_value_plus_all(checked: Lake) -> None:
    checked.stage("prices", prices(("A", D(2026, 1, 1, 10), 1.0), ("A", D(2026, 1, 2, 9), 1.0),
                                   ("B", D(2026, 1, 1, 12), 2.0)))
    checked.load()
    checked.stage("prices", prices(("B", D(2026, 1, 1, 8), 2.5), ("C", D(2026, 1, 2, 1), 3.0)))
    checked.load()
    marks = dict((s, w) for s, w in checked.rows(
        "SELECT scope_key, watermark_ts FROM meta.asset_watermarks WHERE asset_key = 'prices'"))
    assert marks == {"ALL": D(2026, 1, 2, 9), "A": D(2026, 1, 2, 9), "B": D(2026, 1, 1, 12),
                     "C": D(2026, 1, 2, 1)}


# -- item 8: health and audit ---------------------------------------------------------------
HEALTH_SHAPE = {
    "latest_runs": None, "failures_7d": None, "freshness": None, "failing_checks": None,
    "table_checks": ["asset_key", "check_name", "severity", "status", "checked_at",
                     "failure_count", "message", "metrics_json"],
    "check_failures_7d": ["checked_at", "asset_key", "partition_key", "check_name",
                          "column_name", "severity", "failure_count", "examples_json", "run_id"],
}


def test_health_json_has_the_documented_shape_and_scoped_watermarks(checked: Lake) -> None:
    checked.stage("prices", prices(("A", D(2026, 1, 1), 1.0), ("B", D(2026, 1, 3), 1.0)))
    lake_cli(checked.root, "load")
    done = lake_cli(checked.root, "health", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(HEALTH_SHAPE) <= set(report)
    for key, columns in HEALTH_SHAPE.items():
        if columns is not None:
            assert report[key] and list(report[key][0]) == columns
    scopes = {(r["asset_key"], r["scope_key"]) for r in report["freshness"]}
    assert {("prices", "ALL"), ("prices", "A"), ("prices", "B")} <= scopes
    assert {r["check_name"] for r in report["check_failures_7d"]} == {"freshness", "no_gaps"}
    text = lake_cli(checked.root, "health")
    assert "Table checks (latest result):" in text.stdout
    assert "Failed checks, last 7 days:" in text.stdout


def test_audit_reports_each_meta_table_with_rows_and_newest_time(lake: Lake) -> None:
    lake.stage("plain", pa.table({"id": [1]}))
    lake.load()
    done = lake_cli(lake.root, "audit", "--json")
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)["meta"]
    assert {"ingestion_runs", "ingestion_run_assets", "asset_checks", "asset_watermarks",
            "staged_runs", "schema_migrations"} <= set(meta)
    assert meta["ingestion_runs"]["rows"] == 1 and meta["ingestion_runs"]["newest"]
    assert meta["ingestion_run_assets"]["rows"] == 1
    assert meta["staged_runs"]["time_column"] == "recorded_at"
    text = lake_cli(lake.root, "audit")
    assert "meta:" in text.stdout and "ingestion_run_assets" in text.stdout
