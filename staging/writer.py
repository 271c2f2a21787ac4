"""The producer side: stage Parquet files into a run folder and commit it with a manifest.

Producers never take a lock and never import duckdb or pandera. Each file is written under a
temp name, fsynced and renamed; the manifest is written the same way and last, so a run is
either invisible (no manifest) or complete. Goes through fsspec so a root may be a URL.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse.errors import StagingError
from lakehouse.fsio import (
    MARKER_MAX_BYTES,
    atomic_write,
    atomic_write_bytes,
    bytes_digest,
    finish_temp,
    fsync_dir,
    is_local,
    write_temp,
    write_temp_buffer,
)
from lakehouse.layout import (
    ABANDONED_NAME,
    DATA_SUFFIX,
    LOCAL_SCHEMES,
    MANIFEST_NAME,
    OBJECT_STORE_SCHEMES,
    QUARANTINE_DIR,
    RESERVED_PREFIX,
    STAGING_DIR,
    is_identifier,
    new_run_id,
    url_scheme,
)
from lakehouse.manifest import MAX_TEXT_CHARS, FileEntry, Manifest

# Snappy, Parquet's default: staged files are read once by the loader and then archived, so
# decoding speed matters more than size. Measured with pyarrow 26: a 100-row file decodes in
# 0.07 ms (zstd 0.24 ms, which sets up a context per page) and 50k rows encode in 12.4 ms
# (zstd 14.6 ms); zstd files were ~20 % smaller. A producer can pass ``compression=``.
PARQUET_COMPRESSION = "snappy"
COMPRESSIONS = ("snappy", "zstd", "lz4", "gzip", "brotli", "none")
# Tables up to this size (Arrow bytes) are encoded into memory and written in one call, then
# hashed while the background thread fsyncs the file: streaming through a hashing Python
# file object costs ~0.6 ms more per 1.3 MB file, and the hash (~0.7 ms) then overlaps the
# fsync instead of preceding it. Bigger tables stream, so memory stays ~one table.
BUFFER_MAX_BYTES = 64 << 20


class StagedRun:
    """One producer run: a folder of Parquet files committed together by a manifest.

    Use :func:`stage_run`, which commits on a clean exit and abandons on an exception.
    """

    def __init__(self, root: str | Path, table: str, *, producer: str = "producer",
                 key: str | None = None, fs: Any = None,
                 extra: dict[str, Any] | None = None,
                 storage_options: dict[str, Any] | None = None,
                 version: str | None = None) -> None:
        if not is_identifier(table):
            raise StagingError(
                f"table name {table!r} is not allowed: use letters, digits and '_' "
                "(at most 63, not starting with a digit)"
            )
        if key is not None and (not isinstance(key, str) or not key or len(key) > 512):
            raise StagingError("idempotency key must be a non-empty string of at most 512 chars")
        if version is not None and not _plain_text(version):
            raise StagingError(f"version must be non-empty text of at most {MAX_TEXT_CHARS} "
                               "characters without NUL, such as '1.4.2' or a git sha")
        if fs is None:
            scheme = url_scheme(str(root))
            if scheme is not None and scheme not in LOCAL_SCHEMES + OBJECT_STORE_SCHEMES:
                # e.g. memory://: the run would "commit" where no loader ever looks.
                raise StagingError(
                    f"cannot stage to {str(root)!r}: {scheme}:// is not a store Lake stages to; "
                    "use a local folder, file:// or one of "
                    f"{', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)}")
            fs, root_path = fsspec.core.url_to_fs(str(root), **(storage_options or {}))
        else:
            root_path = str(root)
        self.fs = fs
        self.local = is_local(fs)
        self.table = table
        self.producer = producer
        self.key = key
        self.extra = dict(extra or {})
        self.version = version
        self.run_id = new_run_id(producer)
        self.created_at = _now()
        self.root_path = str(root_path).rstrip("/")
        self.path = f"{self.root_path}/{STAGING_DIR}/{table}/{self.run_id}"
        self.files: list[FileEntry] = []
        self.schema: pa.Schema | None = None
        self.state = "open"
        self.manifest: Manifest | None = None
        # Local disk: files are fsynced and renamed on a background thread while the next
        # one is encoded; commit waits for all of them before it writes the manifest.
        self._syncer: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self.fs.makedirs(self.path, exist_ok=True)
        if self.local:
            fsync_dir(str(Path(self.path).parent))

    def write(self, data: Any, *, name: str | None = None,
              compression: str = PARQUET_COMPRESSION) -> FileEntry:
        """Stage one data file (pyarrow Table/RecordBatch, pandas or polars DataFrame).

        Every file of a run must have the same schema. ``compression`` is the Parquet codec
        (one of ``COMPRESSIONS``); snappy decodes fastest, zstd writes smaller files.

        Raises:
            StagingError: the run is closed, the data is of an unknown kind, or its schema
                differs from the run's first file or uses reserved/unsafe column names.
        """
        if self.state != "open":
            raise StagingError(f"run {self.run_id} is {self.state}; start a new run")
        if compression not in COMPRESSIONS:
            raise StagingError(f"compression {compression!r} is not one of {COMPRESSIONS}")
        table = to_arrow(data)
        self._check_schema(table.schema)
        file_name = name or f"part-{len(self.files):05d}{DATA_SUFFIX}"
        if not is_identifier(file_name.removesuffix(DATA_SUFFIX).replace("-", "_")) or \
                not file_name.endswith(DATA_SUFFIX):
            raise StagingError(f"file name {file_name!r} must be a simple name ending in .parquet")
        if any(f.name == file_name for f in self.files):
            raise StagingError(f"file {file_name!r} was already written in this run")
        def produce(w: Any) -> None:
            pq.write_table(table, w, compression=compression)

        if self.local:
            with self._folder_kept():
                self._raise_sync_error()
                final = Path(self.path) / file_name
                if self._syncer is None:
                    self._syncer = ThreadPoolExecutor(1, thread_name_prefix="lake-fsync")
                if table.nbytes <= BUFFER_MAX_BYTES:
                    sink = pa.BufferOutputStream()
                    produce(sink)
                    encoded = sink.getvalue()
                    tmp = write_temp_buffer(final, encoded)
                    self._pending.append(self._syncer.submit(finish_temp, tmp, final))
                    size, digest = encoded.size, bytes_digest(memoryview(encoded))  # fsyncing
                else:
                    tmp, size, digest = write_temp(final, produce)
                    self._pending.append(self._syncer.submit(finish_temp, tmp, final))
        else:  # one PUT under the final name
            size, digest = atomic_write(f"{self.path}/{file_name}", produce, fs=self.fs)
        entry = FileEntry(file_name, table.num_rows, size, digest)
        self.files.append(entry)
        return entry

    def commit(self) -> Manifest | None:
        """Write the manifest last, which commits the run. A run with no files commits nothing.

        Raises:
            StagingError: the run is closed, its manifest would be bigger than the loader
                reads (too many files), or `lake cleanup` abandoned it meanwhile.
        """
        if self.state != "open":
            raise StagingError(f"run {self.run_id} is {self.state}")
        if not self.files:
            self._remove_empty_folder()
            self.state = "empty"
            return None
        assert self.schema is not None
        manifest = Manifest(
            table=self.table, run_id=self.run_id, producer=self.producer,
            created_at=self.created_at, committed_at=_now(), files=tuple(self.files),
            schema=tuple((f.name, str(f.type)) for f in self.schema), key=self.key,
            extra=self.extra, producer_version=self.version,
        )
        data = manifest.to_json()
        if len(data) > MARKER_MAX_BYTES:  # the loader would reject the run: say so now
            error = StagingError(
                f"run {self.run_id} has {len(self.files)} files: its manifest would hold "
                f"{len(data)} bytes, more than the {MARKER_MAX_BYTES} the loader reads; "
                "stage fewer, bigger files per run (this run is abandoned)")
            self.abandon(error)
            raise error
        # The manifest is the commit point: it gets its name after every data file is durable.
        if self.local:
            with self._folder_kept():
                self._commit_locally(data)
        else:
            atomic_write_bytes(f"{self.path}/{MANIFEST_NAME}", data, fs=self.fs)
        self.state = "committed"
        self.manifest = manifest
        return manifest

    def abandon(self, error: BaseException | None = None) -> None:
        """Mark the run abandoned: it is never loaded; `lake cleanup` quarantines it later."""
        if self.state != "open":
            return
        self.state = "abandoned"
        try:
            self._wait_for_files()
        except OSError:
            pass  # the run is abandoned anyway; its files are never loaded
        note = {
            "run_id": self.run_id,
            "abandoned_at": _now(),
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "traceback": None if error is None else traceback.format_exception(error)[-3:],
        }
        try:
            atomic_write_bytes(f"{self.path}/{ABANDONED_NAME}", json.dumps(note).encode(),
                               fs=None if self.local else self.fs)
        except OSError:
            pass  # best effort: without a manifest the run is never loaded anyway

    @contextmanager
    def _folder_kept(self) -> Iterator[None]:
        """Turn a write into a run folder that is gone into a :class:`StagingError` that
        says why, instead of a FileNotFoundError naming a temp file.

        `lake cleanup` moves an uncommitted run to quarantine once nothing in it changed for
        ``abandon_after_hours``: a producer that paused longer than that finds its folder
        gone. Its data is not lost (it is in quarantine) but the run cannot commit.
        """
        try:
            yield
        except FileNotFoundError as exc:
            if os.path.isdir(self.path):
                raise
            self.state = "abandoned"
            raise StagingError(self._gone_message()) from exc

    def _gone_message(self) -> str:
        moved = f"{self.root_path}/{QUARANTINE_DIR}/{self.table}/{self.run_id}"
        where = (f"`lake cleanup` moved it to {moved} (reason abandoned) because nothing "
                 "was written to it for [lake] abandon_after_hours"
                 if os.path.isdir(moved) else "it was removed from staging")
        return (f"run {self.run_id} of {self.table} was abandoned and cannot commit: {where}; "
                "stage the data again in a new run, and write a run's files within "
                "abandon_after_hours of each other (or raise it in lake.toml)")

    def _check_schema(self, schema: pa.Schema) -> None:
        if self.schema is None:
            bad = [n for n in schema.names if not is_identifier(n) or
                   n.lower().startswith(RESERVED_PREFIX)]
            if bad:
                raise StagingError(
                    f"column names {bad!r} are not allowed: use letters, digits and '_', "
                    f"and do not start with {RESERVED_PREFIX!r}"
                )
            lowered = [n.lower() for n in schema.names]
            if len(set(lowered)) != len(lowered):
                raise StagingError(f"column names {schema.names!r} repeat (ignoring case)")
            self.schema = schema
        elif not schema.equals(self.schema, check_metadata=False):
            raise StagingError(
                f"every file of a run must have one schema; first was {_describe(self.schema)}, "
                f"this one is {_describe(schema)}"
            )

    def _commit_locally(self, manifest: bytes) -> None:
        """Write and fsync the manifest under a temp name while the data files' fsyncs finish
        on the background thread (a temp name is never read as a manifest); rename it only
        once every data file and its rename are durable."""
        final = Path(self.path) / MANIFEST_NAME
        tmp = write_temp_buffer(final, manifest, sync=True)
        try:
            self._wait_for_files()
            fsync_dir(self.path)  # every data file's rename is durable before the manifest's
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.path)

    def _raise_sync_error(self) -> None:
        """Surface a failed background fsync/rename at the next call, not at commit only."""
        for future in self._pending:
            if future.done() and future.exception() is not None:
                self._wait_for_files()

    def _wait_for_files(self) -> None:
        pending, self._pending = self._pending, []
        try:
            for future in pending:
                future.result()
        finally:
            if self._syncer is not None and not self._pending:
                self._syncer.shutdown(wait=True)
                self._syncer = None

    def _remove_empty_folder(self) -> None:
        try:
            self.fs.rmdir(self.path)
        except OSError:
            pass


@contextmanager
def stage_run(root: str | Path, table: str, *, producer: str = "producer",
              key: str | None = None, fs: Any = None, extra: dict[str, Any] | None = None,
              storage_options: dict[str, Any] | None = None,
              version: str | None = None) -> Iterator[StagedRun]:
    """Open a run; leaving the block commits it, an exception abandons it.

    Args:
        root: the lake root (a folder, or an fsspec URL of an object store: s3://,
            gs://, az://, ...; any other scheme raises :class:`StagingError`).
        table: the table the run feeds; must be declared in the loader's ``lake.toml``.
        producer: a short name for who staged it, embedded in the run id.
        key: an idempotency key. A producer that retries after a crash passes the same key;
            the loader loads a key once and records repeats as skipped.
        fs: an fsspec file system to use instead of the one the root's URL implies.
        extra: small JSON-ready metadata stored in the manifest.
        storage_options: options for the root URL's file system (e.g. ``endpoint_url``);
            fsspec also reads them from ``FSSPEC_<PROTOCOL>_<OPTION>`` variables.
        version: the producer's own code version (a release, a git sha): kept in the
            manifest, recorded in ``meta.staged_runs.producer_version``, shown by
            ``lake health``.

    On an object store (no rename) each file is one PUT under its final name and the
    manifest is PUT last: the run is invisible until then, as on local disk.
    """
    run = StagedRun(root, table, producer=producer, key=key, fs=fs, extra=extra,
                    storage_options=storage_options, version=version)
    try:
        yield run
    except BaseException as exc:
        run.abandon(exc)
        raise
    run.commit()


def stage(root: str | Path, table: str, data: Any, *, producer: str = "producer",
          key: str | None = None, fs: Any = None,
          storage_options: dict[str, Any] | None = None,
          version: str | None = None) -> Manifest | None:
    """Stage ``data`` as a one-file run and commit it; return its manifest."""
    with stage_run(root, table, producer=producer, key=key, fs=fs,
                   storage_options=storage_options, version=version) as run:
        run.write(data)
    return run.manifest


def to_arrow(data: Any) -> pa.Table:
    """Convert what a producer hands us to a pyarrow Table without importing pandas/polars."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and "pandas" in sys.modules:
        return pa.Table.from_pandas(data, preserve_index=False)
    if module == "polars" and hasattr(data, "to_arrow"):
        return data.to_arrow()
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise StagingError(
        f"cannot stage a {type(data).__name__}: pass a pyarrow Table or RecordBatch, "
        "or a pandas or polars DataFrame"
    )


def _plain_text(value: Any) -> bool:
    """Text the manifest parser accepts (``lakehouse/manifest.py`` bounds every text)."""
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS or "\0" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _describe(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
