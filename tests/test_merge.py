"""Merge strategies against hand-computed tables: append, upsert, replace_partition.

Every scenario runs twice: all runs staged and then loaded in ONE load, and each run loaded by
its own load. Both must give the literal table written in the test, and a further load must
change nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from conftest import LAKE_TOML, Lake, lake_cli, make_root

from staging import stage_run

D = dt.datetime
MODES = ["one_load", "separate_loads"]


def new_lake(path: Path, toml: str = LAKE_TOML) -> Lake:
    lk = Lake(make_root(path, toml))
    lk.init()
    return lk


def events(*rows: tuple[int, dt.datetime, str, float | None], **extra: list[Any]) -> pa.Table:
    data: dict[str, Any] = {
        "event_id": pa.array([r[0] for r in rows], pa.int64()),
        "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
        "kind": pa.array([r[2] for r in rows], pa.string()),
        "amount": pa.array([r[3] for r in rows], pa.float64()),
    }
    for name, values in extra.items():
        data[name] = pa.array(values, pa.string())
    return pa.table(data)


def logs(*rows: tuple[int, dt.datetime, str]) -> pa.Table:
    return pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                     "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "msg": pa.array([r[2] for r in rows], pa.string())})


def snap(*rows: tuple[str, int]) -> pa.Table:
    return pa.table({"day": pa.array([r[0] for r in rows], pa.string()),
                     "v": pa.array([r[1] for r in rows], pa.int64())})


def stage_and_load(lake: Lake, table: str, runs: list[pa.Table], mode: str,
                   **stage_kw: Any) -> list[str]:
    """Stage ``runs`` in order and load them in one load or one load each; return run ids."""
    run_ids = []
    for data in runs:
        manifest = lake.stage(table, data, **stage_kw)
        run_ids.append(manifest.run_id)
        if mode == "separate_loads":
            report = lake.load()
            assert [r.run_id for r in report.runs] == [manifest.run_id]
    if mode == "one_load":
        report = lake.load()
        assert sorted(r.run_id for r in report.runs) == sorted(run_ids)
    return run_ids


def assert_reload_changes_nothing(lake: Lake, sql: str) -> None:
    before = lake.rows(sql)
    report = lake.load()
    assert report.runs == []
    assert lake.rows(sql) == before


def run_status(lake: Lake, run_id: str) -> tuple[str, str | None]:
    rows = lake.rows(
        f"SELECT status, reason_code FROM meta.staged_runs WHERE run_id = '{run_id}'")
    assert len(rows) == 1, rows
    return rows[0]


# -- append ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_append_keeps_every_row_of_every_run(lake: Lake, mode: str) -> None:
    runs = [pa.table({"id": [1, 2], "name": ["a", "b"]}),
            pa.table({"id": [2, 3], "name": ["b", None]}),
            pa.table({"id": [1], "name": ["a2"]})]
    ids = stage_and_load(lake, "plain", runs, mode)
    sql = "SELECT id, name, _lake_partition FROM plain ORDER BY id, name NULLS LAST"
    assert lake.rows(sql) == [(1, "a", None), (1, "a2", None), (2, "b", None), (2, "b", None),
                              (3, None, None)]
    assert lake.rows("SELECT _lake_run_id, count(*) FROM plain GROUP BY 1 ORDER BY 1") == [
        (ids[0], 2), (ids[1], 2), (ids[2], 1)]
    assert set(lake.ledger().values()) == {"loaded"}
    assert_reload_changes_nothing(lake, sql)


@pytest.mark.parametrize("mode", MODES)
def test_append_into_day_partitions(lake: Lake, mode: str) -> None:
    runs = [logs((1, D(2026, 1, 1, 8), "a"), (2, D(2026, 1, 2, 9), "b")),
            logs((3, D(2026, 1, 2, 23, 59, 59), "c")),
            logs((4, D(2026, 1, 1, 0, 0), "d"), (5, D(2026, 1, 3), "e"))]
    stage_and_load(lake, "logs", runs, mode)
    sql = "SELECT id, ts, msg, _lake_partition FROM logs ORDER BY id"
    assert lake.rows(sql) == [
        (1, D(2026, 1, 1, 8), "a", "2026-01-01"),
        (2, D(2026, 1, 2, 9), "b", "2026-01-02"),
        (3, D(2026, 1, 2, 23, 59, 59), "c", "2026-01-02"),
        (4, D(2026, 1, 1, 0, 0), "d", "2026-01-01"),
        (5, D(2026, 1, 3), "e", "2026-01-03"),
    ]
    assert_reload_changes_nothing(lake, sql)


# -- upsert ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_upsert_later_run_wins_and_last_duplicate_in_a_run_wins(lake: Lake, mode: str) -> None:
    runs = [
        events((1, D(2026, 1, 5, 10), "view", None),
               (2, D(2026, 1, 20), "click", 1.0),
               (3, D(2026, 2, 1), "view", 2.0)),
        # key 2 moves to another month; key 4 twice in one run: the last row wins
        events((2, D(2026, 2, 10), "purchase", 9.5),
               (4, D(2026, 3, 1), "view", None),
               (4, D(2026, 3, 2), "click", 4.0)),
        events((1, D(2026, 1, 6), "click", 0.5)),
    ]
    ids = stage_and_load(lake, "events", runs, mode)
    sql = "SELECT event_id, ts, kind, amount, _lake_partition FROM events ORDER BY event_id"
    assert lake.rows(sql) == [
        (1, D(2026, 1, 6), "click", 0.5, "2026-01"),
        (2, D(2026, 2, 10), "purchase", 9.5, "2026-02"),
        (3, D(2026, 2, 1), "view", 2.0, "2026-02"),
        (4, D(2026, 3, 2), "click", 4.0, "2026-03"),
    ]
    assert lake.rows("SELECT event_id, _lake_run_id FROM events ORDER BY 1") == [
        (1, ids[2]), (2, ids[1]), (3, ids[0]), (4, ids[1])]
    assert set(lake.ledger().values()) == {"loaded"}
    assert_reload_changes_nothing(lake, sql)


@pytest.mark.parametrize("mode", MODES)
def test_upsert_duplicates_inside_one_run_resolve_to_the_last_row(lake: Lake, mode: str) -> None:
    runs = [events((7, D(2026, 5, 1), "view", 1.0), (7, D(2026, 5, 2), "click", 2.0),
                   (8, D(2026, 5, 3), "view", None), (7, D(2026, 4, 30), "purchase", 3.0)),
            events((8, D(2026, 5, 4), "click", 8.0), (8, D(2026, 5, 5), "view", None))]
    stage_and_load(lake, "events", runs, mode)
    sql = "SELECT event_id, ts, kind, amount, _lake_partition FROM events ORDER BY event_id"
    assert lake.rows(sql) == [
        (7, D(2026, 4, 30), "purchase", 3.0, "2026-04"),
        (8, D(2026, 5, 5), "view", None, "2026-05"),
    ]
    assert_reload_changes_nothing(lake, sql)


# -- replace_partition -------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_replace_partition_replaces_touched_partitions_whole(lake: Lake, mode: str) -> None:
    runs = [snap(("2026-01-01", 1), ("2026-01-01", 2), ("2026-01-02", 3)),
            snap(("2026-01-01", 10), ("2026-01-03", 11)),
            snap(("2026-01-03", 20), ("2026-01-03", 21)),
            snap(("2026-01-04", 30))]
    ids = stage_and_load(lake, "snap", runs, mode)
    sql = "SELECT day, v, _lake_partition FROM snap ORDER BY day, v"
    assert lake.rows(sql) == [
        ("2026-01-01", 10, "2026-01-01"),
        ("2026-01-02", 3, "2026-01-02"),
        ("2026-01-03", 20, "2026-01-03"),
        ("2026-01-03", 21, "2026-01-03"),
        ("2026-01-04", 30, "2026-01-04"),
    ]
    assert lake.rows("SELECT _lake_partition, min(_lake_run_id), max(_lake_run_id) FROM snap "
                     "GROUP BY 1 ORDER BY 1") == [
        ("2026-01-01", ids[1], ids[1]), ("2026-01-02", ids[0], ids[0]),
        ("2026-01-03", ids[2], ids[2]), ("2026-01-04", ids[3], ids[3])]
    assert_reload_changes_nothing(lake, sql)


# -- partition values --------------------------------------------------------------------
def test_month_partitions_cross_month_and_year_boundaries(lake: Lake) -> None:
    lake.stage("events", events((1, D(2025, 12, 31, 23, 59, 59, 999999), "view", None),
                                (2, D(2026, 1, 1, 0, 0), "view", None),
                                (3, D(2026, 1, 31, 23, 59, 59), "click", None),
                                (4, D(2026, 2, 1), "click", None),
                                (5, D(2024, 2, 29, 12), "purchase", 1.0)))
    assert not lake.load().rejected
    assert lake.rows("SELECT event_id, _lake_partition FROM events ORDER BY 1") == [
        (1, "2025-12"), (2, "2026-01"), (3, "2026-01"), (4, "2026-02"), (5, "2024-02")]


def test_day_partitions_cross_month_and_year_boundaries(lake: Lake) -> None:
    lake.stage("logs", logs((1, D(2025, 12, 31, 23, 59, 59, 999999), "a"),
                            (2, D(2026, 1, 1), "b"),
                            (3, D(2024, 2, 29, 23, 0), "c"),
                            (4, D(2024, 3, 1, 0, 0, 0, 1), "d")))
    assert not lake.load().rejected
    assert lake.rows("SELECT id, _lake_partition FROM logs ORDER BY 1") == [
        (1, "2025-12-31"), (2, "2026-01-01"), (3, "2024-02-29"), (4, "2024-03-01")]


@pytest.mark.parametrize(("values", "expected"), [
    (pa.array(["2026-01-01", "x y"], pa.string()), ["2026-01-01", "x y"]),
    (pa.array([dt.date(2026, 1, 1), dt.date(2025, 12, 31)], pa.date32()),
     ["2026-01-01", "2025-12-31"]),
    (pa.array([20260101, -7], pa.int64()), ["20260101", "-7"]),
], ids=["text", "date", "int"])
def test_identity_partition_is_the_value_as_text(lake: Lake, values: pa.Array,
                                                 expected: list[str]) -> None:
    lake.stage("snap", pa.table({"day": values, "v": [1, 2]}))
    assert not lake.load().rejected
    assert lake.rows("SELECT v, _lake_partition FROM snap ORDER BY v") == [
        (1, expected[0]), (2, expected[1])]


TZ_TOML = LAKE_TOML + """
[tables.tz_month]
partition_by = { column = "ts", granularity = "month" }
merge = "append"

[tables.tz_year]
partition_by = { column = "ts", granularity = "year" }
merge = "append"
"""

TOKYO = ZoneInfo("Asia/Tokyo")
EPOCH = D(1970, 1, 1, tzinfo=dt.UTC)


def tz_table(*stamps: dt.datetime) -> pa.Table:
    # Built from epoch microseconds: once pandera is imported, pyarrow 26 reads the wall
    # time of a ZoneInfo-aware datetime as UTC (see the report), which would skew the input.
    micros = [(s - EPOCH) // dt.timedelta(microseconds=1) for s in stamps]
    ts = pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="Asia/Tokyo"))
    return pa.table({"id": pa.array(range(1, len(stamps) + 1), pa.int64()), "ts": ts,
                     "msg": pa.array(["m"] * len(stamps), pa.string())})


def stage_tz_runs(lake: Lake) -> None:
    # 08:59 in Tokyo on Jan 1 is still Dec 31 in UTC; 09:00 is Jan 1 00:00 UTC.
    lake.stage("logs", tz_table(D(2026, 1, 1, 8, 59, tzinfo=TOKYO),
                                D(2026, 1, 1, 9, 0, tzinfo=TOKYO)))
    lake.stage("tz_month", tz_table(D(2026, 2, 1, 5, 0, tzinfo=TOKYO),
                                    D(2026, 2, 1, 9, 0, tzinfo=TOKYO)))
    lake.stage("tz_year", tz_table(D(2026, 1, 1, 3, 0, tzinfo=TOKYO),
                                   D(2026, 1, 1, 9, 30, tzinfo=TOKYO)))


TZ_EXPECTED = {"logs": [(1, "2025-12-31"), (2, "2026-01-01")],
               "tz_month": [(1, "2026-01"), (2, "2026-02")],
               "tz_year": [(1, "2025"), (2, "2026")]}


def test_timestamptz_partitions_in_utc(tmp_path: Path) -> None:
    lake = new_lake(tmp_path / "lake", TZ_TOML)
    stage_tz_runs(lake)
    report = lake.load()
    assert report.count("loaded") == 3 and not report.rejected
    for table, expected in TZ_EXPECTED.items():
        assert lake.rows(f"SELECT id, _lake_partition FROM {table} ORDER BY 1") == expected


@pytest.mark.parametrize("host_tz", ["Pacific/Kiritimati", "America/Los_Angeles"])
def test_timestamptz_partitions_do_not_depend_on_the_host_time_zone(
        tmp_path: Path, host_tz: str) -> None:
    lake = new_lake(tmp_path / "lake", TZ_TOML)
    stage_tz_runs(lake)
    done = lake_cli(lake.root, "load", env={"TZ": host_tz})
    assert done.returncode == 0, done.stderr
    for table, expected in TZ_EXPECTED.items():
        assert lake.rows(f"SELECT id, _lake_partition FROM {table} ORDER BY 1") == expected


# -- idempotency keys and repeated content ------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_same_idempotency_key_is_skipped_for_append(lake: Lake, mode: str) -> None:
    runs = [logs((1, D(2026, 1, 1), "first")), logs((2, D(2026, 1, 1), "retry"))]
    ids = stage_and_load(lake, "logs", runs, mode, key="batch-2026-01-01")
    assert run_status(lake, ids[0]) == ("loaded", None)
    assert run_status(lake, ids[1]) == ("skipped", "duplicate_key")
    assert lake.archived("logs") == sorted(ids)
    assert lake.staged("logs") == [] and lake.quarantined("logs") == []
    sql = "SELECT id, msg, _lake_partition FROM logs ORDER BY id"
    assert lake.rows(sql) == [(1, "first", "2026-01-01")]
    assert_reload_changes_nothing(lake, sql)


@pytest.mark.parametrize("mode", MODES)
def test_same_idempotency_key_is_skipped_for_upsert(lake: Lake, mode: str) -> None:
    runs = [events((1, D(2026, 1, 1), "view", 1.0)),
            events((1, D(2026, 1, 1), "view", 2.0), (2, D(2026, 1, 2), "view", None))]
    ids = stage_and_load(lake, "events", runs, mode, key="k-1")
    assert run_status(lake, ids[1]) == ("skipped", "duplicate_key")
    assert lake.archived("events") == sorted(ids)
    assert lake.rows("SELECT event_id, amount FROM events ORDER BY 1") == [(1, 1.0)]


@pytest.mark.parametrize("mode", MODES)
def test_a_key_whose_run_was_quarantined_can_be_retried(lake: Lake, mode: str) -> None:
    runs = [events((1, D(2026, 1, 1), "bogus", None)), events((1, D(2026, 1, 1), "view", None))]
    ids = stage_and_load(lake, "events", runs, mode, key="retry-me")
    assert lake.ledger() == {ids[0]: "quarantined", ids[1]: "loaded"}
    assert lake.rows("SELECT event_id, kind FROM events") == [(1, "view")]


def test_same_key_for_different_tables_is_not_a_repeat(lake: Lake) -> None:
    a = lake.stage("logs", logs((1, D(2026, 1, 1), "x")), key="shared")
    b = lake.stage("events", events((1, D(2026, 1, 1), "view", None)), key="shared")
    assert lake.load().count("loaded") == 2
    assert lake.ledger() == {a.run_id: "loaded", b.run_id: "loaded"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("table", ["plain", "logs"])
def test_same_content_twice_is_skipped_for_append(lake: Lake, table: str, mode: str) -> None:
    data = logs((1, D(2026, 3, 1), "a"), (2, D(2026, 3, 2), "b"))
    ids = stage_and_load(lake, table, [data, data], mode)
    assert run_status(lake, ids[0]) == ("loaded", None)
    assert run_status(lake, ids[1]) == ("skipped", "duplicate_content")
    assert lake.archived(table) == sorted(ids)
    assert lake.staged(table) == [] and lake.quarantined(table) == []
    sql = f"SELECT id, ts, msg FROM {table} ORDER BY id"
    assert lake.rows(sql) == [(1, D(2026, 3, 1), "a"), (2, D(2026, 3, 2), "b")]
    assert_reload_changes_nothing(lake, sql)


@pytest.mark.parametrize("mode", MODES)
def test_same_content_twice_is_merged_again_for_upsert(lake: Lake, mode: str) -> None:
    data = events((1, D(2026, 3, 1), "view", 1.0), (2, D(2026, 3, 2), "click", None))
    ids = stage_and_load(lake, "events", [data, data], mode)
    assert run_status(lake, ids[0]) == ("loaded", None)
    assert run_status(lake, ids[1]) == ("loaded", None)
    sql = "SELECT event_id, ts, kind, amount, _lake_partition FROM events ORDER BY 1"
    assert lake.rows(sql) == [(1, D(2026, 3, 1), "view", 1.0, "2026-03"),
                              (2, D(2026, 3, 2), "click", None, "2026-03")]
    assert_reload_changes_nothing(lake, sql)


@pytest.mark.parametrize("mode", MODES)
def test_append_run_repeating_one_of_its_files_loads_only_the_new_file(
        lake: Lake, mode: str) -> None:
    old = logs((1, D(2026, 3, 1), "a"))
    new = logs((2, D(2026, 3, 2), "b"))
    first = lake.stage("logs", old)
    if mode == "separate_loads":
        lake.load()
    with stage_run(lake.root, "logs") as run:
        run.write(old)
        run.write(new)
    report = lake.load()
    assert not report.rejected
    assert lake.ledger() == {first.run_id: "loaded", run.run_id: "loaded"}
    assert lake.rows("SELECT id, msg FROM logs ORDER BY id") == [(1, "a"), (2, "b")]


# -- schema evolution --------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_add_columns_adds_a_nullable_column(lake: Lake, mode: str) -> None:
    runs = [events((1, D(2026, 1, 1), "view", 1.0), (2, D(2026, 1, 2), "click", None)),
            events((3, D(2026, 1, 3), "purchase", 3.0), (1, D(2026, 1, 4), "view", 1.5),
                   channel=["web", None])]
    stage_and_load(lake, "events", runs, mode)
    assert lake.rows("SELECT column_name, data_type FROM information_schema.columns "
                     "WHERE table_name = 'events' AND column_name = 'channel'") == [
        ("channel", "VARCHAR")]
    sql = "SELECT event_id, ts, kind, amount, channel, _lake_partition FROM events ORDER BY 1"
    assert lake.rows(sql) == [
        (1, D(2026, 1, 4), "view", 1.5, None, "2026-01"),
        (2, D(2026, 1, 2), "click", None, None, "2026-01"),
        (3, D(2026, 1, 3), "purchase", 3.0, "web", "2026-01"),
    ]
    assert_reload_changes_nothing(lake, sql)


def test_add_columns_still_quarantines_a_run_missing_a_column(lake: Lake) -> None:
    """docs/CONTRACTS.md: add_columns accepts new columns; a missing column is a change."""
    lake.stage("events", events((1, D(2026, 1, 1), "view", None), channel=["web"]))
    lake.load()
    old_shape = lake.stage("events", events((2, D(2026, 1, 2), "view", None)))
    report = lake.load()
    assert [(r.status, r.reason_code) for r in report.runs] == [("quarantined", "schema_change")]
    assert "channel" in lake.reason("events", old_shape.run_id)["message"]
    assert lake.rows("SELECT event_id, channel FROM events") == [(1, "web")]


# -- retention, max_runs, dry_run, batch limits ------------------------------------------
def test_retention_zero_deletes_loaded_runs(tmp_path: Path) -> None:
    lake = new_lake(tmp_path / "lake",
                    LAKE_TOML.replace("retention_days = 7", "retention_days = 0"))
    assert lake.config().settings.retention_days == 0
    a = lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    b = lake.stage("logs", logs((1, D(2026, 1, 1), "x")))
    c = lake.stage("logs", logs((1, D(2026, 1, 1), "x")))  # skipped as a repeat: also deleted
    report = lake.load()
    assert report.count("loaded") == 2 and report.count("skipped") == 1
    assert lake.ledger() == {a.run_id: "loaded", b.run_id: "loaded", c.run_id: "skipped"}
    for table in ("events", "logs"):
        assert lake.staged(table) == [] and lake.archived(table) == []
    trash = lake.root / "archive" / ".trash"
    assert not trash.exists() or list(trash.iterdir()) == []
    assert lake.rows("SELECT count(*) FROM events") == [(1,)]
    assert lake.rows("SELECT count(*) FROM logs") == [(1,)]


def test_retention_default_archives_loaded_runs(lake: Lake) -> None:
    a = lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    lake.load()
    assert lake.staged("events") == [] and lake.archived("events") == [a.run_id]
    assert (lake.root / "archive" / "events" / a.run_id / "_manifest.json").is_file()


def test_max_runs_loads_only_the_oldest(lake: Lake) -> None:
    a = lake.stage("logs", logs((1, D(2026, 1, 1), "a")))
    b = lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    c = lake.stage("logs", logs((2, D(2026, 1, 2), "c")))
    report = lake.load(max_runs=1)
    assert [(r.run_id, r.status) for r in report.runs] == [(a.run_id, "loaded")]
    assert lake.ledger() == {a.run_id: "loaded"}
    assert lake.staged("logs") == [c.run_id] and lake.staged("events") == [b.run_id]
    report = lake.load(max_runs=1)
    assert [(r.run_id, r.status) for r in report.runs] == [(b.run_id, "loaded")]
    report = lake.load()
    assert [(r.run_id, r.status) for r in report.runs] == [(c.run_id, "loaded")]
    assert lake.rows("SELECT id FROM logs ORDER BY 1") == [(1,), (2,)]


def _tree(root: Path) -> dict[str, str]:
    """Every file under the root (lock files aside) with a hash of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("lake.lock"):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_dry_run_moves_nothing_and_writes_nothing(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 1), "view", None)))
    lake.load()  # a warehouse with data and a published snapshot
    good = lake.stage("events", events((2, D(2026, 1, 2), "click", 2.0)))
    bad = lake.stage("events", events((3, D(2026, 1, 3), "bogus", -1.0)))
    log = lake.stage("logs", logs((1, D(2026, 1, 1), "x")))
    before = _tree(lake.root)
    runs_before = lake.rows("SELECT count(*) FROM meta.ingestion_runs")
    report = lake.load(dry_run=True)
    assert report.dry_run
    assert sorted((r.run_id, r.status) for r in report.runs) == sorted([
        (good.run_id, "would_load"), (bad.run_id, "would_quarantine"),
        (log.run_id, "would_load")])
    assert _tree(lake.root) == before
    assert lake.rows("SELECT count(*) FROM meta.ingestion_runs") == runs_before
    assert lake.staged("events") == sorted([good.run_id, bad.run_id])
    assert lake.quarantined("events") == []
    # and the real load afterwards does what the dry run said
    report = lake.load()
    assert sorted((r.run_id, r.status) for r in report.runs) == sorted([
        (good.run_id, "loaded"), (bad.run_id, "quarantined"), (log.run_id, "loaded")])


def test_dry_run_reads_the_ledger_for_repeats_and_runs_it_already_has(lake: Lake) -> None:
    """The dry run predicts skips (a loaded idempotency key, content loaded before, a repeat
    earlier in the same backlog) and runs the ledger already accounts for; the real load
    afterwards does exactly that, and the dry run wrote nothing."""
    data = logs((1, D(2026, 3, 1), "a"))
    first = lake.stage("logs", data, key="k1")
    lake.load()
    # a run the ledger has, back in staging (as after a crash between commit and move)
    shutil.copytree(lake.root / "archive" / "logs" / first.run_id,
                    lake.root / "staging" / "logs" / first.run_id)
    same_key = lake.stage("logs", logs((2, D(2026, 3, 2), "b")), key="k1")
    same_content = lake.stage("logs", data)
    fresh = lake.stage("logs", logs((3, D(2026, 3, 3), "c")), key="k2")
    repeat_in_backlog = lake.stage("logs", logs((4, D(2026, 3, 4), "d")), key="k2")
    before = _tree(lake.root)
    dry = lake.load(dry_run=True)
    assert _tree(lake.root) == before
    expected = {first.run_id: ("would_recover", None),
                same_key.run_id: ("would_skip", "duplicate_key"),
                same_content.run_id: ("would_skip", "duplicate_content"),
                fresh.run_id: ("would_load", None),
                repeat_in_backlog.run_id: ("would_skip", "duplicate_key")}
    assert {r.run_id: (r.status, r.reason_code) for r in dry.runs} == expected
    assert [r.rows_loaded for r in dry.runs if r.status == "would_load"] == [1]
    real = lake.load()
    assert {r.run_id: (r.status, r.reason_code) for r in real.runs} == {
        run_id: (status.removeprefix("would_").replace("load", "loaded").replace(
            "skip", "skipped").replace("recover", "recovered"), code)
        for run_id, (status, code) in expected.items()}


def test_dry_run_judges_repeats_before_the_contract_as_the_load_does(lake: Lake) -> None:
    """A retry of a loaded key is skipped even when its rows would fail the contract (the load
    drops repeats before validating), and the dry run says so."""
    lake.stage("events", events((1, D(2026, 1, 1), "view", None)), key="k")
    lake.load()
    retry = lake.stage("events", events((2, D(2026, 1, 2), "bogus", -1.0)), key="k")
    dry = lake.load(dry_run=True)
    assert [(r.run_id, r.status, r.reason_code) for r in dry.runs] == [
        (retry.run_id, "would_skip", "duplicate_key")]
    real = lake.load()
    assert [(r.run_id, r.status, r.reason_code) for r in real.runs] == [
        (retry.run_id, "skipped", "duplicate_key")]


def test_dry_run_screens_runs_against_the_table_as_the_load_does(lake: Lake) -> None:
    """Against the table as it is, the dry run predicts a schema change under "freeze", keys an
    append already holds (the whole run quarantined, or with drop_rows the rows dropped), and
    the real load then does exactly that."""
    lake.stage("logs", logs((1, D(2026, 1, 1), "a"), (2, D(2026, 1, 2), "b")))
    lake.stage("readings", pa.table({"sensor": ["s-1"], "ts": [D(2026, 1, 1)],
                                     "celsius": [20.0]}))
    lake.load()
    conflict = lake.stage("logs", logs((2, D(2026, 1, 2), "again"), (3, D(2026, 1, 3), "c")))
    new_column = lake.stage("logs", logs((5, D(2026, 1, 5), "e")).append_column(
        "extra", pa.array(["x"])))
    fresh = lake.stage("logs", logs((4, D(2026, 1, 4), "d")))
    after_conflict = lake.stage("logs", logs((3, D(2026, 1, 3), "c")))  # 3 was in a rejected run
    partly = lake.stage("readings", pa.table({"sensor": ["s-1", "s-2"],
                                              "ts": [D(2026, 1, 1), D(2026, 1, 1)],
                                              "celsius": [21.0, 22.0]}))
    before = _tree(lake.root)
    dry = lake.load(dry_run=True)
    assert _tree(lake.root) == before
    predicted = {r.run_id: (r.status, r.reason_code, r.rows_loaded, r.rows_rejected)
                 for r in dry.runs}
    assert predicted == {
        conflict.run_id: ("would_quarantine", "key_conflict", 0, 1),
        new_column.run_id: ("would_quarantine", "schema_change", 0, 0),
        fresh.run_id: ("would_load", None, 1, 0),
        after_conflict.run_id: ("would_load", None, 1, 0),
        partly.run_id: ("would_load", "key_conflict", 1, 1)}
    real = lake.load()
    done = {r.run_id: (r.status, r.rows_loaded) for r in real.runs}
    assert done == {conflict.run_id: ("quarantined", 0), new_column.run_id: ("quarantined", 0),
                    fresh.run_id: ("loaded", 1), after_conflict.run_id: ("loaded", 1),
                    partly.run_id: ("loaded", 1)}
    assert {r.run_id: r.reason_code for r in real.runs if r.status == "quarantined"} == {
        conflict.run_id: "key_conflict", new_column.run_id: "schema_change"}
    assert lake.rows("SELECT sensor, celsius FROM readings ORDER BY 1") == [
        ("s-1", 20.0), ("s-2", 22.0)]


def test_dry_run_predicts_keys_repeated_between_runs_of_the_backlog(lake: Lake) -> None:
    """Before the first load too: a later run repeating a key of an earlier run that would load
    is quarantined (or loses those rows with drop_rows); the load then does exactly that."""
    first = lake.stage("logs", logs((1, D(2026, 1, 1), "a"), (2, D(2026, 1, 2), "b")))
    repeat = lake.stage("logs", logs((2, D(2026, 1, 2), "again")))
    readings = [lake.stage("readings", pa.table({
        "sensor": ["s-1", "s-2"][:n], "ts": [D(2026, 1, 1)] * n, "celsius": [20.0] * n}))
        for n in (1, 2)]
    dry = lake.load(dry_run=True)
    assert {r.run_id: (r.status, r.reason_code, r.rows_loaded, r.rows_rejected)
            for r in dry.runs} == {
        first.run_id: ("would_load", None, 2, 0),
        repeat.run_id: ("would_quarantine", "key_conflict", 0, 1),
        readings[0].run_id: ("would_load", None, 1, 0),
        readings[1].run_id: ("would_load", "key_conflict", 1, 1)}
    real = lake.load()
    assert {r.run_id: (r.status, r.rows_loaded) for r in real.runs} == {
        r.run_id: (s.removeprefix("would_").replace("load", "loaded").replace(
            "quarantine", "quarantined"), n)
        for r, s, n in ((first, "would_load", 2), (repeat, "would_quarantine", 0),
                        (readings[0], "would_load", 1), (readings[1], "would_load", 1))}


@pytest.mark.parametrize("limit", ["batch_max_runs = 2", "batch_max_rows = 3",
                                   "batch_max_bytes = 1"])
def test_batch_limits_still_load_every_run_exactly_once(tmp_path: Path, limit: str) -> None:
    lake = new_lake(tmp_path / "lake", LAKE_TOML.replace("[lake]", f"[lake]\n{limit}"))
    ids: dict[str, list[str]] = {"logs": [], "events": [], "snap": []}
    for n in range(5):
        ids["logs"].append(lake.stage("logs", logs((n, D(2026, 1, 1 + n), f"m{n}"),
                                                   (10 + n, D(2026, 2, 1), f"n{n}"))).run_id)
        ids["events"].append(lake.stage("events", events(
            (1, D(2026, 1, 1 + n), "view", float(n)), (2 + n, D(2026, 1, 1), "click", None)
        )).run_id)
        ids["snap"].append(lake.stage("snap", snap(("2026-01-01", n), (f"2026-02-0{n + 1}", n))
                                      ).run_id)
    report = lake.load()
    assert report.count("loaded") == 15 and not report.rejected
    every_run = sorted(i for run_ids in ids.values() for i in run_ids)
    assert sorted(r.run_id for r in report.runs) == every_run
    assert lake.rows("SELECT count(*), count(DISTINCT run_id) FROM meta.staged_runs "
                     "WHERE status = 'loaded'") == [(15, 15)]
    assert lake.rows("SELECT id FROM logs ORDER BY 1") == [
        (0,), (1,), (2,), (3,), (4,), (10,), (11,), (12,), (13,), (14,)]
    assert lake.rows("SELECT event_id, ts, amount FROM events ORDER BY 1") == [
        (1, D(2026, 1, 5), 4.0), (2, D(2026, 1, 1), None), (3, D(2026, 1, 1), None),
        (4, D(2026, 1, 1), None), (5, D(2026, 1, 1), None), (6, D(2026, 1, 1), None)]
    assert lake.rows("SELECT day, v FROM snap ORDER BY 1") == [
        ("2026-01-01", 4), ("2026-02-01", 0), ("2026-02-02", 1), ("2026-02-03", 2),
        ("2026-02-04", 3), ("2026-02-05", 4)]
    assert all(lake.staged(t) == [] for t in ids)
    assert_reload_changes_nothing(lake, "SELECT * FROM events ORDER BY event_id")


# -- fast paths of the key checks (issue 4): never say "unique" when a key repeats ---------
import itertools  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_KEY_VALUES = st.one_of(
    st.lists(st.one_of(st.none(), st.integers(-3, 3)), max_size=8),
    st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=8),
    st.lists(st.one_of(st.none(), st.text(max_size=2)), max_size=8),
)


@given(values=_KEY_VALUES, split=st.integers(0, 8))
def test_key_fast_paths_never_call_repeats_unique(values: list[Any], split: int) -> None:
    from lakehouse.validation import keys_unique, strictly_increasing

    column = pa.array(values)
    if strictly_increasing(column):
        assert None not in values
        assert all(a < b for a, b in itertools.pairwise(values))
    tables = [pa.table({"k": column.slice(0, split)}), pa.table({"k": column.slice(split)})]
    if keys_unique(tables, ("k",)):
        # A null counts as a value here (a null key is invalid anyway, checked elsewhere).
        canon = [("nan" if isinstance(v, float) and v != v else v) for v in values]
        assert len(set(canon)) == len(canon), f"repeated keys called unique: {values}"
