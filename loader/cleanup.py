"""`lake cleanup`: stale temp files, abandoned runs, archive past retention.

Takes the warehouse lock (so it never races a load) and never touches a run the ledger does
not account for: archived runs are deleted only when the ledger says they were loaded or
skipped, and abandoned runs are not deleted but moved to quarantine (reason ``abandoned``)
and recorded in the ledger as quarantined.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lakehouse.config import LakeConfig
from lakehouse.db import open_warehouse
from lakehouse.layout import (
    ABANDONED_NAME,
    LakePaths,
    is_temp_name,
    parse_run_id,
)
from lakehouse.ledger import STATUS_QUARANTINED, record_runs, utcnow
from lakehouse.lock import WarehouseLock
from lakehouse.migrations import migrate
from lakehouse.moves import delete_run_folder, empty_trash, quarantine_run
from lakehouse.publish import mark_publish_pending, publish_pending, publish_snapshot
from lakehouse.staged import uncommitted_runs

DEFAULT_GRACE = timedelta(hours=1)


@dataclass
class CleanupAction:
    """One thing cleanup removed or moved (or would, in a dry run)."""

    kind: str  # temp_file | abandoned_run | expired_archive | trash
    path: str  # relative to the root
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
                 grace: timedelta = DEFAULT_GRACE, lock_timeout: float = 0.0) -> CleanupReport:
    """Remove stray temp files, quarantine abandoned runs, delete archive past retention.

    Raises:
        LockHeldError: a load or compaction holds the warehouse.
    """
    started = time.monotonic()
    now = now or datetime.now(UTC)
    paths = config.paths
    report = CleanupReport(dry_run=dry_run)
    with WarehouseLock(paths, "lake cleanup", lock_timeout):
        _temp_files(paths, now, grace, report)
        abandoned = _abandoned_runs(config, now, report)
        wh = open_warehouse(paths.warehouse, lock_timeout=lock_timeout)
        try:
            migrate(wh)
            accounted = _ledger_times(wh)
            if abandoned and not dry_run:
                rows = [_abandoned_row(t, r, reason) for t, r, reason in abandoned]
                # The ledger row commits before the folder moves; a crash between the two
                # leaves a run the next load recognises as quarantined and moves for us.
                mark_publish_pending(paths)
                with wh.transaction("recording abandoned runs"):
                    record_runs(wh, rows)
                for table, run_id, reason in abandoned:
                    quarantine_run(paths, table, run_id, reason)
            _expired_archive(config, accounted, now, report)
            wh.checkpoint()
        finally:
            wh.close()
        if not dry_run and publish_pending(paths):
            publish_snapshot(paths)  # readers and `lake audit` see the new ledger rows
        if not dry_run:
            count = empty_trash(paths)
            if count:
                report.actions.append(CleanupAction("trash", "archive/.trash",
                                                    f"{count} half-deleted folders"))
    report.seconds = time.monotonic() - started
    return report


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
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _abandoned_runs(config: LakeConfig, now: datetime,
                    report: CleanupReport) -> list[tuple[str, str, dict[str, Any]]]:
    """Uncommitted run folders whose newest file is older than ``abandon_after_hours``."""
    paths = config.paths
    limit = timedelta(hours=config.settings.abandon_after_hours)
    found: list[tuple[str, str, dict[str, Any]]] = []
    for run_dir in uncommitted_runs(paths):
        table_dir = run_dir.parent
        # A producer still writing touches files: age is that of the newest entry.
        entries = [run_dir, *run_dir.iterdir()]
        age = min(_age(p, now) for p in entries)
        if age < limit:
            report.kept.append(CleanupAction("abandoned_run", _rel(paths, run_dir),
                                             f"uncommitted for {age}, below the limit"))
            continue
        note: dict[str, Any] = {}
        marker = run_dir / ABANDONED_NAME
        if marker.exists():
            try:
                note = json.loads(marker.read_text())
            except (OSError, ValueError):
                note = {}
        reason: dict[str, Any] = {
            "code": "abandoned", "table": table_dir.name, "run_id": run_dir.name,
            "message": f"never committed (no manifest) and untouched for {age}; "
                       "the producer died or raised",
            "producer_error": note.get("error"), "failure_count": 0, "failure_sample": []}
        report.actions.append(CleanupAction("abandoned_run", _rel(paths, run_dir),
                                            f"uncommitted for {age}"))
        found.append((table_dir.name, run_dir.name, reason))
    return found


def _abandoned_row(table: str, run_id: str, reason: dict[str, Any]) -> dict[str, Any]:
    parts = parse_run_id(run_id)
    return {"run_id": run_id, "table_name": table,
            "producer": parts.producer if parts else None, "status": STATUS_QUARANTINED,
            "reason_code": "abandoned", "reason_json": json.dumps(reason, default=str),
            "rows_staged": 0, "rows_loaded": 0, "rows_rejected": 0,
            "created_at": parts.created_at.replace(tzinfo=None) if parts else None,
            "recorded_at": utcnow()}


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
    for table_dir in sorted(paths.archive.iterdir()):
        if table_dir.name.startswith(".") or not table_dir.is_dir():
            continue
        for run_dir in sorted(table_dir.iterdir()):
            if is_temp_name(run_dir.name) or not run_dir.is_dir():
                continue
            run_id = run_dir.name if parse_run_id(run_dir.name) else _strip_suffix(run_dir.name)
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


def _strip_suffix(name: str) -> str:
    """``<run_id>.N`` (a second folder of the same run) back to ``<run_id>``."""
    head, _, tail = name.rpartition(".")
    return head if tail.isdigit() and parse_run_id(head) else name
