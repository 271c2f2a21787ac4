"""`lake export --format delta`: a Delta Lake table, one commit per export, incremental.

Real lakes, real DuckDB files and a real Delta table under tmp_path (or on moto's S3 server).
Every result is read back by deltalake, polars (read_delta and scan_delta), a pyarrow dataset
taken from the Delta table, and by time travel, and compared with DuckDB's answer on the
published snapshot. Crash tests SIGKILL a real `lake export` process.
"""

# ruff: noqa: F811  (the s3 fixtures are imported by name, then requested as arguments)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from conftest import Lake, lake_cli
from deltalake import DeltaTable
from s3server import S3, s3, s3_endpoint  # noqa: F401  (fixtures)
from test_export import MONTHS, events, loaded_events

from lakehouse import failpoints
from lakehouse.errors import PartitionValueError, UsageError
from loader.cleanup import cleanup_lake
from loader.export import ExportOptions, ExportReport, export_table

COLUMNS = ["event_id", "ts", "kind", "amount", "ts_month"]


# -- helpers --------------------------------------------------------------------------------
def export(lake: Lake, to: Path | str, table: str = "events", **kw: Any) -> ExportReport:
    """`lake export` with the default format (delta for a new target)."""
    return export_table(lake.config(), table, ExportOptions(to=str(to), **kw))


def snapshot_rows(lake: Lake) -> list[dict[str, Any]]:
    """DuckDB's answer on the published snapshot (what `lake query` sees)."""
    con = duckdb.connect(str(lake.root / "warehouse" / "lake.read.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT event_id, ts, kind, amount, _lake_partition AS ts_month "
                           "FROM events ORDER BY event_id").fetchall()
    finally:
        con.close()
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({c: r[c] for c in COLUMNS} for r in rows), key=lambda r: r["event_id"])


def every_reader(uri: str, version: int | None = None,
                 options: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The table's rows as each reader sees them (at ``version``, or the latest)."""
    dt = DeltaTable(uri, version=version, storage_options=options)
    found = {"deltalake": ordered(dt.to_pyarrow_table().to_pylist()),
             "pyarrow.dataset": ordered(dt.to_pyarrow_dataset().to_table().to_pylist())}
    kw: dict[str, Any] = {"storage_options": options} if options else {}
    if version is not None:
        kw["version"] = version
    found["polars.read_delta"] = ordered(pl.read_delta(uri, **kw).to_dicts())
    found["polars.scan_delta"] = ordered(pl.scan_delta(uri, **kw).collect().to_dicts())
    return found


def assert_readers_see(uri: str, expected: list[dict[str, Any]], version: int | None = None,
                       options: dict[str, str] | None = None) -> None:
    for reader, rows in every_reader(uri, version, options).items():
        assert rows == expected, f"{reader} at version {version}"


def lake_commits(uri: str, options: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The table's commits, oldest first."""
    return list(reversed(DeltaTable(uri, storage_options=options).history()))


# -- exports and what readers see -------------------------------------------------------------
def test_first_export_is_the_whole_table_partitioned_by_its_spec(lake: Lake,
                                                                  tmp_path: Path) -> None:
    loaded_events(lake)
    report = export(lake, tmp_path / "out")
    uri = str(tmp_path / "out" / "events")
    assert report.format == "delta" and report.delta_version == 0 and report.full
    assert report.written == list(MONTHS) and report.rows == 200
    dt = DeltaTable(uri)
    assert dt.metadata().partition_columns == ["ts_month"]
    assert sorted(dt.partitions(), key=lambda p: p["ts_month"]) == [
        {"ts_month": m} for m in MONTHS]
    assert_readers_see(uri, snapshot_rows(lake))


def test_upserts_and_removed_partitions_are_one_commit_each_and_time_travel_works(
        lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    uri = str(tmp_path / "out" / "events")
    export(lake, tmp_path / "out")
    before = snapshot_rows(lake)
    # Upsert: rows 1000-1001 move from February to March; a new row lands in January.
    lake.stage("events", events([1000, 1001], "2026-03", kind="click"))
    lake.stage("events", events([5], "2026-01", kind="purchase"))
    lake.load()
    report = export(lake, tmp_path / "out")
    assert (report.delta_version, report.full) == (1, False)
    assert report.written == ["2026-01", "2026-02", "2026-03"]
    assert report.carried_over == ["2026-04"] and report.removed == []
    after_upsert = snapshot_rows(lake)
    assert after_upsert != before
    assert_readers_see(uri, after_upsert)
    assert_readers_see(uri, before, version=0)  # time travel to the previous version
    # Every row of April moves to March: the April partition is gone.
    lake.stage("events", events(list(range(3000, 3050)), "2026-03", kind="click"))
    lake.load()
    report = export(lake, tmp_path / "out")
    assert report.delta_version == 2 and report.removed == ["2026-04"]
    assert report.written == ["2026-03"]
    assert_readers_see(uri, snapshot_rows(lake))
    assert {p["ts_month"] for p in DeltaTable(uri).partitions()} == set(MONTHS[:3])
    assert_readers_see(uri, after_upsert, version=1)
    # One commit per export: versions 0, 1, 2, each a WRITE by Lake.
    commits = lake_commits(uri)
    assert [(c["version"], c["operation"]) for c in commits] == [
        (0, "WRITE"), (1, "WRITE"), (2, "WRITE")]
    assert commits[2]["lake.removed"].startswith('[["2026-04"')


def test_nothing_changed_commits_nothing(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    export(lake, tmp_path / "out")
    report = export(lake, tmp_path / "out")
    assert report.up_to_date and report.delta_version == 0 and report.written == []
    assert DeltaTable(str(tmp_path / "out" / "events")).version() == 0


def test_each_commit_carries_the_source_snapshot_and_the_load_runs(lake: Lake,
                                                                  tmp_path: Path) -> None:
    loaded_events(lake)
    export(lake, tmp_path / "out")
    lake.stage("events", events([9999], "2026-02", kind="click"))
    lake.load()
    export(lake, tmp_path / "out")
    commits = lake_commits(str(tmp_path / "out" / "events"))
    loads = [r[0] for r in lake.rows(
        "SELECT load_run_id FROM meta.staged_runs WHERE table_name = 'events' "
        "GROUP BY 1 ORDER BY min(recorded_at)")]
    assert json.loads(commits[0]["lake.load_run_ids"]) == loads[:-1]
    assert json.loads(commits[1]["lake.load_run_ids"]) == loads[-1:]
    recorded = lake.rows("SELECT export_id, format, delta_version, source_snapshot, status, "
                         "partitions_written, partitions_carried FROM meta.exports "
                         "ORDER BY delta_version")
    assert [(r[1], r[2], r[4], r[5], r[6]) for r in recorded] == [
        ("delta", 0, "published", 4, 0), ("delta", 1, "published", 1, 3)]
    for commit, row in zip(commits, recorded, strict=True):
        assert commit["lake.export_id"] == row[0]
        assert commit["lake.source_snapshot"] == row[3]
        assert (lake.root / "warehouse" / "snapshots" / row[3]).name.startswith("lake.read.")


def test_delta_is_the_default_for_a_new_target_and_the_old_format_is_kept(
        lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    export(lake, tmp_path / "hive", format="parquet")
    report = export(lake, tmp_path / "hive")  # no --format: the target's own format
    assert report.format == "parquet" and report.up_to_date
    assert export(lake, tmp_path / "new").format == "delta"
    with pytest.raises(UsageError, match="holds a parquet export"):
        export(lake, tmp_path / "hive", format="delta")
    with pytest.raises(UsageError, match="holds a delta export"):
        export(lake, tmp_path / "new", format="parquet")


def test_cli_exports_delta_and_prints_the_version(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    result = lake_cli(lake.root, "export", "events", "--to", str(tmp_path / "out"),
                      "--format", "delta", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["format"], data["delta_version"], data["partitions_written"]) == ("delta", 0, 4)
    text = lake_cli(lake.root, "export", "events", "--to", str(tmp_path / "out"))
    assert "up to date" in text.stdout and "Delta table, version 0" in text.stdout


# -- crashes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["export.after_lock", *(
    p for p in failpoints.named("export") if p.startswith("export.delta_"))])
def test_sigkill_leaves_the_table_at_a_version_readers_see_whole(lake: Lake, tmp_path: Path,
                                                                  point: str) -> None:
    loaded_events(lake)
    uri = str(tmp_path / "out" / "events")
    export(lake, tmp_path / "out")
    before = snapshot_rows(lake)
    # Enough new rows for two Arrow batches, so delta_mid_write is hit while files are written.
    lake.stage("events", events(list(range(10_000, 80_000)), "2026-05"))
    lake.load()
    result = lake_cli(lake.root, "export", "events", "--to", str(tmp_path / "out"),
                      env={"LAKE_TEST_CRASH_AT": point})
    assert result.returncode == -9, result.stderr
    committed = point in ("export.delta_after_commit", "export.delta_after_record")
    assert DeltaTable(uri).version() == (1 if committed else 0)
    assert_readers_see(uri, snapshot_rows(lake) if committed else before)
    again = lake_cli(lake.root, "export", "events", "--to", str(tmp_path / "out"), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["up_to_date"] == committed
    assert DeltaTable(uri).version() == 1  # never two commits for one change
    assert_readers_see(uri, snapshot_rows(lake))
    statuses = [r[0] for r in lake.rows("SELECT status FROM meta.exports ORDER BY "
                                        "delta_version")]
    assert statuses == ["published",
                        "recovered" if point == "export.delta_after_commit" else "published"]


# -- retention --------------------------------------------------------------------------------
def test_cleanup_vacuums_only_files_older_than_the_retention(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    uri = str(tmp_path / "out" / "events")
    export(lake, tmp_path / "out")
    v0 = snapshot_rows(lake)
    lake.stage("events", events([1], "2026-01", kind="click"))
    lake.load()
    export(lake, tmp_path / "out")
    # Within the retention (the default, 7 days) nothing goes: version 0 still reads.
    report = cleanup_lake(lake.config())
    assert not [a for a in report.actions if a.kind == "delta_vacuum"]
    assert_readers_see(uri, v0, version=0)
    # A retention of 0 hours: the files only version 0 needed go, the latest stays whole.
    toml = lake.root / "lake.toml"
    toml.write_text(toml.read_text().replace("[lake]\n", "[lake]\nexport_retention_hours = 0\n"))
    dry = cleanup_lake(lake.config(), dry_run=True)
    assert [a.kind for a in dry.actions if a.kind == "delta_vacuum"] == ["delta_vacuum"]
    assert_readers_see(uri, v0, version=0)  # a dry run deletes nothing
    done = cleanup_lake(lake.config())
    assert [a.detail for a in done.actions if a.kind == "delta_vacuum"] == [
        "1 files unused for over 0 hours"]
    assert_readers_see(uri, snapshot_rows(lake))
    with pytest.raises(Exception, match=r"(?i)not found|no such file|does not exist"):
        DeltaTable(uri, version=0).to_pyarrow_table()


# -- object stores ----------------------------------------------------------------------------
def test_export_to_s3_is_incremental_and_readable(lake: Lake, s3: S3) -> None:
    loaded_events(lake)
    env = s3.env
    result = lake_cli(lake.root, "export", "events", "--to", s3.url, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "delta"
    before = snapshot_rows(lake)
    lake.stage("events", events(list(range(3000, 3050)), "2026-03"))
    lake.load()
    result = lake_cli(lake.root, "export", "events", "--to", s3.url, "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["delta_version"], data["removed"], data["written"]) == (1, ["2026-04"],
                                                                        ["2026-03"])
    options = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ALLOW_HTTP": "true"}
    uri = f"{s3.url}/events"
    assert_readers_see(uri, snapshot_rows(lake), options=options)
    assert_readers_see(uri, before, version=0, options=options)
    assert any(k.startswith("events/_delta_log/") for k in s3.keys("events"))


# -- partition values and keys ----------------------------------------------------------------
def snap(days: list[str | None], start: int = 0) -> Any:
    import pyarrow as pa

    return pa.table({"day": pa.array(days, pa.string()),
                     "n": pa.array(list(range(start, start + len(days))), pa.int64())})


def snap_rows(lake: Lake) -> list[dict[str, Any]]:
    con = duckdb.connect(str(lake.root / "warehouse" / "lake.read.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT day, n, _lake_partition FROM snap").fetchall()
    finally:
        con.close()
    return sorted(({"day": d, "n": n, "day_identity": p} for d, n, p in rows),
                  key=lambda r: (r["n"], str(r["day"])))


def test_hostile_partition_values_come_back_exactly_and_are_replaced_alone(
        lake: Lake, tmp_path: Path) -> None:
    values = ["O'Brien", "Zürich", "a/b", "50%", "x y", "k=v", "it's \"q\""]
    lake.stage("snap", snap(values))
    lake.load()
    export(lake, tmp_path / "out", table="snap")
    uri = str(tmp_path / "out" / "snap")

    def read() -> dict[str, list[dict[str, Any]]]:
        key = ("n", "day")
        rows = {"deltalake": DeltaTable(uri).to_pyarrow_table().to_pylist(),
                "polars": pl.read_delta(uri).to_dicts()}
        return {r: sorted(v, key=lambda x: (x[key[0]], str(x[key[1]]))) for r, v in rows.items()}

    for reader, rows in read().items():
        assert rows == snap_rows(lake), reader
    # replace_partition: a run for two of them replaces exactly those two partitions.
    lake.stage("snap", snap(["O'Brien", "a/b", "a/b"], start=100))
    lake.load()
    report = export(lake, tmp_path / "out", table="snap")
    assert report.written == ["O'Brien", "a/b"]
    assert len(report.carried_over) == len(values) - 2
    for reader, rows in read().items():
        assert rows == snap_rows(lake), reader


def test_an_empty_string_partition_is_refused_by_either_format(lake: Lake,
                                                               tmp_path: Path) -> None:
    lake.stage("snap", snap(["", "a"]))
    lake.load()
    with pytest.raises(PartitionValueError, match=r"empty string.*another value"):
        export(lake, tmp_path / "out", table="snap")
    assert not (tmp_path / "out" / "snap" / "_delta_log").exists()
    with pytest.raises(PartitionValueError, match=r"empty partition value"):  # nor Parquet
        export(lake, tmp_path / "p", table="snap", format="parquet")


def test_the_predicate_names_partitions_of_several_columns(tmp_path: Path) -> None:
    """A spec of several columns gives each partition a tuple of values: the predicate
    replaces exactly those tuples in one commit, NULLs and quotes included."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from lakehouse.export_delta import predicate

    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"n": [1, 2, 3, 4], "sym": ["A", "A", "B'", None],
                                   "mon": ["01", "02", "01", "01"]}),
                    partition_by=["sym", "mon"])
    where = predicate(["sym", "mon"], [("A", "02"), ("B'", "01"), (None, "01")])
    assert where == ("(\"sym\" = 'A' AND \"mon\" = '02') OR (\"sym\" = 'B''' AND \"mon\" = "
                     "'01') OR (\"sym\" IS NULL AND \"mon\" = '01')")
    write_deltalake(uri, pa.table({"n": [20], "sym": ["A"], "mon": ["02"]}), mode="overwrite",
                    partition_by=["sym", "mon"], predicate=where)
    rows = sorted(DeltaTable(uri).to_pyarrow_table().to_pylist(), key=lambda r: r["n"])
    assert rows == [{"n": 1, "sym": "A", "mon": "01"}, {"n": 20, "sym": "A", "mon": "02"}]
    assert DeltaTable(uri).version() == 1


def test_dry_run_plans_against_the_log_and_writes_nothing(lake: Lake, tmp_path: Path) -> None:
    loaded_events(lake)
    dry = export(lake, tmp_path / "out", dry_run=True)
    assert dry.format == "delta" and dry.written == list(MONTHS) and dry.full
    assert not (tmp_path / "out").exists()
    export(lake, tmp_path / "out")
    lake.stage("events", events([9999], "2026-04"))
    lake.load()
    dry = export(lake, tmp_path / "out", dry_run=True)
    assert (dry.written, dry.rows_written, dry.full) == (["2026-04"], 51, False)
    assert DeltaTable(str(tmp_path / "out" / "events")).version() == 0


def test_a_commit_by_another_writer_makes_the_next_export_full(lake: Lake,
                                                              tmp_path: Path) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    loaded_events(lake)
    uri = str(tmp_path / "out" / "events")
    export(lake, tmp_path / "out")
    stray = DeltaTable(uri).to_pyarrow_table().slice(0, 1)
    write_deltalake(uri, pa.table(stray), mode="append")  # someone appended a duplicate
    report = export(lake, tmp_path / "out")
    assert report.full and "was not written by Lake" in report.reason
    assert_readers_see(uri, snapshot_rows(lake))


@pytest.mark.slow
def test_sigkill_at_random_moments_never_exposes_a_half_commit(lake: Lake,
                                                                tmp_path: Path) -> None:
    import os
    import random
    import subprocess
    import sys
    import time

    from test_export import big_events

    iterations = int(os.environ.get("LAKE_SLOW_ITERATIONS", "6"))
    lake.stage("events", big_events(200_000, seed=1))
    lake.load()
    uri = str(tmp_path / "out" / "events")
    command = [sys.executable, "-m", "loader.cli", "--root", str(lake.root), "export", "events",
               "--to", str(tmp_path / "out"), "--full"]
    started = time.monotonic()  # a clean run measures the window the kills aim at
    subprocess.run(command, cwd=str(lake.root.parent), check=True, capture_output=True)
    window = time.monotonic() - started
    whole = snapshot_rows(lake)
    rng = random.Random(7)
    for _ in range(iterations):
        version = DeltaTable(uri).version()
        proc = subprocess.Popen(command, cwd=str(lake.root.parent),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, window))
        proc.kill()
        proc.wait()
        after = DeltaTable(uri).version()
        assert after in (version, version + 1)
        assert ordered(DeltaTable(uri).to_pyarrow_table().to_pylist()) == whole
    again = lake_cli(lake.root, "export", "events", "--to", str(tmp_path / "out"))
    assert again.returncode == 0, again.stderr
    assert_readers_see(uri, snapshot_rows(lake))
