"""Compaction (`compact_warehouse`): rebuild into a fresh file, verify, swap with a backup.

Every test runs the same queries on the warehouse before and after and compares the rows
(STYLE.md). The churn fixture upserts the same 20k keys 20 times, which leaves DuckDB's file
with free blocks that only a rebuild gives back. Crash tests SIGKILL a real subprocess at each
named point; the disk-full test runs on a small tmpfs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from conftest import Lake, make_root

from lakehouse import failpoints
from lakehouse.errors import CompactionError, LockHeldError, StopRequestedError
from loader.compact import (
    CompactionReport,
    compact_warehouse,
)

PROCS = Path(__file__).resolve().parent / "compaction_procs.py"
KEYS, LOADS = 20_000, 20
META_TABLES = ("asset_checks", "asset_watermarks", "export_partitions", "exports",
               "ingestion_run_assets", "ingestion_runs", "schema_migrations", "staged_files",
               "staged_runs", "tables")


# -- fixtures -------------------------------------------------------------------------------
def events_batch(seed: int, keys: int = KEYS, first_key: int = 0) -> pa.Table:
    """``keys`` events with ids first_key.., six months of timestamps, 10% null amounts."""
    rng = np.random.default_rng(seed)
    ts = np.datetime64("2026-01-01T00:00:00") + rng.integers(0, 180 * 86400, keys).astype(
        "timedelta64[s]")
    amount = rng.random(keys) * 100
    return pa.table({
        "event_id": pa.array(np.arange(first_key, first_key + keys), pa.int64()),
        "ts": pa.array(ts.astype("datetime64[us]"), pa.timestamp("us")),
        "kind": pa.array(np.array(["view", "click", "purchase"])[rng.integers(0, 3, keys)]),
        "amount": pa.array(amount, pa.float64(), mask=rng.random(keys) < 0.1),
    })


@pytest.fixture(scope="module")
def churned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake whose `events` (upsert) got the same 20k keys 20 times: built once per module."""
    lk = Lake(make_root(tmp_path_factory.mktemp("churn") / "lake"))
    lk.init()
    for seed in range(LOADS):
        lk.stage("events", events_batch(seed))
        report = lk.load()
        assert report.count("loaded") == 1
    return lk.root


@pytest.fixture
def churn(churned: Path, tmp_path: Path) -> Lake:
    """A private copy of the churned lake (no process has it open)."""
    return Lake(Path(shutil.copytree(churned, tmp_path / "lake", symlinks=True)))


def warehouse(lk: Lake) -> Path:
    return lk.root / "warehouse" / "lake.duckdb"


# -- reading a DuckDB file from the outside -------------------------------------------------
def queries(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The queries compared before and after: aggregates, partitions, full row sets, schema."""
    sql = {
        "totals": "SELECT count(*), count(DISTINCT event_id), count(amount), "
                  "sum(amount::DECIMAL(18, 4)), min(ts), max(ts) FROM events",
        "partitions": "SELECT _lake_partition, count(*), sum(amount::DECIMAL(18, 4)) "
                      "FROM events GROUP BY 1 ORDER BY 1",
        "kinds": "SELECT kind, count(*) FROM events GROUP BY 1 ORDER BY 1",
        "rows": "SELECT * FROM events ORDER BY event_id",
        "columns": "SELECT schema_name, table_name, column_name, column_index, data_type, "
                   "is_nullable, column_default FROM duckdb_columns() "
                   "WHERE database_name = current_database() ORDER BY ALL",
        "constraints": "SELECT schema_name, table_name, constraint_type, constraint_text "
                       "FROM duckdb_constraints() WHERE database_name = current_database() "
                       "ORDER BY ALL",
        **{t: f"SELECT * FROM meta.{t} ORDER BY ALL" for t in META_TABLES},
        # A compaction records its own run (started in the original before the copy): the
        # rest of the run log must not change.
        "ingestion_runs": "SELECT * FROM meta.ingestion_runs WHERE job_name != 'compact' "
                          "ORDER BY ALL",
    }
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {name: con.execute(q).fetchall() for name, q in sql.items()}
    finally:
        con.close()


def inode(path: Path) -> int:
    """The file's inode: the same one means it was not swapped (only written to)."""
    return path.stat().st_ino


def compact_runs(path: Path) -> list[tuple[Any, ...]]:
    """(status, error_type) of every compaction run recorded, oldest first."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT status, error_type FROM meta.ingestion_runs WHERE job_name "
                           "= 'compact' ORDER BY started_at").fetchall()
    finally:
        con.close()


def fingerprint(path: Path) -> tuple[int, int, str]:
    """(size, mtime_ns, sha256) of a file: equal means untouched."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(lk: Lake) -> list[str]:
    """Temp files and folders anywhere under warehouse/."""
    return sorted(str(p.relative_to(lk.root)) for p in (lk.root / "warehouse").rglob("*")
                  if ".tmp-" in p.name or p.name.endswith(".wal"))


def backups(lk: Lake) -> list[str]:
    folder = lk.root / "warehouse" / "backups"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(PROCS), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class StopAfter:
    """A stop flag that is raised at its ``n``-th check (a signal arriving mid-compaction)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def raise_if_set(self) -> None:
        self.calls += 1
        if self.calls >= self.n:
            raise StopRequestedError("SIGTERM")


# -- the churn fixture: shrinks, keeps every row ---------------------------------------------
def test_compaction_shrinks_churned_warehouse_and_keeps_every_row(churn: Lake) -> None:
    before = queries(warehouse(churn))
    original = fingerprint(warehouse(churn))
    lines: list[str] = []

    report = compact_warehouse(churn.config(), progress=lines.append)
    assert report.swapped

    assert isinstance(report, CompactionReport) and not report.dry_run
    assert report.size_before == original[0]  # measured before its own run row
    assert report.size_after == warehouse(churn).stat().st_size
    assert report.size_after < report.size_before * 0.8, report.as_dict()
    print(f"\nchurn fixture: {report.size_before} -> {report.size_after} bytes "
          f"in {report.seconds:.2f}s")
    assert queries(warehouse(churn)) == before
    assert report.tables["events"]["rows"] == KEYS
    assert set(report.tables) == {"events", *(f"meta.{t}" for t in META_TABLES)}
    # Rows are stored in partition, then key, order (row groups prune by partition).
    physical = churn.rows("SELECT _lake_partition, event_id FROM events ORDER BY rowid")
    assert physical == sorted(physical)
    # The read snapshot is republished from the compacted file.
    assert report.published and queries(churn.root / "warehouse" / "lake.read.duckdb") == before
    # The backup is the old file (with the compaction's started row); restoring it means
    # copying it back.
    assert report.backup is not None
    backup = churn.root / report.backup
    assert queries(backup) == before and compact_runs(backup) == [("started", None)]
    assert compact_runs(warehouse(churn)) == [("success", None)]
    assert leftovers(churn) == [] and lines[-1].startswith("swapped")
    assert report.as_dict()["tables"]["events"]["checksum"]

    shutil.copyfile(backup, warehouse(churn))  # the restore procedure of docs/COMPACTION.md
    assert queries(warehouse(churn)) == before
    restored = compact_warehouse(churn.config(), force=True)  # ... ends with compact --force
    assert restored.swapped and restored.published
    assert queries(churn.root / "warehouse" / "lake.read.duckdb") == before


def test_dry_run_changes_nothing_and_reports_gain(churn: Lake) -> None:
    folder = churn.root / "warehouse"
    files = {p.name: fingerprint(p) for p in folder.iterdir() if p.is_file()}

    report = compact_warehouse(churn.config(), dry_run=True)

    assert report.dry_run and report.expected_gain > 0
    assert report.size_after is None and report.backup is None and report.tables == {}
    assert report.size_before == files["lake.duckdb"][0]
    assert 0 < report.used_bytes < report.size_before
    assert {p.name: fingerprint(p) for p in folder.iterdir() if p.is_file()} == files
    assert backups(churn) == []
    # The estimate is a lower bound of what a real run gives back.
    real = compact_warehouse(churn.config())
    assert real.size_after is not None
    assert real.size_before - real.size_after >= report.expected_gain


# -- busy --------------------------------------------------------------------------------
@pytest.mark.parametrize("holder", ["hold-lock", "hold-duckdb"])
def test_busy_warehouse_raises_lock_held_naming_the_holder(lake: Lake, holder: str) -> None:
    before = fingerprint(warehouse(lake))
    proc = spawn(holder, str(lake.root))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(LockHeldError) as info:
            compact_warehouse(lake.config(), lock_timeout=0.2)
        assert f"pid {proc.pid}" in str(info.value)
        assert info.value.holder["pid"] == proc.pid
    finally:
        proc.communicate(input="", timeout=30)  # closing stdin releases the holder
    assert fingerprint(warehouse(lake)) == before and leftovers(lake) == []
    assert compact_warehouse(lake.config()).size_after is not None  # free again


# -- crashes -----------------------------------------------------------------------------
@pytest.mark.parametrize("point", failpoints.named("compact"))
def test_sigkill_at_each_point_leaves_a_working_warehouse(churn: Lake, point: str) -> None:
    before = queries(warehouse(churn))
    original, original_inode = fingerprint(warehouse(churn)), inode(warehouse(churn))

    proc = subprocess.run([sys.executable, str(PROCS), "compact", str(churn.root), point],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    # lake.duckdb is the old file until the swap and the new one after, never anything else.
    order = failpoints.named("compact")
    swapped = order.index(point) >= order.index("compact.after_swap")
    assert (inode(warehouse(churn)) == original_inode) is not swapped
    # Only a kill before the run started leaves the file byte for byte.
    assert (fingerprint(warehouse(churn)) == original) is (point == "compact.after_lock")
    assert queries(warehouse(churn)) == before
    assert queries(churn.root / "warehouse" / "lake.read.duckdb") == before
    backed_up = order.index(point) >= order.index("compact.after_backup")
    assert len(backups(churn)) == int(backed_up)
    # A killed rebuild leaves its temp file: the next compaction removes it.
    assert bool(leftovers(churn)) is (point in ("compact.after_copy", "compact.after_verify",
                                               "compact.after_backup"))

    # After the swap a load with nothing to load still republishes the stale snapshot.
    churn.load()
    snapshot = churn.root / "warehouse" / "lake.read.duckdb"
    if swapped:
        assert fingerprint(snapshot)[2] == fingerprint(warehouse(churn))[2]
    # The next load takes the lock and merges new rows; the next compaction cleans up.
    churn.stage("events", events_batch(99, keys=100, first_key=KEYS))
    assert churn.load().count("loaded") == 1
    after_load = queries(warehouse(churn))
    assert after_load["totals"][0][0] == KEYS + 100
    report = compact_warehouse(churn.config(), keep_backups=1)
    assert queries(warehouse(churn)) == after_load
    assert leftovers(churn) == [] and len(backups(churn)) == 1
    assert report.published


# -- failures before the swap ------------------------------------------------------------
@pytest.mark.parametrize("stop_at", [1, 5, 10])  # first table, mid-copy, just before the swap
def test_stop_before_swap_leaves_original_untouched(churn: Lake, stop_at: int) -> None:
    before, original = queries(warehouse(churn)), inode(warehouse(churn))
    runs = compact_runs(warehouse(churn))
    stop = StopAfter(stop_at)
    with pytest.raises(StopRequestedError):
        compact_warehouse(churn.config(), stop=stop)
    assert stop.calls == stop_at
    # Untouched but for the compaction's own run, recorded as failed.
    assert inode(warehouse(churn)) == original and queries(warehouse(churn)) == before
    assert compact_runs(warehouse(churn)) == [*runs, ("failed", "StopRequestedError")]
    assert leftovers(churn) == [] and backups(churn) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs (we run as root in CI); skipped where mounting is not permitted."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_copy_leaves_original_untouched(churn: Lake, small_disk: Path) -> None:
    root = small_disk / "lake"
    root.mkdir()
    for name in ("lake.toml", "contracts"):
        src = churn.root / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, root / name)
    (root / "warehouse" / "backups").mkdir(parents=True)
    shutil.copyfile(warehouse(churn), root / "warehouse" / "lake.duckdb")
    lk = Lake(root)
    before, original = queries(warehouse(lk)), inode(warehouse(lk))
    # Leave 1 MiB: the lock note fits, the rebuilt file (about 4 MiB) does not.
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (1 << 20)))

    with pytest.raises(CompactionError) as info:
        compact_warehouse(lk.config())

    message = str(info.value)
    assert "MiB free in" in message and str(root / "warehouse") in message
    assert message.endswith("the warehouse is unchanged")
    assert inode(warehouse(lk)) == original and queries(warehouse(lk)) == before
    assert leftovers(lk) == [] and backups(lk) == []
    assert [s for s, _ in compact_runs(warehouse(lk))][-1:] == ["failed"]
    filler.unlink()  # with space, the same compaction goes through
    report = compact_warehouse(lk.config())
    assert report.size_after is not None and report.size_after < report.size_before
    assert queries(warehouse(lk)) == before


# -- backups and the read snapshot ---------------------------------------------------------
def test_backups_are_pruned_oldest_first(lake: Lake) -> None:
    lake.stage("events", events_batch(1, keys=500))
    lake.load()
    foreign = lake.root / "warehouse" / "backups" / "before-upgrade.duckdb"
    shutil.copyfile(warehouse(lake), foreign)  # a file an operator put there: never touched
    made: list[str] = []
    for _ in range(4):
        report = compact_warehouse(lake.config(), keep_backups=2, force=True)
        assert report.backup is not None
        made.append(Path(report.backup).name)
        time.sleep(0.002)  # distinct timestamps even on a coarse clock
    assert made == sorted(made)
    assert backups(lake) == sorted(["before-upgrade.duckdb", *made[-2:]])
    assert report.backups_pruned == [f"warehouse/backups/{made[1]}"]
    report = compact_warehouse(lake.config(), keep_backups=0, force=True)
    assert backups(lake) == ["before-upgrade.duckdb"] and len(report.backups_pruned) == 3


def test_a_rebuild_that_is_not_smaller_is_dropped_and_the_original_kept(lake: Lake) -> None:
    """Nothing to give back: no swap and no backup, the original kept (with the compaction's
    run recorded); a snapshot an earlier writer left unpublished is still republished, and
    old backups still pruned."""
    from lakehouse.publish import mark_publish_pending, publish_pending

    lake.stage("events", events_batch(1, keys=500))
    lake.load()
    first = compact_warehouse(lake.config(), force=True)  # one backup to prune later
    assert first.swapped and first.backup is not None
    before, original = queries(warehouse(lake)), inode(warehouse(lake))
    mark_publish_pending(lake.config().paths)
    lines: list[str] = []
    report = compact_warehouse(lake.config(), keep_backups=0, progress=lines.append)
    assert not report.swapped and report.backup is None
    assert report.size_after is not None and report.size_after >= report.size_before
    assert inode(warehouse(lake)) == original and queries(warehouse(lake)) == before
    assert compact_runs(warehouse(lake)) == [("success", None)] * 2 and leftovers(lake) == []
    assert lines[-1].startswith("kept lake.duckdb: the rebuilt file is not smaller")
    assert report.backups_pruned == [first.backup] and backups(lake) == []
    assert report.published and not publish_pending(lake.config().paths)


def test_every_table_kind_and_foreign_objects_survive(lake: Lake) -> None:
    import datetime as dt

    day = dt.datetime(2026, 3, 1)
    lake.stage("events", events_batch(3, keys=300))
    lake.stage("logs", pa.table({"id": pa.array([2, 1], pa.int64()),
                                 "ts": pa.array([day, day], pa.timestamp("us")),
                                 "msg": ["b", "a"]}))
    lake.stage("snap", pa.table({"day": ["2026-03-02", "2026-03-01"], "v": [2, 1]}))
    lake.stage("plain", pa.table({"x": [None, 1.5]}))
    assert lake.load().count("loaded") == 4
    con = duckdb.connect(str(warehouse(lake)))
    con.execute('CREATE TABLE "odd name"(k INTEGER PRIMARY KEY, v VARCHAR DEFAULT \'d\' NOT '
                'NULL); INSERT INTO "odd name" VALUES (1, \'x\'); '
                "CREATE VIEW recent AS SELECT count(*) AS n FROM logs; "
                "CREATE INDEX logs_msg ON logs(msg)")
    con.close()
    sql = ("SELECT table_name, column_name, data_type, is_nullable, column_default "
           "FROM duckdb_columns() WHERE database_name = current_database() ORDER BY ALL")
    shape, logs = lake.rows(sql), lake.rows("SELECT * FROM logs ORDER BY ALL")
    plain = lake.rows("SELECT x FROM plain ORDER BY rowid")
    assert lake.rows("SELECT id FROM logs ORDER BY rowid") == [(2,), (1,)]  # as staged

    report = compact_warehouse(lake.config(), force=True)  # no gain here: swapped for order

    assert report.swapped
    assert set(report.tables) >= {"events", "logs", "snap", "plain", "odd name"}
    assert lake.rows(sql) == shape and lake.rows("SELECT * FROM logs ORDER BY ALL") == logs
    assert lake.rows("SELECT n FROM recent") == [(2,)]
    assert lake.rows("SELECT index_name FROM duckdb_indexes()") == [("logs_msg",)]
    assert lake.rows('SELECT * FROM "odd name"') == [(1, "x")]
    # Unpartitioned, keyless tables keep their insertion order; keyed ones go by key.
    assert lake.rows("SELECT x FROM plain ORDER BY rowid") == plain == [(None,), (1.5,)]
    assert lake.rows("SELECT id FROM logs ORDER BY rowid") == [(1,), (2,)]

    con = duckdb.connect(str(warehouse(lake)))
    con.execute("CREATE SEQUENCE ids")
    con.close()
    before, original = lake.rows(sql), inode(warehouse(lake))
    with pytest.raises(CompactionError, match="sequences"):
        compact_warehouse(lake.config(), force=True)
    assert inode(warehouse(lake)) == original and lake.rows(sql) == before
    assert compact_runs(warehouse(lake))[-1] == ("failed", "CompactionError")
    assert leftovers(lake) == []


def test_negative_keep_backups_is_a_usage_error(lake: Lake) -> None:
    from lakehouse.errors import UsageError

    with pytest.raises(UsageError):
        compact_warehouse(lake.config(), keep_backups=-1)


# -- a bigger fixture: throughput ----------------------------------------------------------
@pytest.mark.slow
def test_throughput_on_a_bigger_churned_warehouse(tmp_path: Path) -> None:
    lk = Lake(make_root(tmp_path / "lake"))
    lk.init()
    for seed in range(8):
        lk.stage("events", events_batch(seed, keys=2_000_000))
        lk.load()
    before = queries(warehouse(lk))
    report = compact_warehouse(lk.config())
    assert report.size_after is not None
    gb = report.size_before / 1e9
    print(f"\nbigger fixture: {report.size_before} -> {report.size_after} bytes, "
          f"{report.seconds:.1f}s ({report.seconds / gb:.1f} s/GB of input)")
    assert queries(warehouse(lk)) == before
    assert os.path.getsize(warehouse(lk)) == report.size_after
