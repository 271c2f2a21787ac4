"""The published read snapshot: readers open ``lake.read.duckdb``, never ``lake.duckdb``.

After a load that changed anything, the loader closes its connection (the file is fully
checkpointed) and publishes a new version ``snapshots/lake.read.<time>.duckdb``;
``lake.read.duckdb`` is a symlink, switched to the new version by an atomic rename. A reader
holding the old version keeps its consistent view (its inode lives until it closes); a new
reader sees the new data.

A new version is made in one of three ways (docs/SCALING.md, "Publishing"):

- **reflink**: where the file system shares extents (btrfs, XFS), a copy of the warehouse
  costs metadata only; it is always tried first.
- **incremental** (issue 17): the newest superseded version is brought up to date by applying
  only what changed since it was current (``lakehouse/snapshot_sync.py``), then renamed to a
  new version name. It is touched only if it was superseded more than ``GRACE_SECONDS`` ago
  (no reader can still be about to open it) and if no reader holds it: DuckDB's own file lock
  says so, since opening a file read-write fails at once while another process has it open
  read-only (checked at duckdb 2.0.1 across processes). The sync runs in one transaction,
  is checkpointed and fsynced before the rename, and the link switches only after that, so a
  reader never sees a half-applied version. Only the load (and the jobs that write nothing
  but ``meta`` rows) ask for it, through ``mark_publish_pending(incremental=True)``.
- **copy**: the whole warehouse copied under a temp name, fsynced, renamed. Used whenever the
  above cannot be: no version to start from, a reader holds it, it was superseded too
  recently, or something changed that the sync cannot account for. A job that changes data
  in another way (compaction, migrations, ``lake init``, ...) leaves a plain pending note,
  which asks for a copy; that copy also moves the *floor* (``warehouse/publish.floor``,
  the oldest version a sync may start from), so no version older than such a change is ever
  synced across it.

Why versions and a link, not one file renamed over the old one: DuckDB opens a database path
three times while connecting (seen with strace on 2.0), so a rename between those opens gave a
reader one file's header and another's blocks (``Metadata block index 147 exceeds metadata
block count 64``, or ``Could not read enough bytes``; about one connect in a thousand while
publishing in a loop). DuckDB resolves the link once and opens the version's own path each
time, and a version name is never reused: a version is deleted, or synced and renamed, only
``GRACE_SECONDS`` after it was superseded, so a reader that resolved the link just before a
switch still finds it. One that stalled longer gets a clean "does not exist" while
connecting, never a mixed file; :func:`open_snapshot` (``lake query``, ``lake audit``) then
resolves the link again.

Disk: the warehouse, the current version and one superseded version kept to be synced next
time (3x the warehouse; a full copy adds one more version until the grace has passed).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from lakehouse import failpoints
from lakehouse.db import Warehouse, literal, open_warehouse
from lakehouse.errors import LockHeldError, UsageError, WarehouseError
from lakehouse.fsio import atomic_write_bytes, fsync_dir, fsync_file, temp_name
from lakehouse.layout import PUBLISH_PENDING_NAME, LakePaths, utc_stamp
from lakehouse.snapshot_sync import LIVE, NotIncrementalError, sync_snapshot

SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX = "lake.read.", ".duckdb"
# A superseded snapshot version is deleted (or synced and renamed) by the first publish, load
# or cleanup this long after it was superseded (the current version is always kept).
GRACE_SECONDS = 10.0
# Beside publish.pending: the name of the oldest version an incremental publish may start from.
FLOOR_NAME = "publish.floor"
# The pending note's content when every write since the last publish was one the
# incremental publish accounts for (a load's merges, meta rows); empty means: copy.
_INCREMENTAL_NOTE = b"incremental"
# ioctl FICLONE (linux/fs.h): share the source's extents (copy-on-write) instead of copying.
_FICLONE = 0x40049409


@dataclass(frozen=True)
class PublishResult:
    """What publishing cost, and how the version was made."""

    path: Path
    bytes: int
    seconds: float
    method: str  # "reflink" | "copy" | "incremental"
    reason: str = ""  # why an incremental publish was not possible (empty: not asked, or done)


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


def _reflink(src: Path, dst: Path) -> bool:
    """Make ``dst`` a reflink of ``src`` (fsynced) if the file system can; else no file."""
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            os.fsync(fout.fileno())
        return True
    except OSError:
        dst.unlink(missing_ok=True)
        return False


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


def mark_publish_pending(paths: LakePaths, *, incremental: bool = False) -> None:
    """Note, before a write commits, that the snapshot must be republished.

    If the writer dies between its commit and its publish, the next writer sees the note
    and publishes even when it has nothing new to commit itself. ``incremental``: the write
    is one the incremental publish accounts for (a load's merge, ``meta`` rows); any other
    write (the default) asks for a full copy, and a note asking for a copy is never turned
    back into an incremental one.
    """
    marker = paths.warehouse_dir / PUBLISH_PENDING_NAME
    note = _read_note(marker)
    if note is None:
        atomic_write_bytes(marker, _INCREMENTAL_NOTE if incremental else b"")
    elif not incremental and note == _INCREMENTAL_NOTE:
        atomic_write_bytes(marker, b"")


def _read_note(marker: Path) -> bytes | None:
    try:
        with open(marker, "rb") as f:
            return f.read(64)
    except FileNotFoundError:
        return None


def publish_pending(paths: LakePaths) -> bool:
    """True when a write committed since the last publish (or there is no snapshot)."""
    return (paths.warehouse_dir / PUBLISH_PENDING_NAME).exists() or \
        not paths.read_snapshot.exists()


def publish_snapshot(paths: LakePaths, *, incremental: bool = False,
                     grace_seconds: float | None = None) -> PublishResult:
    """Publish the (closed, checkpointed) warehouse as a new snapshot version and switch
    ``lake.read.duckdb`` to it atomically.

    ``incremental``: the caller's writes were all marked incremental; bring the superseded
    version up to date instead of copying, where that is possible (else copy, and say why
    in ``reason``). Call with the warehouse lock held and no open write connection.
    """
    started = time.monotonic()
    grace_seconds = GRACE_SECONDS if grace_seconds is None else grace_seconds
    folder = paths.snapshots
    folder.mkdir(parents=True, exist_ok=True)
    remove_superseded_snapshots(paths, grace_seconds)  # the current one stays: see above
    note = _read_note(paths.warehouse_dir / PUBLISH_PENDING_NAME)
    reason = ""
    if incremental and note not in (None, _INCREMENTAL_NOTE):
        incremental, reason = False, "a write since the last publish asked for a full copy"
    if incremental:
        name = _new_version_name(folder)
        tmp = folder / temp_name(name)
        if _reflink(paths.warehouse, tmp):  # cheaper still than a sync
            return _install(paths, tmp, name, "reflink", started, move_floor=False)
        synced = _publish_synced(paths, started, grace_seconds)
        if isinstance(synced, PublishResult):
            return synced
        reason = synced
    # A copy made because the note asked for one (or a caller that did not ask for an
    # incremental publish) moves the floor: older versions predate a write no sync replays.
    move_floor = not incremental or _read_floor(folder) is None
    name = _new_version_name(folder)
    tmp = folder / temp_name(name)
    try:
        method = copy_file(paths.warehouse, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    failpoints.hit("publish.after_copy")
    return _install(paths, tmp, name, method, started, move_floor=move_floor, reason=reason)


def _new_version_name(folder: Path) -> str:
    """A version name never used before (names sort by publish time)."""
    while True:
        name = f"{SNAPSHOT_PREFIX}{utc_stamp()}{SNAPSHOT_SUFFIX}"
        if not (folder / name).exists():
            return name


def _install(paths: LakePaths, ready: Path, name: str, method: str, started: float, *,
             move_floor: bool, reason: str = "") -> PublishResult:
    """Rename a complete, fsynced file in ``snapshots/`` to the version ``name`` and switch
    the link to it; then clear the pending note."""
    link, folder = paths.read_snapshot, paths.snapshots
    version = folder / name
    link_tmp = link.with_name(temp_name(link.name))
    try:
        os.rename(ready, version)  # a new name: never replaces a version a reader may hold
        fsync_dir(folder)  # the version's name is durable before the link points at it
        failpoints.hit("publish.after_rename")
        if move_floor:
            atomic_write_bytes(paths.warehouse_dir / FLOOR_NAME, name.encode())
        os.symlink(f"{folder.name}/{name}", link_tmp)
        os.replace(link_tmp, link)  # atomic: readers see the old version or the new one
    except BaseException:
        link_tmp.unlink(missing_ok=True)
        if method != "incremental":
            ready.unlink(missing_ok=True)
            if _current_version(link) != name:
                version.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
    # The version superseded now is dated by this mtime (see _stale_base): after the switch.
    os.utime(version)
    failpoints.hit("publish.after_switch")
    (paths.warehouse_dir / PUBLISH_PENDING_NAME).unlink(missing_ok=True)  # after the switch
    return PublishResult(link, version.stat().st_size, time.monotonic() - started, method,
                         reason)


def _publish_synced(paths: LakePaths, started: float, grace_seconds: float
                    ) -> PublishResult | str:
    """Bring the newest superseded version up to date and publish it; or say why not."""
    current = _current_version(paths.read_snapshot)
    if current is None:
        return "no published version to start from"
    base, why = _stale_base(paths.snapshots, current, grace_seconds)
    if base is None:
        return why
    try:
        # Read-write: DuckDB refuses at once while any reader has the file open, and no
        # reader can open it while we hold it (a stalled one gets a clean lock error).
        snap = open_warehouse(base)
    except LockHeldError:
        return f"a reader has {base.name} open"
    except WarehouseError as exc:
        return f"{base.name} cannot be opened: {exc}"
    try:
        snap.execute(f"ATTACH {literal(str(paths.warehouse))} AS {LIVE} (READ_ONLY)",
                     action="attaching the warehouse")
        with snap.transaction("syncing the snapshot"):
            sync_snapshot(snap)
            failpoints.hit("publish.mid_sync")  # applied, not committed
        snap.execute(f"DETACH {LIVE}", action="detaching the warehouse")
        snap.checkpoint()  # no WAL beside a version readers will open
    except (NotIncrementalError, WarehouseError) as exc:
        return f"{base.name} cannot be synced: {exc}"  # rolled back: the version is as it was
    finally:
        snap.close()
    fsync_file(base)
    failpoints.hit("publish.after_sync")
    return _install(paths, base, _new_version_name(paths.snapshots), "incremental", started,
                    move_floor=False)


def _versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(SNAPSHOT_PREFIX)
                  and p.name.endswith(SNAPSHOT_SUFFIX)) if folder.is_dir() else []


def _read_floor(folder: Path) -> str | None:
    """The floor, kept beside ``snapshots/`` (whose listing holds versions only)."""
    try:
        return (folder.parent / FLOOR_NAME).read_text().strip() or None
    except OSError:
        return None


def _base_name(versions: list[str], current: str | None, floor: str | None) -> str | None:
    """The version an incremental publish would start from: the newest one that is not
    current and not older than the floor."""
    if floor is None:
        return None
    found = [v for v in versions if v != current and v >= floor]
    return found[-1] if found else None


def _stale_base(folder: Path, current: str, grace_seconds: float) -> tuple[Path | None, str]:
    """The version to bring up to date, if one may be touched now; else why not."""
    versions = _versions(folder)
    base = _base_name(versions, current, _read_floor(folder))
    if base is None:
        return None, "no superseded version to start from"
    if base < current:
        # It was current until the next version (the current one) was published; one newer
        # than the link's was never current (a publish died before switching to it).
        try:
            superseded = (folder / current).stat().st_mtime
        except OSError:
            return None, "the current version cannot be read"
        age = time.time() - superseded
        if age <= grace_seconds:
            return None, f"{base} was superseded {age:.1f}s ago (grace {grace_seconds:.0f}s)"
    return folder / base, ""


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


def remove_superseded_snapshots(paths: LakePaths, grace_seconds: float | None = None
                                ) -> None:
    """Delete snapshot versions superseded more than ``grace_seconds`` ago, except the one
    the next incremental publish starts from (loads and cleanup call it with the lock held,
    so a superseded version does not outlive the next cron tick)."""
    grace_seconds = GRACE_SECONDS if grace_seconds is None else grace_seconds
    if paths.snapshots.is_dir():
        current = _current_version(paths.read_snapshot)
        folder = paths.snapshots
        base = _base_name(_versions(folder), current, _read_floor(folder))
        _remove_versions(folder, keep={v for v in (current, base) if v}, grace=grace_seconds)


def _remove_versions(folder: Path, keep: set[str], grace: float) -> None:
    """Delete the snapshot versions superseded more than ``grace`` seconds ago, never those
    in ``keep`` (readers that have one open keep reading it: its inode lives), and what
    DuckDB left beside them (a WAL of a sync that was killed)."""
    versions = _versions(folder)
    now = time.time()
    for older, newer in pairwise(versions):
        try:
            superseded = (folder / newer).stat().st_mtime  # written as the link switched to it
        except OSError:
            continue
        if older not in keep and now - superseded > grace:
            (folder / older).unlink(missing_ok=True)
            (folder / f"{older}.wal").unlink(missing_ok=True)


def require_snapshot(paths: LakePaths) -> None:
    """A reader's first check: raise UsageError, saying what to run, when nothing is
    published yet."""
    if not paths.read_snapshot.exists():
        raise UsageError(f"no published snapshot at {paths.read_snapshot}: run `lake init` "
                         "and `lake load` first")


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
