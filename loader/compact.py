"""`lake compact`: rebuild ``lake.duckdb`` into a fresh file, verify it, swap it in with a backup.

DuckDB frees space lazily and ``VACUUM`` reclaims nothing, so an upsert-heavy warehouse only
shrinks when it is rebuilt into a new file. Steps, each ordering rule commented where enforced:

1. Take the warehouse lock (``lake compact``): a load and a compaction never overlap.
2. Open the warehouse read-write, CHECKPOINT it (fold the WAL), read its block usage, close it.
   A dry run stops here and reports the expected gain.
3. Create ``warehouse/lake.compact.duckdb.tmp-<uuid>``, migrate it (fresh ``meta`` schema with
   its constraints), ATTACH the old file READ_ONLY and copy every table in one pass; data tables
   are filled ``ORDER BY _lake_partition, <primary key>`` so row-group min/max prune better.
4. Verify every table: row count and an order-independent checksum (sum of row hashes) equal.
5. CHECKPOINT, close and fsync the new file. If it is not smaller than the original, delete
   it and keep the original (``force`` swaps anyway): a swap would cost a backup and a
   republish for nothing. Else hard-link the old one into ``backups/``; then ``os.replace``
   the new file over ``lake.duckdb``: the name always points at a complete file.
6. Prune old backups, republish the read snapshot.

Anything failing before step 5's rename deletes the temp file and leaves the warehouse as it was.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lakehouse import failpoints
from lakehouse.config import LakeConfig
from lakehouse.db import SpaceUsage, Warehouse, literal, open_warehouse, quote, space_usage
from lakehouse.errors import (
    CompactionError,
    LakehouseError,
    StopRequestedError,
    UsageError,
    WarehouseError,
)
from lakehouse.fsio import delete_path, fsync_dir, fsync_file, link_or_copy, temp_name
from lakehouse.layout import PARTITION_COLUMN, STAMP_PATTERN, TMP_MARKER, LakePaths, utc_stamp
from lakehouse.lock import WarehouseLock
from lakehouse.migrations import LATEST_VERSION, migrate, schema_version
from lakehouse.observability import RunLogger
from lakehouse.publish import mark_publish_pending, publish_pending, publish_snapshot
from loader.report import StopFlag

TEMP_BASE = "lake.compact.duckdb"  # temp files are TEMP_BASE + ".tmp-<uuid>" (+ DuckDB's .wal/.tmp)
SOURCE = "compact_source"  # the catalog name the old file is attached under
BACKUP_PATTERN = re.compile(r"^lake-" + STAMP_PATTERN + r"\.duckdb$")
HEADER_BYTES = 3 * 4096  # DuckDB's file header and two database headers precede the blocks
_MIB = 1024 * 1024


@dataclass
class CompactionReport:
    """What a compaction did (or, for a dry run, would do). Paths are relative to the root."""

    dry_run: bool
    size_before: int = 0
    size_after: int | None = None
    used_bytes: int = 0
    free_bytes: int = 0
    expected_gain: int = 0  # size minus live blocks: a lower bound of what compaction frees
    space_needed: int = 0  # roughly the live data: what the new file takes before the swap
    disk_free: int = 0
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    backup: str | None = None
    backups_pruned: list[str] = field(default_factory=list)
    published: bool = False
    swapped: bool = False  # False: a dry run, or the rebuilt file was not smaller (kept none)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def compact_warehouse(config: LakeConfig, *, dry_run: bool = False, keep_backups: int = 3,
                      force: bool = False, lock_timeout: float = 0.0,
                      stop: StopFlag | None = None,
                      progress: Callable[[str], None] | None = None,
                      triggered_by: str = "cli") -> CompactionReport:
    """Rebuild the warehouse into a fresh file, verified, and swap it in keeping a backup.

    Args:
        dry_run: only report sizes and the expected gain; change nothing.
        keep_backups: timestamped backups kept in ``warehouse/backups/`` (oldest pruned first).
        force: swap in the rebuilt file even when it is not smaller than the original (for
            its partition order alone); without it such a rebuild is deleted, nothing changes.
        lock_timeout: seconds to wait for the warehouse lock (and DuckDB's file lock).
        stop: checked between tables and before the swap (never during it).
        progress: called with one line per step.
        triggered_by: who started it, for the run log (``cli``, ``cron``, ...).

    A compaction that is not a dry run records one ``compact`` run in the run log: started in
    the original file before the copy (so the copy carries it), closed as success in the
    verified copy before the swap, or in the original when the copy is dropped (failed, or
    success when it was not smaller).

    Raises:
        LockHeldError: a load or another compaction holds the warehouse.
        StopRequestedError: ``stop`` was set; the warehouse is unchanged.
        CompactionError: the rebuild failed (the warehouse is unchanged), or a step after the
            swap failed (the message says so).
        UsageError: no warehouse, or ``keep_backups`` < 0.
    """
    if keep_backups < 0:
        raise UsageError(f"--keep-backups must be 0 or more, got {keep_backups}")
    paths, say = config.paths, progress or (lambda _line: None)
    if not paths.warehouse.is_file():
        raise UsageError(f"no warehouse at {paths.warehouse}: run `lake init` first")
    started = time.monotonic()
    report = CompactionReport(dry_run=dry_run)
    with WarehouseLock(paths, "lake compact", lock_timeout):
        failpoints.hit("compact.after_lock")
        # Under the lock no other compaction runs: any compaction temp is a killed one's.
        _remove_temps(paths.warehouse_dir, TEMP_BASE + TMP_MARKER)
        args = {"keep_backups": keep_backups, "force": force}
        usage, report.size_before, run = _checkpoint_and_measure(
            paths, lock_timeout,
            None if dry_run else lambda wh: RunLogger(wh, "compact", triggered_by, args))
        report.used_bytes, report.free_bytes = usage.used_bytes, usage.free_bytes
        # What surely goes: the file minus its live blocks. free_blocks can count blocks past a
        # truncated file end, and deleted rows still sit in used blocks: so a lower bound.
        report.expected_gain = max(report.size_before - usage.used_bytes - HEADER_BYTES, 0)
        report.space_needed = usage.used_bytes
        report.disk_free = shutil.disk_usage(paths.warehouse_dir).free
        say(f"warehouse {_mib(report.size_before)}: {_mib(usage.used_bytes)} used, "
            f"{_mib(usage.free_bytes)} free ({usage.free_ratio:.0%})")
        if dry_run:
            report.seconds = time.monotonic() - started
            return report
        tmp = paths.warehouse_dir / temp_name(TEMP_BASE)
        try:
            report.tables = _rebuild(paths, tmp, stop, say, run)
            report.size_after = size_after = tmp.stat().st_size
            if not force and size_after >= report.size_before:
                _remove_temps(tmp.parent, tmp.name)
                say(f"kept lake.duckdb: the rebuilt file is not smaller "
                    f"({_mib(report.size_before)} -> {_mib(size_after)}); "
                    "--force swaps it in anyway")
                report.backups_pruned = _prune_backups(paths, keep_backups)
                _finish_run(paths, lock_timeout, run, None)
                if publish_pending(paths):  # an earlier writer died before publishing
                    publish_snapshot(paths)
                    report.published = True
                report.seconds = time.monotonic() - started
                return report
            fsync_file(tmp)  # the new file's bytes are on disk before any name points at it
            _refuse_leftover_wal(paths, tmp)
            _check_stop(stop)  # the last safe point: from here on nothing stops the swap
            backup = _backup(paths)
        except BaseException as exc:
            _remove_temps(tmp.parent, tmp.name)  # before the swap: the original is all there is
            if isinstance(exc, OSError | LakehouseError) and not isinstance(
                    exc, StopRequestedError):
                error = _failure(exc, paths, report.space_needed)
                _finish_run_quietly(paths, lock_timeout, run, error)
                raise error from exc
            _finish_run_quietly(paths, lock_timeout, run, exc)
            raise
        report.backup = str(backup.relative_to(paths.root))
        say(f"backup {report.backup}")
        failpoints.hit("compact.after_backup")
        # Before the swap: note that the snapshot must follow, so that if we die between the
        # swap and the publish, the next writer (load, cleanup, compaction) republishes.
        mark_publish_pending(paths)
        # The swap. Ordering: the backup is durable first, and the new file is complete and
        # fsynced; os.replace is atomic, so lake.duckdb is always the old or the new file.
        try:
            os.replace(tmp, paths.warehouse)
        except OSError as exc:
            _remove_temps(tmp.parent, tmp.name)
            error = _failure(exc, paths, report.space_needed)
            _finish_run_quietly(paths, lock_timeout, run, error)
            raise error from exc
        fsync_dir(paths.warehouse_dir)  # make the rename itself durable
        report.swapped = True
        say(f"swapped: {_mib(report.size_before)} -> {_mib(report.size_after)}")
        failpoints.hit("compact.after_swap")
        try:
            # Pruning comes after the swap, so a crash never leaves us short of the new backup.
            report.backups_pruned = _prune_backups(paths, keep_backups)
            failpoints.hit("compact.before_publish")
            publish_snapshot(paths)  # readers see the compacted file; clears the pending note
            report.published = True
        except (OSError, WarehouseError) as exc:
            raise CompactionError(
                f"the warehouse was compacted and swapped in, but then {exc}; fix that, then "
                "run lake compact again (it republishes the read snapshot)",
                path=str(paths.warehouse)) from exc
    report.seconds = time.monotonic() - started
    return report


def _checkpoint_and_measure(paths: LakePaths, lock_timeout: float,
                            new_run: Callable[[Warehouse], RunLogger] | None
                            ) -> tuple[SpaceUsage, int, RunLogger | None]:
    """Fold the WAL into the file, read its block usage and size, then record the run's
    start (unless a dry run); the connection is closed after."""
    wh = open_warehouse(paths.warehouse, lock_timeout=lock_timeout)
    try:
        version = schema_version(wh)
        if version != LATEST_VERSION:
            # Migrating here would change the original before the swap: refuse instead.
            raise CompactionError(
                f"cannot compact: the warehouse is at schema version {version} and this Lake "
                f"expects {LATEST_VERSION}; run lake init (it migrates), then lake compact "
                "again; the warehouse is unchanged", path=str(paths.warehouse))
        wh.checkpoint()  # a clean file stays byte-identical; a WAL is folded in
        # Measured before the run's row: the rebuilt file must be smaller than the file as
        # it was, not than the file grown by this compaction's own row.
        usage, size = space_usage(wh), paths.warehouse.stat().st_size
        if new_run is None:
            return usage, size, None
        # Before the copy, so the rebuilt file carries the started row (and the killed runs
        # it closed), checkpointed so no WAL is left beside the original.
        run = new_run(wh).start()
        wh.checkpoint()
        return usage, size, run
    finally:
        wh.close()  # the copy attaches the file READ_ONLY: no read-write handle may remain


def _rebuild(paths: LakePaths, tmp: Path, stop: StopFlag | None,
             say: Callable[[str], None], run: RunLogger | None) -> dict[str, dict[str, Any]]:
    """Copy every table into the fresh file ``tmp`` and verify it; return per-table checks.

    The verified copy closes the run as success: the file goes live only by the swap, and
    then the compaction has done its work (no write to ``lake.duckdb`` after the swap). If
    the copy is dropped instead, the original's started row is closed by the caller."""
    new = open_warehouse(tmp)
    try:
        migrate(new)  # the meta schema with its constraints, exactly as `lake init` makes it
        new.execute(f"ATTACH {literal(str(paths.warehouse))} AS {SOURCE} (READ_ONLY)",
                    action="attaching the warehouse read-only")
        _refuse_foreign_objects(new)
        tables = _tables(new, SOURCE)
        keys = _sort_keys(new)
        # migrate() recorded its own rows; the old history (with its times) replaces them.
        new.execute("DELETE FROM meta.schema_migrations", action="clearing schema_migrations")
        for schema, name, ddl in tables:
            _check_stop(stop)  # a safe point between tables: only the temp file is written
            _copy_table(new, schema, name, ddl, keys.get(name) if schema == "main" else None)
            say(f"copied {_label(schema, name)}")
        _copy_sql_objects(new)
        failpoints.hit("compact.after_copy")
        checks = _verify(new, tables)
        say(f"verified {len(checks)} tables: row counts and checksums equal")
        failpoints.hit("compact.after_verify")
        new.execute(f"DETACH {SOURCE}", action="detaching the warehouse")
        if run is not None:
            run.wh = new
            run.finish(None)
        new.checkpoint()  # everything in the file itself: the WAL must not be left behind
        return checks
    finally:
        new.close()


def _finish_run(paths: LakePaths, lock_timeout: float, run: RunLogger | None,
                exc: BaseException | None) -> None:
    """Close the compaction's run in the file that is ``lake.duckdb`` now."""
    if run is None:
        return
    wh = run.wh = open_warehouse(paths.warehouse, lock_timeout=lock_timeout)
    try:
        run.finish(exc)
        wh.checkpoint()  # no WAL may be left beside the file (a later swap would replay it)
    finally:
        wh.close()


def _finish_run_quietly(paths: LakePaths, lock_timeout: float, run: RunLogger | None,
                        exc: BaseException) -> None:
    """Record a failure; failing to do so must not hide the compaction's own error (the run
    then stays ``started`` and the next job closes it as killed)."""
    try:
        _finish_run(paths, lock_timeout, run, exc)
    except (OSError, WarehouseError):
        pass


def _refuse_leftover_wal(paths: LakePaths, tmp: Path) -> None:
    """Both files must be fully checkpointed: after the swap DuckDB would replay the old file's
    WAL onto the new file, and a temp file's WAL would be left behind."""
    for path in (paths.warehouse, tmp):
        wal = path.with_name(path.name + ".wal")
        if wal.exists():
            raise CompactionError(f"compaction failed: {wal} exists although the file was "
                                  "checkpointed; the warehouse is unchanged; run lake compact "
                                  "again", path=str(wal))


def _tables(wh: Warehouse, catalog: str | None) -> list[tuple[str, str, str]]:
    """(schema, table, CREATE statement) of every user table of ``catalog`` (None: the
    connection's own file), meta first."""
    rows = wh.fetchall(
        "SELECT schema_name, table_name, sql FROM duckdb_tables() "
        "WHERE database_name = coalesce(?, current_database()) "
        "AND NOT internal AND NOT temporary ORDER BY schema_name != 'meta', schema_name, "
        "table_name", [catalog], action="listing tables")
    return [(r[0], r[1], r[2]) for r in rows]


def _sort_keys(wh: Warehouse) -> dict[str, list[str]]:
    """The ORDER BY of each Lake data table: partition (if partitioned), primary key, then
    ``rowid`` so that rows equal on those keep their insertion order. Empty: keep the order."""
    rows = wh.fetchall(f"SELECT table_name, partition_column, primary_key FROM {SOURCE}"
                       ".meta.tables", action="reading meta.tables")
    keys = {}
    for name, partition, primary_key in rows:
        cols = ([PARTITION_COLUMN] if partition else []) + [
            c for c in (primary_key or "").split(",") if c]
        keys[name] = [*cols, "rowid"] if cols else []
    return keys


def _copy_table(new: Warehouse, schema: str, name: str, ddl: str, key: list[str] | None) -> None:
    """Create ``schema.name`` in the new file (unless migrate did) and fill it in one pass."""
    target = f"{quote(schema)}.{quote(name)}"
    source = f"{SOURCE}.{target}"
    old_cols = _columns(new, SOURCE, schema, name)
    new_cols = _columns(new, None, schema, name)
    if not new_cols:
        new.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}", action="creating a schema")
        new.execute(ddl, action=f"creating {_label(schema, name)}")  # the exact old definition
    elif new_cols != old_cols:
        raise CompactionError(f"compaction failed: {_label(schema, name)} differs from the "
                              f"fresh schema ({old_cols} vs {new_cols}); the warehouse is "
                              "unchanged")
    names = {c.lower(): c for c, _ in old_cols} | {"rowid": "rowid"}
    # Partition first, then key: row groups cover narrow partition ranges, so min/max
    # statistics let queries skip partitions. Meta tables keep their insertion order.
    cols = [names[k.lower()] for k in key or [] if k.lower() in names]
    order = " ORDER BY " + ", ".join(quote(c) for c in cols) if cols else ""
    column_list = ", ".join(quote(c) for c, _ in old_cols)
    new.execute(f"INSERT INTO {target} ({column_list}) SELECT {column_list} FROM {source}{order}",
                action=f"copying {_label(schema, name)}")


def _copy_sql_objects(new: Warehouse) -> None:
    """Recreate the old file's views and explicit indexes (after the data: indexes build once)."""
    for (sql,) in new.fetchall(
            "SELECT sql FROM duckdb_views() WHERE database_name = ? AND NOT internal "
            "UNION ALL SELECT sql FROM duckdb_indexes() WHERE database_name = ? AND sql IS NOT "
            "NULL", [SOURCE, SOURCE], action="listing views and indexes"):
        new.execute(sql, action="recreating a view or index")


def _refuse_foreign_objects(new: Warehouse) -> None:
    """Lake creates only tables, views and indexes; refuse what a copy could not carry over."""
    row = new.fetchone(
        "SELECT (SELECT count(*) FROM duckdb_sequences() WHERE database_name = $1), "
        "(SELECT count(*) FROM duckdb_functions() WHERE database_name = $1 AND NOT internal), "
        "(SELECT count(*) FROM duckdb_types() WHERE database_name = $1 AND NOT internal)",
        [SOURCE], action="listing sequences, macros and types")
    if row and any(row):
        raise CompactionError(
            f"cannot compact: the warehouse holds objects compaction cannot copy ({row[0]} "
            f"sequences, {row[1]} macros, {row[2]} types); drop them or copy by hand; the "
            "warehouse is unchanged")


def _verify(new: Warehouse, tables: list[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
    """Row count and checksum of every table, equal in both files; else CompactionError."""
    copied = {(s, n) for s, n, _ in _tables(new, None)}
    expected = {(s, n) for s, n, _ in tables}
    if copied != expected:
        raise CompactionError(f"compaction failed: the new file has tables "
                              f"{sorted(copied - expected)} extra and {sorted(expected - copied)}"
                              " missing; the warehouse is unchanged")
    checks: dict[str, dict[str, Any]] = {}
    for schema, name, _ddl in tables:
        # The same column list hashed on both sides, so column order cannot fake a mismatch.
        cols = ", ".join(quote(c) for c, _ in _columns(new, SOURCE, schema, name))
        sql = "SELECT count(*), coalesce(sum(hash({c})::HUGEINT), 0) FROM {t}"
        target = f"{quote(schema)}.{quote(name)}"
        old = new.fetchone(sql.format(c=cols, t=f"{SOURCE}.{target}"), action="verifying")
        got = new.fetchone(sql.format(c=cols, t=target), action="verifying")
        if old != got or old is None:
            raise CompactionError(
                f"compaction failed: verification failed for {_label(schema, name)}: old file "
                f"has {old}, new file {got} (rows, checksum); the warehouse is unchanged")
        checks[_label(schema, name)] = {"rows": int(old[0]), "checksum": str(old[1])}
    return checks


def _columns(wh: Warehouse, catalog: str | None, schema: str, name: str) -> list[tuple[str, str]]:
    """(name, type) of a table's columns in ``catalog`` (None: the connection's own file)."""
    rows = wh.fetchall(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = "
        "coalesce(?, current_database()) AND schema_name = ? AND table_name = ? "
        "ORDER BY column_index", [catalog, schema, name], action=f"reading columns of {name}")
    return [(r[0], r[1]) for r in rows]


def _backup(paths: LakePaths) -> Path:
    """Keep the current file as ``backups/lake-<UTC time>.duckdb`` (a hard link: no copy)."""
    paths.backups.mkdir(parents=True, exist_ok=True)
    target = paths.backups / f"lake-{utc_stamp()}.duckdb"
    link_or_copy(paths.warehouse, target)  # a link is free: the old inode lives on here
    fsync_dir(paths.backups)  # the backup's name is durable before the swap may happen
    return target


def _prune_backups(paths: LakePaths, keep: int) -> list[str]:
    """Delete Lake's backups beyond the newest ``keep`` (names sort by time); return them."""
    if not paths.backups.is_dir():
        return []
    ours = sorted(p for p in paths.backups.iterdir() if BACKUP_PATTERN.match(p.name))
    doomed = ours[: max(len(ours) - keep, 0)]
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        fsync_dir(paths.backups)
    return [str(p.relative_to(paths.root)) for p in doomed]


def _remove_temps(folder: Path, prefix: str) -> None:
    """Delete ``prefix*`` in ``folder``: a temp file with DuckDB's ``.wal`` and ``.tmp`` beside."""
    for path in folder.glob(f"{prefix}*"):
        delete_path(path)


def _failure(exc: BaseException, paths: LakePaths, needed: int) -> CompactionError:
    """Turn a failure before the swap into a CompactionError that says what to do."""
    if isinstance(exc, CompactionError):
        return exc
    text = str(exc)
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(exc, WarehouseError) and ("No space left" in text or "disk is full" in text
                                             or "Could not write" in text))
    if full:
        return CompactionError(
            f"compaction needs about {max(math.ceil(needed / _MIB), 1)} MiB free in "
            f"{paths.warehouse_dir}; free space or move backups, then run lake compact again; "
            "the warehouse is unchanged", path=str(paths.warehouse_dir))
    return CompactionError(f"compaction failed: {text}; the warehouse is unchanged; fix the "
                           "cause and run lake compact again", path=str(paths.warehouse))


def _check_stop(stop: StopFlag | None) -> None:
    if stop is not None:
        stop.raise_if_set()


def _label(schema: str, name: str) -> str:
    return name if schema == "main" else f"{schema}.{name}"


def _mib(size: int | None) -> str:
    return f"{(size or 0) / _MIB:.1f} MiB"
