"""The commit of one batch: its data rows, its ledger rows and its run-log rows, in one transaction.

Ordering rules 3 and 5 of a load (``loader/load.py``) are enforced here: rejected rows are on
disk before the commit names them, and the ledger rows commit with the data rows. The runs
move out of staging only after :meth:`Committer.commit` returns (rule 4, in the job).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa

from lakehouse import failpoints
from lakehouse.areas import StagingArea
from lakehouse.config import TableContract
from lakehouse.db import Warehouse
from lakehouse.errors import ManifestError
from lakehouse.layout import LakePaths
from lakehouse.ledger import (
    STAGED_FILES_SCHEMA,
    STAGED_RUNS_SCHEMA,
    STATUS_LOADED,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    ledger_row,
    record_files,
    record_runs,
    utcnow,
)
from lakehouse.merge import add_columns as add_table_columns
from lakehouse.merge import (
    describe_batch,
    ensure_table,
    merge_batch,
    partition_expression,
    retype_null_columns,
    schema_changes,
)
from lakehouse.observability import RunLogger
from lakehouse.publish import mark_publish_pending
from lakehouse.snapshot_sync import record_merge
from lakehouse.staged import RunRef
from lakehouse.watermarks import scope_watermarks
from loader.batch import Batch, BatchView, drop_rows_reason

# What converting a run's ledger rows to Arrow raises when a value does not fit a column.
UNWRITABLE = (OverflowError, UnicodeError, pa.ArrowException)


class Committer:
    """Commits a load's batches into the warehouse, one transaction each."""

    def __init__(self, wh: Warehouse, area: StagingArea, paths: LakePaths,
                 logger: RunLogger | None, view: BatchView) -> None:
        self.wh, self.area, self.paths, self.logger, self.view = wh, area, paths, logger, view

    def commit(self, contract: TableContract | None, batch: Batch) -> None:
        """Merge the accepted runs and write every run's ledger rows, checks and metrics in
        one transaction.

        Raises:
            WarehouseError: DuckDB refused the merge or the ledger rows (rolled back).
            OverflowError, UnicodeError, pyarrow.ArrowException: a run's ledger rows cannot
                be written (``UNWRITABLE``; see :meth:`drop_unwritable`).
        """
        now = utcnow()
        load_id = self.logger.run_id if self.logger else None
        stats = None
        scoped: list[tuple[str, Any]] = []
        run_rows: list[dict[str, Any]] = []
        file_rows: list[dict[str, Any]] = []
        for _, runs, files in ledger_rows(batch, load_id, now):
            run_rows += runs
            file_rows += files
        for run in batch.accepted:
            if run.rejected_rows is not None and run.rejected_rows.num_rows:
                # Ordering rule 5: rejected rows are on disk before the commit names them.
                ref = run.verified.ref
                self.area.quarantine_rows(ref.table, ref.run_id, drop_rows_reason(ref, run),
                                          run.rejected_rows)
        if batch.accepted:
            assert contract is not None
            self.view.register(batch)
        # Before the commit: a crash after it republishes. A merge is a change the
        # incremental publish replays (lakehouse/snapshot_sync.py).
        mark_publish_pending(self.paths, incremental=True)
        with self.wh.transaction(f"loading runs of {contract.name if contract else 'staging'}"):
            if batch.accepted:
                assert contract is not None
                run_columns = describe_batch(self.wh)
                types = {n.lower(): t for n, t in run_columns}
                partition_sql = partition_expression(contract, types)
                assert partition_sql is not None
                table_columns = self.wh.columns("main", contract.name)
                created = ensure_table(self.wh, contract, run_columns)
                record_merge(self.wh, contract)  # the snapshot sync replays this strategy
                if table_columns:
                    new, _, _ = schema_changes(run_columns, table_columns)
                    if new:
                        add_table_columns(self.wh, contract.name, new)
                    retype_null_columns(self.wh, contract.name, run_columns, table_columns)
                stats = merge_batch(
                    self.wh, contract, run_columns, partition_sql,
                    several_runs=len(batch.accepted) > 1,
                    has_duplicates=any(a.outcome.duplicate_keys for a in batch.accepted),
                    keys_unique=batch.keys_unique, contiguous=self.view.make_contiguous)
                stats.created = created
                scoped = scope_watermarks(self.wh, contract, types)
                self.view.unregister()
            # Ordering rule 3: ledger rows commit with the data rows.
            record_runs(self.wh, run_rows)
            record_files(self.wh, file_rows)
            if self.logger:
                mark = self.logger.mark()
                try:
                    log_batch(self.logger, contract, batch, stats)
                    if contract is not None:
                        for scope, ts in scoped:
                            self.logger.log_watermark(contract.name, ts, scope_key=scope)
                    self.logger.flush()
                    failpoints.hit("load.before_commit")
                except BaseException:
                    self.logger.rollback_to(mark)  # the transaction rolls back too
                    raise
            else:
                failpoints.hit("load.before_commit")

    def drop_unwritable(self, batch: Batch) -> bool:
        """Quarantine the runs whose ledger rows the ledger cannot hold; False if none.

        The manifest parser bounds a manifest's numbers and texts; this is the second line of
        defence, so that one run's values (a number past BIGINT, text UTF-8 cannot hold) fail
        that run and never the whole load. A rejected run keeps its reason and is recorded
        without its manifest's values.
        """
        bad: dict[tuple[str, str], str] = {}
        for ref, runs, files in ledger_rows(batch, None, utcnow()):
            problem = unwritable(runs, STAGED_RUNS_SCHEMA) or unwritable(
                files, STAGED_FILES_SCHEMA)
            if problem is not None:
                bad[(ref.table, ref.run_id)] = problem

        def refused(ref: RunRef) -> ManifestError:
            return ManifestError(ref.table, ref.run_id,
                                 "the ledger cannot hold a value of its manifest "
                                 f"({bad[(ref.table, ref.run_id)]})")

        if not bad:
            return False
        keep = []
        for run in batch.accepted:
            ref = run.verified.ref
            if (ref.table, ref.run_id) in bad:
                batch.rejected.append((ref, refused(ref), None, None))
            else:
                keep.append(run)
        batch.accepted = keep
        batch.rejected = [(ref, error, None, None) if (ref.table, ref.run_id) in bad
                          else (ref, error, manifest, sha)
                          for ref, error, manifest, sha in batch.rejected]
        skipped = []
        for entry in batch.skipped:
            if (entry[0].table, entry[0].run_id) in bad:
                batch.rejected.append((entry[0], refused(entry[0]), None, None))
            else:
                skipped.append(entry)
        batch.skipped = skipped
        return True


def ledger_rows(batch: Batch, load_id: str | None, now: datetime
                ) -> list[tuple[RunRef, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each run's ledger rows: (run, its ``meta.staged_runs`` rows, its file rows)."""
    per_run = []
    for run in batch.accepted:
        v = run.verified
        per_run.append((v.ref, [ledger_row(v.ref, v.manifest, v.manifest_sha256,
                                           STATUS_LOADED, None, run.data.num_rows,
                                           0 if run.rejected_rows is None
                                           else run.rejected_rows.num_rows, load_id, now)],
                        [{"table_name": v.ref.table, "sha256": f.sha256,
                          "run_id": v.ref.run_id, "file_name": f.name, "rows": f.rows,
                          "bytes": f.bytes, "loaded_at": now}
                         for f in v.manifest.files if f.name not in run.skipped_files]))
    for ref, error, manifest, manifest_sha in batch.rejected:
        per_run.append((ref, [ledger_row(ref, manifest, manifest_sha, STATUS_QUARANTINED,
                                         error.reason(), 0,
                                         manifest.rows if manifest else 0, load_id, now)],
                        []))
    for ref, manifest, code, message, manifest_sha in batch.skipped:
        # The manifest's checksum too: recovery finishes the move of this run only.
        per_run.append((ref, [ledger_row(ref, manifest, manifest_sha, STATUS_SKIPPED,
                                         {"code": code, "message": message}, 0, 0,
                                         load_id, now)], []))
    return per_run


def log_batch(log: RunLogger, contract: TableContract | None, batch: Batch,
              stats: Any) -> None:
    """The run log's rows for one batch: assets with exact row counts, the watermark, one
    row per failed check, and the passing checks counted into one row per table."""
    if stats is not None and contract is not None:
        for part, p in stats.partitions.items():
            log.log_asset(contract.name, part, "success", rows_inserted=p.rows_inserted,
                          rows_updated=p.rows_updated, rows_deleted=p.rows_deleted,
                          min_event_ts=p.min_value, max_event_ts=p.max_value)
        written = [p for p in stats.partitions.values() if p.rows]
        if stats.max_event is not None:
            log.log_watermark(contract.name, stats.max_event)
        elif written and contract.partition_by is not None:
            top = max(written, key=lambda p: str(p.max_value))
            log.log_watermark(contract.name, top.max_value)
    for run in batch.accepted:
        ref = run.verified.ref
        log.log_pass(ref.table, "manifest_verified", runs=1)
        if run.outcome.ok:
            log.log_pass(ref.table, "contract", runs=1, rows=run.data.num_rows)
        else:  # drop_rows: the run loaded without its invalid rows
            log_failed_checks(log, ref.table, ref.run_id, run.outcome.summaries,
                              "rows dropped")
        for w in run.outcome.warnings:
            log.log_check(ref.table, w.check, passed=False, severity="warn",
                          message=str(w.failure_case), metrics={"run_id": ref.run_id},
                          column_name=w.column)
    for ref, error, _, _ in batch.rejected:
        summaries = getattr(error, "check_summaries", None)
        if summaries:
            log_failed_checks(log, ref.table, ref.run_id, summaries, "run quarantined")
            continue
        log.log_check(ref.table, error.code, passed=False, severity="error",
                      message=error.problem[:1000], failure_count=error.total_failures,
                      metrics={"run_id": ref.run_id, "failures": error.total_failures})
    for ref, _, code, message, _ in batch.skipped:
        log.log_check(ref.table, code, passed=False, severity="warn", message=message,
                      metrics={"run_id": ref.run_id})


def log_failed_checks(log: RunLogger, table: str, run_id: str, summaries: list[Any],
                      consequence: str) -> None:
    """One 'fail' row per failed pandera (or Lake) check of a run."""
    for s in summaries:
        on = f" on {s.column}" if s.column else ""
        log.log_check(table, s.check, passed=False, severity="error",
                      partition_key=s.partition_key, column_name=s.column,
                      failure_count=s.failure_count, examples=s.examples,
                      message=f"{s.failure_count} failures of {s.check}{on}; {consequence}",
                      metrics={"run_id": run_id})


def unwritable(rows: list[dict[str, Any]], schema: pa.Schema) -> str | None:
    """Why ``rows`` cannot be written to a ledger table of ``schema`` (None: they can)."""
    try:
        pa.Table.from_pylist(rows, schema=schema)
    except UNWRITABLE as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


__all__ = ["UNWRITABLE", "Committer", "ledger_rows", "log_batch", "unwritable"]
