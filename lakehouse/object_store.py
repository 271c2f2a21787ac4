"""An object store reached through fsspec: the objects of run folders listed, read, written
and deleted, and a store that does not answer reported as :class:`StagingUnavailableError`.

Objects sit under one base path as ``<kind>/<table>/<run>/<name>`` (``kind`` is ``staging``,
``archive`` or ``quarantine``). A folder is read with one recursive listing
(:meth:`ObjectStore.objects`, which carries each object's last-modified time, so ages need no
request per object), and small objects are read concurrently (:meth:`ObjectStore.read_many`).
How runs move between the folders is :class:`lakehouse.object_area.ObjectArea`'s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lakehouse.errors import (
    FileTooLargeError,
    NotRegularFileError,
    StagingUnavailableError,
    UnsafeFileError,
)
from lakehouse.fsio import (
    MARKER_MAX_BYTES,
    bytes_digest,
    check_size,
    is_local,
    open_regular,
    read_regular,
    stream_digest,
)

# What a store client may raise when the store is down or refuses (see ObjectStore).
STORE_ERRORS = (Exception,)
# How a listing entry names an object's last-modified time, by store: s3fs, adlfs, gcsfs and
# fsspec's local and memory file systems.
_MODIFIED_KEYS = ("LastModified", "last_modified", "updated", "mtime", "modified", "created")
_BULK_DELETE = 1000  # keys per bulk delete request (S3's DeleteObjects maximum)


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing reports it."""

    size: int
    modified: float | None  # last-modified, seconds since the epoch, by the store's clock


class ObjectStore:
    """The objects under an fsspec URL, grouped by run folder.

    Every listing asks the store afresh (fsspec caches listings; a stale one could miss a run
    or a file). Errors reaching the store raise :class:`StagingUnavailableError`, never a run
    rejection: an outage must not send good runs to quarantine. Store clients raise their own
    exception types for network failures (botocore's are not OSErrors), so every failure
    other than a missing object counts as unavailable (``STORE_ERRORS``).
    """

    def __init__(self, fs: Any, base: str, description: str) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.description = description

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
        except STORE_ERRORS as exc:
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
        except STORE_ERRORS as exc:
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
        except STORE_ERRORS as exc:
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

    # -- writing -------------------------------------------------------------------------
    def put(self, path: str, data: bytes) -> None:
        """One PUT: the object appears whole or not at all."""
        try:
            self.fs.pipe_file(path, data)
        except STORE_ERRORS as exc:
            raise StagingUnavailableError(f"cannot write {self.url(path)}: {exc}") from None

    def remove(self, paths: Iterable[str]) -> None:
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass  # a crashed move deleted it already
            except STORE_ERRORS as exc:
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
            except STORE_ERRORS as exc:
                raise StagingUnavailableError(
                    f"cannot delete {self.url(chunk[0])} and {len(chunk) - 1} more: {exc}; "
                    "run the command again when the store answers") from None

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
        except STORE_ERRORS as exc:
            raise StagingUnavailableError(
                f"cannot read {self.url(path)}: {exc}; nothing was moved, run the command "
                "again when the store answers") from None


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
