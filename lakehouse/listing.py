"""Run folders of staging/, archive/ and quarantine/, local or in an object store, as records.

One look at a staging area gives every run folder as a :class:`RunFolder` (table, name, run id,
markers present, times, size, and for quarantine the reason code), whether the area is the lake
root or a bucket, so a check over run folders is written once (``loader/audit.py``).

- Under the lake root the folders are read with ``os`` calls, never through a link and never
  blocking on a FIFO (``_reason.json`` is read with :func:`lakehouse.fsio.read_regular`). A
  folder's times are its files' mtimes and, for its arrival, the folder's ctime: a rename sets
  it. What moves meanwhile (a loader or cleanup runs beside) is listed with missing times.
- In an object store the three folders are three paginated listings (with each object's
  last-modified time, by the store's clock) and the reasons one concurrent read. A folder's
  arrival is its ``_manifest.json``'s copy (copied last by a move), else its newest object.

A folder's run id: in staging/ its name (what the loader reads); in archive/ and quarantine/
a second copy of a run is kept as ``<run_id>.N`` (:func:`lakehouse.layout.run_id_of_folder`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lakehouse import layout
from lakehouse.areas import LocalArea, StagingArea
from lakehouse.fsio import MARKER_MAX_BYTES, read_regular
from lakehouse.object_area import ObjectArea
from lakehouse.object_store import StoredObject
from lakehouse.staged import discover_runs, uncommitted_runs

MARKERS = (layout.MANIFEST_NAME, layout.ABANDONED_NAME, layout.REASON_NAME)
UNKNOWN_REASON = "unknown"  # a _reason.json that is missing, unreadable or holds no code


@dataclass(frozen=True)
class RunFolder:
    """One run folder of staging/, archive/ or quarantine/, as one look found it."""

    kind: str  # layout.STAGING_DIR, ARCHIVE_DIR or QUARANTINE_DIR
    table: str
    name: str  # the folder's name
    run_id: str
    location: str  # relative to the lake root, or the folder's URL in an object store
    markers: frozenset[str]  # which of MARKERS it holds (staging: _manifest.json = committed)
    modified_at: datetime | None  # its last write: the folder or any file in it
    committed_at: datetime | None  # when its _manifest.json was written (None: not there)
    placed_at: datetime | None  # when it arrived in its folder (see the module docstring)
    size: int  # bytes of its files
    reason: str | None  # quarantine: the code in its _reason.json (UNKNOWN_REASON); else None

    @property
    def committed(self) -> bool:
        """True when it holds ``_manifest.json``."""
        return layout.MANIFEST_NAME in self.markers


@dataclass(frozen=True)
class TempFile:
    """A ``*.tmp-*`` file or folder: a write in progress, or one whose writer died."""

    path: str  # relative to the lake root
    size: int
    modified_at: datetime


@dataclass(frozen=True)
class AreaListing:
    """One look at a staging area's three folders."""

    description: str  # the lake root, or the staging_root URL
    in_store: bool  # times are by the store's clock (it may run ahead of ours)
    folders: tuple[RunFolder, ...] = ()
    store: ObjectArea | None = None

    def of(self, kind: str) -> list[RunFolder]:
        """The run folders of one of staging/, archive/ or quarantine/."""
        return [f for f in self.folders if f.kind == kind]

    def location(self, kind: str, table: str, name: str) -> str:
        """Where a run folder is or would be, as :attr:`RunFolder.location` says it."""
        if self.store is None:
            return f"{kind}/{table}/{name}"
        return self.store.url(self.store.folder(kind, table, name))


def list_area(area: StagingArea) -> AreaListing:
    """Every run folder of ``area``'s staging/, quarantine/ and archive/.

    Staging is sorted by (run id, table), oldest first; the others by (table, name).

    Raises:
        StagingUnavailableError: the object store did not answer.
    """
    if isinstance(area, ObjectArea):
        return _list_store(area)
    if isinstance(area, LocalArea):
        return _list_local(area.paths, area.description)
    raise TypeError(f"cannot list a staging area of type {type(area).__name__}")


def list_temp_files(paths: layout.LakePaths) -> list[TempFile]:
    """Every ``*.tmp-*`` file or folder where `lake cleanup` looks (a temp folder once)."""
    found: list[TempFile] = []
    for base in (paths.staging, paths.warehouse_dir, paths.quarantine, paths.archive):
        for folder, dirs, files in os.walk(base):
            for name in [*dirs, *files]:
                info = _lstat(Path(folder, name)) if layout.is_temp_name(name) else None
                if info is not None:
                    found.append(TempFile(Path(folder, name).relative_to(paths.root).as_posix(),
                                          info.st_size, _time(info.st_mtime)))
            dirs[:] = [d for d in dirs if not layout.is_temp_name(d)]  # counted once
    return found


def reason_code(data: bytes | Exception | None) -> str:
    """The code in a ``_reason.json``'s bytes; UNKNOWN_REASON when not read or holds none."""
    if not isinstance(data, bytes):
        return UNKNOWN_REASON
    try:
        return str(json.loads(data)["code"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return UNKNOWN_REASON


# -- the lake root ------------------------------------------------------------------------
def _list_local(paths: layout.LakePaths, description: str) -> AreaListing:
    # Staging's run folders as the loader finds them: committed when os.stat finds a manifest.
    committed = [(r.table, r.run_id, r.local_path) for r in discover_runs(paths)]
    rest = [(p.parent.name, p.name, p) for p in uncommitted_runs(paths)]
    folders = [_local_folder(paths.root, layout.STAGING_DIR, t, n, p, committed=True)
               for t, n, p in committed]
    folders += [_local_folder(paths.root, layout.STAGING_DIR, t, n, p, committed=False)
                for t, n, p in rest]
    folders.sort(key=lambda f: (f.run_id, f.table))
    for kind in (layout.QUARANTINE_DIR, layout.ARCHIVE_DIR):
        for table_dir in _children(paths.root / kind):
            if table_dir.is_dir() and not table_dir.is_symlink():
                folders += [_local_folder(paths.root, kind, table_dir.name, run.name, run)
                            for run in _children(table_dir)]
    return AreaListing(description, in_store=False, folders=tuple(folders))


def _local_folder(root: Path, kind: str, table: str, name: str, path: Path, *,
                  committed: bool | None = None) -> RunFolder:
    """One local run folder; ``committed`` says what the loader's discovery found."""
    here = _lstat(path)
    entries = {p.name: _lstat(p) for p in _entries(path)}
    found = {n: info for n, info in entries.items() if info is not None}
    times = [_time(i.st_mtime) for i in [here, *found.values()] if i is not None]
    markers = {m for m in MARKERS if m in found}
    if committed is not None:
        markers = (markers | {layout.MANIFEST_NAME} if committed
                   else markers - {layout.MANIFEST_NAME})
    manifest = found.get(layout.MANIFEST_NAME) if layout.MANIFEST_NAME in markers else None
    reason = None
    if kind == layout.QUARANTINE_DIR:
        # Never through a link, never blocking on a FIFO, never more than a marker's cap:
        # what a producer left in an abandoned run ends up here.
        data: bytes | OSError | None = None
        if not path.is_symlink():
            try:
                data = read_regular(path / layout.REASON_NAME, MARKER_MAX_BYTES)
            except OSError as exc:
                data = exc
        reason = reason_code(data)
    return RunFolder(
        kind=kind, table=table, name=name, run_id=_run_id(kind, name),
        location=path.relative_to(root).as_posix(), markers=frozenset(markers),
        modified_at=max(times) if times else None,
        committed_at=_time(manifest.st_mtime) if manifest else None,
        placed_at=_time(here.st_ctime) if here else None,
        size=sum(i.st_size for i in found.values() if stat.S_ISREG(i.st_mode)), reason=reason)


def _children(folder: Path) -> list[Path]:
    """Entries of a folder without hidden and temp names."""
    return [p for p in _entries(folder)
            if not p.name.startswith(".") and not layout.is_temp_name(p.name)]


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:  # gone meanwhile, or not a folder
        return []


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:  # moved meanwhile by a loader or cleanup
        return None


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- an object store ----------------------------------------------------------------------
def _list_store(store: ObjectArea) -> AreaListing:
    # One paginated listing of each folder, then every reason read at once.
    listed: list[tuple[str, str, str, dict[str, StoredObject]]] = []
    for kind in (layout.STAGING_DIR, layout.QUARANTINE_DIR, layout.ARCHIVE_DIR):
        for (table, name), objects in store.runs_detail(kind).items():
            if kind == layout.STAGING_DIR or not layout.is_temp_name(name):
                listed.append((kind, table, name, objects))
    reasons = dict(store.read_many({
        f"{store.folder(kind, t, n)}/{layout.REASON_NAME}": objects[layout.REASON_NAME].size
        for kind, t, n, objects in listed
        if kind == layout.QUARANTINE_DIR and layout.REASON_NAME in objects}))
    folders = []
    for kind, table, name, objects in listed:
        folder = store.folder(kind, table, name)
        newest = store.newest(folder, objects)
        manifest = store.newest(folder, objects, layout.MANIFEST_NAME)
        folders.append(RunFolder(
            kind=kind, table=table, name=name, run_id=_run_id(kind, name),
            location=store.url(folder), markers=frozenset(m for m in MARKERS if m in objects),
            modified_at=newest, committed_at=manifest, placed_at=manifest or newest,
            size=sum(o.size for o in objects.values()),
            reason=(reason_code(reasons.get(f"{folder}/{layout.REASON_NAME}"))
                    if kind == layout.QUARANTINE_DIR else None)))
    staged = sorted((f for f in folders if f.kind == layout.STAGING_DIR),
                    key=lambda f: (f.run_id, f.table))
    others = sorted((f for f in folders if f.kind != layout.STAGING_DIR),
                    key=lambda f: (f.kind != layout.QUARANTINE_DIR, f.table, f.name))
    return AreaListing(store.description, in_store=True, folders=(*staged, *others),
                       store=store)


def _run_id(kind: str, name: str) -> str:
    return name if kind == layout.STAGING_DIR else layout.run_id_of_folder(name)


__all__ = ["MARKERS", "UNKNOWN_REASON", "AreaListing", "RunFolder", "TempFile", "list_area",
           "list_temp_files", "reason_code"]
