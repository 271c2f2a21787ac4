"""`lake cleanup`: stale temp files, abandoned runs, archive past retention.

Takes the warehouse lock (so it never races a load) and never touches a run the ledger does
not account for: archived runs are deleted only when the ledger says they were loaded or
skipped, and abandoned runs are not deleted but moved to quarantine (reason ``abandoned``)
and recorded in the ledger as quarantined.

With staging in an object store (``[lake] staging_root``) the same rules apply to the bucket:
there are no temp files there (each object is one PUT), a run's age is its newest object's
last-modified time, abandoned runs move by copy-then-delete (``ObjectArea.quarantine``: the
reason is written in quarantine before anything is deleted from staging), and expired
archived runs are deleted in bulk, every data object before any manifest. Temp files are
still looked for under the local root, which keeps the warehouse.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lakehouse import failpoints
from lakehouse.areas import staging_area
from lakehouse.config import LakeConfig
from lakehouse.db import Warehouse, open_warehouse
from lakehouse.errors import LakehouseError, StagingUnavailableError, UnsafeFileError
from lakehouse.export_delta import delta_exports
from lakehouse.export_delta_target import delta_target, vacuum
from lakehouse.export_target import open_target
from lakehouse.fsio import MARKER_MAX_BYTES, delete_path, read_regular
from lakehouse.layout import (
    ABANDONED_NAME,
    ARCHIVE_DIR,
    MANIFEST_NAME,
    STAGING_DIR,
    LakePaths,
    is_temp_name,
    run_id_of_folder,
)
from lakehouse.ledger import abandoned_row, record_runs
from lakehouse.lock import WarehouseLock
from lakehouse.migrations import migrate
from lakehouse.moves import delete_run_folder, empty_trash
from lakehouse.object_area import ObjectArea
from lakehouse.object_store import StoredObject
from lakehouse.observability import RunLogger
from lakehouse.publish import (
    mark_publish_pending,
    publish_pending,
    publish_snapshot,
    remove_superseded_snapshots,
)
from lakehouse.staged import uncommitted_runs

DEFAULT_GRACE = timedelta(hours=1)


@dataclass
class CleanupAction:
    """One thing cleanup removed or moved (or would, in a dry run)."""

    kind: str  # temp_file | abandoned_run | expired_archive | trash | delta_vacuum
    path: str  # relative to the root (a URL for a run in an object store)
    detail: str = ""


@dataclass
class CleanupReport:
    """What `lake cleanup` did."""

    dry_run: bool
    actions: list[CleanupAction] = field(default_factory=list)
    kept: list[CleanupAction] = field(default_factory=list)  # left alone, with the reason
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for a in self.actions if a.kind == kind)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "seconds": round(self.seconds, 3),
                "removed_temp_files": self.count("temp_file"),
                "quarantined_abandoned_runs": self.count("abandoned_run"),
                "deleted_archived_runs": self.count("expired_archive"),
                "actions": [asdict(a) for a in self.actions],
                "kept": [asdict(a) for a in self.kept]}


def cleanup_lake(config: LakeConfig, *, dry_run: bool = False, now: datetime | None = None,
                 grace: timedelta = DEFAULT_GRACE, lock_timeout: float = 0.0,
                 triggered_by: str = "cli") -> CleanupReport:
    """Remove stray temp files, quarantine abandoned runs, delete archive past retention.

    A cleanup that is not a dry run records one ``cleanup`` run in the run log, even when it
    finds nothing to do.

    Args:
        now: the time ages are measured against (tests pass a later one to make runs old).
        triggered_by: who started it, for the run log (``cli``, ``cron``, ...).

    Raises:
        LockHeldError: a load or compaction holds the warehouse.
        StagingUnavailableError: the object store holding staging did not answer.
    """
    started = time.monotonic()
    now = now or datetime.now(UTC)
    paths = config.paths
    report = CleanupReport(dry_run=dry_run)
    area = staging_area(config)
    store = area if isinstance(area, ObjectArea) else None
    with WarehouseLock(paths, "lake cleanup", lock_timeout):
        wh = open_warehouse(paths.warehouse, lock_timeout=lock_timeout)
        try:
            migrate(wh)
            if dry_run:
                _clean(config, wh, store, now, grace, report)
            else:
                # The run covers everything cleanup changes; it closes before the publish,
                # so the snapshot shows it (a failed publish is retried by the next writer).
                with RunLogger(wh, "cleanup", triggered_by,
                               args={"grace_minutes": grace.total_seconds() / 60}):
                    _clean(config, wh, store, now, grace, report)
            wh.checkpoint()
        finally:
            wh.close()
        if not dry_run and publish_pending(paths):
            publish_snapshot(paths)  # readers and `lake audit` see the new ledger rows
        elif not dry_run:
            remove_superseded_snapshots(paths)
    report.seconds = time.monotonic() - started
    return report


def _clean(config: LakeConfig, wh: Warehouse, store: ObjectArea | None, now: datetime,
           grace: timedelta, report: CleanupReport) -> None:
    """Cleanup's steps, under the lock, with the warehouse open (nothing moves in a dry run)."""
    paths, dry_run = config.paths, report.dry_run
    area = store or staging_area(config)
    _temp_files(paths, now, grace, report)
    abandoned = (_abandoned_runs(config, now, report) if store is None
                 else _abandoned_objects(store, config, now, report))
    accounted = _ledger_times(wh)
    if abandoned and not dry_run:
        # A run already recorded is one whose move a crash interrupted: the ledger
        # keeps its row (a second one would break the key); only the move is redone.
        rows = [abandoned_row(t, r, reason) for t, r, reason in abandoned
                if (t, r) not in accounted]
        if rows:
            # The ledger row commits before the run moves; a crash between the two
            # leaves the run in staging, and the next cleanup moves it.
            mark_publish_pending(paths)
            with wh.transaction("recording abandoned runs"):
                record_runs(wh, rows)
        failpoints.hit("cleanup.after_record")
        for table, run_id, reason in abandoned:
            area.quarantine(table, run_id, reason)
    if store is None:
        _expired_archive(config, accounted, now, report)
    else:
        _expired_objects(store, config, accounted, now, report)
    _vacuum_delta_exports(config, delta_exports(wh), report)
    if not dry_run:
        count = empty_trash(paths)
        if count:
            report.actions.append(CleanupAction("trash", "archive/.trash",
                                                f"{count} half-deleted folders"))


def _vacuum_delta_exports(config: LakeConfig, exports: list[tuple[str, str]],
                          report: CleanupReport) -> None:
    """Vacuum each Delta export: delete files no version younger than
    ``export_retention_hours`` needs (never the latest version's). Holding the lock, no
    export writes meanwhile. A target that is gone or unreachable is reported, not fatal."""
    hours = config.settings.export_retention_hours
    for to, table in exports:
        try:
            target = delta_target(open_target(to, table, config.paths,
                                              config.settings.staging_root))
            if not target.exists():
                continue
            removed = vacuum(target, hours, dry_run=report.dry_run)
        except (LakehouseError, OSError) as exc:
            report.kept.append(CleanupAction("delta_vacuum", f"{to}/{table}", str(exc)))
            continue
        except Exception as exc:  # delta-rs raises its own and plain exceptions
            report.kept.append(CleanupAction("delta_vacuum", f"{to}/{table}",
                                             f"cannot vacuum: {exc}".splitlines()[0]))
            continue
        if removed:
            report.actions.append(CleanupAction(
                "delta_vacuum", target.shown,
                f"{len(removed)} files unused for over {hours} hours"))


def _rel(paths: LakePaths, path: Path) -> str:
    return str(path.relative_to(paths.root))


def _age(path: Path, now: datetime) -> timedelta:
    try:
        mtime = path.lstat().st_mtime
    except OSError:
        return timedelta(0)
    return now - datetime.fromtimestamp(mtime, UTC)


def _temp_files(paths: LakePaths, now: datetime, grace: timedelta,
                report: CleanupReport) -> None:
    """``*.tmp-*`` files and folders older than the grace period: a writer died mid-write."""
    for base in (paths.staging, paths.warehouse_dir, paths.quarantine, paths.archive):
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if not is_temp_name(path.name) or not (path.exists() or path.is_symlink()):
                continue
            age = _age(path, now)
            if age < grace:
                report.kept.append(CleanupAction("temp_file", _rel(paths, path),
                                                 f"younger than the grace period ({age})"))
                continue
            report.actions.append(CleanupAction("temp_file", _rel(paths, path), f"age {age}"))
            if not report.dry_run:
                delete_path(path)


def _abandoned_runs(config: LakeConfig, now: datetime,
                    report: CleanupReport) -> list[tuple[str, str, dict[str, Any]]]:
    """Uncommitted run folders whose newest file is older than ``abandon_after_hours``."""
    paths = config.paths
    limit = timedelta(hours=config.settings.abandon_after_hours)
    found: list[tuple[str, str, dict[str, Any]]] = []
    for run_dir in uncommitted_runs(paths):
        table_dir = run_dir.parent
        # A producer still writing touches files: age is that of the newest entry. A
        # symlinked run folder is never looked into (quarantine moves the link itself).
        linked = run_dir.is_symlink()
        entries = [run_dir] if linked else [run_dir, *run_dir.iterdir()]
        age = min(_age(p, now) for p in entries)
        if age < limit:
            report.kept.append(CleanupAction("abandoned_run", _rel(paths, run_dir),
                                             f"uncommitted for {age}, below the limit"))
            continue
        data: bytes | OSError | None = None
        if not linked:
            try:
                data = read_regular(run_dir / ABANDONED_NAME, MARKER_MAX_BYTES)
            except FileNotFoundError:
                pass
            except OSError as exc:  # a link, a FIFO, a device, too big: reported, not read
                data = exc
        note, problem = _note(data)
        reason = _abandoned_reason(table_dir.name, run_dir.name, age, note, problem)
        report.actions.append(CleanupAction("abandoned_run", _rel(paths, run_dir),
                                            _detail(age, problem)))
        found.append((table_dir.name, run_dir.name, reason))
    return found


def _note(data: bytes | OSError | None) -> tuple[dict[str, Any], str | None]:
    """The producer's ``_abandoned.json`` as read (``{}`` if there is none or it is not a
    JSON object), and what was wrong with it when it could not be read: a link, a FIFO, a
    device or an oversize file is reported, never followed, waited on or read whole."""
    if isinstance(data, UnsafeFileError):
        return {}, f"{ABANDONED_NAME} is {data.what}: not read"
    if isinstance(data, OSError):
        return {}, f"{ABANDONED_NAME} could not be read: {data}"
    if data is None:
        return {}, None
    try:
        note = json.loads(data)
    except (ValueError, RecursionError):
        return {}, None
    return (note if isinstance(note, dict) else {}), None


def _abandoned_reason(table: str, run_id: str, age: timedelta, note: dict[str, Any],
                      problem: str | None) -> dict[str, Any]:
    reason: dict[str, Any] = {
        "code": "abandoned", "table": table, "run_id": run_id,
        "message": f"never committed (no manifest) and untouched for {age}; "
                   "the producer died or raised",
        "producer_error": note.get("error"), "failure_count": 0, "failure_sample": []}
    if problem is not None:
        reason["marker_problem"] = problem
    return reason


def _detail(age: timedelta, problem: str | None) -> str:
    return f"uncommitted for {age}" + (f"; {problem}" if problem else "")


def _abandoned_objects(store: ObjectArea, config: LakeConfig, now: datetime,
                       report: CleanupReport) -> list[tuple[str, str, dict[str, Any]]]:
    """Run folders in the bucket's staging without a manifest whose newest object was last
    modified more than ``abandon_after_hours`` ago (one listing of ``staging/``)."""
    limit = timedelta(hours=config.settings.abandon_after_hours)
    runs = {k: v for k, v in sorted(store.runs_detail(STAGING_DIR).items())
            if MANIFEST_NAME not in v}
    old: list[tuple[str, str, str, timedelta]] = []
    for (table, run_id), objects in runs.items():
        folder = store.folder(STAGING_DIR, table, run_id)
        newest = store.newest(folder, objects)
        if newest is None:
            report.kept.append(CleanupAction("abandoned_run", store.url(folder),
                                             "the store gives no last-modified time"))
            continue
        # A producer still writing PUTs objects: age is that of the newest one.
        age = now - newest
        if age < limit:
            report.kept.append(CleanupAction("abandoned_run", store.url(folder),
                                             f"uncommitted for {age}, below the limit"))
            continue
        old.append((table, run_id, folder, age))
    notes = store.read_many({f"{folder}/{ABANDONED_NAME}": marker.size
                             for table, run_id, folder, _ in old
                             if (marker := runs[(table, run_id)].get(ABANDONED_NAME))})
    found: list[tuple[str, str, dict[str, Any]]] = []
    for table, run_id, folder, age in old:
        note, problem = _note(notes.get(f"{folder}/{ABANDONED_NAME}"))
        reason = _abandoned_reason(table, run_id, age, note, problem)
        report.actions.append(CleanupAction("abandoned_run", store.url(folder),
                                            _detail(age, problem)))
        found.append((table, run_id, reason))
    return found


def _ledger_times(wh: Any) -> dict[tuple[str, str], tuple[str, datetime]]:
    rows = wh.fetchall("SELECT table_name, run_id, status, recorded_at FROM meta.staged_runs",
                       action="reading the ledger")
    return {(t, r): (s, at) for t, r, s, at in rows}


def _expired_archive(config: LakeConfig, accounted: dict[tuple[str, str], tuple[str, datetime]],
                     now: datetime, report: CleanupReport) -> None:
    """Archived runs loaded more than ``retention_days`` ago, and only those the ledger knows."""
    paths = config.paths
    if not paths.archive.is_dir():
        return
    cutoff = now.replace(tzinfo=None) - timedelta(days=config.settings.retention_days)
    deleted = 0
    for table_dir in sorted(paths.archive.iterdir()):
        # Links are never followed: deleting through one would delete outside the lake.
        if table_dir.name.startswith(".") or table_dir.is_symlink() or not table_dir.is_dir():
            continue
        for run_dir in sorted(table_dir.iterdir()):
            if is_temp_name(run_dir.name) or run_dir.is_symlink() or not run_dir.is_dir():
                continue
            run_id = run_id_of_folder(run_dir.name)
            entry = accounted.get((table_dir.name, run_id))
            if entry is None or entry[0] not in ("loaded", "skipped"):
                report.kept.append(CleanupAction("expired_archive", _rel(paths, run_dir),
                                                 "not accounted for by the ledger: left alone "
                                                 "(see lake audit)"))
                continue
            if entry[1] > cutoff:
                continue
            report.actions.append(CleanupAction("expired_archive", _rel(paths, run_dir),
                                                f"{entry[0]} at {entry[1]:%Y-%m-%d %H:%M}"))
            if not report.dry_run:
                delete_run_folder(paths, run_dir)
                deleted += 1
                if deleted == 1:
                    failpoints.hit("cleanup.mid_expire")  # one run deleted, the others not


def _expired_objects(store: ObjectArea, config: LakeConfig,
                     accounted: dict[tuple[str, str], tuple[str, datetime]], now: datetime,
                     report: CleanupReport) -> None:
    """Archived runs in the bucket loaded more than ``retention_days`` ago (by the ledger's
    time, as on local disk), and only those the ledger knows; deleted in bulk."""
    cutoff = now.replace(tzinfo=None) - timedelta(days=config.settings.retention_days)
    doomed: list[tuple[str, dict[str, StoredObject]]] = []
    for (table, name), objects in sorted(store.runs_detail(ARCHIVE_DIR).items()):
        if is_temp_name(name):
            continue
        folder = store.folder(ARCHIVE_DIR, table, name)
        run_id = run_id_of_folder(name)
        entry = accounted.get((table, run_id))
        if entry is None or entry[0] not in ("loaded", "skipped"):
            report.kept.append(CleanupAction("expired_archive", store.url(folder),
                                             "not accounted for by the ledger: left alone "
                                             "(see lake audit)"))
            continue
        if entry[1] > cutoff:
            continue
        report.actions.append(CleanupAction("expired_archive", store.url(folder),
                                            f"{entry[0]} at {entry[1]:%Y-%m-%d %H:%M}"))
        doomed.append((folder, objects))
    if report.dry_run or not doomed:
        return
    # Every data object before any manifest: a cleanup killed halfway leaves runs that still
    # hold their manifest (and stay expired), which the next cleanup deletes.
    store.remove_many([f"{folder}/{name}" for folder, objects in doomed for name in objects
                       if name != MANIFEST_NAME])
    failpoints.hit("cleanup.mid_expire")
    store.remove_many([f"{folder}/{MANIFEST_NAME}" for folder, objects in doomed
                       if MANIFEST_NAME in objects])
    # Bulk deletes report failures per key, and store clients may drop those reports.
    left = {store.folder(ARCHIVE_DIR, t, r) for t, r in store.runs_in(ARCHIVE_DIR)}
    stuck = [folder for folder, _ in doomed if folder in left]
    if stuck:
        raise StagingUnavailableError(
            f"could not delete {len(stuck)} expired archived run(s), e.g. "
            f"{store.url(stuck[0])}: check the credentials' delete permission; the next "
            "`lake cleanup` tries again")
