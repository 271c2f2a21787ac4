"""Run lifecycle, assets, watermarks and checks in ``meta`` (the observability spec).

:class:`RunLogger` writes the ``started`` row at once, buffers asset rows, check results and
watermarks in memory, and writes them in a few statements, inside the caller's load
transaction (:meth:`RunLogger.flush`). On exit it closes the run as success or failed.

Every job that changes the lake records one run (``load``, ``compact``, ``cleanup``,
``export``, ``quarantine_replay``); its row names the process (pid, host). A run left
``started`` is one whose process died (SIGKILL, OOM, power loss) holding the warehouse lock:
the next run to start, which holds that lock, closes it as ``failed`` / ``killed``
(:func:`close_killed_runs`), in the transaction that records its own start.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from types import TracebackType
from typing import Any

import pyarrow as pa

from lakehouse import __version__
from lakehouse.db import Warehouse
from lakehouse.jsonable import jsonable
from lakehouse.ledger import insert_rows, utcnow

ASSETS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("asset_key", pa.string()), ("asset_kind", pa.string()),
    ("partition_key", pa.string()), ("status", pa.string()), ("rows_inserted", pa.int64()),
    ("rows_updated", pa.int64()), ("rows_deleted", pa.int64()), ("bytes_written", pa.int64()),
    ("min_event_ts", pa.timestamp("us")), ("max_event_ts", pa.timestamp("us")),
    ("extra_json", pa.string()), ("started_at", pa.timestamp("us")),
    ("ended_at", pa.timestamp("us")), ("duration_ms", pa.int64()),
])

CHECKS_SCHEMA = pa.schema([
    ("check_id", pa.string()), ("asset_key", pa.string()), ("partition_key", pa.string()),
    ("check_name", pa.string()), ("severity", pa.string()), ("status", pa.string()),
    ("checked_at", pa.timestamp("us")), ("metrics_json", pa.string()), ("message", pa.string()),
    ("run_id", pa.string()), ("column_name", pa.string()), ("failure_count", pa.int64()),
    ("examples_json", pa.string()),
])

KILLED = "killed"  # error_type of a run closed because its process died while it ran


def as_timestamp(value: Any) -> datetime | None:
    """A naive UTC datetime for a watermark or event time (dates become midnight)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            from datetime import UTC

            value = value.astimezone(UTC).replace(tzinfo=None)
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return None


@dataclass
class RunLogger:
    """One ``meta.ingestion_runs`` row from started to success/failed, with batched details."""

    wh: Warehouse
    job_name: str
    triggered_by: str = "cli"
    args: dict[str, Any] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started_at: datetime = field(default_factory=utcnow)
    _assets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _dirty_assets: set[tuple[str, str]] = field(default_factory=set)
    _checks: list[dict[str, Any]] = field(default_factory=list)
    _watermarks: dict[tuple[str, str], datetime] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)  # runs this start closed as killed
    # Passing checks, one row per (table, check) per run whatever the number of batches:
    # its id is fixed, so each flush rewrites it with the running totals.
    _passes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _dirty_passes: set[tuple[str, str]] = field(default_factory=set)

    def __enter__(self) -> RunLogger:
        return self.start()

    def start(self) -> RunLogger:
        """Record the ``started`` row, closing first the runs that killed processes left
        ``started`` (the caller holds the warehouse lock: no other run can be live)."""
        with self.wh.transaction("recording the run start"):
            # Found now: their ended_at is this run's started_at.
            self.killed = close_killed_runs(self.wh, self.run_id, self.job_name,
                                            self.started_at)
            self.wh.execute(
                "INSERT INTO meta.ingestion_runs (run_id, job_name, triggered_by, status, "
                "started_at, storage_backend, args_json, app_version, pid, host) "
                "VALUES (?, ?, ?, 'started', ?, 'duckdb', ?, ?, ?, ?)",
                [self.run_id, self.job_name, self.triggered_by, self.started_at,
                 json.dumps(self.args, default=jsonable), __version__, os.getpid(),
                 socket.gethostname()],
                action="recording the run start")
        return self

    def log_asset(self, asset_key: str, partition_key: str, status: str, *,
                  rows_inserted: int | None = None, rows_updated: int | None = None,
                  rows_deleted: int | None = None, bytes_written: int | None = None,
                  min_event_ts: Any = None, max_event_ts: Any = None,
                  extra: dict[str, Any] | None = None) -> None:
        """Add to the asset row of (asset, partition) for this run: one row per touched
        partition, however many batches the load commits in (best-effort metrics)."""
        now = utcnow()
        key = (asset_key, partition_key)
        row = self._assets.get(key)
        if row is None:
            row = self._assets[key] = {
                "run_id": self.run_id, "asset_key": asset_key, "asset_kind": "table",
                "partition_key": partition_key, "status": status, "rows_inserted": None,
                "rows_updated": None, "rows_deleted": None, "bytes_written": None,
                "min_event_ts": None, "max_event_ts": None, "extra_json": None,
                "started_at": now, "ended_at": now, "duration_ms": 0}
        for name, value in (("rows_inserted", rows_inserted), ("rows_updated", rows_updated),
                            ("rows_deleted", rows_deleted), ("bytes_written", bytes_written)):
            if value is not None:
                row[name] = (row[name] or 0) + value
        lo, hi = as_timestamp(min_event_ts), as_timestamp(max_event_ts)
        if lo is not None and (row["min_event_ts"] is None or lo < row["min_event_ts"]):
            row["min_event_ts"] = lo
        if hi is not None and (row["max_event_ts"] is None or hi > row["max_event_ts"]):
            row["max_event_ts"] = hi
        if extra:
            row["extra_json"] = json.dumps(extra, default=jsonable)
        row["ended_at"] = now
        row["duration_ms"] = int((now - row["started_at"]).total_seconds() * 1000)
        self._dirty_assets.add(key)

    def log_check(self, asset_key: str, check_name: str, *, passed: bool, severity: str = "error",
                  message: str | None = None, metrics: dict[str, Any] | None = None,
                  partition_key: str | None = None, status: str | None = None,
                  column_name: str | None = None, failure_count: int | None = None,
                  examples: list[str] | tuple[str, ...] | None = None) -> None:
        """Buffer one check result; every failure is kept (passes: see :meth:`log_pass`)."""
        self._checks.append({
            "check_id": str(uuid.uuid4()), "asset_key": asset_key, "partition_key": partition_key,
            "check_name": check_name, "severity": severity,
            "status": status or ("pass" if passed else "fail"), "checked_at": utcnow(),
            "metrics_json": json.dumps(metrics, default=jsonable) if metrics else None,
            "message": message, "run_id": self.run_id, "column_name": column_name,
            "failure_count": failure_count,
            "examples_json": None if examples is None else json.dumps(list(examples)),
        })

    def log_pass(self, asset_key: str, check_name: str, **counts: int) -> None:
        """Count a passing check: one 'pass' row per (table, check) for the whole run, its
        ``metrics_json`` the summed ``counts`` (e.g. runs=1, rows=100)."""
        key = (asset_key, check_name)
        row = self._passes.get(key)
        if row is None:
            row = self._passes[key] = {
                "check_id": f"{self.run_id}:{asset_key}:{check_name}", "asset_key": asset_key,
                "partition_key": None, "check_name": check_name, "severity": "error",
                "status": "pass", "checked_at": utcnow(), "metrics": {}, "message": None,
                "run_id": self.run_id, "column_name": None, "failure_count": 0,
                "examples_json": None}
        for name, value in counts.items():
            row["metrics"][name] = row["metrics"].get(name, 0) + value
        row["checked_at"] = utcnow()
        self._dirty_passes.add(key)

    def log_watermark(self, asset_key: str, value: Any, scope_key: str = "ALL") -> None:
        """Remember the highest event time seen for an asset in this load."""
        ts = as_timestamp(value)
        if ts is None:
            return
        key = (asset_key, scope_key)
        if key not in self._watermarks or ts > self._watermarks[key]:
            self._watermarks[key] = ts

    def flush(self) -> None:
        """Write the buffered rows; call inside the load transaction."""
        if self._dirty_assets:
            # Rewrite the touched partitions' rows of this run with their running totals.
            touched = sorted(self._dirty_assets)
            self.wh.execute(
                "DELETE FROM meta.ingestion_run_assets WHERE run_id = ? AND "
                "asset_key || chr(0) || partition_key IN (SELECT unnest(?::VARCHAR[]))",
                [self.run_id, [f"{a}\x00{p}" for a, p in touched]],
                action="updating run assets")
            insert_rows(self.wh, "meta.ingestion_run_assets", ASSETS_SCHEMA,
                        [self._assets[k] for k in touched])
        if self._dirty_passes:
            passes = [{**{k: v for k, v in self._passes[key].items() if k != "metrics"},
                       "metrics_json": json.dumps(self._passes[key]["metrics"])}
                      for key in sorted(self._dirty_passes)]
            self.wh.execute("DELETE FROM meta.asset_checks WHERE check_id IN "
                            "(SELECT unnest(?::VARCHAR[]))", [[p["check_id"] for p in passes]],
                            action="updating passing checks")
            insert_rows(self.wh, "meta.asset_checks", CHECKS_SCHEMA, passes)
        insert_rows(self.wh, "meta.asset_checks", CHECKS_SCHEMA, self._checks)
        now = utcnow()
        for (asset, scope), ts in self._watermarks.items():
            self.wh.execute(
                "INSERT INTO meta.asset_watermarks VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (asset_key, scope_key) DO UPDATE SET "
                "watermark_ts = greatest(asset_watermarks.watermark_ts, excluded.watermark_ts), "
                "updated_at = excluded.updated_at, last_run_id = excluded.last_run_id",
                [asset, scope, ts, now, self.run_id], action="updating watermarks")
        self.discard()

    def assets_touched(self) -> set[str]:
        """The tables this run wrote asset rows for (committed or buffered)."""
        return {asset for asset, _ in self._assets}

    def mark(self) -> tuple[dict[tuple[str, str], dict[str, Any]], ...]:
        """A copy of the asset and pass totals, to restore if the batch's transaction rolls
        back."""
        return ({k: dict(v) for k, v in self._assets.items()},
                {k: {**v, "metrics": dict(v["metrics"])} for k, v in self._passes.items()})

    def rollback_to(self, mark: tuple[dict[tuple[str, str], dict[str, Any]], ...]) -> None:
        """Undo what a rolled-back batch logged."""
        self._assets, self._passes = mark[0], mark[1]
        self.discard()

    def discard(self) -> None:
        """Forget buffered checks and watermarks (written, or their transaction rolled back).

        Asset totals are kept across batches; only the set of rows to rewrite is reset.
        """
        self._dirty_assets.clear()
        self._dirty_passes.clear()
        self._checks.clear()
        self._watermarks.clear()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.finish(exc)

    def finish(self, exc: BaseException | None = None) -> None:
        """Close the run: success (writing what is buffered) or failed with ``exc``.

        A job whose warehouse connection changed meanwhile (compaction swaps the file)
        sets :attr:`wh` to the current one first.
        """
        ended = utcnow()
        duration = int((ended - self.started_at).total_seconds() * 1000)
        if exc is None:
            with self.wh.transaction("closing the run"):
                self.flush()
                self.wh.execute(
                    "UPDATE meta.ingestion_runs SET status = 'success', ended_at = ?, "
                    "duration_ms = ? WHERE run_id = ?", [ended, duration, self.run_id],
                    action="closing the run")
            return
        self.discard()
        self.wh.execute(
            "UPDATE meta.ingestion_runs SET status = 'failed', ended_at = ?, duration_ms = ?, "
            "error_type = ?, error_message = ?, error_stack_hash = ? WHERE run_id = ?",
            [ended, duration, type(exc).__name__, str(exc)[:2000], stack_hash(exc), self.run_id],
            action="recording the run failure")


def close_killed_runs(wh: Warehouse, found_by: str, job_name: str,
                      now: datetime | None = None) -> list[str]:
    """Close every run still ``started`` but ``found_by`` as failed / ``killed``; return them.

    Call under the warehouse lock: a job records its run only while it holds the lock, so a
    ``started`` row the lock holder did not write belongs to a process that died holding it.
    ``ended_at`` is when it was found (when the process died is not known), and
    ``duration_ms`` stays NULL for the same reason.
    """
    now = now or utcnow()
    rows = wh.fetchall("SELECT run_id, job_name, pid, host FROM meta.ingestion_runs "
                       "WHERE status = 'started' AND run_id != ? ORDER BY started_at",
                       [found_by], action="looking for runs of killed processes")
    for run_id, job, pid, host in rows:
        who = f"pid {pid} on {host}" if pid is not None else "pid unknown"
        command = f"lake {str(job).replace('_', ' ')}"
        message = (f"the {command} process ({who}) died before it closed this run (killed, "
                   f"out of memory or power lost); found by {job_name} run {found_by}; what it "
                   f"committed is kept, and the next {command} finishes or redoes the rest")
        wh.execute("UPDATE meta.ingestion_runs SET status = 'failed', error_type = ?, "
                   "error_message = ?, ended_at = ? WHERE run_id = ? AND status = 'started'",
                   [KILLED, message, now, run_id], action="closing a killed run")
    return [r[0] for r in rows]


def stack_hash(exc: BaseException) -> str:
    """A short hash of where an error was raised (files and functions, not line numbers)."""
    frames = traceback.extract_tb(exc.__traceback__)
    text = "|".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.name}" for f in frames)
    return hashlib.sha1(f"{type(exc).__name__}|{text}".encode()).hexdigest()[:12]
