"""`lake quarantine list` and `lake quarantine replay RUN`.

A quarantine folder is one of two kinds:

- a whole rejected run (its files, its manifest and ``_reason.json``): replay moves it back to
  ``staging/`` and forgets its ``quarantined`` ledger row, so the next load retries it;
- the rejected rows of a ``drop_rows`` run whose valid rows loaded (``_rejected_rows.parquet``
  and ``_reason.json``): replay stages those rows as a new run (producer ``replay``).

Both take the warehouse lock: replay changes the ledger.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lakehouse.config import LakeConfig
from lakehouse.db import open_warehouse
from lakehouse.errors import UsageError
from lakehouse.fsio import atomic_write_bytes, file_digest, fsync_dir, rename_durably
from lakehouse.layout import (
    DATA_SUFFIX,
    MANIFEST_NAME,
    REASON_NAME,
    REJECTED_ROWS_NAME,
    SYMLINK_NAME,
    LakePaths,
    is_temp_name,
    new_run_id,
)
from lakehouse.ledger import forget_run
from lakehouse.lock import WarehouseLock
from lakehouse.manifest import FileEntry, Manifest
from lakehouse.migrations import migrate
from lakehouse.moves import delete_run_folder
from lakehouse.publish import mark_publish_pending, publish_snapshot


@dataclass
class QuarantinedRun:
    """One folder in ``quarantine/``."""

    table: str
    run_id: str
    kind: str  # run | rejected_rows | symlink
    code: str | None
    message: str | None
    failure_count: int | None
    quarantined_at: str
    path: str  # relative to the root

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_quarantine(config: LakeConfig, table: str | None = None) -> list[QuarantinedRun]:
    """Every quarantined run or row set, oldest first (read-only, no lock)."""
    paths = config.paths
    found: list[QuarantinedRun] = []
    if not paths.quarantine.is_dir():
        return found
    for table_dir in sorted(paths.quarantine.iterdir()):
        if not table_dir.is_dir() or (table is not None and table_dir.name != table):
            continue
        for run_dir in sorted(table_dir.iterdir()):
            if not run_dir.is_dir() or is_temp_name(run_dir.name):
                continue
            found.append(_describe(paths, table_dir.name, run_dir))
    found.sort(key=lambda q: (q.quarantined_at, q.run_id))
    return found


def _describe(paths: LakePaths, table: str, run_dir: Path) -> QuarantinedRun:
    reason: dict[str, Any] = {}
    try:
        reason = json.loads((run_dir / REASON_NAME).read_text())
    except (OSError, ValueError):
        pass
    if (run_dir / SYMLINK_NAME).is_symlink():
        kind = "symlink"
    elif (run_dir / REJECTED_ROWS_NAME).exists() and not (run_dir / MANIFEST_NAME).exists():
        kind = "rejected_rows"
    else:
        kind = "run"
    when = datetime.fromtimestamp((run_dir / REASON_NAME).stat().st_mtime
                                  if (run_dir / REASON_NAME).exists()
                                  else run_dir.stat().st_mtime, UTC)
    return QuarantinedRun(
        table=table, run_id=run_dir.name, kind=kind, code=reason.get("code"),
        message=reason.get("message"), failure_count=reason.get("failure_count"),
        quarantined_at=when.isoformat(timespec="seconds"),
        path=str(run_dir.relative_to(paths.root)))


@dataclass
class ReplayResult:
    """What `lake quarantine replay` did."""

    table: str
    quarantined: str  # the folder that was replayed (relative)
    staged: str  # where it is now in staging (relative)
    kind: str
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay_run(config: LakeConfig, run: str, *, dry_run: bool = False,
               lock_timeout: float = 0.0) -> ReplayResult:
    """Put a quarantined run (or its rejected rows) back into staging for the next load.

    Raises:
        UsageError: no such quarantined run, several match, or it cannot be replayed.
        LockHeldError: a load or compaction holds the warehouse.
    """
    paths = config.paths
    matches = [q for q in list_quarantine(config) if q.run_id == run or q.path == run
               or q.path.endswith("/" + run)]
    if not matches:
        raise UsageError(f"no quarantined run {run!r}: see `lake quarantine list`")
    if len(matches) > 1:
        raise UsageError(f"{run!r} matches several folders: {[m.path for m in matches]}; "
                         "give the path shown by `lake quarantine list`")
    q = matches[0]
    source = paths.root / q.path
    if q.kind == "symlink":
        raise UsageError(f"{q.path} was a symlinked run folder; it cannot be replayed. "
                         "Stage the data again with stage_run")
    if q.table not in config.tables:
        raise UsageError(f"table {q.table!r} is not declared in lake.toml: declare it first")
    if q.kind == "rejected_rows":
        run_id = new_run_id("replay")
        target = paths.staged_run(q.table, run_id)
        if not dry_run:
            with WarehouseLock(paths, "lake quarantine replay", lock_timeout):
                _stage_rejected_rows(paths, q.table, run_id, source)
        return ReplayResult(q.table, q.path, str(target.relative_to(paths.root)), q.kind,
                            dry_run)
    run_id = _original_run_id(source)
    target = paths.staged_run(q.table, run_id)
    if target.exists():
        raise UsageError(f"{target.relative_to(paths.root)} already exists in staging")
    if not dry_run:
        with WarehouseLock(paths, "lake quarantine replay", lock_timeout):
            wh = open_warehouse(paths.warehouse, lock_timeout=lock_timeout)
            try:
                migrate(wh)
                # Forget the ledger row first: if we die before the move, the run simply
                # stays in quarantine; the other order would re-quarantine it on next load.
                mark_publish_pending(paths)
                with wh.transaction("forgetting the quarantined ledger row"):
                    forget_run(wh, q.table, run_id)
                wh.checkpoint()
            finally:
                wh.close()
            rename_durably(source, target)
            publish_snapshot(paths)
    return ReplayResult(q.table, q.path, str(target.relative_to(paths.root)), q.kind, dry_run)


def _original_run_id(folder: Path) -> str:
    try:
        return Manifest.from_json((folder / MANIFEST_NAME).read_bytes()).run_id
    except Exception:  # no or bad manifest: the folder name is the run id (maybe with .N)
        head, _, tail = folder.name.rpartition(".")
        return head if tail.isdigit() else folder.name


def _stage_rejected_rows(paths: LakePaths, table: str, run_id: str, source: Path) -> None:
    """Stage ``_rejected_rows.parquet`` as a new committed run, then remove the quarantine
    folder. Same protocol as a producer: files first, manifest last."""
    run_dir = paths.staged_run(table, run_id)
    run_dir.mkdir(parents=True)
    data_name = f"part-00000{DATA_SUFFIX}"
    data = (source / REJECTED_ROWS_NAME).read_bytes()
    atomic_write_bytes(run_dir / data_name, data)
    size, digest = file_digest(run_dir / data_name)
    meta = pq.read_metadata(run_dir / data_name)
    schema = pq.read_schema(run_dir / data_name)
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    entry = FileEntry(data_name, meta.num_rows, size, digest)
    manifest = Manifest(table=table, run_id=run_id, producer="replay", created_at=now,
                        committed_at=now, files=(entry,),
                        schema=tuple((f.name, str(f.type)) for f in schema),
                        extra={"replayed_from": str(source.relative_to(paths.root))})
    atomic_write_bytes(run_dir / MANIFEST_NAME, manifest.to_json())  # commits the run
    fsync_dir(run_dir.parent)
    # The rows now live in the new run (which is quarantined again if they still fail).
    delete_run_folder(paths, source)
