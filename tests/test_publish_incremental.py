"""The incremental publish (issue 17): a superseded snapshot version brought up to date with
only what changed, never touched while a reader holds it, and safe to kill at any point.

The grace period is 10 s; instead of waiting, tests date the versions back (``age``), which
is the disk state a later cron tick finds.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from conftest import Lake, lake_cli, make_root

from lakehouse import failpoints
from lakehouse.layout import LakePaths
from lakehouse.publish import mark_publish_pending
from loader.repartition import repartition_table

D = dt.datetime


def events(ids: list[int], kind: str = "view", month: int = 1, **extra: list[Any]) -> pa.Table:
    """Rows for ``events`` (upsert on event_id, month partitions)."""
    data: dict[str, Any] = {
        "event_id": pa.array(ids, pa.int64()),
        "ts": pa.array([D(2026, month + i % 2, 1 + i % 20) for i in ids], pa.timestamp("us")),
        "kind": pa.array([kind] * len(ids), pa.string()),
        "amount": pa.array([float(i) for i in ids], pa.float64())}
    data.update({k: pa.array(v) for k, v in extra.items()})
    return pa.table(data)


def logs(ids: list[int]) -> pa.Table:
    """Rows for ``logs`` (append, key id, day partitions)."""
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "ts": pa.array([D(2026, 2, 1 + i % 3) for i in ids], pa.timestamp("us")),
                     "msg": pa.array([f"m{i}" for i in ids], pa.string())})


def snap(days: list[str], value: int) -> pa.Table:
    """Rows for ``snap`` (replace_partition on day)."""
    return pa.table({"day": pa.array(days, pa.string()),
                     "v": pa.array([value] * len(days), pa.int64())})


def plain(n: int) -> pa.Table:
    """Rows for ``plain`` (append, no key, no partitions): the same rows twice is fine."""
    return pa.table({"x": pa.array([n, n], pa.int64())})


def age(root: Path, seconds: float = 60.0) -> None:
    """Date every snapshot version back: the grace period has passed since each switch."""
    then = time.time() - seconds
    for path in (root / "warehouse" / "snapshots").glob("lake.read.*.duckdb"):
        os.utime(path, (then, then))


def snapshot_file(root: Path) -> Path:
    return Path(os.path.realpath(root / "warehouse" / "lake.read.duckdb"))


def content(db: Path) -> dict[str, Any]:
    """Every table of a DuckDB file (data and meta): its columns and its rows as a sorted
    multiset; and the views."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                             "WHERE NOT internal ORDER BY 1, 2").fetchall()
        out: dict[str, Any] = {}
        for schema, table in tables:
            cur = con.execute(f'SELECT * FROM "{schema}"."{table}"')
            cols = [d[0] for d in cur.description]
            out[f"{schema}.{table}"] = (cols, sorted(map(repr, cur.fetchall())))
        out["views"] = con.execute("SELECT schema_name, view_name, sql FROM duckdb_views() "
                                   "WHERE NOT internal ORDER BY 1, 2").fetchall()
        return out
    finally:
        con.close()


def assert_snapshot_is_the_warehouse(root: Path) -> None:
    snapshot, live = content(snapshot_file(root)), content(root / "warehouse" / "lake.duckdb")
    assert snapshot.keys() == live.keys()
    for name in live:
        assert snapshot[name] == live[name], name


def publish_twice(lk: Lake) -> None:
    """Two publishes with ``events``, so that a superseded version with the table exists."""
    lk.stage("events", events([1000]))
    lk.load()
    lk.stage("events", events([1001]))
    lk.load()


# -- the sync is exact ---------------------------------------------------------------------

def test_each_incremental_publish_equals_the_warehouse(lake: Lake) -> None:
    """Upserts over keys of older runs, replaced partitions, appends with and without a key,
    dropped rows, and meta rows: after every tick the snapshot is the warehouse."""
    reading = pa.table({"sensor": ["s-1", "bad", "s-2"],
                        "ts": pa.array([D(2026, 1, 1)] * 3, pa.timestamp("us")),
                        "celsius": [1.0, 2.0, 500.0]})
    for _ in range(2):  # every table exists in both versions (a new table is a copy)
        for table, data in (("events", events([100])), ("snap", snap(["z"], 0)),
                            ("logs", logs([100 + _])), ("plain", plain(0)),
                            ("readings", reading)):
            lake.stage(table, data)
        lake.load()
    ticks = [
        {"events": [events([1, 2, 3, 4])], "snap": [snap(["a", "b"], 1)],
         "logs": [logs([1, 2])], "plain": [plain(1)]},
        # key 2 moves to another month partition; a run with one row per old run
        {"events": [events([2, 5], kind="click", month=3), events([3], kind="purchase")],
         "snap": [snap(["b", "c"], 2)], "plain": [plain(1)]},
        # two runs of one tick touch the same keys and partition: the last wins
        {"events": [events([1, 5], kind="click"), events([5, 6], kind="view", month=2)],
         "snap": [snap(["a"], 3), snap(["a", "d"], 4)], "logs": [logs([3])]},
        {"readings": [pa.table({"sensor": ["s-1", "bad", "s-3"],
                                "ts": pa.array([D(2026, 1, 2)] * 3, pa.timestamp("us")),
                                "celsius": [1.0, 2.0, 500.0]})]},
        {"events": [events(list(range(1, 8)), kind="purchase")]},  # every key again
    ]
    methods = []
    for tick in ticks:
        for table, runs in tick.items():
            for data in runs:
                lake.stage(table, data)
        age(lake.root)
        report = lake.load()
        methods.append((report.publish_method, report.publish_reason))
        assert_snapshot_is_the_warehouse(lake.root)
    assert methods == [("incremental", "")] * len(ticks)


def test_a_sync_reuses_the_superseded_file_and_keeps_two_versions(lake: Lake) -> None:
    publish_twice(lake)
    lake.stage("events", events([1, 2]))
    lake.load()
    lake.stage("events", events([3]))
    lake.load()
    folder = lake.root / "warehouse" / "snapshots"
    before = {p.stat().st_ino for p in folder.glob("lake.read.*.duckdb")}
    current = snapshot_file(lake.root).stat().st_ino
    age(lake.root)
    lake.stage("events", events([2, 4], kind="click"))
    report = lake.load()
    assert report.publish_method == "incremental", report.publish_reason
    after = {p.stat().st_ino for p in folder.glob("lake.read.*.duckdb")}
    # No new file: the superseded one was synced and renamed; older ones are gone.
    assert len(after) == 2 and after <= before
    assert snapshot_file(lake.root).stat().st_ino in before - {current}
    assert_snapshot_is_the_warehouse(lake.root)


# -- what forces a full copy ------------------------------------------------------------------

READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT count(*) FROM events").fetchone()[0], flush=True)
sys.stdin.readline()
print(con.execute("SELECT count(*) FROM events").fetchone()[0], flush=True)
"""


def test_a_reader_holding_the_superseded_version_forces_a_full_copy(lake: Lake) -> None:
    publish_twice(lake)
    lake.stage("events", events([1, 2]))
    lake.load()
    lake.stage("events", events([3]))
    lake.load()
    age(lake.root)
    lake.stage("events", events([4]))
    control = lake.load()  # nobody holds the superseded version: a sync
    assert control.publish_method == "incremental", control.publish_reason
    stale = sorted(p for p in (lake.root / "warehouse" / "snapshots").glob("lake.read.*")
                   if p != snapshot_file(lake.root))[-1]
    stale_bytes = stale.read_bytes()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(stale)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdin is not None and reader.stdout is not None
        seen = int(reader.stdout.readline())  # the reader has the stale version open
        age(lake.root)
        lake.stage("events", events([5]))
        report = lake.load()
        assert report.publish_method in ("copy", "reflink")
        assert report.publish_reason == f"a reader has {stale.name} open"
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert int(reader.stdout.readline()) == seen  # its view did not change
    finally:
        reader.kill()
        reader.wait()
    assert stale.read_bytes() == stale_bytes  # never touched while held
    assert_snapshot_is_the_warehouse(lake.root)


def test_a_version_superseded_within_the_grace_period_is_not_touched(lake: Lake) -> None:
    publish_twice(lake)
    lake.stage("events", events([1]))
    lake.load()
    age(lake.root)
    lake.stage("events", events([2]))
    assert lake.load().publish_method == "incremental"
    lake.stage("events", events([3]))  # the version superseded just now is the stale one
    report = lake.load()
    assert report.publish_method in ("copy", "reflink")
    assert "superseded" in report.publish_reason and "grace" in report.publish_reason
    assert_snapshot_is_the_warehouse(lake.root)


def test_a_changed_merge_strategy_forces_a_full_copy(tmp_path: Path) -> None:
    """The table was upserted, then appended: the keys of the appended rows must not delete
    the snapshot's rows, so the sync refuses and copies."""
    lk = Lake(make_root(tmp_path / "lake"))
    lk.init()
    publish_twice(lk)
    lk.stage("events", events([1, 2]))
    lk.load()
    lk.stage("events", events([3]))
    lk.load()
    toml = (lk.root / "lake.toml").read_text()
    (lk.root / "lake.toml").write_text(toml.replace(
        'partition_by = { column = "ts", granularity = "month" }\nmerge = "upsert"',
        'partition_by = { column = "ts", granularity = "month" }\nmerge = "append"'))
    assert lk.config().tables["events"].merge == "append"
    age(lk.root)
    lk.stage("events", events([7], kind="click"))  # a new key: appended
    assert lk.load().refused  # the load refuses a changed spec until `lake repartition`
    repartition_table(lk.config(), "events")  # a key/merge change: checked and recorded
    assert_snapshot_is_the_warehouse(lk.root)
    age(lk.root)
    report = lk.load()
    assert report.count("loaded") == 1
    # The repartition published a full copy and moved the floor: no older version is ever
    # brought up to date across the change, so this load copies too.
    assert report.publish_method in ("copy", "reflink"), report.publish_reason
    assert_snapshot_is_the_warehouse(lk.root)


def test_a_new_column_forces_a_full_copy(lake: Lake) -> None:
    publish_twice(lake)
    lake.stage("events", events([1, 2]))
    lake.load()
    lake.stage("events", events([3]))
    lake.load()
    age(lake.root)
    lake.stage("events", events([4], note=["new"]))  # schema_evolution = add_columns
    report = lake.load()
    assert report.publish_method in ("copy", "reflink")
    assert "column" in report.publish_reason
    assert_snapshot_is_the_warehouse(lake.root)


def test_a_write_that_asks_for_a_copy_moves_the_floor(lake: Lake) -> None:
    """After a job that is not a load (compaction here) no version older than it is synced."""
    publish_twice(lake)
    lake.stage("events", events([1, 2]))
    lake.load()
    age(lake.root)
    mark_publish_pending(LakePaths.at(lake.root))  # what compaction and migrations do
    lake.stage("events", events([3]))
    first = lake.load()
    assert first.publish_method in ("copy", "reflink")
    assert first.publish_reason == "a write since the last publish asked for a full copy"
    age(lake.root)
    lake.stage("events", events([4]))
    second = lake.load()  # the version before the copy is under the floor
    assert second.publish_method in ("copy", "reflink")
    assert second.publish_reason == "no superseded version to start from"
    age(lake.root)
    lake.stage("events", events([5]))
    assert lake.load().publish_method == "incremental"
    assert_snapshot_is_the_warehouse(lake.root)


# -- crashes -------------------------------------------------------------------------------

def test_the_publish_points_are_the_ones_tested() -> None:
    assert set(failpoints.named("publish")) == {
        "publish.after_copy", "publish.mid_sync", "publish.after_sync",
        "publish.after_rename", "publish.after_switch"}


@pytest.mark.parametrize("point", failpoints.named("publish"))
def test_sigkill_while_publishing_leaves_a_committed_state(tmp_path: Path, point: str) -> None:
    lk = Lake(make_root(tmp_path / "lake"))
    lk.init()
    publish_twice(lk)
    lk.stage("events", events([1, 2, 3]))
    lk.stage("snap", snap(["a", "b"], 1))
    lk.load()
    lk.stage("events", events([4]))
    lk.load()
    age(lk.root)
    if point == "publish.after_copy":
        mark_publish_pending(LakePaths.at(lk.root))  # the next publish copies
    before = content(snapshot_file(lk.root))
    lk.stage("events", events([2, 5], kind="click", month=2))
    lk.stage("snap", snap(["b"], 2))
    crashed = lake_cli(lk.root, "load", env={"LAKE_TEST_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stderr
    live = content(lk.root / "warehouse" / "lake.duckdb")
    assert live != before
    # Readers find a readable snapshot equal to a committed state: the one before the load
    # or the one after it.
    assert content(snapshot_file(lk.root)) in (before, live)
    age(lk.root)
    lk.stage("events", events([6]))
    again = lake_cli(lk.root, "load", "--json")
    assert again.returncode == 0, again.stderr
    assert_snapshot_is_the_warehouse(lk.root)
    leftovers = [p.name for p in (lk.root / "warehouse" / "snapshots").iterdir()
                 if ".tmp-" in p.name or p.name.endswith(".wal")]
    assert leftovers == [] or point in ("publish.after_copy", "publish.mid_sync"), leftovers
