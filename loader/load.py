"""One load: discover -> verify -> validate -> merge -> publish -> archive.

Ordering rules, each enforced where it is commented below:

1. The warehouse lock is held for the whole load (one writer).
2. Runs already in the ledger only finish their move: they are never merged twice.
3. A batch's data rows, its runs' ledger rows (loaded, skipped, quarantined), the loaded files'
   checksums, run assets, checks and watermarks commit in ONE transaction.
4. Runs leave staging only after that commit (archive / quarantine), so a crash at any instant
   leaves each run either in the warehouse and the ledger, or in neither and still in staging.
5. ``drop_rows`` writes the rejected rows to quarantine *before* the commit (idempotently), so
   the commit never refers to rows that are not on disk.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.config import LakeConfig, TableContract
from lakehouse.contracts import SchemaRegistry, ValidationOutcome, check_run
from lakehouse.db import Warehouse, open_warehouse, quote
from lakehouse.errors import (
    ContractViolation,
    FailureRecord,
    InvalidRunError,
    KeyConflictError,
    LoadAbortedError,
    RunRejectedError,
    SchemaChangeError,
    StopRequestedError,
    WarehouseError,
)
from lakehouse.layout import PARTITION_COLUMN, LakePaths, is_identifier, parse_run_id
from lakehouse.ledger import (
    STATUS_LOADED,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    LedgerEntry,
    ledger_entries,
    loaded_checksums,
    loaded_keys,
    record_files,
    record_runs,
    utcnow,
)
from lakehouse.lock import WarehouseLock
from lakehouse.manifest import Manifest, ManifestFormatError
from lakehouse.merge import (
    BATCH_NAME,
    build_batch,
    describe_batch,
    ensure_table,
    find_key_conflicts,
    merge_batch,
    partition_expression,
    schema_changes,
)
from lakehouse.merge import add_columns as add_table_columns
from lakehouse.migrations import migrate
from lakehouse.moves import (
    archive_run,
    empty_trash,
    quarantine_rejected_rows,
    quarantine_run,
    sync_folders,
)
from lakehouse.observability import RunLogger
from lakehouse.publish import mark_publish_pending, publish_pending, publish_snapshot
from lakehouse.staged import RunRef, VerifiedRun, discover_runs, verify_run

CRASH_POINTS = ("after_lock", "after_verify", "before_commit", "after_commit", "mid_archive",
                "after_archive", "before_publish")


@dataclass
class StopFlag:
    """Set by a signal handler; the loader checks it between runs (safe points)."""

    signal_name: str | None = None

    def raise_if_set(self) -> None:
        if self.signal_name:
            raise StopRequestedError(self.signal_name)


@dataclass
class LoadOptions:
    """What `lake load` was asked to do."""

    table: str | None = None
    max_runs: int | None = None
    lock_timeout: float = 0.0
    dry_run: bool = False
    progress: Callable[[RunOutcome], None] | None = None
    stop: StopFlag = field(default_factory=StopFlag)
    crash_at: str | None = None  # testing only: SIGKILL this process at the named point


@dataclass
class RunOutcome:
    """What happened to one staged run."""

    table: str
    run_id: str
    status: str  # loaded | quarantined | skipped | recovered | would_load | would_quarantine
    rows_loaded: int = 0
    rows_rejected: int = 0
    reason_code: str | None = None
    message: str | None = None


@dataclass
class TableSummary:
    """A data table after the load."""

    rows: int
    partitions: int


@dataclass
class LoadReport:
    """The result of `lake load`."""

    runs: list[RunOutcome] = field(default_factory=list)
    tables: dict[str, TableSummary] = field(default_factory=dict)
    dry_run: bool = False
    published: bool = False
    publish_seconds: float = 0.0
    seconds: float = 0.0
    load_run_id: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.runs if r.status == status)

    @property
    def rejected(self) -> bool:
        """True when any run (or part of one) was rejected: the CLI exits 3."""
        return any(r.status in ("quarantined", "would_quarantine") or r.rows_rejected
                   for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "load_run_id": self.load_run_id,
            "runs_loaded": self.count("loaded"),
            "runs_quarantined": self.count("quarantined"),
            "runs_skipped": self.count("skipped"),
            "runs_recovered": self.count("recovered"),
            "rows_loaded": sum(r.rows_loaded for r in self.runs),
            "rows_rejected": sum(r.rows_rejected for r in self.runs),
            "published": self.published,
            "seconds": round(self.seconds, 3),
            "tables": {k: asdict(v) for k, v in self.tables.items()},
            "runs": [asdict(r) for r in self.runs],
        }


@dataclass
class _Accepted:
    verified: VerifiedRun
    data: pa.Table
    outcome: ValidationOutcome
    rejected_rows: pa.Table | None = None
    skipped_files: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    """Runs of one table waiting for one transaction."""

    accepted: list[_Accepted] = field(default_factory=list)
    rejected: list[tuple[RunRef, RunRejectedError, Manifest | None, str | None]] = field(
        default_factory=list)
    skipped: list[tuple[RunRef, Manifest, str, str]] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0

    @property
    def empty(self) -> bool:
        return not (self.accepted or self.rejected or self.skipped)

    @property
    def schema(self) -> pa.Schema | None:
        return self.accepted[0].data.schema if self.accepted else None


class _Loader:
    def __init__(self, config: LakeConfig, options: LoadOptions, wh: Warehouse,
                 logger: RunLogger | None, report: LoadReport) -> None:
        self.config, self.options, self.wh, self.logger, self.report = (
            config, options, wh, logger, report)
        self.paths: LakePaths = config.paths
        self.schemas = SchemaRegistry(config)
        self.changed = False
        self.abort: LoadAbortedError | None = None

    # -- crash points (tests only) ------------------------------------------------------
    def crash(self, point: str) -> None:
        if self.options.crash_at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    def emit(self, outcome: RunOutcome) -> None:
        self.report.runs.append(outcome)
        if self.options.progress:
            self.options.progress(outcome)

    # -- recovery -------------------------------------------------------------------------
    def finish_moves(self, refs: list[RunRef], entries: dict[str, LedgerEntry]) -> None:
        """Runs the ledger already accounts for: finish their move, never merge them again."""
        for ref in refs:
            entry = entries[ref.run_id]
            if entry.status == STATUS_QUARANTINED:
                reason = json.loads(entry.reason_json) if entry.reason_json else {}
                quarantine_run(self.paths, ref.table, ref.run_id, reason)
            else:
                archive_run(self.paths, ref.table, ref.run_id,
                            retention_days=self.config.settings.retention_days)
            self.emit(RunOutcome(ref.table, ref.run_id, "recovered",
                                 message=f"ledger says {entry.status}; finished its move"))

    # -- per table --------------------------------------------------------------------------
    def load_table(self, table: str, refs: list[RunRef]) -> None:
        contract = self.config.tables.get(table) if is_identifier(table) else None
        if contract is None:
            batch = _Batch()
            for ref in refs:
                try:
                    verify_run(ref, self.config)  # raises for unknown/hostile tables
                except RunRejectedError as exc:
                    batch.rejected.append((ref, exc, None, None))
            self.flush(None, batch)
            return
        resolved = self.schemas.get(contract)
        keys_seen, sums_seen = self._prefetch_ledger(table, refs)
        settings = self.config.settings
        batch = _Batch()
        for ref in refs:
            self.options.stop.raise_if_set()  # a safe point: nothing of this batch committed
            manifest_key = _peek_key(ref)
            if manifest_key is not None and manifest_key in keys_seen:
                manifest = _peek_manifest(ref)
                if manifest is not None:
                    batch.skipped.append((ref, manifest, "duplicate_key",
                                          f"idempotency key {manifest_key!r} already loaded by "
                                          f"run {keys_seen[manifest_key]}"))
                    continue
            try:
                verified = verify_run(ref, self.config)
            except RunRejectedError as exc:
                batch.rejected.append((ref, exc, _peek_manifest(ref), None))
                continue
            self.crash("after_verify")
            accepted = self._validate(contract, resolved, verified, sums_seen, batch)
            if self.abort is not None:
                break
            if accepted is None:
                continue
            if batch.accepted and (
                    batch.schema != accepted.data.schema
                    or batch.rows + accepted.data.num_rows > settings.batch_max_rows
                    or len(batch.accepted) >= settings.batch_max_runs
                    or batch.bytes + verified.manifest.bytes > settings.batch_max_bytes):
                self.flush(contract, batch)
                batch = _Batch()
                if self.abort is not None:
                    break
            batch.accepted.append(accepted)
            batch.rows += accepted.data.num_rows
            batch.bytes += verified.manifest.bytes
            if verified.manifest.key is not None:
                keys_seen[verified.manifest.key] = ref.run_id
            for f in verified.manifest.files:
                sums_seen.setdefault(f.sha256, ref.run_id)
        if not batch.empty:
            self.flush(contract, batch)
        if self.abort is not None:
            raise self.abort

    def _prefetch_ledger(self, table: str, refs: list[RunRef]
                         ) -> tuple[dict[str, str], dict[str, str]]:
        """Idempotency keys and file checksums already loaded: one query each per table."""
        keys, sums = [], []
        for ref in refs:
            manifest = _peek_manifest(ref)
            if manifest is None:
                continue
            if manifest.key is not None:
                keys.append(manifest.key)
            sums += [f.sha256 for f in manifest.files]
        return loaded_keys(self.wh, table, keys), loaded_checksums(self.wh, table, sums)

    def _validate(self, contract: TableContract, resolved: Any, verified: VerifiedRun,
                  sums_seen: dict[str, str], batch: _Batch) -> _Accepted | None:
        ref, manifest = verified.ref, verified.manifest
        data = verified.data
        skipped_files: list[str] = []
        duplicate_files = [f for f in manifest.files if f.sha256 in sums_seen]
        if duplicate_files and contract.merge == "append":
            # The same content was loaded before under another run: appending it again
            # would duplicate rows. Skip those files (the whole run if all are repeats).
            if len(duplicate_files) == len(manifest.files):
                batch.skipped.append((ref, manifest, "duplicate_content",
                                      f"every file was already loaded (first by run "
                                      f"{sums_seen[duplicate_files[0].sha256]})"))
                return None
            data, skipped_files = _drop_files(data, manifest, {f.name for f in duplicate_files})
        outcome = check_run(data, contract, resolved)
        if duplicate_files and contract.merge != "append":
            outcome.warnings.append(FailureRecord(
                "content_not_repeated", None,
                f"{len(duplicate_files)} file(s) were loaded before; merged again "
                f"({contract.merge} is idempotent)"))
        if outcome.ok:
            return _Accepted(verified, data, outcome, skipped_files=skipped_files)
        violation = ContractViolation(ref.table, ref.run_id, outcome.failures,
                                      total_failures=outcome.total_failures,
                                      schema_level=outcome.schema_level)
        if contract.on_invalid == "abort":
            # Stop here, but first commit the runs before this one (oldest first).
            self.abort = LoadAbortedError(ref.table, ref.run_id, violation.problem)
            return None
        if contract.on_invalid == "drop_rows" and not outcome.schema_level:
            mask = _row_mask(data.num_rows, outcome.invalid_rows)
            kept = data.filter(pc.invert(mask))
            if kept.num_rows:
                return _Accepted(verified, kept, outcome, rejected_rows=data.filter(mask),
                                 skipped_files=skipped_files)
        batch.rejected.append((ref, violation, manifest, verified.manifest_sha256))
        return None

    # -- one transaction ----------------------------------------------------------------
    def flush(self, contract: TableContract | None, batch: _Batch) -> None:
        """Merge a batch and write its ledger rows in one transaction, then move its runs."""
        self.options.stop.raise_if_set()
        if contract is not None and batch.accepted:
            self._screen_batch(contract, batch)
        try:
            self._commit(contract, batch)
        except WarehouseError as exc:
            if self.logger:
                self.logger.discard()
            if not exc.caused_by_data or contract is None or not batch.accepted:
                raise
            self._isolate(contract, batch, exc)
            return
        self.crash("after_commit")
        self._move(batch)

    def _isolate(self, contract: TableContract, batch: _Batch, exc: WarehouseError) -> None:
        """Bisect a batch whose merge failed on its data, to quarantine only the bad run."""
        if len(batch.accepted) == 1:
            run = batch.accepted[0]
            error = RunRejectedError(run.verified.ref.table, run.verified.ref.run_id,
                                     f"the warehouse refused its rows: {exc.detail}")
            error.code = "merge_failed"
            batch.rejected.append((run.verified.ref, error, run.verified.manifest,
                                   run.verified.manifest_sha256))
            batch.accepted = []
            self.flush(contract, batch)
            return
        half = len(batch.accepted) // 2
        first = _Batch(accepted=batch.accepted[:half], rejected=batch.rejected,
                       skipped=batch.skipped)
        second = _Batch(accepted=batch.accepted[half:])
        self.flush(contract, first)
        self.flush(contract, second)

    def _screen_batch(self, contract: TableContract, batch: _Batch) -> None:
        """Checks that need the table: schema changes and, for keyed appends, key conflicts."""
        while batch.accepted:
            self._register(batch)
            run_columns = describe_batch(self.wh)
            table_columns = self.wh.columns("main", contract.name)
            problem = None
            if table_columns:
                new, missing, conflicts = schema_changes(run_columns, table_columns)
                parts = []
                if conflicts:
                    parts.append("type changed: " + "; ".join(conflicts))
                if missing:
                    parts.append(f"columns missing from the run: {missing}")
                if new and contract.schema_evolution != "add_columns":
                    parts.append(f"new columns {[n for n, _ in new]} (schema_evolution = "
                                 "\"freeze\"; set \"add_columns\" to accept them)")
                problem = "; ".join(parts) or None
            types = {n.lower(): t for n, t in run_columns}
            if problem is None and partition_expression(contract, types) is None:
                spec = contract.partition_by
                assert spec is not None
                problem = (f"partition column {spec.column!r} is {types.get(spec.column.lower())}"
                           f"; granularity {spec.granularity!r} needs a DATE or TIMESTAMP")
            if problem is not None:
                for run in batch.accepted:
                    ref = run.verified.ref
                    batch.rejected.append((ref, SchemaChangeError(ref.table, ref.run_id, problem),
                                           run.verified.manifest, run.verified.manifest_sha256))
                batch.accepted = []
                break
            if contract.merge != "append" or not contract.primary_key:
                break
            rows = find_key_conflicts(self.wh, contract, bool(table_columns),
                                      len(batch.accepted) > 1)
            if not rows:
                break
            self._reject_conflicts(contract, batch, rows)
        self.wh.unregister(BATCH_NAME)

    def _reject_conflicts(self, contract: TableContract, batch: _Batch, rows: list[int]) -> None:
        offsets, start = [], 0
        for run in batch.accepted:
            offsets.append((start, start + run.data.num_rows))
            start += run.data.num_rows
        keep = []
        for run, (lo, hi) in zip(batch.accepted, offsets, strict=True):
            local = [r - lo for r in rows if lo <= r < hi]
            if not local:
                keep.append(run)
                continue
            ref = run.verified.ref
            key = ",".join(contract.primary_key)
            failures = [FailureRecord("key_not_loaded_before", key,
                                      ",".join(str(run.data.column(k)[r].as_py())
                                               for k in contract.primary_key), r)
                        for r in local[:20]]
            if contract.on_invalid == "drop_rows" and len(local) < run.data.num_rows:
                mask = _row_mask(run.data.num_rows, set(local))
                rejected = run.data.filter(mask)
                if run.rejected_rows is not None:
                    rejected = pa.concat_tables([run.rejected_rows, rejected])
                run.outcome.failures += failures
                run.outcome.total_failures += len(local)
                keep.append(_Accepted(run.verified, run.data.filter(pc.invert(mask)),
                                      run.outcome, rejected, run.skipped_files))
                continue
            if contract.on_invalid == "abort":
                # Commit the runs before this one; this run and the later ones stay staged.
                self.abort = LoadAbortedError(ref.table, ref.run_id,
                                              f"{len(local)} rows repeat keys already loaded")
                break
            batch.rejected.append((ref, KeyConflictError(
                ref.table, ref.run_id,
                f"{len(local)} rows repeat primary keys ({key}) already in the table or in an "
                "earlier run; append never overwrites (use merge = \"upsert\")",
                failures=failures, total_failures=len(local)),
                run.verified.manifest, run.verified.manifest_sha256))
        batch.accepted = keep

    def _register(self, batch: _Batch) -> pa.Table:
        data = build_batch([a.data for a in batch.accepted],
                           [a.verified.ref.run_id for a in batch.accepted])
        self.wh.unregister(BATCH_NAME)
        self.wh.register(BATCH_NAME, data)
        return data

    def _commit(self, contract: TableContract | None, batch: _Batch) -> None:
        now = utcnow()
        load_id = self.logger.run_id if self.logger else None
        stats = None
        run_rows: list[dict[str, Any]] = []
        file_rows: list[dict[str, Any]] = []
        for run in batch.accepted:
            if run.rejected_rows is not None and run.rejected_rows.num_rows:
                # Ordering rule 5: rejected rows are on disk before the commit names them.
                ref = run.verified.ref
                quarantine_rejected_rows(self.paths, ref.table, ref.run_id,
                                         _drop_rows_reason(ref, run), run.rejected_rows)
        if batch.accepted:
            assert contract is not None
            self._register(batch)
        mark_publish_pending(self.paths)  # before the commit: a crash after it republishes
        with self.wh.transaction(f"loading runs of {contract.name if contract else 'staging'}"):
            if batch.accepted:
                assert contract is not None
                run_columns = describe_batch(self.wh)
                types = {n.lower(): t for n, t in run_columns}
                partition_sql = partition_expression(contract, types)
                assert partition_sql is not None
                table_columns = self.wh.columns("main", contract.name)
                created = ensure_table(self.wh, contract, run_columns)
                if table_columns:
                    new, _, _ = schema_changes(run_columns, table_columns)
                    if new:
                        add_table_columns(self.wh, contract.name, new)
                stats = merge_batch(
                    self.wh, contract, run_columns, partition_sql,
                    several_runs=len(batch.accepted) > 1,
                    has_duplicates=any(a.outcome.duplicate_keys for a in batch.accepted))
                stats.created = created
                self.wh.unregister(BATCH_NAME)
            for run in batch.accepted:
                v = run.verified
                run_rows.append(_ledger_row(v.ref, v.manifest, v.manifest_sha256, STATUS_LOADED,
                                            None, run.data.num_rows,
                                            0 if run.rejected_rows is None
                                            else run.rejected_rows.num_rows, load_id, now))
                file_rows += [{"table_name": v.ref.table, "sha256": f.sha256,
                               "run_id": v.ref.run_id, "file_name": f.name, "rows": f.rows,
                               "bytes": f.bytes, "loaded_at": now}
                              for f in v.manifest.files if f.name not in run.skipped_files]
            for ref, error, manifest, manifest_sha in batch.rejected:
                run_rows.append(_ledger_row(ref, manifest, manifest_sha, STATUS_QUARANTINED,
                                            error.reason(), 0,
                                            manifest.rows if manifest else 0, load_id, now))
            for ref, manifest, code, message in batch.skipped:
                run_rows.append(_ledger_row(ref, manifest, None, STATUS_SKIPPED,
                                            {"code": code, "message": message}, 0, 0,
                                            load_id, now))
            # Ordering rule 3: ledger rows commit with the data rows.
            record_runs(self.wh, run_rows)
            record_files(self.wh, file_rows)
            if self.logger:
                mark = self.logger.mark()
                try:
                    self._log(contract, batch, stats)
                    self.logger.flush()
                    self.crash("before_commit")
                except BaseException:
                    self.logger.rollback_to(mark)  # the transaction rolls back too
                    raise
            else:
                self.crash("before_commit")
        self.changed = True

    def _log(self, contract: TableContract | None, batch: _Batch, stats: Any) -> None:
        assert self.logger is not None
        log = self.logger
        if stats is not None and contract is not None:
            for part, p in stats.partitions.items():
                log.log_asset(contract.name, part, "success", rows_inserted=p.rows,
                              min_event_ts=p.min_value, max_event_ts=p.max_value)
            if stats.max_event is not None:
                log.log_watermark(contract.name, stats.max_event)
            elif stats.partitions and contract.partition_by is not None:
                top = max(stats.partitions.values(), key=lambda p: str(p.max_value))
                log.log_watermark(contract.name, top.max_value)
        for run in batch.accepted:
            ref = run.verified.ref
            log.log_check(ref.table, "manifest_verified", passed=True,
                          metrics={"run_id": ref.run_id, "files": len(run.verified.manifest.files)})
            log.log_check(ref.table, "contract_valid", passed=run.outcome.ok,
                          severity="error", message=None if run.outcome.ok else
                          f"{run.outcome.total_failures} failures; rows dropped",
                          metrics={"run_id": ref.run_id, "rows": run.data.num_rows})
            for w in run.outcome.warnings:
                log.log_check(ref.table, w.check, passed=False, severity="warn",
                              message=str(w.failure_case), metrics={"run_id": ref.run_id})
        for ref, error, _, _ in batch.rejected:
            log.log_check(ref.table, error.code, passed=False, severity="error",
                          message=error.problem[:1000],
                          metrics={"run_id": ref.run_id, "failures": error.total_failures})
        for ref, _, code, message in batch.skipped:
            log.log_check(ref.table, code, passed=False, severity="warn", message=message,
                          metrics={"run_id": ref.run_id})

    def _move(self, batch: _Batch) -> None:
        """Ordering rule 4: runs leave staging only after their ledger rows committed."""
        retention = self.config.settings.retention_days
        moved = 0
        tables = set()
        for run in batch.accepted:
            ref = run.verified.ref
            # No fsync per run: the ledger committed, so a lost rename is redone next load.
            archive_run(self.paths, ref.table, ref.run_id, retention_days=retention, sync=False)
            tables.add(ref.table)
            moved += 1
            if moved == 1:
                self.crash("mid_archive")
            self.emit(RunOutcome(ref.table, ref.run_id, "loaded", run.data.num_rows,
                                 0 if run.rejected_rows is None else run.rejected_rows.num_rows,
                                 "rows_dropped" if run.rejected_rows is not None else None,
                                 None if run.rejected_rows is None else
                                 f"{run.rejected_rows.num_rows} invalid rows quarantined"))
        for ref, _manifest, code, message in batch.skipped:
            archive_run(self.paths, ref.table, ref.run_id, retention_days=retention, sync=False)
            tables.add(ref.table)
            self.emit(RunOutcome(ref.table, ref.run_id, "skipped", reason_code=code,
                                 message=message))
        sync_folders(self.paths, tables)
        for ref, error, manifest, _ in batch.rejected:
            quarantine_run(self.paths, ref.table, ref.run_id, error.reason())
            self.emit(RunOutcome(ref.table, ref.run_id, "quarantined",
                                 rows_rejected=manifest.rows if manifest else 0,
                                 reason_code=error.code, message=error.problem))


def load_pending(config: LakeConfig, options: LoadOptions | None = None) -> LoadReport:
    """Load every committed run in staging, oldest first, exactly once.

    Raises:
        LockHeldError: another loader or compaction holds the warehouse.
        ConfigError: a contract cannot be loaded.
        LoadAbortedError: a table with ``on_invalid = "abort"`` met an invalid run.
        StopRequestedError: a signal asked to stop; committed work is kept.
    """
    options = options or LoadOptions()
    started = time.monotonic()
    report = LoadReport(dry_run=options.dry_run)
    paths = config.paths
    if options.table is not None:
        config.table(options.table)  # unknown table: a usage error before taking the lock
    SchemaRegistry(config).load_all()  # a broken contract fails every load with exit 2
    with WarehouseLock(paths, "lake load", options.lock_timeout):
        if options.crash_at == "after_lock":
            os.kill(os.getpid(), signal.SIGKILL)
        empty_trash(paths)  # a delete killed halfway left its folder here
        refs = discover_runs(paths, options.table)
        if options.max_runs is not None:
            refs = refs[: options.max_runs]
        if options.dry_run:
            _dry_run(config, refs, report)
            report.seconds = time.monotonic() - started
            return report
        wh = open_warehouse(paths.warehouse, lock_timeout=options.lock_timeout)
        loader = None
        try:
            migrate(wh)
            with RunLogger(wh, "load", args={"table": options.table,
                                             "max_runs": options.max_runs}) as logger:
                report.load_run_id = logger.run_id
                loader = _Loader(config, options, wh, logger, report)
                entries = ledger_entries(wh, [r.run_id for r in refs])
                # Ordering rule 2: the ledger wins; those runs only finish their move.
                loader.finish_moves([r for r in refs if r.run_id in entries], entries)
                pending = [r for r in refs if r.run_id not in entries]
                for table in dict.fromkeys(r.table for r in pending):
                    loader.load_table(table, [r for r in pending if r.table == table])
            report.tables = table_summaries(wh, config)
            wh.checkpoint()
        except BaseException:
            # Batches that committed before the failure, and the failed run row, are
            # published all the same: readers and `lake health` must see them.
            _close_and_publish_after_failure(wh, paths, loader)
            raise
        wh.close()
        loader.crash("after_archive")
        if loader.changed or publish_pending(paths):
            loader.crash("before_publish")
            result = publish_snapshot(paths)
            report.published, report.publish_seconds = True, result.seconds
    report.seconds = time.monotonic() - started
    return report


def _close_and_publish_after_failure(wh: Warehouse, paths: LakePaths,
                                     loader: _Loader | None) -> None:
    """Best effort: a failure while publishing must not hide the load's own error."""
    try:
        if loader is not None:  # the RunLogger row exists: publish it and what committed
            wh.checkpoint()
            wh.close()
            publish_snapshot(paths)
        else:
            wh.close()
    except (OSError, WarehouseError):
        wh.close()


def table_summaries(wh: Warehouse, config: LakeConfig) -> dict[str, TableSummary]:
    """Rows and partitions of every declared table that exists."""
    summaries = {}
    for name in config.tables:
        if not wh.columns("main", name):
            continue
        row = wh.fetchone(f"SELECT count(*), count(DISTINCT {PARTITION_COLUMN}) FROM {quote(name)}")
        if row:
            summaries[name] = TableSummary(int(row[0]), int(row[1]))
    return summaries


def _dry_run(config: LakeConfig, refs: list[RunRef], report: LoadReport) -> None:
    """Verify and validate without writing anything: what would load, what would not."""
    schemas = SchemaRegistry(config)
    for ref in refs:
        try:
            verified = verify_run(ref, config)
            contract = config.table(ref.table)
            outcome = check_run(verified.data, contract, schemas.get(contract))
        except RunRejectedError as exc:
            report.runs.append(RunOutcome(ref.table, ref.run_id, "would_quarantine",
                                          reason_code=exc.code, message=exc.problem))
            continue
        if outcome.ok:
            report.runs.append(RunOutcome(ref.table, ref.run_id, "would_load", verified.rows))
        else:
            violation = ContractViolation(ref.table, ref.run_id, outcome.failures,
                                          total_failures=outcome.total_failures)
            report.runs.append(RunOutcome(ref.table, ref.run_id, "would_quarantine",
                                          rows_rejected=len(outcome.invalid_rows),
                                          reason_code=violation.code, message=violation.problem))


def _peek_manifest(ref: RunRef) -> Manifest | None:
    try:
        return Manifest.from_json((ref.path / "_manifest.json").read_bytes())
    except (OSError, ManifestFormatError):
        return None


def _peek_key(ref: RunRef) -> str | None:
    manifest = _peek_manifest(ref)
    return manifest.key if manifest else None


def _drop_files(data: pa.Table, manifest: Manifest, names: set[str]) -> tuple[pa.Table, list[str]]:
    keep = []
    start = 0
    for f in manifest.files:
        if f.name not in names:
            keep.append(data.slice(start, f.rows))
        start += f.rows
    return pa.concat_tables(keep), sorted(names)


def _row_mask(length: int, rows: set[int]) -> pa.Array:
    flags = [False] * length
    for r in rows:
        if 0 <= r < length:
            flags[r] = True
    return pa.array(flags, pa.bool_())


def _drop_rows_reason(ref: RunRef, run: _Accepted) -> dict[str, Any]:
    violation = ContractViolation(ref.table, ref.run_id, run.outcome.failures,
                                  total_failures=run.outcome.total_failures, schema_level=False)
    reason = violation.reason()
    reason["code"] = "rows_dropped"
    reason["rows_loaded"] = run.data.num_rows
    reason["rows_rejected"] = 0 if run.rejected_rows is None else run.rejected_rows.num_rows
    return reason


def _ledger_row(ref: RunRef, manifest: Manifest | None, manifest_sha: str | None, status: str,
                reason: dict[str, Any] | None, rows_loaded: int, rows_rejected: int,
                load_id: str | None, now: datetime) -> dict[str, Any]:
    parts = parse_run_id(ref.run_id)
    committed = None
    if manifest is not None:
        try:
            committed = datetime.fromisoformat(manifest.committed_at).astimezone(UTC).replace(
                tzinfo=None)
        except ValueError:
            committed = None
    return {
        "run_id": ref.run_id, "table_name": ref.table,
        "producer": manifest.producer if manifest else (parts.producer if parts else None),
        "idempotency_key": manifest.key if manifest else None,
        "manifest_sha256": manifest_sha, "status": status,
        "reason_code": reason.get("code") if reason else None,
        "reason_json": json.dumps(reason, default=str) if reason else None,
        "rows_staged": manifest.rows if manifest else None, "rows_loaded": rows_loaded,
        "rows_rejected": rows_rejected, "bytes_staged": manifest.bytes if manifest else None,
        "load_run_id": load_id,
        "created_at": parts.created_at.replace(tzinfo=None) if parts else None,
        "committed_at": committed, "recorded_at": now,
    }


__all__ = ["CRASH_POINTS", "InvalidRunError", "LoadOptions", "LoadReport", "RunOutcome",
           "StopFlag", "TableSummary", "load_pending"]
