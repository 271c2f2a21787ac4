"""The staging area in an object store: committed runs found there, and moved between
``staging/``, ``archive/`` and ``quarantine/`` by copy-then-delete.

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

Listing and reading the store (for `lake cleanup`, `lake quarantine` and `lake audit` too) is
:class:`lakehouse.object_store.ObjectStore`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse import failpoints
from lakehouse.config import LakeConfig
from lakehouse.errors import StagingUnavailableError
from lakehouse.fsio import bytes_digest
from lakehouse.jsonable import jsonable
from lakehouse.layout import (
    ARCHIVE_DIR,
    MANIFEST_NAME,
    QUARANTINE_DIR,
    REASON_NAME,
    REJECTED_ROWS_NAME,
    STAGING_DIR,
)
from lakehouse.object_store import (
    STORE_ERRORS,
    ObjectStore,
    StoredObject,
)
from lakehouse.staged import RunRef, VerifiedRun, verify_run


class ObjectArea(ObjectStore):
    """The staging folders under an fsspec URL; moves are copy-then-delete (module docstring)."""

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

    # -- runs in staging ----------------------------------------------------------------
    @property
    def latency_bound(self) -> bool:
        """True: every read and move is requests to the store."""
        return True

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

    def verify(self, ref: RunRef, config: LakeConfig) -> VerifiedRun:
        return verify_run(ref, config)

    # -- moves --------------------------------------------------------------------------
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
            except STORE_ERRORS as exc:
                raise StagingUnavailableError(
                    f"cannot copy {self.url(src)}/{name}: {exc}; the run stays where it was, "
                    "run the command again when the store answers") from None
            failpoints.hit("store.copied" if done == len(ordered) else "store.mid_copy")

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
                failpoints.hit("store.mid_delete")

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
        self.put(f"{dst}/{REASON_NAME}", json.dumps(reason, indent=1, default=jsonable).encode())
        failpoints.hit("store.reason")
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
        self.put(f"{dst}/{REASON_NAME}", json.dumps(reason, indent=1, default=jsonable).encode())

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
