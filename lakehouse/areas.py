"""Where staged runs live: under the lake root, or in an object store reached through fsspec.

The loader finds, reads and moves runs through a staging area. :class:`LocalArea` is the
default: ``staging/``, ``archive/`` and ``quarantine/`` under the lake root, moved by renames
(``lakehouse/moves.py``). :class:`ObjectArea` serves ``[lake] staging_root = "s3://bucket/lake"``
(or gs://, abfs://, any fsspec URL): the same three folders under that URL, while the warehouse,
its lock and the published snapshot stay on the loader's local disk.

Object stores have no rename, so the protocol changes and the invariants do not:

- a producer PUTs each data file once under its final unique name and the manifest last
  (``staging/writer.py``): a run is visible only once its manifest exists (invariant 2), and a
  killed producer leaves objects without a manifest, which are never loaded;
- a move is copy-then-delete: every object is copied to its destination (manifest last, so the
  destination is complete before it looks committed), and only then are the sources deleted,
  data files first and the manifest last. A crash at any point leaves the run whole in at least
  one place, and while its manifest is still in staging the next load finds the run, sees the
  ledger row, and finishes the move (invariant 6). Copying again is harmless: a committed run's
  objects never change, so the destination gets the same bytes.

`lake cleanup`, `lake quarantine` and `lake audit` read the bucket the same way: one recursive
listing per folder (:meth:`ObjectArea.runs_detail`, which carries each object's last-modified
time, so ages need no request per object), and small objects read concurrently
(:meth:`ObjectArea.read_many`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse import moves
from lakehouse.config import LakeConfig
from lakehouse.errors import LakehouseError
from lakehouse.fsio import (
    MARKER_MAX_BYTES,
    FileTooLargeError,
    NotRegularFileError,
    UnsafeFileError,
    bytes_digest,
    check_size,
    is_local,
    open_regular,
    read_regular,
    stream_digest,
)
from lakehouse.layout import (
    ARCHIVE_DIR,
    MANIFEST_NAME,
    QUARANTINE_DIR,
    REASON_NAME,
    REJECTED_ROWS_NAME,
    STAGING_DIR,
)
from lakehouse.staged import RunRef, VerifiedRun, discover_runs, verify_run

# What a store client may raise when the store is down or refuses (see ObjectArea).
_STORE_ERRORS = (Exception,)
# How a listing entry names an object's last-modified time, by store: s3fs, adlfs, gcsfs and
# fsspec's local and memory file systems.
_MODIFIED_KEYS = ("LastModified", "last_modified", "updated", "mtime", "modified", "created")
_BULK_DELETE = 1000  # keys per bulk delete request (S3's DeleteObjects maximum)


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing reports it."""

    size: int
    modified: float | None  # last-modified, seconds since the epoch, by the store's clock


class StagingUnavailableError(LakehouseError):
    """The object store holding staging could not be listed, read or written."""


class StagingArea(Protocol):
    """What the loader needs from wherever runs are staged."""

    description: str

    @property
    def latency_bound(self) -> bool:
        """True when reads and moves are network round trips, so that many in flight hide
        their latency; False when they are page-cache reads and renames."""
        ...

    def discover(self, table: str | None = None) -> list[RunRef]: ...

    def verify(self, ref: RunRef, config: LakeConfig) -> VerifiedRun: ...

    def archive(self, table: str, run_id: str, *, retention_days: int,
                sync: bool = True) -> None: ...

    def archive_many(self, refs: Sequence[RunRef], *, retention_days: int,
                     on_moved: Callable[[RunRef], None] | None = None) -> None:
        """Archive committed runs, durably once all are moved; ``on_moved`` is called on the
        caller's thread after each run is moved."""
        ...

    def sync(self, tables: set[str]) -> None: ...

    def quarantine(self, table: str, run_id: str, reason: dict[str, Any]) -> None: ...

    def quarantine_rows(self, table: str, run_id: str, reason: dict[str, Any],
                        rows: pa.Table) -> None: ...

    def in_quarantine(self, table: str, run_id: str, manifest: bytes) -> bool: ...

    def empty_trash(self) -> int: ...


def staging_area(config: LakeConfig) -> StagingArea:
    """The staging area ``config`` names: an object store URL, or the lake root."""
    url = config.settings.staging_root
    if url is None:
        return LocalArea(config)
    return ObjectArea.at(url, dict(config.settings.staging_options))


class LocalArea:
    """``staging/``, ``archive/`` and ``quarantine/`` under the lake root; moves are renames."""

    def __init__(self, config: LakeConfig) -> None:
        self.paths = config.paths
        self.description = str(self.paths.root)

    @property
    def latency_bound(self) -> bool:
        """False: runs are read from the page cache and moved by renames."""
        return False

    def discover(self, table: str | None = None) -> list[RunRef]:
        return discover_runs(self.paths, table)

    def verify(self, ref: RunRef, config: LakeConfig) -> VerifiedRun:
        return verify_run(ref, config)

    def archive(self, table: str, run_id: str, *, retention_days: int,
                sync: bool = True) -> None:
        moves.archive_run(self.paths, table, run_id, retention_days=retention_days, sync=sync)

    def archive_many(self, refs: Sequence[RunRef], *, retention_days: int,
                     on_moved: Callable[[RunRef], None] | None = None) -> None:
        """Rename the runs one by one, in order, then fsync their tables' folders once.

        No fsync per run: the ledger recorded them, so a rename lost to a crash is redone by
        the next load."""
        for ref in refs:
            self.archive(ref.table, ref.run_id, retention_days=retention_days, sync=False)
            if on_moved is not None:
                on_moved(ref)
        self.sync({ref.table for ref in refs})

    def sync(self, tables: set[str]) -> None:
        moves.sync_folders(self.paths, tables)

    def quarantine(self, table: str, run_id: str, reason: dict[str, Any]) -> None:
        moves.quarantine_run(self.paths, table, run_id, reason)

    def quarantine_rows(self, table: str, run_id: str, reason: dict[str, Any],
                        rows: pa.Table) -> None:
        moves.quarantine_rejected_rows(self.paths, table, run_id, reason, rows)

    def in_quarantine(self, table: str, run_id: str, manifest: bytes) -> bool:
        """False: a rename never leaves a run both in staging and in quarantine, so a run
        found in both was copied back by hand, and is treated as a run moved back."""
        return False

    def empty_trash(self) -> int:
        return moves.empty_trash(self.paths)


class ObjectArea:
    """The staging folders under an fsspec URL; moves are copy-then-delete (module docstring).

    Every listing asks the store afresh (fsspec caches listings; a stale one could miss a run
    or a file). Errors reaching the store raise :class:`StagingUnavailableError`, never a run
    rejection: an outage must not send good runs to quarantine. Store clients raise their own
    exception types for network failures (botocore's are not OSErrors), so every failure
    other than a missing object counts as unavailable (``_STORE_ERRORS``).
    """

    def __init__(self, fs: Any, base: str, description: str) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.description = description
        # Tests only: called at named points of a move ("mid_copy", "copied", "reason",
        # "mid_delete") so a crash test can SIGKILL the process exactly there.
        self.step: Callable[[str], None] | None = None

    def _step(self, point: str) -> None:
        if self.step is not None:
            self.step(point)

    @classmethod
    def at(cls, url: str, options: dict[str, Any] | None = None) -> ObjectArea:
        import fsspec

        try:
            fs, base = fsspec.core.url_to_fs(url, **(options or {}))
        except (ImportError, ValueError) as exc:
            raise StagingUnavailableError(
                f"cannot open staging_root {url!r}: {exc} (install the extra for the store, "
                "e.g. `pip install 'lake[s3]'`)") from None
        return cls(fs, base, url.rstrip("/"))

    @property
    def latency_bound(self) -> bool:
        """True: every read and move is requests to the store."""
        return True

    # -- paths ---------------------------------------------------------------------------
    def folder(self, kind: str, table: str | None = None, run_id: str | None = None) -> str:
        parts = [self.base, kind] + [p for p in (table, run_id) if p is not None]
        return "/".join(parts)

    def url(self, path: str) -> str:
        """The user-facing URL of a store path (for messages and reasons)."""
        rel = path[len(self.base):].lstrip("/")
        return f"{self.description}/{rel}" if rel else self.description

    # -- reading -------------------------------------------------------------------------
    def objects(self, prefix: str) -> dict[str, StoredObject]:
        """Every object under ``prefix`` (recursively), its size and last-modified time.

        One paginated listing (S3 returns 1,000 keys a request), never a request per object.
        ``modified`` is None when the store's listing carries no times (see
        :meth:`last_modified`).
        """
        try:
            self.fs.invalidate_cache()
            found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        except _STORE_ERRORS as exc:
            raise StagingUnavailableError(
                f"cannot list {self.url(prefix)}: {exc}; nothing was moved, run the command "
                "again when the store answers") from None
        out: dict[str, StoredObject] = {}
        for name, info in found.items():
            if info.get("type", "file") != "file":
                continue
            out[name] = StoredObject(int(info.get("size") or 0), _modified(info))
        return out

    def listing(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix`` (recursively) and its size."""
        return {name: obj.size for name, obj in self.objects(prefix).items()}

    def runs_in(self, kind: str, table: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
        """Objects under ``<kind>/`` grouped by (table, run folder): name within the run -> size.

        A name may hold a '/' (an object nested deeper than a run's files): verification
        rejects such runs, so they are kept rather than hidden.
        """
        return {run: {name: obj.size for name, obj in names.items()}
                for run, names in self.runs_detail(kind, table).items()}

    def runs_detail(self, kind: str, table: str | None = None
                    ) -> dict[tuple[str, str], dict[str, StoredObject]]:
        """Like :meth:`runs_in`, with each object's size and last-modified time (one listing
        of ``<kind>/``, or of ``<kind>/<table>/``)."""
        runs: dict[tuple[str, str], dict[str, StoredObject]] = defaultdict(dict)
        for path, obj in self.objects(self.folder(kind, table)).items():
            parts = path[len(self.folder(kind)) + 1:].split("/", 2)
            if len(parts) < 3 or parts[0].startswith(".") or parts[1].startswith("."):
                continue
            runs[(parts[0], parts[1])][parts[2]] = obj
        return dict(runs)

    def run_objects(self, kind: str, table: str, run_id: str) -> dict[str, int]:
        """One run folder's objects (name within the run -> size): a listing of that run's
        prefix only, so a move costs the same however many runs share its table."""
        src = self.folder(kind, table, run_id)
        return {path[len(src) + 1:]: size for path, size in self.listing(src + "/").items()}

    def discover(self, table: str | None = None) -> list[RunRef]:
        return self.committed(self.runs_detail(STAGING_DIR, table))

    def committed(self, runs: dict[tuple[str, str], dict[str, StoredObject]]) -> list[RunRef]:
        """The committed runs (with a manifest) of a :meth:`runs_detail` listing of staging,
        oldest first."""
        refs = [RunRef(t, r, PurePosixPath(self.folder(STAGING_DIR, t, r)), store=self,
                       listing=tuple(sorted((n, o.size) for n, o in names.items())))
                for (t, r), names in runs.items() if MANIFEST_NAME in names]
        refs.sort(key=lambda r: r.sort_key)
        return refs

    def uncommitted(self) -> dict[tuple[str, str], dict[str, int]]:
        """Run folders in staging with objects but no manifest (being written, or abandoned)."""
        return {k: v for k, v in self.runs_in(STAGING_DIR).items() if MANIFEST_NAME not in v}

    def read(self, path: str, max_bytes: int, *, size: int | None = None) -> bytes:
        """One object's bytes, of at most ``max_bytes``.

        ``size`` is the object's size from a listing; without it the store is asked first
        (one request). Either way the size is checked before the object is fetched, and
        the bytes after. On a local file system (a ``file://`` staging root) the object is
        read as :func:`lakehouse.fsio.read_regular` reads a file: never through a link,
        never blocking on a FIFO.

        Raises:
            FileNotFoundError: there is no such object.
            UnsafeFileError: it is bigger than ``max_bytes`` (or, locally, not a regular file).
            StagingUnavailableError: the store did not answer.
        """
        try:
            if is_local(self.fs):
                return read_regular(path, max_bytes)
            check_size(self.url(path), self.fs.size(path) if size is None else size, max_bytes)
            data = bytes(self.fs.cat_file(path))
            check_size(self.url(path), len(data), max_bytes)  # replaced since it was listed
            return data
        except (FileNotFoundError, UnsafeFileError):
            raise
        except _STORE_ERRORS as exc:
            raise StagingUnavailableError(
                f"cannot read {self.url(path)}: {exc}; nothing was moved, run the command "
                "again when the store answers") from None

    def read_many(self, sizes: dict[str, int],
                  max_bytes: int = MARKER_MAX_BYTES) -> dict[str, bytes | UnsafeFileError]:
        """Many small objects at once (the store client fetches them concurrently), each of
        at most ``max_bytes``: ``sizes`` maps each path to its size in a listing.

        A missing object is left out. One above the cap (by the listing, or by what came
        back) is not fetched and maps to the :class:`UnsafeFileError` saying so, for the
        caller to report; so does, on a local file system, a link or special file.

        Raises:
            StagingUnavailableError: the store did not answer.
        """
        out: dict[str, bytes | UnsafeFileError] = {}
        wanted = []
        for path, size in sizes.items():
            if size > max_bytes:
                out[path] = FileTooLargeError(self.url(path), size, max_bytes)
            else:
                wanted.append(path)
        if not wanted:
            return out
        if is_local(self.fs):
            for path in wanted:
                try:
                    out[path] = self.read(path, max_bytes, size=sizes[path])
                except FileNotFoundError:
                    continue
                except UnsafeFileError as exc:
                    out[path] = exc
            return out
        try:
            found = self.fs.cat(wanted, on_error="omit")
        except _STORE_ERRORS as exc:
            raise StagingUnavailableError(
                f"cannot read {self.url(wanted[0])} and {len(wanted) - 1} more: {exc}; run "
                "the command again when the store answers") from None
        if not isinstance(found, dict):  # one path: some stores return its bytes directly
            found = {wanted[0]: found}
        for path, data in found.items():
            if isinstance(data, bytes | bytearray | memoryview):
                out[path] = (bytes(data) if len(data) <= max_bytes
                             else FileTooLargeError(self.url(path), len(data), max_bytes))
        return out

    def modified(self, path: str) -> float | None:
        """An object's last-modified time (seconds since the epoch), if the store says."""
        try:
            value = self.fs.modified(path)
        except (OSError, NotImplementedError):
            return None
        return float(value.timestamp()) if value is not None else None

    def last_modified(self, path: str, obj: StoredObject) -> float | None:
        """A listed object's last-modified time: from the listing, else asked of the store."""
        return obj.modified if obj.modified is not None else self.modified(path)

    def newest(self, folder: str, objects: dict[str, StoredObject],
               name: str | None = None) -> datetime | None:
        """When a listed run folder's object ``name`` (by default, its newest object) was
        last modified; None when it is not there or the store gives no time."""
        if name is not None:
            objects = {name: objects[name]} if name in objects else {}
        stamps = [self.last_modified(f"{folder}/{n}", obj) for n, obj in objects.items()]
        known = [t for t in stamps if t is not None]
        return datetime.fromtimestamp(max(known), UTC) if known else None

    def verify(self, ref: RunRef, config: LakeConfig) -> VerifiedRun:
        return verify_run(ref, config)

    # -- writing -------------------------------------------------------------------------
    def put(self, path: str, data: bytes) -> None:
        """One PUT: the object appears whole or not at all."""
        try:
            self.fs.pipe_file(path, data)
        except _STORE_ERRORS as exc:
            raise StagingUnavailableError(f"cannot write {self.url(path)}: {exc}") from None

    def remove(self, paths: Iterable[str]) -> None:
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass  # a crashed move deleted it already
            except _STORE_ERRORS as exc:
                raise StagingUnavailableError(f"cannot delete {self.url(path)}: {exc}") from None

    def remove_many(self, paths: list[str]) -> None:
        """Delete many objects with bulk requests (S3: 1,000 keys each), in no set order.

        Callers keep an order across calls (every data object, then every manifest). Bulk
        deletes report failures per key and store clients may drop those reports, so a
        caller that must know lists again.
        """
        for start in range(0, len(paths), _BULK_DELETE):
            chunk = paths[start:start + _BULK_DELETE]
            try:
                self.fs.rm(chunk)
            except FileNotFoundError:
                self.remove(chunk)  # a store that checks first: one by one, missing ones skipped
            except _STORE_ERRORS as exc:
                raise StagingUnavailableError(
                    f"cannot delete {self.url(chunk[0])} and {len(chunk) - 1} more: {exc}; "
                    "run the command again when the store answers") from None

    def copy_run(self, kind: str, table: str, run_id: str, dst_kind: str) -> str | None:
        """Copy a run's objects to ``<dst_kind>/<table>/<run>``, the manifest last.

        Returns the destination folder, or None when the run has no objects left. A
        destination holding anything else (another run of the same id, with a different
        manifest; the rejected rows of a run) is never overwritten: the copy goes to
        ``<run>.1``, ``<run>.2`` ...
        """
        src = self.folder(kind, table, run_id)
        objects = self.run_objects(kind, table, run_id)
        if not objects:
            return None
        manifest = self.digest_or_none(f"{src}/{MANIFEST_NAME}", objects.get(MANIFEST_NAME))
        dst = self._free_folder(dst_kind, table, run_id, manifest, objects)
        self.copy_objects(src, dst, objects)
        return dst

    def copy_objects(self, src: str, dst: str, names: Iterable[str]) -> None:
        """Copy objects of one run folder into another: data first, the manifest last, so a
        destination that holds the manifest is complete. A source object gone meanwhile (a
        crashed move deleted it after copying it) is skipped."""
        ordered = sorted(names, key=move_order)
        for done, name in enumerate(ordered, start=1):
            try:
                self.fs.copy(f"{src}/{name}", f"{dst}/{name}")
            except FileNotFoundError:
                continue
            except _STORE_ERRORS as exc:
                raise StagingUnavailableError(
                    f"cannot copy {self.url(src)}/{name}: {exc}; the run stays where it was, "
                    "run the command again when the store answers") from None
            self._step("copied" if done == len(ordered) else "mid_copy")

    def delete_run(self, kind: str, table: str, run_id: str) -> None:
        """Delete a run's objects, data first and the manifest last."""
        src = self.folder(kind, table, run_id)
        self.delete_objects(src, self.run_objects(kind, table, run_id))

    def delete_objects(self, folder: str, names: Iterable[str], *,
                       order: Callable[[str], Any] | None = None) -> None:
        """Delete objects of one run folder one by one: data first, then the markers, the
        manifest last (while it exists the run is still found where it was), or in the
        ``order`` a caller gives."""
        ordered = sorted(names, key=order or move_order)
        for done, name in enumerate(ordered, start=1):
            self.remove([f"{folder}/{name}"])
            if done < len(ordered):
                self._step("mid_delete")

    def archive(self, table: str, run_id: str, *, retention_days: int,
                sync: bool = True) -> None:
        if retention_days > 0:
            self.copy_run(STAGING_DIR, table, run_id, ARCHIVE_DIR)
        self.delete_run(STAGING_DIR, table, run_id)

    def archive_many(self, refs: Sequence[RunRef], *, retention_days: int,
                     on_moved: Callable[[RunRef], None] | None = None,
                     threads: int = 16) -> None:
        """Move runs concurrently (each run's copy-then-delete stays in order): a move is a
        handful of round trips, so one at a time would be latency-bound. ``on_moved`` is
        called as each run's move completes, in that order."""
        with ThreadPoolExecutor(max_workers=threads) as pool:
            futures = {pool.submit(self.archive, ref.table, ref.run_id,
                                   retention_days=retention_days): ref for ref in refs}
            for future in as_completed(futures):
                future.result()
                if on_moved is not None:
                    on_moved(futures[future])

    def sync(self, tables: set[str]) -> None:
        """Nothing to flush: each PUT and DELETE is durable when it returns."""

    def quarantine(self, table: str, run_id: str, reason: dict[str, Any]) -> None:
        dst = self.copy_run(STAGING_DIR, table, run_id, QUARANTINE_DIR)
        if dst is None:
            return
        # The reason is in quarantine before the run leaves staging.
        self.put(f"{dst}/{REASON_NAME}", json.dumps(reason, indent=1, default=str).encode())
        self._step("reason")
        self.delete_run(STAGING_DIR, table, run_id)

    def quarantine_rows(self, table: str, run_id: str, reason: dict[str, Any],
                        rows: pa.Table) -> None:
        """drop_rows: the rows that were not loaded, then the reason (two PUTs; a retry
        after a crash writes the same two objects again). Into ``quarantine/<table>/<run>``
        unless another run of that id is quarantined there: then ``<run>.1`` ..."""
        sink = pa.BufferOutputStream()
        pq.write_table(rows, sink)
        n = 0
        while True:  # a folder holding only rejected rows is an earlier try of this step
            dst = self.folder(QUARANTINE_DIR, table, run_id if n == 0 else f"{run_id}.{n}")
            if set(self.run_objects(QUARANTINE_DIR, table, dst.rsplit("/", 1)[1])) <= {
                    REJECTED_ROWS_NAME, REASON_NAME}:
                break
            n += 1
        self.put(f"{dst}/{REJECTED_ROWS_NAME}", sink.getvalue().to_pybytes())
        self.put(f"{dst}/{REASON_NAME}", json.dumps(reason, indent=1, default=str).encode())

    def empty_trash(self) -> int:
        """No trash on object stores: deletes are per object, and a half-deleted run keeps
        its manifest until last, so the next load finishes it."""
        return 0

    def in_quarantine(self, table: str, run_id: str, manifest: bytes) -> bool:
        """Whether ``quarantine/<table>/<run>`` (or ``<run>.N``) already holds a run with this
        very manifest: the staged copy is what a move to quarantine (or a replay out of it)
        left behind when it was cut short."""
        digest = bytes_digest(manifest)
        n = 0
        while True:
            there = self.digest_or_none(self.folder(QUARANTINE_DIR, table, run_id if n == 0
                                                  else f"{run_id}.{n}") + f"/{MANIFEST_NAME}")
            if there is None:
                return False
            if there == digest:
                return True
            n += 1

    def digest_or_none(self, path: str, size: int | None = None) -> str | None:
        """The sha256 of one object, or None when there is no such object. Used to tell two
        runs' manifests apart. Read in one request when a listing gave its ``size`` and it
        is small, else streamed (a hostile manifest may be any size).

        On a local file system a link or special file counts as absent (listings leave
        them out too) and is never followed or opened blocking.

        Raises:
            StagingUnavailableError: the store did not answer.
        """
        try:
            if size is not None and size <= MARKER_MAX_BYTES:
                return bytes_digest(self.read(path, MARKER_MAX_BYTES, size=size))
            if is_local(self.fs):
                with open_regular(path) as f:
                    return stream_digest(f)[1]
            with self.fs.open(path, "rb") as f:
                return stream_digest(f)[1]
        except (FileNotFoundError, NotRegularFileError):
            return None
        except FileTooLargeError:  # grown since it was listed: hash it as it is now
            return self.digest_or_none(path)
        except StagingUnavailableError:
            raise
        except _STORE_ERRORS as exc:
            raise StagingUnavailableError(
                f"cannot read {self.url(path)}: {exc}; nothing was moved, run the command "
                "again when the store answers") from None

    def _free_folder(self, kind: str, table: str, run_id: str, manifest: str | None,
                     objects: dict[str, int]) -> str:
        """The destination for a run: its own name, unless something else sits there.

        A folder holding the same manifest (``manifest`` is its sha256) is this run's own
        copy, and is reused; so is one without a manifest whose every object is one of the
        run's, of the same size (a partial copy: the manifest is copied last). Anything else
        (another run of the same id, the rejected rows of a run) is left alone: the next
        free ``<run>.N`` is used. A run without a manifest (an abandoned one) reuses any
        folder without a manifest: its own copy, which may hold more than the remainder left
        in staging.
        """
        n = 0
        while True:
            name = run_id if n == 0 else f"{run_id}.{n}"
            dst = self.folder(kind, table, name)
            there = self.digest_or_none(f"{dst}/{MANIFEST_NAME}")
            if manifest is None:
                if there is None:
                    return dst
            elif there == manifest or (
                    there is None
                    and self.run_objects(kind, table, name).items() <= objects.items()):
                return dst
            n += 1


def move_order(name: str) -> tuple[bool, bool, str]:
    """The order a run's objects are copied and deleted in: data files, then the other
    markers, then ``_reason.json``, and ``_manifest.json`` last."""
    return (name == MANIFEST_NAME, name == REASON_NAME, name)


def _modified(info: dict[str, Any]) -> float | None:
    """The last-modified time in a listing entry, as seconds since the epoch."""
    for key in _MODIFIED_KEYS:
        value = info.get(key)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None
