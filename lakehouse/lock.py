"""The single-writer lock: only its holder opens ``lake.duckdb`` read-write.

An OS file lock (``filelock``, flock on POSIX) is released by the kernel when its holder dies,
even by SIGKILL, so a crashed loader never leaves a stale lock. Beside it, ``lake.lock.json``
names the holder (pid, host, since, command) so a busy error can say who.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock

from lakehouse.errors import LockHeldError
from lakehouse.fsio import atomic_write_bytes
from lakehouse.layout import LakePaths


class WarehouseLock:
    """The loader's and compaction's exclusive lock on one lake root."""

    def __init__(self, paths: LakePaths, command: str, timeout: float = 0.0) -> None:
        self.paths = paths
        self.command = command
        self.timeout = max(timeout, 0.0)
        self._lock = filelock.FileLock(str(paths.lock), is_singleton=False)
        self.held = False

    def acquire(self) -> WarehouseLock:
        """Take the lock, waiting up to ``timeout`` seconds.

        Raises:
            LockHeldError: another process holds it; the error names the holder.
        """
        self.paths.warehouse_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self._lock.acquire(timeout=self.timeout, poll_interval=0.05)
        except filelock.Timeout:
            raise LockHeldError(str(self.paths.lock), wait_for_holder(self.paths),
                                waited=time.monotonic() - started) from None
        self.held = True
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": self.command}
        atomic_write_bytes(self.paths.lock_info, json.dumps(info).encode())
        return self

    def release(self) -> None:
        """Release the lock (the holder note is removed first)."""
        if not self.held:
            return
        try:
            self.paths.lock_info.unlink(missing_ok=True)
        finally:
            self._lock.release()
            self.held = False

    def __enter__(self) -> WarehouseLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def wait_for_holder(paths: LakePaths, patience: float = 1.0) -> dict[str, Any] | None:
    """The holder note of a live process, waiting briefly for one to appear.

    The holder writes its note just after taking the lock and removes it just before
    releasing it, so a loser that looks in either gap (or finds a note left by a killed
    holder) tries again for up to ``patience`` seconds before giving up on naming it.
    """
    deadline = time.monotonic() + patience
    while True:
        holder = read_holder(paths)
        if holder is not None and (holder.get("host") != socket.gethostname()
                                   or _alive(holder.get("pid"))):
            return holder  # a pid on another host cannot be checked from here
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_holder(paths: LakePaths) -> dict[str, Any] | None:
    """The holder note of the lock, if one is readable."""
    try:
        data = json.loads(Path(paths.lock_info).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
