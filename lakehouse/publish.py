"""The published read snapshot: readers open ``lake.read.duckdb``, never ``lake.duckdb``.

After a load that changed anything, the loader closes its connection (the file is fully
checkpointed), copies the warehouse to a temp name beside the snapshot, fsyncs it and renames
it over the old snapshot. A reader holding the old file keeps its consistent view (the old
inode lives until it closes); a new reader sees the new data.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lakehouse.fsio import fsync_dir, temp_name
from lakehouse.layout import PUBLISH_PENDING_NAME, LakePaths

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
    """Copy the (closed, checkpointed) warehouse to the read snapshot atomically.

    Call with the warehouse lock held and no open write connection.
    """
    started = time.monotonic()
    src, dst = paths.warehouse, paths.read_snapshot
    tmp = dst.with_name(temp_name(dst.name))
    try:
        method = copy_file(src, tmp)
        os.replace(tmp, dst)  # atomic: readers see the old file or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
    (paths.warehouse_dir / PUBLISH_PENDING_NAME).unlink(missing_ok=True)  # after the rename
    return PublishResult(dst, dst.stat().st_size, time.monotonic() - started, method)
