"""The staging area: where the loader finds, reads and moves staged runs.

The loader finds, reads and moves runs through a staging area (:class:`StagingArea`), and
:func:`staging_area` picks the one ``lake.toml`` names. :class:`LocalArea` is the default:
``staging/``, ``archive/`` and ``quarantine/`` under the lake root, moved by renames
(``lakehouse/moves.py``). :class:`lakehouse.object_area.ObjectArea` serves
``[lake] staging_root = "s3://bucket/lake"`` (or gs://, abfs://, any fsspec URL): the same three
folders under that URL, while the warehouse, its lock and the published snapshot stay on the
loader's local disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pyarrow as pa

from lakehouse import moves
from lakehouse.config import LakeConfig
from lakehouse.object_area import ObjectArea
from lakehouse.staged import RunRef, VerifiedRun, discover_runs, verify_run


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
