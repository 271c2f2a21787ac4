"""`lake quarantine list` and `lake quarantine replay RUN`.

A quarantine folder is one of two kinds:

- a whole rejected run (its files, its manifest and ``_reason.json``): replay moves it back to
  ``staging/`` and forgets its ``quarantined`` ledger row, so the next load retries it;
- the rejected rows of a ``drop_rows`` run whose valid rows loaded (``_rejected_rows.parquet``
  and ``_reason.json``): replay stages those rows as a new run (producer ``replay``).

Both take the warehouse lock: replay changes the ledger.

With staging in an object store (``[lake] staging_root``) the folders are prefixes in the
bucket, listed in one request per 1,000 objects, and a replay is copy-then-delete: the run's
objects are copied back to ``staging/`` (data first, the manifest last), then the ledger
forgets the run, then the quarantined objects are deleted (data first, the manifest last).
A replay killed at any point leaves the run whole in quarantine, in staging, or in both, and
running the replay again finishes it (``replay_run``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse import failpoints
from lakehouse.areas import staging_area
from lakehouse.config import LakeConfig
from lakehouse.db import Warehouse, open_warehouse
from lakehouse.errors import UnsafeFileError, UsageError
from lakehouse.fsio import (
    MARKER_MAX_BYTES,
    atomic_write,
    atomic_write_bytes,
    bytes_digest,
    fsync_dir,
    open_regular,
    read_regular,
    rename_durably,
)
from lakehouse.layout import (
    DATA_SUFFIX,
    MANIFEST_NAME,
    QUARANTINE_DIR,
    REASON_NAME,
    REJECTED_ROWS_NAME,
    STAGING_DIR,
    SYMLINK_NAME,
    LakePaths,
    is_temp_name,
    new_run_id,
    run_id_of_folder,
)
from lakehouse.ledger import forget_run
from lakehouse.lock import WarehouseLock
from lakehouse.manifest import FileEntry, Manifest
from lakehouse.migrations import migrate
from lakehouse.moves import delete_run_folder
from lakehouse.object_area import ObjectArea
from lakehouse.observability import RunLogger
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
    path: str  # relative to the root (a URL when staging is in an object store)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_quarantine(config: LakeConfig, table: str | None = None) -> list[QuarantinedRun]:
    """Every quarantined run or row set, oldest first (read-only, no lock)."""
    area = staging_area(config)
    if isinstance(area, ObjectArea):
        return _list_objects(area, table)
    paths = config.paths
    found: list[QuarantinedRun] = []
    if not paths.quarantine.is_dir():
        return found
    for table_dir in sorted(paths.quarantine.iterdir()):
        if table_dir.is_symlink() or not table_dir.is_dir() or (
                table is not None and table_dir.name != table):
            continue
        for run_dir in sorted(table_dir.iterdir()):
            if is_temp_name(run_dir.name) or not (run_dir.is_symlink() or run_dir.is_dir()):
                continue
            found.append(_describe(paths, table_dir.name, run_dir))
    found.sort(key=lambda q: (q.quarantined_at, q.run_id))
    return found


def _describe(paths: LakePaths, table: str, run_dir: Path) -> QuarantinedRun:
    """One quarantine folder, looked at without following a link or opening a special file
    (an abandoned run's files are whatever its producer left)."""
    if run_dir.is_symlink():  # never looked into: shown, and refused by replay
        return QuarantinedRun(
            table=table, run_id=run_dir.name, kind="symlink", code=None,
            message="a symlink in quarantine/, not a run folder: never followed; remove it",
            failure_count=None, quarantined_at=_since(run_dir.lstat().st_mtime),
            path=str(run_dir.relative_to(paths.root)))
    try:
        data: bytes | OSError | None = read_regular(run_dir / REASON_NAME, MARKER_MAX_BYTES)
    except FileNotFoundError:
        data = None
    except OSError as exc:
        data = exc
    reason, problem = _reason_of(data)
    names = {name: _lstat(run_dir / name) for name in
             (REASON_NAME, SYMLINK_NAME, REJECTED_ROWS_NAME, MANIFEST_NAME)}
    marker = names[REASON_NAME]
    return QuarantinedRun(
        table=table, run_id=run_dir.name,
        kind=_kind_of(reason, {n for n, info in names.items() if info is not None}),
        code=reason.get("code"), message=problem or reason.get("message"),
        failure_count=reason.get("failure_count"),
        quarantined_at=_since((marker or run_dir.lstat()).st_mtime),
        path=str(run_dir.relative_to(paths.root)))


def _reason_of(data: bytes | OSError | None) -> tuple[dict[str, Any], str | None]:
    """A ``_reason.json`` as read, and what was wrong with it when it could not be read."""
    if isinstance(data, UnsafeFileError):
        return {}, f"{REASON_NAME} is {data.what}: not read"
    if isinstance(data, OSError):
        return {}, f"{REASON_NAME} could not be read: {data}"
    if data is None:
        return {}, None
    try:
        reason = json.loads(data)
    except (ValueError, RecursionError):
        return {}, f"{REASON_NAME} is not JSON"
    return (reason, None) if isinstance(reason, dict) else ({}, f"{REASON_NAME} is not an object")


def _kind_of(reason: dict[str, Any], present: set[str]) -> str:
    """``symlink``, ``rejected_rows`` or ``run``.

    Rejected rows are what a ``drop_rows`` load put there (reason ``rows_dropped``, or no
    reason yet: an object-store move killed between its two PUTs). A file of that name in
    an abandoned run came from its producer: that folder is a run, replayed as one (never
    staged as committed rows)."""
    if SYMLINK_NAME in present:
        return "symlink"
    if (REJECTED_ROWS_NAME in present and MANIFEST_NAME not in present
            and reason.get("code", "rows_dropped") == "rows_dropped"):
        return "rejected_rows"
    return "run"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:
        return None


def _since(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")


def _list_objects(store: ObjectArea, table: str | None) -> list[QuarantinedRun]:
    """The quarantine in an object store: one listing, then every reason read at once."""
    runs = {k: v for k, v in store.runs_detail(QUARANTINE_DIR, table).items()
            if not is_temp_name(k[1])}
    texts = store.read_many({f"{store.folder(QUARANTINE_DIR, t, r)}/{REASON_NAME}":
                             objects[REASON_NAME].size
                             for (t, r), objects in runs.items() if REASON_NAME in objects})
    found: list[QuarantinedRun] = []
    for (name, folder_name), objects in runs.items():
        folder = store.folder(QUARANTINE_DIR, name, folder_name)
        reason, problem = _reason_of(texts.get(f"{folder}/{REASON_NAME}"))
        kind = _kind_of(reason, set(objects))
        # Since the reason was written; without one (a move still copying), the newest object.
        when = (store.newest(folder, objects, REASON_NAME) or store.newest(folder, objects)
                or datetime.fromtimestamp(0, UTC))
        found.append(QuarantinedRun(
            table=name, run_id=folder_name, kind=kind, code=reason.get("code"),
            message=problem or reason.get("message"), failure_count=reason.get("failure_count"),
            quarantined_at=when.isoformat(timespec="seconds"), path=store.url(folder)))
    found.sort(key=lambda q: (q.quarantined_at, q.run_id))
    return found


@dataclass
class ReplayResult:
    """What `lake quarantine replay` did."""

    table: str
    quarantined: str  # the folder that was replayed (relative, or a URL)
    staged: str  # where it is now in staging (relative, or a URL)
    kind: str
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay_run(config: LakeConfig, run: str, *, dry_run: bool = False,
               lock_timeout: float = 0.0, triggered_by: str = "cli") -> ReplayResult:
    """Put a quarantined run (or its rejected rows) back into staging for the next load.

    A replay that is not a dry run records one ``quarantine_replay`` run in the run log.

    Raises:
        UsageError: no such quarantined run, several match, or it cannot be replayed.
        LockHeldError: a load or compaction holds the warehouse.
        StagingUnavailableError: the object store holding staging did not answer.
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
    if q.kind == "symlink":
        raise UsageError(f"{q.path} was a symlinked run folder; it cannot be replayed. "
                         "Stage the data again with stage_run")
    if q.table not in config.tables:
        raise UsageError(f"table {q.table!r} is not declared in lake.toml: declare it first")
    area = staging_area(config)
    if isinstance(area, ObjectArea):
        return _replay_object(config, area, q, dry_run, lock_timeout, triggered_by)
    source = paths.root / q.path
    if q.kind == "rejected_rows":
        run_id = new_run_id("replay")
        target = paths.staged_run(q.table, run_id)
        if not dry_run:
            with WarehouseLock(paths, "lake quarantine replay", lock_timeout), \
                    _recorded(paths, q, lock_timeout, triggered_by):
                _stage_rejected_rows(paths, q.table, run_id, source)
        return ReplayResult(q.table, q.path, str(target.relative_to(paths.root)), q.kind,
                            dry_run)
    run_id = run_id_of_folder(source.name)
    target = paths.staged_run(q.table, run_id)
    if target.exists():
        raise UsageError(f"{target.relative_to(paths.root)} already exists in staging")
    if not dry_run:
        with WarehouseLock(paths, "lake quarantine replay", lock_timeout):
            with _recorded(paths, q, lock_timeout, triggered_by) as wh:
                # Forget the ledger row first: if we die before the move, the run simply
                # stays in quarantine; the other order would re-quarantine it on next load.
                _forget(wh, paths, q.table, run_id)
                failpoints.hit("replay.after_forget")
                rename_durably(source, target)
            publish_snapshot(paths)
    return ReplayResult(q.table, q.path, str(target.relative_to(paths.root)), q.kind, dry_run)


def _stage_rejected_rows(paths: LakePaths, table: str, run_id: str, source: Path) -> None:
    """Stage ``_rejected_rows.parquet`` as a new committed run, then remove the quarantine
    folder. Same protocol as a producer: files first, manifest last."""
    data_name = f"part-00000{DATA_SUFFIX}"
    # Opened once, never through a link (a symlink here would stage an outside file's
    # rows) and never blocking; the metadata is read from, and the copy made of, that one
    # open file, streamed so its size needs no cap.
    try:
        rows = open_regular(source / REJECTED_ROWS_NAME)
    except FileNotFoundError:
        raise UsageError(f"{source.relative_to(paths.root)} holds no rejected rows any "
                         "more: see `lake quarantine list`") from None
    except UnsafeFileError as exc:
        raise UsageError(f"{exc}; this folder cannot be replayed") from None
    with rows:
        try:
            meta = pq.read_metadata(rows)
        except (pa.ArrowException, OSError) as exc:
            raise UsageError(f"{source.relative_to(paths.root)}/{REJECTED_ROWS_NAME} is not "
                             f"readable Parquet ({exc}); it cannot be replayed") from None
        schema = meta.schema.to_arrow_schema()
        rows.seek(0)
        run_dir = paths.staged_run(table, run_id)
        run_dir.mkdir(parents=True)
        size, digest = atomic_write(run_dir / data_name, lambda w: shutil.copyfileobj(rows, w))
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


def _replay_object(config: LakeConfig, store: ObjectArea, q: QuarantinedRun, dry_run: bool,
                   lock_timeout: float, triggered_by: str) -> ReplayResult:
    """``replay_run`` with staging in an object store: copy back, forget, delete."""
    paths = config.paths
    name = q.path.rsplit("/", 1)[1]
    source = store.folder(QUARANTINE_DIR, q.table, name)
    if q.kind == "rejected_rows":
        run_id = new_run_id("replay")
        target = store.folder(STAGING_DIR, q.table, run_id)
        if not dry_run:
            with WarehouseLock(paths, "lake quarantine replay", lock_timeout), \
                    _recorded(paths, q, lock_timeout, triggered_by):
                _stage_rejected_objects(store, q.table, run_id, name)
        return ReplayResult(q.table, q.path, store.url(target), q.kind, dry_run)
    manifest = store.digest_or_none(f"{source}/{MANIFEST_NAME}")
    run_id = run_id_of_folder(name)
    target = store.folder(STAGING_DIR, q.table, run_id)
    _check_target(store, q.table, run_id, manifest)
    if not dry_run:
        with WarehouseLock(paths, "lake quarantine replay", lock_timeout):
            # Listed again under the lock: what is there now is what moves.
            objects = store.run_objects(QUARANTINE_DIR, q.table, name)
            if not objects:
                raise UsageError(f"{q.path} is no longer in quarantine: see "
                                 "`lake quarantine list`")
            _check_target(store, q.table, run_id, manifest)
            with _recorded(paths, q, lock_timeout, triggered_by) as wh:
                # 1. Copy back, the manifest last. Until the manifest lands the staged copy
                # is uncommitted and never loaded; the run is still whole in quarantine.
                store.copy_objects(source, target, objects)
                # 2. Forget the ledger row. A crash before this leaves a committed run in
                # staging that the ledger calls quarantined: the next load puts it back in
                # quarantine (nothing lost), and a replay run first finishes this one.
                _forget(wh, paths, q.table, run_id)
                failpoints.hit("replay.after_forget")
                # 3. Delete from quarantine, the manifest last: a crash leaves a copy there
                # that a replay run again deletes (the staged copy has the same manifest).
                store.delete_objects(source, objects)
            publish_snapshot(paths)
    return ReplayResult(q.table, q.path, store.url(target), q.kind, dry_run)


@contextmanager
def _recorded(paths: LakePaths, q: QuarantinedRun, lock_timeout: float,
              triggered_by: str) -> Iterator[Warehouse]:
    """The warehouse, open (and migrated) for one ``quarantine_replay`` run that covers the
    block (under the lock the caller holds); checkpointed and closed after."""
    wh = open_warehouse(paths.warehouse, lock_timeout=lock_timeout)
    try:
        migrate(wh)
        with RunLogger(wh, "quarantine_replay", triggered_by,
                       args={"table": q.table, "run": q.run_id, "kind": q.kind}):
            yield wh
        wh.checkpoint()
    finally:
        wh.close()


def _forget(wh: Warehouse, paths: LakePaths, table: str, run_id: str) -> None:
    """Drop a quarantined run's ledger row (under the lock the caller holds), so the replayed
    run can load; the snapshot is marked behind first."""
    mark_publish_pending(paths)
    with wh.transaction("forgetting the quarantined ledger row"):
        forget_run(wh, table, run_id)


def _check_target(store: ObjectArea, table: str, run_id: str, manifest: str | None) -> None:
    """Refuse to replay over another run in staging. Objects already there with the same
    manifest (``manifest`` is its sha256), or without one, are this replay's own copy from
    an earlier, killed attempt (the manifest is copied last): the copy is resumed."""
    target = store.folder(STAGING_DIR, table, run_id)
    objects = store.run_objects(STAGING_DIR, table, run_id)
    if not objects:
        return
    there = store.digest_or_none(f"{target}/{MANIFEST_NAME}", objects.get(MANIFEST_NAME))
    if there is not None and there != manifest:
        raise UsageError(f"{store.url(target)} already exists in staging")


def _stage_rejected_objects(store: ObjectArea, table: str, run_id: str, name: str) -> None:
    """Stage ``_rejected_rows.parquet`` as a new committed run (data, then the manifest: two
    PUTs), then delete the quarantined rows. A replay killed after the manifest and run again
    stages the same bytes once more; the loader skips repeated content of an append table,
    and upsert or replace_partition loads of the same rows change nothing."""
    source = store.folder(QUARANTINE_DIR, table, name)
    objects = store.run_objects(QUARANTINE_DIR, table, name)
    if REJECTED_ROWS_NAME not in objects:
        raise UsageError(f"{store.url(source)} holds no rejected rows any more: see "
                         "`lake quarantine list`")
    size = objects[REJECTED_ROWS_NAME]
    try:  # written by a drop_rows load: read whole, no more than the listing said
        data = store.read(f"{source}/{REJECTED_ROWS_NAME}", size, size=size)
    except UnsafeFileError as exc:
        raise UsageError(f"{exc}; this folder cannot be replayed") from None
    data_name = f"part-00000{DATA_SUFFIX}"
    try:
        meta = pq.read_metadata(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"{store.url(source)}/{REJECTED_ROWS_NAME} is not readable Parquet "
                         f"({exc}); it cannot be replayed") from None
    schema = meta.schema.to_arrow_schema()
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    entry = FileEntry(data_name, meta.num_rows, len(data), bytes_digest(data))
    manifest = Manifest(table=table, run_id=run_id, producer="replay", created_at=now,
                        committed_at=now, files=(entry,),
                        schema=tuple((f.name, str(f.type)) for f in schema),
                        extra={"replayed_from": store.url(source)})
    target = store.folder(STAGING_DIR, table, run_id)
    store.put(f"{target}/{data_name}", data)
    # The store's own points: the run half copied, then whole (as in copy_objects).
    failpoints.hit("store.mid_copy")
    store.put(f"{target}/{MANIFEST_NAME}", manifest.to_json())  # commits the run
    failpoints.hit("store.copied")
    # The rows now live in the new run. Delete them from quarantine last, after the reason:
    # a crash halfway leaves rows that are still listed and can be replayed again.
    store.delete_objects(source, objects, order=lambda n: (n == REJECTED_ROWS_NAME, n))
