"""The published read snapshot: readers open ``lake.read.duckdb``, never ``lake.duckdb``.

After a load that changed anything, the loader closes its connection (the file is fully
checkpointed) and copies the warehouse into a new version ``snapshots/lake.read.<time>.duckdb``
(under a temp name, fsynced, then renamed). ``lake.read.duckdb`` is a symlink, switched to the
new version by an atomic rename. A reader holding the old version keeps its consistent view
(its inode lives until it closes); a new reader sees the new data.

Why versions and a link, not one file renamed over the old one: DuckDB opens a database path
three times while connecting (seen with strace on 2.0), so a rename between those opens gave a
reader one file's header and another's blocks (``Metadata block index 147 exceeds metadata
block count 64``, or ``Could not read enough bytes``; about one connect in a thousand while
publishing in a loop). DuckDB resolves the link once and opens the version's own path each
time, and a version is never replaced, only deleted, ``GRACE_SECONDS`` after it was
superseded: a reader that resolved the link just before a switch still finds it. One that
stalled longer gets a clean "does not exist" while connecting, never a mixed file;
:func:`open_snapshot` (``lake query``, ``lake audit``) then resolves the link again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from lakehouse.db import Warehouse, open_warehouse
from lakehouse.errors import WarehouseError
from lakehouse.fsio import fsync_dir, temp_name
from lakehouse.layout import PUBLISH_PENDING_NAME, LakePaths, utc_stamp

SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX = "lake.read.", ".duckdb"
# A superseded snapshot version is deleted by the first publish, load or cleanup this long
# after it was superseded (the current version is always kept). Publishing a big warehouse
# takes seconds itself, so few versions are ever kept at once.
GRACE_SECONDS = 10.0
# ioctl FICLONE (linux/fs.h): share the source's extents (copy-on-write) instead of copying.
_FICLONE = 0x40049409


@dataclass(frozen=True)
class PublishResult:
    """What publishing cost, and how the copy was made."""

    path: Path
    bytes: int
    seconds: float
    method: str  # "reflink" | "copy"


def copy_file(src: Path, dst: Path) -> str:
    """Copy ``src`` to a new file ``dst``: a reflink where the file system can (btrfs, XFS
    with reflink, bcachefs: near-instant, no extra space until either file changes), else a
    kernel-side copy. Returns the method used."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            method = "reflink"
        except OSError:
            method = "copy"
            _copy_in_kernel(fin.fileno(), fout.fileno())
        fout.flush()
        os.fsync(fout.fileno())
    return method


def _copy_in_kernel(fd_in: int, fd_out: int) -> None:
    """copy_file_range: no round trip through user space (falls back to a buffered copy)."""
    size = os.fstat(fd_in).st_size
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(fd_in, fd_out, size - copied)
            if n == 0:
                break
            copied += n
    except OSError:
        os.lseek(fd_in, 0, os.SEEK_SET)
        os.lseek(fd_out, 0, os.SEEK_SET)
        os.ftruncate(fd_out, 0)
        with os.fdopen(os.dup(fd_in), "rb") as fin, os.fdopen(os.dup(fd_out), "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 * 1024 * 1024)


def mark_publish_pending(paths: LakePaths) -> None:
    """Note, before a write commits, that the snapshot must be republished.

    If the writer dies between its commit and its publish, the next writer sees the note
    and publishes even when it has nothing new to commit itself.
    """
    marker = paths.warehouse_dir / PUBLISH_PENDING_NAME
    if not marker.exists():
        marker.touch()
        fsync_dir(marker.parent)


def publish_pending(paths: LakePaths) -> bool:
    """True when a write committed since the last publish (or there is no snapshot)."""
    return (paths.warehouse_dir / PUBLISH_PENDING_NAME).exists() or \
        not paths.read_snapshot.exists()


def publish_snapshot(paths: LakePaths) -> PublishResult:
    """Copy the (closed, checkpointed) warehouse to a new snapshot version and switch
    ``lake.read.duckdb`` to it atomically.

    Call with the warehouse lock held and no open write connection.
    """
    started = time.monotonic()
    link, folder = paths.read_snapshot, paths.snapshots
    folder.mkdir(parents=True, exist_ok=True)
    remove_superseded_snapshots(paths)  # the current one stays: see above
    name = f"{SNAPSHOT_PREFIX}{utc_stamp()}{SNAPSHOT_SUFFIX}"
    version, tmp = folder / name, folder / temp_name(name)
    link_tmp = link.with_name(temp_name(link.name))
    try:
        method = copy_file(paths.warehouse, tmp)
        os.replace(tmp, version)
        fsync_dir(folder)  # the version's name is durable before the link points at it
        os.symlink(f"{folder.name}/{name}", link_tmp)
        os.replace(link_tmp, link)  # atomic: readers see the old version or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        link_tmp.unlink(missing_ok=True)
        if _current_version(link) != name:
            version.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
    (paths.warehouse_dir / PUBLISH_PENDING_NAME).unlink(missing_ok=True)  # after the switch
    return PublishResult(link, version.stat().st_size, time.monotonic() - started, method)


def current_snapshot(paths: LakePaths) -> str | None:
    """The name of the snapshot version readers open now (None before the first publish)."""
    return _current_version(paths.read_snapshot)


def _current_version(link: Path) -> str | None:
    """The version file ``lake.read.duckdb`` links to (None: no link, e.g. a snapshot
    published as a plain file by an earlier Lake)."""
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None


def remove_superseded_snapshots(paths: LakePaths) -> None:
    """Delete snapshot versions superseded more than ``GRACE_SECONDS`` ago (loads and cleanup
    call it with the lock held, so a superseded version does not outlive the next cron tick)."""
    if paths.snapshots.is_dir():
        _remove_versions(paths.snapshots, keep=_current_version(paths.read_snapshot))


def _remove_versions(folder: Path, keep: str | None) -> None:
    """Delete the snapshot versions superseded more than ``GRACE_SECONDS`` ago, never
    ``keep`` (readers that have one open keep reading it: its inode lives)."""
    versions = sorted(p for p in folder.iterdir() if p.name.startswith(SNAPSHOT_PREFIX)
                      and p.name.endswith(SNAPSHOT_SUFFIX))
    now = time.time()
    for older, newer in pairwise(versions):
        try:
            superseded = newer.stat().st_mtime  # written just before the link switched to it
        except OSError:
            continue
        if older.name != keep and now - superseded > GRACE_SECONDS:
            older.unlink(missing_ok=True)


def open_snapshot(paths: LakePaths, attempts: int = 5, *,
                  temp_directory: Path | None = None) -> Warehouse:
    """Open the current snapshot version read-only, without file access (``temp_directory``:
    see :func:`lakehouse.db.open_warehouse`); if a publish deleted the version the link
    named before DuckDB opened it (a reader stalled for ``GRACE_SECONDS``), look again."""
    for attempt in range(attempts):
        target = Path(os.path.realpath(paths.read_snapshot))
        try:
            return open_warehouse(target, read_only=True, external_access=False,
                                  temp_directory=temp_directory)
        except WarehouseError:
            if target.exists() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
