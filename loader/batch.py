"""The runs of one batch: candidates, accepted runs, and the helpers that shape them.

A *candidate* is a verified run waiting for validation; once validated it becomes an
*accepted* run (maybe with some rows dropped) or a rejected one. A batch is what one
transaction commits; :class:`BatchView` shows its accepted runs to DuckDB as one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lakehouse.config import TableContract
from lakehouse.db import Warehouse
from lakehouse.errors import ContractViolation, ManifestFormatError, RunRejectedError
from lakehouse.layout import MANIFEST_NAME
from lakehouse.manifest import Manifest
from lakehouse.merge import (
    BATCH_NAME,
    build_batch,
    partition_expression,
    partition_text,
    schema_changes,
)
from lakehouse.staged import RunRef, VerifiedRun
from lakehouse.validation import ValidationOutcome


@dataclass
class Candidate:
    """A verified run, with the files a repeat check already dropped."""

    verified: VerifiedRun
    data: pa.Table
    skipped_files: list[str] = field(default_factory=list)
    repeated_files: int = 0  # files loaded before (merged again for upsert/replace)


@dataclass
class Accepted:
    verified: VerifiedRun
    data: pa.Table
    outcome: ValidationOutcome
    rejected_rows: pa.Table | None = None
    skipped_files: list[str] = field(default_factory=list)


@dataclass
class Batch:
    """Runs of one table waiting for one transaction."""

    candidates: list[Candidate] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[tuple[RunRef, RunRejectedError, Manifest | None, str | None]] = field(
        default_factory=list)
    # (run, manifest, reason code, message, manifest sha256)
    skipped: list[tuple[RunRef, Manifest, str, str, str]] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    keys_unique: bool = False  # known: no key repeats within or across the accepted runs

    @property
    def empty(self) -> bool:
        return not (self.candidates or self.accepted or self.rejected or self.skipped)

    @property
    def schema(self) -> pa.Schema | None:
        return self.candidates[0].data.schema if self.candidates else None


class BatchView:
    """The accepted runs of a batch exposed to DuckDB as one Arrow table (``BATCH_NAME``),
    for the key checks of screening and for the merge: registered again only when the runs
    changed."""

    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh
        self._registered: tuple[pa.Table, ...] | None = None  # the runs registered now
        self._table: pa.Table | None = None  # ... and the batch made of them

    def register(self, batch: Batch) -> None:
        """Expose the accepted runs as one Arrow table (rebuilt only when they changed)."""
        # Holding the tables themselves (not their ids) so a freed table's id can't be reused.
        key = tuple(a.data for a in batch.accepted)
        if self._registered is not None and len(self._registered) == len(key) and all(
                x is y for x, y in zip(self._registered, key, strict=True)):
            return
        data = build_batch([a.data for a in batch.accepted],
                           [a.verified.ref.run_id for a in batch.accepted])
        self.wh.unregister(BATCH_NAME)
        self.wh.register(BATCH_NAME, data)
        self._registered, self._table = key, data

    def make_contiguous(self) -> None:
        """Re-register the batch as one chunk per column (for an insert in batch order)."""
        data = self._table
        if data is not None and any(c.num_chunks > 1 for c in data.columns):
            self._table = data.combine_chunks()
            self.wh.unregister(BATCH_NAME)
            self.wh.register(BATCH_NAME, self._table)

    def unregister(self) -> None:
        self.wh.unregister(BATCH_NAME)
        self._registered, self._table = None, None


def peek_manifest(ref: RunRef) -> Manifest | None:
    """A rejected run's manifest for its ledger row, if it can be read at all.

    Read through ``RunRef.read_bytes`` like every staged file (no link followed, no FIFO
    waited on, at most a marker's cap): the run was rejected, so its manifest may be
    anything (before, a FIFO here blocked the load while it held the lock)."""
    try:
        return Manifest.from_json(ref.read_bytes(MANIFEST_NAME))
    except (OSError, ManifestFormatError):
        return None


def drop_files(data: pa.Table, manifest: Manifest, names: set[str]) -> tuple[pa.Table, list[str]]:
    keep = []
    start = 0
    for f in manifest.files:
        if f.name not in names:
            keep.append(data.slice(start, f.rows))
        start += f.rows
    return pa.concat_tables(keep), sorted(names)


def row_mask(length: int, rows: set[int]) -> pa.Array:
    flags = [False] * length
    for r in rows:
        if 0 <= r < length:
            flags[r] = True
    return pa.array(flags, pa.bool_())


def drop_rows_reason(ref: RunRef, run: Accepted) -> dict[str, Any]:
    violation = ContractViolation(ref.table, ref.run_id, run.outcome.failures,
                                  total_failures=run.outcome.total_failures, schema_level=False)
    reason = violation.reason()
    reason["code"] = "rows_dropped"
    reason["rows_loaded"] = run.data.num_rows
    reason["rows_rejected"] = 0 if run.rejected_rows is None else run.rejected_rows.num_rows
    return reason


def schema_problem(contract: TableContract, run_columns: list[tuple[str, str]],
                   table_columns: list[tuple[str, str]]) -> str | None:
    """Why runs with ``run_columns`` cannot go into the table as it is (None: they can): a
    changed type, a missing column, new columns under ``schema_evolution = "freeze"``, or a
    partition column the granularity cannot use."""
    parts = []
    if table_columns:
        new, missing, conflicts = schema_changes(run_columns, table_columns)
        if conflicts:
            parts.append("type changed: " + "; ".join(conflicts))
        if missing:
            parts.append(f"columns missing from the run: {missing}")
        if new and contract.schema_evolution != "add_columns":
            parts.append(f"new columns {[n for n, _ in new]} (schema_evolution = "
                         "\"freeze\"; set \"add_columns\" to accept them)")
    if parts:
        return "; ".join(parts)
    types = {n.lower(): t for n, t in run_columns}
    if partition_expression(contract, types) is None:
        spec = next(s for s in contract.partitions if partition_text(s, types) is None)
        return (f"partition column {spec.column!r} is {types.get(spec.column.lower())}"
                f"; granularity {spec.granularity!r} needs a DATE or TIMESTAMP")
    return None
