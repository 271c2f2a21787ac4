"""The exactly-once ledger (``meta.staged_runs``, ``meta.staged_files``): its rows, reads and
batched writes.

A run's ledger row commits in the same transaction as its data rows. Recovery reads the
ledger: a committed run found in the ledger with the manifest it recorded (its SHA-256)
only finishes its move out of staging (``loader/recovery.py`` decides).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from lakehouse.db import Warehouse
from lakehouse.jsonable import jsonable
from lakehouse.layout import parse_run_id
from lakehouse.manifest import Manifest
from lakehouse.staged import RunRef

STATUS_LOADED = "loaded"
STATUS_QUARANTINED = "quarantined"
STATUS_SKIPPED = "skipped"

STAGED_RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("table_name", pa.string()), ("producer", pa.string()),
    ("idempotency_key", pa.string()), ("manifest_sha256", pa.string()),
    ("status", pa.string()), ("reason_code", pa.string()), ("reason_json", pa.string()),
    ("rows_staged", pa.int64()), ("rows_loaded", pa.int64()), ("rows_rejected", pa.int64()),
    ("bytes_staged", pa.int64()), ("load_run_id", pa.string()),
    ("created_at", pa.timestamp("us")), ("committed_at", pa.timestamp("us")),
    ("recorded_at", pa.timestamp("us")), ("producer_version", pa.string()),
])

STAGED_FILES_SCHEMA = pa.schema([
    ("table_name", pa.string()), ("sha256", pa.string()), ("run_id", pa.string()),
    ("file_name", pa.string()), ("rows", pa.int64()), ("bytes", pa.int64()),
    ("loaded_at", pa.timestamp("us")),
])


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger says about one run."""

    run_id: str
    table_name: str
    status: str
    reason_json: str | None
    rows_rejected: int
    manifest_sha256: str | None = None  # of the manifest recorded; None when none was read


def utcnow() -> datetime:
    """Naive UTC now (DuckDB TIMESTAMP columns hold UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def ledger_row(ref: RunRef, manifest: Manifest | None, manifest_sha: str | None, status: str,
               reason: dict[str, Any] | None, rows_loaded: int, rows_rejected: int,
               load_id: str | None, now: datetime) -> dict[str, Any]:
    """The ``meta.staged_runs`` row of a run a load loaded, quarantined or skipped (its
    manifest is None when it could not be read)."""
    row = _run_row(ref.table, ref.run_id, status, reason, now)
    committed = None
    if manifest is not None:
        row["producer"] = manifest.producer
        try:
            committed = datetime.fromisoformat(manifest.committed_at).astimezone(UTC).replace(
                tzinfo=None)
        except (ValueError, OverflowError):  # a manifest's text, not ours to trust
            committed = None
    row.update({
        "idempotency_key": manifest.key if manifest else None,
        "manifest_sha256": manifest_sha,
        "rows_staged": manifest.rows if manifest else None, "rows_loaded": rows_loaded,
        "rows_rejected": rows_rejected, "bytes_staged": manifest.bytes if manifest else None,
        "load_run_id": load_id, "committed_at": committed,
        "producer_version": manifest.producer_version if manifest else None,
    })
    return row


def abandoned_row(table: str, run_id: str, reason: dict[str, Any]) -> dict[str, Any]:
    """The ``meta.staged_runs`` row of a run cleanup quarantines as abandoned: it never
    committed, so nothing was staged, loaded or rejected."""
    row = _run_row(table, run_id, STATUS_QUARANTINED, reason, utcnow())
    row.update({"rows_staged": 0, "rows_loaded": 0, "rows_rejected": 0})
    return row


def _run_row(table: str, run_id: str, status: str, reason: dict[str, Any] | None,
             now: datetime) -> dict[str, Any]:
    """The columns every ledger row fills: the run, its status and reason, and what its id
    says (producer, creation time; None for an id that is not one of ours)."""
    parts = parse_run_id(run_id)
    return {
        "run_id": run_id, "table_name": table,
        "producer": parts.producer if parts else None, "status": status,
        "reason_code": reason.get("code") if reason else None,
        "reason_json": json.dumps(reason, default=jsonable) if reason else None,
        "created_at": parts.created_at.replace(tzinfo=None) if parts else None,
        "recorded_at": now,
    }


def ledger_entries(wh: Warehouse, runs: list[tuple[str, str]]
                   ) -> dict[tuple[str, str], LedgerEntry]:
    """Ledger rows of the given (table, run id) pairs, by that pair."""
    if not runs:
        return {}
    rows = wh.fetchall(
        "SELECT run_id, table_name, status, reason_json, coalesce(rows_rejected, 0), "
        "manifest_sha256 FROM meta.staged_runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
        [sorted({run_id for _, run_id in runs})], action="reading the ledger")
    wanted = set(runs)
    return {(r[1], r[0]): LedgerEntry(r[0], r[1], r[2], r[3], int(r[4]), r[5]) for r in rows
            if (r[1], r[0]) in wanted}


def loaded_keys(wh: Warehouse, table: str, keys: list[str]) -> dict[str, str]:
    """Idempotency keys of ``table`` already loaded, mapped to the run that loaded them."""
    if not keys:
        return {}
    rows = wh.fetchall(
        "SELECT idempotency_key, min(run_id) FROM meta.staged_runs WHERE table_name = ? AND "
        "status = 'loaded' AND idempotency_key IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1",
        [table, keys], action="reading idempotency keys")
    return {r[0]: r[1] for r in rows}


def loaded_checksums(wh: Warehouse, table: str, checksums: list[str]) -> dict[str, str]:
    """Checksums of files already loaded into ``table``, mapped to the run that loaded them."""
    if not checksums:
        return {}
    rows = wh.fetchall(
        "SELECT sha256, min(run_id) FROM meta.staged_files WHERE table_name = ? AND "
        "sha256 IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1",
        [table, checksums], action="reading file checksums")
    return {r[0]: r[1] for r in rows}


def insert_rows(wh: Warehouse, target: str, schema: pa.Schema, rows: list[dict[str, Any]]) -> None:
    """Insert many rows into a meta table in one statement (via an Arrow table)."""
    if not rows:
        return
    data = pa.Table.from_pylist(rows, schema=schema)
    name = "lake_meta_rows"
    wh.register(name, data)
    try:
        wh.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {name}",
                   action=f"writing {target}")
    finally:
        wh.unregister(name)


def record_runs(wh: Warehouse, rows: list[dict[str, Any]]) -> None:
    """Write ledger rows (one per run) in one statement."""
    insert_rows(wh, "meta.staged_runs", STAGED_RUNS_SCHEMA, rows)


def record_files(wh: Warehouse, rows: list[dict[str, Any]]) -> None:
    """Remember loaded files' checksums for good."""
    insert_rows(wh, "meta.staged_files", STAGED_FILES_SCHEMA, rows)


def forget_runs(wh: Warehouse, runs: list[tuple[str, str]]) -> None:
    """Drop the quarantined or skipped rows of these (table, run id) pairs, so that the runs
    staged under those ids now are loaded as new runs. A ``loaded`` row is never dropped:
    its run's rows are in the table."""
    if not runs:
        return
    wh.execute("DELETE FROM meta.staged_runs WHERE status IN (?, ?) AND (table_name, run_id) IN "
               "(SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]))",
               [STATUS_QUARANTINED, STATUS_SKIPPED, [t for t, _ in runs], [r for _, r in runs]],
               action="updating the ledger")


def forget_run(wh: Warehouse, table: str, run_id: str) -> None:
    """Drop a quarantined run's ledger row so a replayed run can be loaded again."""
    wh.execute("DELETE FROM meta.staged_runs WHERE table_name = ? AND run_id = ? AND "
               "status = 'quarantined'", [table, run_id], action="updating the ledger")
