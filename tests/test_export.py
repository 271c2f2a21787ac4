"""`lake export`: Hive-partitioned Parquet, atomic per export, incremental by partition.

Real lakes, real DuckDB files and real Parquet under tmp_path; crash tests SIGKILL a real
`lake export` process; readers are pyarrow.dataset in-process and DuckDB in a separate process.
"""

# ruff: noqa: F811  (the s3 fixtures are imported by name, then requested as arguments)

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import REPO, Lake, lake_cli, make_root
from s3server import CREDENTIALS, S3, s3, s3_endpoint  # noqa: F401  (fixtures)

from lakehouse import failpoints
from lakehouse.db import Warehouse
from lakehouse.errors import ConfigError, LockHeldError, UsageError
from lakehouse.export_plan import hive_key
from lakehouse.migrations import LATEST_VERSION, MIGRATIONS
from loader.cli import cli
from loader.export import ExportOptions, ExportReport, export_table

MONTHS = ("2026-01", "2026-02", "2026-03", "2026-04")
USER = "event_id, ts, kind, amount"


# -- helpers --------------------------------------------------------------------------------
def events(ids: list[int], month: str, kind: str = "view", amount: float = 1.0) -> pa.Table:
    """Events with the given ids, all in one month (day = 1 + id % 28)."""
    year, mon = (int(x) for x in month.split("-"))
    return pa.table({
        "event_id": pa.array(ids, pa.int64()),
        "ts": pa.array([datetime(year, mon, 1 + i % 28, 12) for i in ids], pa.timestamp("us")),
        "kind": pa.array([kind] * len(ids)),
        "amount": pa.array([amount] * len(ids), pa.float64()),
    })


def loaded_events(lake: Lake, per_month: int = 50) -> Lake:
    """``events`` with ``per_month`` rows in each of MONTHS (ids are month-major)."""
    for m, month in enumerate(MONTHS):
        lake.stage("events", events(list(range(m * 1000, m * 1000 + per_month)), month))
    assert lake.load().count("loaded") == len(MONTHS)
    return lake


def export(lake: Lake, to: Path | str, table: str = "events", **kw: Any) -> ExportReport:
    kw.setdefault("format", "parquet")  # this file tests the Parquet export (Delta: its own)
    return export_table(lake.config(), table, ExportOptions(to=str(to), **kw))


def pointer(to: Path, table: str = "events") -> dict[str, Any]:
    return json.loads((to / table / "_latest.json").read_text())


def read_hive(folder: Path | str, filesystem: Any = None) -> list[dict[str, Any]]:
    """Every row of a Hive folder, read by pyarrow.dataset, ordered by the first column."""
    dataset = ds.dataset(str(folder), format="parquet", partitioning="hive",
                         filesystem=filesystem)
    table = dataset.to_table()
    return sorted(table.to_pylist(), key=lambda r: r[table.column_names[0]])


def warehouse_events(lake: Lake) -> list[dict[str, Any]]:
    """The warehouse's events with the export's partition column, as pyarrow reads it."""
    rows = lake.rows(f"SELECT {USER}, _lake_partition FROM events ORDER BY event_id")
    return [dict(zip(["event_id", "ts", "kind", "amount", "ts_month"], r, strict=True))
            for r in rows]


def files_of(version: Path) -> dict[str, tuple[int, bytes]]:
    """``folder/file`` -> (inode, content) of every file of a version."""
    return {p.relative_to(version).as_posix(): (p.stat().st_ino, p.read_bytes())
            for p in sorted(version.rglob("*.parquet"))}


def meta(lake: Lake, sql: str) -> list[tuple[Any, ...]]:
    return lake.rows(sql)


# -- full export ----------------------------------------------------------------------------
def test_full_export_writes_hive_folders_a_pointer_and_a_current_link(lake: Lake,
                                                                      tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    report = export(lake, to)

    assert report.full and report.reason == "full: no previous export at this target"
    assert report.written == list(MONTHS) and report.carried_over == [] and report.removed == []
    assert report.rows == report.rows_written == 200 and report.partition_key == "ts_month"
    doc = pointer(to)
    assert doc["format"] == "lake.export/1" and doc["export_id"] == report.export_id
    assert doc["path"] == f"_v/{report.export_id}" and doc["versions"] == [report.export_id]
    assert doc["partition_by"] == {"column": "ts", "granularity": "month"}
    assert [p["folder"] for p in doc["partitions"]] == [f"ts_month={m}" for m in MONTHS]
    assert [p["rows"] for p in doc["partitions"]] == [50] * 4
    assert doc["rows"] == 200 and doc["files"] == 4
    version = to / "events" / doc["path"]
    assert sorted(files_of(version)) == [f"ts_month={m}/data_0.parquet" for m in MONTHS]
    assert doc["bytes"] == report.bytes == sum(p.stat().st_size for p in version.rglob("*.*"))
    # The stable path for Hive readers is a relative symlink to the version.
    assert os.readlink(to / "events" / "current") == doc["path"]
    assert report.current == str(to / "events" / "current")
    # The hive key lives in the path only; the partition column keeps its type in the files.
    schema = pq.read_schema(version / "ts_month=2026-01" / "data_0.parquet")
    assert schema.names == ["event_id", "ts", "kind", "amount"]
    assert schema.field("ts").type == pa.timestamp("us")
    assert read_hive(to / "events" / "current") == warehouse_events(lake)
    assert sorted(os.listdir(to / "events")) == ["_latest.json", "_v", "current"]


def test_the_export_is_recorded_in_meta_and_published_to_the_snapshot(lake: Lake,
                                                                      tmp_path: Path) -> None:
    loaded_events(lake)
    first = export(lake, tmp_path / "x")
    assert first.published
    rows = meta(lake, "SELECT export_id, table_name, target, path, partition_key, full_export, "
                      "status, rows, files, partitions_written, partitions_carried, "
                      "partitions_removed, rows_written FROM meta.exports")
    assert rows == [(first.export_id, "events", str(tmp_path / "x"), f"_v/{first.export_id}",
                     "ts_month", True, "published", 200, 4, 4, 0, 0, 200)]
    parts = meta(lake, "SELECT partition_value, folder, action, rows, files, written_by "
                       "FROM meta.export_partitions ORDER BY folder")
    assert parts == [(m, f"ts_month={m}", "written", 50, 1, first.export_id) for m in MONTHS]
    # Readers of the snapshot see it (the export republished it).
    result = CliRunner().invoke(cli, ["--root", str(lake.root), "query",
                                      "SELECT count(*) FROM meta.exports", "--format", "csv"])
    assert result.exit_code == 0 and result.stdout == "count_star()\n1\n"


# -- incremental ----------------------------------------------------------------------------
def test_incremental_export_rewrites_only_the_changed_partition(lake: Lake,
                                                                tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    first = export(lake, to)
    old_version = to / "events" / "_v" / str(first.export_id)
    before = files_of(old_version)
    # An upsert that changes two rows of March only.
    lake.stage("events", events([2000, 2001], "2026-03", kind="purchase", amount=9.5))
    lake.load()

    second = export(lake, to)

    assert not second.full
    assert second.reason == "incremental: 1 partitions changed or new, 0 removed"
    assert second.written == ["2026-03"] and second.removed == []
    assert second.carried_over == ["2026-01", "2026-02", "2026-04"]
    assert second.rows_written == 50 and second.rows == 200
    new_version = to / "events" / "_v" / str(second.export_id)
    after = files_of(new_version)
    for name, (inode, content) in before.items():
        if name.startswith("ts_month=2026-03/"):
            assert after[name][0] != inode and after[name][1] != content  # rewritten
        else:
            assert after[name] == (inode, content)  # the same file, hard-linked
    assert files_of(old_version) == before  # the previous version is untouched
    assert read_hive(to / "events" / "current") == warehouse_events(lake)
    doc = pointer(to)
    assert doc["versions"] == [second.export_id, first.export_id]
    assert {p["folder"]: p["written_by"] for p in doc["partitions"]} == {
        "ts_month=2026-01": first.export_id, "ts_month=2026-02": first.export_id,
        "ts_month=2026-03": second.export_id, "ts_month=2026-04": first.export_id}
    assert meta(lake, "SELECT folder, action FROM meta.export_partitions WHERE export_id = "
                      f"'{second.export_id}' ORDER BY folder") == [
        ("ts_month=2026-01", "carried"), ("ts_month=2026-02", "carried"),
        ("ts_month=2026-03", "written"), ("ts_month=2026-04", "carried")]


def test_an_unchanged_table_is_up_to_date_and_writes_no_version(lake: Lake,
                                                                tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    first = export(lake, to)
    doc = pointer(to)

    again = export(lake, to)

    assert again.up_to_date and again.export_id == first.export_id
    assert again.written == [] and again.carried_over == list(MONTHS) and not again.published
    assert pointer(to) == doc and os.listdir(to / "events" / "_v") == [first.export_id]
    assert meta(lake, "SELECT count(*) FROM meta.exports") == [(1,)]


def test_full_flag_rewrites_every_partition(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    first = files_of(to / "events" / "_v" / str(export(lake, to).export_id))
    report = export(lake, to, full=True)
    assert report.full and report.reason == "full: --full" and report.written == list(MONTHS)
    second = files_of(to / "events" / "_v" / str(report.export_id))
    assert all(second[n][0] != first[n][0] for n in first)  # new files, no links
    assert read_hive(to / "events" / "current") == warehouse_events(lake)


def test_a_row_moved_out_of_a_partition_rewrites_it_and_an_emptied_one_is_removed(
        lake: Lake, tmp_path: Path) -> None:
    """An upsert that moves a row out of a partition: the run log counts it as a deletion
    there; the export finds the partition by its fingerprint, not by the run log."""
    loaded_events(lake)
    lake.stage("events", events([5000], "2026-05"))
    lake.load()
    to = tmp_path / "exports"
    export(lake, to)
    # Key 5000 moves from May to January (May is left empty); key 1000 moves Feb -> Jan.
    moved = pa.concat_tables([events([5000], "2026-01"), events([1000], "2026-01")])
    lake.stage("events", moved)
    report = lake.load()
    logged = meta(lake, "SELECT partition_key, rows_inserted, rows_updated, rows_deleted "
                        "FROM meta.ingestion_run_assets WHERE run_id = "
                        f"'{report.load_run_id}' ORDER BY 1")
    # Since issue 14 the run log names the partitions a moved key left (as deletions); the
    # export still finds them by fingerprint, not by the run log.
    assert logged == [("2026-01", 2, 0, 0), ("2026-02", 0, 0, 1), ("2026-05", 0, 0, 1)]

    second = export(lake, to)

    assert second.written == ["2026-01", "2026-02"] and second.removed == ["2026-05"]
    assert second.carried_over == ["2026-03", "2026-04"]
    assert not (to / "events" / "current" / "ts_month=2026-05").exists()
    assert read_hive(to / "events" / "current") == warehouse_events(lake)
    assert meta(lake, "SELECT folder, rows FROM meta.export_partitions WHERE action = "
                      f"'removed' AND export_id = '{second.export_id}'") == [
        ("ts_month=2026-05", 1)]
    assert meta(lake, f"SELECT partitions_removed FROM meta.exports WHERE export_id = "
                      f"'{second.export_id}'") == [(1,)]


def test_replace_partition_table_rewrites_the_replaced_partition_only(lake: Lake,
                                                                      tmp_path: Path) -> None:
    for day in ("2026-03-01", "2026-03-02", "2026-03-03"):
        lake.stage("snap", pa.table({"day": [day] * 3, "v": [1, 2, 3]}))
    lake.load()
    to = tmp_path / "exports"
    first = export(lake, to, table="snap")
    assert first.partition_key == "day_identity"
    assert first.written == ["2026-03-01", "2026-03-02", "2026-03-03"]
    lake.stage("snap", pa.table({"day": ["2026-03-02"], "v": [42]}))  # replaces the whole day
    lake.load()

    second = export(lake, to, table="snap")

    assert second.written == ["2026-03-02"] and second.rows_written == 1 and second.rows == 7
    assert second.carried_over == ["2026-03-01", "2026-03-03"]
    rows = read_hive(to / "snap" / "current")
    assert [(r["day"], r["v"], r["day_identity"]) for r in rows if r["day"] == "2026-03-02"] == [
        ("2026-03-02", 42, "2026-03-02")]
    assert len(rows) == 7


def test_an_unpartitioned_table_is_one_folder_carried_over_while_unchanged(
        lake: Lake, tmp_path: Path) -> None:
    lake.stage("plain", pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]}))
    lake.load()
    to = tmp_path / "exports"
    first = export(lake, to, table="plain")
    assert first.partition_key is None and first.written == [None]
    version = to / "plain" / "_v" / str(first.export_id)
    assert sorted(files_of(version)) == ["data_0.parquet"]
    assert export(lake, to, table="plain").up_to_date
    lake.stage("plain", pa.table({"id": [4], "name": ["d"]}))
    lake.load()
    second = export(lake, to, table="plain")
    assert second.written == [None] and second.rows == 4
    assert pq.read_table(to / "plain" / "current" / "data_0.parquet").num_rows == 4


def test_a_new_column_makes_the_export_full(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    export(lake, to)
    extra = events([9], "2026-02").append_column("channel", pa.array(["web"]))
    lake.stage("events", extra)  # events has schema_evolution = "add_columns"
    lake.load()
    report = export(lake, to)
    assert report.full and report.reason == "full: the table's columns changed"
    assert report.written == list(MONTHS)
    rows = read_hive(to / "events" / "current")
    assert [r["channel"] for r in rows if r["event_id"] == 9] == ["web"]


def test_hostile_partition_values_round_trip(tmp_path: Path) -> None:
    toml = """
    [tables.tags]
    partition_by = { column = "tag", granularity = "identity" }
    merge = "append"
    """
    lake = Lake(make_root(tmp_path / "lake", toml))
    lake.init()
    # NULL is rejected at load; the empty string at export (tests/test_partition_encoding.py)
    values = ["a/b=c d%", "é ü", "..", "x:y?z#", "2026-01", "a\\b"]
    lake.stage("tags", pa.table({"tag": values, "n": list(range(len(values)))}))
    lake.load()
    to = tmp_path / "exports"
    first = export(lake, to, table="tags")
    assert first.written == sorted(values)
    folders = sorted(p.name for p in (to / "tags" / "current").iterdir())
    # Spark's escaping: ASCII specials only, non-ASCII kept as UTF-8 (Spark reads it back).
    assert folders == sorted(["tag_identity=a%2Fb%3Dc d%25", "tag_identity=é ü",
                              "tag_identity=..", "tag_identity=x%3Ay%3Fz%23",
                              "tag_identity=2026-01", "tag_identity=a%5Cb"])
    rows = read_hive(to / "tags" / "current")
    assert sorted((r["n"], r["tag"], r["tag_identity"]) for r in rows) == [
        (i, v, v) for i, v in enumerate(values)]
    # A second load touching one value: everything else is carried over.
    lake.stage("tags", pa.table({"tag": ["a/b=c d%"], "n": [99]}))
    lake.load()
    second = export(lake, to, table="tags")
    assert second.written == ["a/b=c d%"] and len(second.carried_over) == len(values) - 1
    assert len(read_hive(to / "tags" / "current")) == len(values) + 1


def test_hive_key_never_clashes_with_a_column() -> None:
    assert hive_key("ts", "month", ["ts", "kind"]) == "ts_month"
    assert hive_key("ts", "month", ["ts", "TS_MONTH"]) == "lake_ts_month"
    assert hive_key("day", "identity", ["day", "day_identity", "lake_day_identity"]) == \
        "lake_lake_day_identity"


def test_a_hand_deleted_file_is_rewritten_not_published_missing(lake: Lake,
                                                                tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    first = export(lake, to)
    (to / "events" / "_v" / str(first.export_id) / "ts_month=2026-02" / "data_0.parquet").unlink()
    lake.stage("events", events([3000], "2026-04", amount=7.0))
    lake.load()
    second = export(lake, to)
    assert second.written == ["2026-02", "2026-04"]
    assert read_hive(to / "events" / "current") == warehouse_events(lake)


# -- versions -------------------------------------------------------------------------------
def test_old_versions_and_leftovers_are_pruned_keeping_the_previous(lake: Lake,
                                                                    tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    ids = []
    for i in range(3):
        lake.stage("events", events([i], "2026-01", amount=float(i + 10)))
        lake.load()
        ids.append(export(lake, to).export_id)
    assert sorted(os.listdir(to / "events" / "_v")) == sorted(ids[1:])
    # What killed exports leave behind: a temp folder and a complete, unreferenced version.
    (to / "events" / "_v" / "export.tmp-dead").mkdir()
    (to / "events" / "_v" / "29991231T000000.000000Z-deadbeef").mkdir()
    lake.stage("events", events([7], "2026-01", amount=70.0))
    lake.load()
    report = export(lake, to, keep_versions=1)
    assert sorted(report.versions_removed) == sorted(
        ["export.tmp-dead", "29991231T000000.000000Z-deadbeef", ids[1], ids[2]])
    assert os.listdir(to / "events" / "_v") == [report.export_id]
    assert read_hive(to / "events" / "current") == warehouse_events(lake)


# -- readers and partition pruning ----------------------------------------------------------
def test_pyarrow_dataset_prunes_partitions_with_a_filter(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    export(lake, to)
    dataset = ds.dataset(to / "events" / "current", format="parquet", partitioning="hive")
    assert dataset.schema.field("ts_month").type == pa.string()
    touched = [Path(f.path).parent.name
               for f in dataset.get_fragments(filter=ds.field("ts_month") == "2026-02")]
    assert touched == ["ts_month=2026-02"]  # one folder of four
    table = dataset.to_table(filter=ds.field("ts_month") == "2026-02")
    assert table.num_rows == 50 and set(table.column("ts_month").to_pylist()) == {"2026-02"}
    # The pointer's file list is the way in for readers without Hive discovery.
    doc = pointer(to)
    files = [str(to / "events" / doc["path"] / p["folder"] / f)
             for p in doc["partitions"] for f in p["files"]]
    assert pq.ParquetDataset(files).read().num_rows == doc["rows"] == 200


def test_a_separate_duckdb_process_reads_the_export_with_pruning(lake: Lake,
                                                                 tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    export(lake, to)
    glob = str(to / "events" / "current" / "*" / "*.parquet")
    script = (
        "import duckdb, json, sys\n"
        "con = duckdb.connect()\n"
        "src = f\"read_parquet({sys.argv[1]!r}, hive_partitioning=true)\"\n"
        "rows = con.execute(f\"SELECT ts_month, count(*) FROM {src} GROUP BY 1 ORDER BY 1\")"
        ".fetchall()\n"
        "plan = con.execute(f\"EXPLAIN ANALYZE SELECT count(*) FROM {src} "
        "WHERE ts_month = '2026-03'\").fetchall()[0][1]\n"
        "print(json.dumps({'rows': rows, 'plan': plan}))\n")
    proc = subprocess.run([sys.executable, "-c", script, glob], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rows"] == [[m, 50] for m in MONTHS]
    assert "Scanning Files: 1/4" in out["plan"] and "Total Files Read: 1" in out["plan"]
    assert "ts_month=2026-03/data_0.parquet" in out["plan"]


# -- object stores --------------------------------------------------------------------------
def test_export_to_an_fsspec_url_uploads_and_copies_unchanged_partitions(
        lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    name = f"lake-export-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    try:
        first = export(lake, f"memory://{name}/exports")
        assert first.path == f"memory://{name}/exports/events/_v/{first.export_id}"
        assert first.current is None  # no symlinks in object stores: read the pointer
        doc = json.loads(fs.cat_file(f"/{name}/exports/events/_latest.json"))
        assert doc["export_id"] == first.export_id
        lake.stage("events", events([1, 2], "2026-01", kind="click"))
        lake.load()
        second = export(lake, f"memory://{name}/exports")
        assert second.written == ["2026-01"] and len(second.carried_over) == 3
        doc = json.loads(fs.cat_file(f"/{name}/exports/events/_latest.json"))
        version = f"/{name}/exports/events/{doc['path']}"
        rows = read_hive(version, filesystem=fs)
        assert rows == warehouse_events(lake)
        assert not list((lake.root / "warehouse").glob("export.tmp-*"))  # local staging gone
    finally:
        fs.rm(f"/{name}", recursive=True)


def test_export_to_s3_from_the_cli(lake: Lake, s3: S3) -> None:
    """Against moto's S3 server: the URL alone (endpoint from fsspec's env config)."""
    loaded_events(lake)
    url = f"s3://{s3.bucket}/exports"
    env = {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": s3.endpoint}
    result = lake_cli(lake.root, "export", "events", "--format", "parquet", "--to", url,
                      "--json", env=env)
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout)
    lake.stage("events", events([3001], "2026-04", amount=3.0))
    lake.load()
    result = lake_cli(lake.root, "export", "events", "--format", "parquet", "--to", url,
                      "--json", env=env)
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)
    assert second["written"] == ["2026-04"] and second["partitions_carried_over"] == 3
    s3.fs.invalidate_cache()
    doc = json.loads(s3.fs.cat_file(f"{s3.bucket}/exports/events/_latest.json"))
    assert doc["export_id"] == second["export_id"]
    assert doc["versions"] == [second["export_id"], first["export_id"]]
    rows = read_hive(f"{s3.bucket}/exports/events/{doc['path']}", filesystem=s3.fs)
    assert rows == warehouse_events(lake)


# -- dry run --------------------------------------------------------------------------------
def test_dry_run_plans_from_the_snapshot_and_writes_nothing(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    plan = export(lake, to, dry_run=True)
    assert plan.dry_run and plan.written == list(MONTHS) and plan.rows_written == 200
    assert not to.exists()
    export(lake, to)
    lake.stage("events", events([1001], "2026-02", amount=2.0))
    lake.load()
    doc = pointer(to)
    plan = export(lake, to, dry_run=True)
    assert plan.written == ["2026-02"] and plan.carried_over == ["2026-01", "2026-03", "2026-04"]
    assert pointer(to) == doc and len(os.listdir(to / "events" / "_v")) == 1


# -- CLI ------------------------------------------------------------------------------------
def run(root: Path, *args: str) -> Any:
    if args[:1] == ("export",):  # this file tests the Parquet export
        args = (*args, "--format", "parquet")
    return CliRunner().invoke(cli, ["--root", str(root), *args])


def test_cli_prints_what_it_did(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    result = run(lake.root, "export", "events", "--to", str(to))
    assert result.exit_code == 0, result.output
    doc = pointer(to)
    eid, mib = doc["export_id"], doc["bytes"] / 1024 / 1024
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"exported events -> {to}/events/_v/{eid} in ")
    assert lines[0].endswith(f"s: 4 partitions written (200 rows, {mib:,.1f} MiB), 0 carried "
                             f"over, 0 removed; 200 rows, {mib:,.1f} MiB in all "
                             "[full: no previous export at this target]")
    assert lines[1:] == [
        "  written: 2026-01, 2026-02, 2026-03, 2026-04",
        f"  read it at {to}/events/current (Hive partitioning on ts_month), or through "
        f"{to}/events/_latest.json"]
    again = run(lake.root, "export", "events", "--to", str(to))
    assert again.exit_code == 0
    assert again.stdout == (f"events is up to date at {to}/events (export {eid}, 200 rows): "
                            "nothing changed\n"
                            f"  read it at {to}/events/current (Hive partitioning on ts_month),"
                            f" or through {to}/events/_latest.json\n")


def test_cli_json_report(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    result = run(lake.root, "export", "events", "--to", str(tmp_path / "x"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {k: data[k] for k in ("table", "partitions_written", "partitions_carried_over",
                                 "partitions_removed", "rows", "rows_written", "files",
                                 "partition_key", "full", "up_to_date", "dry_run")} == {
        "table": "events", "partitions_written": 4, "partitions_carried_over": 0,
        "partitions_removed": 0, "rows": 200, "rows_written": 200, "files": 4,
        "partition_key": "ts_month", "full": True, "up_to_date": False, "dry_run": False}
    assert data["bytes"] == data["bytes_written"] > 0 and data["seconds"] > 0
    assert data["path"] == str(tmp_path / "x" / "events" / "_v" / data["export_id"])
    dry = run(lake.root, "export", "events", "--to", str(tmp_path / "x"), "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout == (f"dry run: events is up to date at {tmp_path}/x/events "
                          f"(export {data['export_id']})\n")


@pytest.mark.parametrize("table", ["nope", "../etc", "events;drop"])
def test_unknown_table_exits_2_with_one_line(lake: Lake, tmp_path: Path, table: str) -> None:
    result = run(lake.root, "export", table, "--to", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert result.stderr == (f"lake: config error: {lake.root}/lake.toml: table {table!r} is "
                             "not declared in lake.toml\n")
    assert not (tmp_path / "x").exists()


def test_a_table_without_data_or_a_target_inside_the_lake_exits_2(lake: Lake,
                                                                 tmp_path: Path) -> None:
    result = run(lake.root, "export", "plain", "--to", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert result.stderr == ("lake: table plain has no data yet: run `lake load` first, "
                             "then export\n")
    loaded_events(lake)
    inside = lake.root / "staging" / "out"
    result = run(lake.root, "export", "events", "--to", str(inside))
    assert result.exit_code == 2 and "inside the lake root" in result.stderr
    with pytest.raises(ConfigError):
        export(lake, tmp_path / "y", table="nope")
    with pytest.raises(UsageError):
        export(lake, "nosuchproto://bucket/x")


def test_a_failed_write_exits_1_and_leaves_nothing_published(lake: Lake,
                                                             tmp_path: Path) -> None:
    loaded_events(lake)
    to = tmp_path / "exports"
    (to / "events").mkdir(parents=True)
    (to / "events" / "_v").write_text("not a folder")  # the versions cannot be written
    result = run(lake.root, "export", "events", "--to", str(to))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"lake: export of events to {to}/events failed: ")
    assert result.stderr.endswith("; the previous export is still the published one; fix "
                                  "that and run lake export again\n")
    assert result.stderr.count("\n") == 1
    assert sorted(os.listdir(to / "events")) == ["_v"]
    assert meta(lake, "SELECT count(*) FROM meta.exports") == [(0,)]


HOLD_LOCK = """
import sys
from lakehouse.layout import LakePaths
from lakehouse.lock import WarehouseLock
with WarehouseLock(LakePaths.at(sys.argv[1]), "lake load"):
    print("ready", flush=True)
    sys.stdin.read()
"""


def test_busy_warehouse_exits_75_naming_the_holder(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lake.root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        result = run(lake.root, "export", "events", "--to", str(tmp_path / "x"))
        assert result.exit_code == 75
        assert result.stderr.startswith(f"lake: warehouse busy: {lake.root}/warehouse/lake.lock "
                                        f"is held by pid {proc.pid} on ")
        assert "(lake load)" in result.stderr and result.stderr.count("\n") == 1
        with pytest.raises(LockHeldError):
            export(lake, tmp_path / "x", lock_timeout=0.2)
    finally:
        proc.communicate(input="", timeout=30)
    assert not (tmp_path / "x" / "events" / "_latest.json").exists()
    assert run(lake.root, "export", "events", "--to", str(tmp_path / "x")).exit_code == 0


# -- migrations -----------------------------------------------------------------------------
def test_init_upgrades_a_v2_warehouse(lake: Lake) -> None:
    path = lake.root / "warehouse" / "lake.duckdb"
    path.unlink()  # make it what an older Lake left: migrations 1 and 2 only
    con = duckdb.connect(str(path))
    wh = Warehouse(con, path, read_only=False)
    wh.execute("CREATE SCHEMA meta")
    wh.execute("CREATE TABLE meta.schema_migrations (version INTEGER PRIMARY KEY, "
               "name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)")
    for migration in MIGRATIONS[:2]:
        migration.apply(wh)
        wh.execute("INSERT INTO meta.schema_migrations VALUES (?, ?, now())",
                   [migration.version, migration.name])
    con.close()
    result = run(lake.root, "init", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["migrations_applied"] == [m.version for m in MIGRATIONS if m.version > 2]
    assert data["schema_version"] == LATEST_VERSION
    assert lake.rows("SELECT version, name FROM meta.schema_migrations ORDER BY 1") == [
        (m.version, m.name) for m in MIGRATIONS]
    assert lake.rows("SELECT count(*) FROM meta.exports") == [(0,)]


# -- crashes --------------------------------------------------------------------------------
def _changed_lake(lake: Lake, to: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A lake exported once, then changed in one partition: (old pointer, old rows)."""
    loaded_events(lake)
    export(lake, to)
    old = (pointer(to), read_hive(to / "events" / "current"))
    lake.stage("events", events([1000, 1001], "2026-02", kind="click", amount=4.0))
    lake.load()
    return old


def _check_converged(lake: Lake, to: Path) -> None:
    """After a clean re-run: the export is the table, and nothing is left over."""
    doc = pointer(to)
    assert os.readlink(to / "events" / "current") == doc["path"]
    assert read_hive(to / "events" / "current") == warehouse_events(lake)
    assert sorted(os.listdir(to / "events" / "_v")) == sorted(doc["versions"])
    assert not [p for p in (to / "events").iterdir() if ".tmp-" in p.name]
    assert not list((lake.root / "warehouse").glob("export.tmp-*"))
    statuses = dict(meta(lake, "SELECT export_id, status FROM meta.exports"))
    assert statuses.get(doc["export_id"]) in ("published", "recovered")


@pytest.mark.parametrize("point", [p for p in failpoints.named("export")
                                   if not p.startswith("export.delta_")])  # Delta: its own file
def test_sigkill_at_each_point_keeps_the_previous_export_readable(lake: Lake, tmp_path: Path,
                                                                  point: str) -> None:
    to = tmp_path / "exports"
    old_doc, old_rows = _changed_lake(lake, to)
    result = lake_cli(lake.root, "export", "events", "--format", "parquet", "--to", str(to),
                      env={"LAKE_TEST_CRASH_AT": point})
    assert result.returncode == -signal.SIGKILL, result.stderr

    doc = pointer(to)
    published = doc["export_id"] != old_doc["export_id"]
    # Before the pointer, the previous export is what every reader sees; after it, the new one.
    assert published == (point in ("export.after_pointer", "export.after_record"))
    assert read_hive(to / "events" / doc["path"]) == (
        warehouse_events(lake) if published else old_rows)
    # The stable folder always resolves to a complete version.
    current = read_hive(to / "events" / "current")
    assert current in (old_rows, warehouse_events(lake))

    again = lake_cli(lake.root, "export", "events", "--format", "parquet", "--to", str(to),
                     "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["up_to_date"] == published
    _check_converged(lake, to)
    if point == "export.after_pointer":  # meta was one export behind: recovered from the pointer
        assert meta(lake, "SELECT status FROM meta.exports WHERE export_id = "
                          f"'{doc['export_id']}'") == [("recovered",)]


def big_events(keys: int, seed: int, first_key: int = 0) -> pa.Table:
    """``keys`` events with ids from ``first_key``, spread over 2026."""
    rng = np.random.default_rng(seed)
    ts = np.datetime64("2026-01-01T00:00:00") + rng.integers(0, 365 * 86400, keys).astype(
        "timedelta64[s]")
    return pa.table({
        "event_id": pa.array(np.arange(first_key, first_key + keys), pa.int64()),
        "ts": pa.array(ts.astype("datetime64[us]"), pa.timestamp("us")),
        "kind": pa.array(np.array(["view", "click", "purchase"])[rng.integers(0, 3, keys)]),
        "amount": pa.array(rng.random(keys) * 100, pa.float64()),
    })


@pytest.mark.slow
def test_sigkill_at_random_moments_never_exposes_a_half_export(lake: Lake,
                                                               tmp_path: Path) -> None:
    iterations = int(os.environ.get("LAKE_SLOW_ITERATIONS", "6"))
    lake.stage("events", big_events(200_000, seed=1))
    lake.load()
    to = tmp_path / "exports"
    command = [sys.executable, "-m", "loader.cli", "--root", str(lake.root), "export", "events",
               "--to", str(to), "--full", "--format", "parquet"]
    started = time.monotonic()  # a clean run measures the window the kills aim at
    subprocess.run(command, cwd=str(lake.root.parent), check=True, capture_output=True)
    window = time.monotonic() - started
    rng = random.Random(7)
    killed = 0
    for i in range(iterations):
        old = pointer(to)["rows"]
        lake.stage("events", big_events(20_000, seed=10 + i, first_key=old))
        lake.load()
        proc = subprocess.Popen(command, cwd=str(lake.root.parent), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.95) * window)
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait(timeout=60) == -signal.SIGKILL
        doc = pointer(to)
        # Whatever the moment: the pointer names a complete version holding all its rows.
        rows = pq.ParquetDataset([str(to / "events" / doc["path"] / p["folder"] / f)
                                  for p in doc["partitions"] for f in p["files"]]).read()
        assert rows.num_rows == doc["rows"] and doc["rows"] in (old, old + 20_000)
        assert ds.dataset(to / "events" / "current", partitioning="hive").count_rows() in (
            old, old + 20_000)
        again = lake_cli(lake.root, "export", "events", "--format", "parquet", "--to", str(to))
        assert again.returncode == 0, again.stderr
        _check_converged(lake, to)
    assert killed >= iterations // 2  # most kills landed while the export ran
