"""The published read snapshot: readers open ``lake.read.duckdb``, never ``lake.duckdb``.

After a load that changed anything, the loader closes its connection (the file is fully
checkpointed), copies the warehouse to a temp name beside the snapshot, fsyncs it and renames
it over the old snapshot. A reader holding the old file keeps its consistent view (the old
inode lives until it closes); a new reader sees the new data.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lakehouse.fsio import fsync_dir, temp_name
from lakehouse.layout import LakePaths


@dataclass(frozen=True)
class PublishResult:
    """What publishing cost."""

    path: Path
    bytes: int
    seconds: float


def publish_snapshot(paths: LakePaths) -> PublishResult:
    """Copy the (closed, checkpointed) warehouse to the read snapshot atomically.

    Call with the warehouse lock held and no open write connection.
    """
    started = time.monotonic()
    src, dst = paths.warehouse, paths.read_snapshot
    tmp = dst.with_name(temp_name(dst.name))
    try:
        shutil.copyfile(src, tmp)  # copy_file_range/sendfile; may reflink where the FS can
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)  # atomic: readers see the old file or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
    return PublishResult(dst, dst.stat().st_size, time.monotonic() - started)
