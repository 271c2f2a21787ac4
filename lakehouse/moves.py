"""State changes of a run's folder. Each is one rename, in a function named after it.

Ordering rules (see ``loader/load.py``): a run leaves ``staging/`` only after its ledger row
committed (archive, delete) or after its reason is written beside it (quarantine). The
caller archives or deletes a run the ledger already knew only when its manifest is the one
the ledger recorded (``loader/recovery.py``). Deleting renames the folder out of
``staging/`` first, so a kill halfway through an ``rmtree`` never leaves a half-deleted run
where the loader looks. Nothing already in ``archive/`` or ``quarantine/`` is overwritten or
deleted by a move: a second folder of the same run id goes to ``<run_id>.N``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse.fsio import (
    atomic_write,
    atomic_write_bytes,
    delete_path,
    delete_renamed,
    fsync_dir,
    rename_durably,
)
from lakehouse.jsonable import jsonable
from lakehouse.layout import REASON_NAME, REJECTED_ROWS_NAME, SYMLINK_NAME, TMP_MARKER, LakePaths


def archive_run(paths: LakePaths, table: str, run_id: str, *, retention_days: int,
                sync: bool = True) -> Path | None:
    """Move a loaded run out of staging: to ``archive/`` or, with retention 0, delete it.

    ``sync=False`` leaves fsyncing the folders to the caller (see :func:`sync_folders`): the
    ledger already records the run, so a rename lost to a crash is redone by the next load.
    """
    src = paths.staged_run(table, run_id)
    if not src.exists():
        return None
    if retention_days <= 0:
        delete_run_folder(paths, src, sync=sync)
        return None
    dst = _free_name(paths.archived_run(table, run_id))
    rename_durably(src, dst, sync=sync)
    return dst


def sync_folders(paths: LakePaths, tables: set[str]) -> None:
    """fsync the staging and archive folders of ``tables`` once after many renames."""
    for table in tables:
        for folder in (paths.staging / table, paths.archive / table):
            if folder.is_dir():
                fsync_dir(folder)


def quarantine_run(paths: LakePaths, table: str, run_id: str, reason: dict[str, Any]) -> Path:
    """Write ``_reason.json`` into a staged run, then move the run whole to ``quarantine/``."""
    src = paths.staged_run(table, run_id)
    text = json.dumps(reason, indent=1, default=jsonable).encode()
    dst = _free_name(paths.quarantined_run(table, run_id))
    if src.is_symlink():
        # Never write through a symlink (its target is outside our control): quarantine a
        # real folder holding the reason and the link itself.
        dst.mkdir(parents=True)
        atomic_write_bytes(dst / REASON_NAME, text)
        rename_durably(src, dst / SYMLINK_NAME)
        return dst
    # The reason is durable beside the data before the run leaves staging.
    atomic_write_bytes(src / REASON_NAME, text)
    rename_durably(src, dst)
    return dst


def quarantine_rejected_rows(paths: LakePaths, table: str, run_id: str, reason: dict[str, Any],
                             rows: pa.Table) -> Path:
    """For ``drop_rows``: put the rows that were not loaded, with the reason, in quarantine.

    Built under a temp name and renamed into place, replacing an earlier attempt of the same
    run (a load killed after this step and before its commit redoes it): a folder holding
    only rejected rows and a reason. Any other folder of that name (another run of the same
    id, quarantined whole) is never replaced: the rows go to ``<run_id>.N``.
    """
    dst = paths.quarantined_run(table, run_id)
    n = 0
    while os.path.lexists(dst) and not _only_rejected_rows(dst):
        n += 1
        dst = dst.with_name(f"{run_id}.{n}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}{TMP_MARKER}{uuid.uuid4().hex}")
    tmp.mkdir()
    atomic_write(tmp / REJECTED_ROWS_NAME, lambda w: pq.write_table(rows, w))
    atomic_write_bytes(tmp / REASON_NAME, json.dumps(reason, indent=1, default=jsonable).encode())
    if os.path.lexists(dst):
        delete_run_folder(paths, dst)
    rename_durably(tmp, dst)
    return dst


def _only_rejected_rows(folder: Path) -> bool:
    """A real folder holding nothing but ``_rejected_rows.parquet`` and ``_reason.json``."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    return {entry.name for entry in os.scandir(folder)} <= {REJECTED_ROWS_NAME, REASON_NAME}


def delete_run_folder(paths: LakePaths, folder: Path, *, sync: bool = True) -> None:
    """Rename a folder into the trash, then delete it (a kill mid-delete leaves only trash).

    ``sync=False``: the caller fsyncs the source folder once for many deletes.
    """
    paths.trash.mkdir(parents=True, exist_ok=True)
    target = paths.trash / f"{folder.parent.name}--{folder.name}--{uuid.uuid4().hex[:8]}"
    delete_renamed(folder, target, sync=sync)


def empty_trash(paths: LakePaths) -> int:
    """Delete whatever a killed delete left in the trash; return how many folders."""
    if not paths.trash.is_dir():
        return 0
    count = 0
    for entry in paths.trash.iterdir():
        delete_path(entry)
        count += 1
    return count


def _free_name(path: Path) -> Path:
    """``path``, or ``path.N`` when something already sits there, even a dangling link
    (never overwrite evidence)."""
    if not os.path.lexists(path):
        return path
    n = 1
    while os.path.lexists(path.with_name(f"{path.name}.{n}")):
        n += 1
    return path.with_name(f"{path.name}.{n}")
