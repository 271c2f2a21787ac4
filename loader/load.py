"""The `lake load` job: discover -> verify -> screen -> commit -> move -> publish, table by table.

The job takes the lock and runs the parts in order; its rooms are ``loader/prefetch.py``
(verification ahead of the load), ``loader/screen.py`` (repeats, validation, key conflicts),
``loader/commit.py`` (one transaction per batch) and ``loader/recovery.py`` (runs the ledger
already knows).

Ordering rules, each enforced where it is commented (here, or in ``loader/commit.py`` for
rules 3 and 5):

1. The warehouse lock is held for the whole load (one writer).
2. Runs already in the ledger with the manifest it recorded only finish their move: they
   are never merged twice. Another run under a loaded run's id is quarantined, never
   archived or deleted; one under a skipped or quarantined id is loaded as a new run
   (``loader/recovery.py``).
3. A batch's data rows, its runs' ledger rows (loaded, skipped, quarantined), the loaded files'
   checksums, run assets, checks and watermarks commit in ONE transaction.
4. Runs leave staging only after that commit (archive / quarantine), so a crash at any instant
   leaves each run either in the warehouse and the ledger, or in neither and still in staging.
5. ``drop_rows`` writes the rejected rows to quarantine *before* the commit (idempotently), so
   the commit never refers to rows that are not on disk.
"""

from __future__ import annotations

import json
import time

from lakehouse import failpoints
from lakehouse.areas import StagingArea, staging_area
from lakehouse.config import LakeConfig, TableContract
from lakehouse.contracts import SchemaRegistry
from lakehouse.db import Warehouse, open_warehouse, quote
from lakehouse.errors import LoadAbortedError, MergeFailedError, RunRejectedError, WarehouseError
from lakehouse.layout import PARTITION_COLUMN, LakePaths, is_identifier
from lakehouse.ledger import STATUS_QUARANTINED, LedgerEntry, forget_runs, ledger_entries
from lakehouse.lock import WarehouseLock
from lakehouse.migrations import migrate
from lakehouse.observability import RunLogger
from lakehouse.publish import (
    mark_publish_pending,
    publish_pending,
    publish_snapshot,
    remove_superseded_snapshots,
)
from lakehouse.staged import RunRef
from lakehouse.table_spec import spec_change
from loader.batch import Batch, BatchView, Candidate, peek_manifest
from loader.commit import UNWRITABLE, Committer
from loader.dry_run import dry_run
from loader.prefetch import verify_from
from loader.recovery import AFRESH, REUSED, Recovery, judge
from loader.report import LoadOptions, LoadReport, RunOutcome, StopFlag, TableSummary
from loader.screen import Screener
from loader.table_checks import check_touched_tables, rows_before_load


class _Loader:
    def __init__(self, config: LakeConfig, options: LoadOptions, wh: Warehouse,
                 logger: RunLogger | None, report: LoadReport, schemas: SchemaRegistry
                 ) -> None:
        self.config, self.options, self.wh, self.logger, self.report = (
            config, options, wh, logger, report)
        self.paths: LakePaths = config.paths
        self.area: StagingArea = staging_area(config)
        self.schemas = schemas
        self.changed = False
        self.view = BatchView(wh)  # the batch as DuckDB sees it: screened, then merged
        self.committer = Committer(wh, self.area, self.paths, logger, self.view)
        self.screener = Screener(wh, self.schemas, self.view)  # a new one for each table

    def emit(self, outcome: RunOutcome) -> None:
        self.report.runs.append(outcome)
        if self.options.progress:
            self.options.progress(outcome)

    # -- recovery -------------------------------------------------------------------------
    def finish_moves(self, refs: list[RunRef], entries: dict[tuple[str, str], LedgerEntry]
                     ) -> set[tuple[str, str]]:
        """Runs the ledger already knows (``loader/recovery.py``): the run it recorded only
        finishes its move, never merged again; another run under a loaded run's id is
        quarantined as ``run_id_reused``. Returns the runs to load as new ones, whose
        skipped or quarantined ledger rows are forgotten first."""
        judged = [judge(self.area, ref, entries[(ref.table, ref.run_id)]) for ref in refs]
        afresh = {(j.ref.table, j.ref.run_id) for j in judged if j.action == AFRESH}
        if afresh:
            # The rows are dropped before the runs load (as `lake quarantine replay` does): a
            # crash in between leaves runs that are in staging and not in the ledger, which
            # the next load takes as new. Their new rows commit with their batches.
            mark_publish_pending(self.paths, incremental=True)  # meta rows only
            with self.wh.transaction("forgetting runs staged again under their ids"):
                forget_runs(self.wh, sorted(afresh))
            self.changed = True
        for j in judged:
            ref, entry = j.ref, j.entry
            if j.action == AFRESH:
                continue
            if j.action == REUSED:
                self._quarantine_reused(j)
                continue
            if entry.status == STATUS_QUARANTINED:
                reason = json.loads(entry.reason_json) if entry.reason_json else {}
                self.area.quarantine(ref.table, ref.run_id, reason)
            else:
                # Only the run the ledger recorded (its manifest) is archived or deleted.
                self.area.archive(ref.table, ref.run_id,
                                  retention_days=self.config.settings.retention_days)
            self.emit(RunOutcome(ref.table, ref.run_id, "recovered",
                                 message=f"ledger says {entry.status}; finished its move"))
        return afresh

    def _quarantine_reused(self, judged: Recovery) -> None:
        """A run under the id of a loaded run: kept whole in quarantine, never archived or
        deleted; the ledger keeps the loaded run's row (its key is the table and run id)."""
        ref, error = judged.ref, judged.error()
        self.area.quarantine(ref.table, ref.run_id, error.reason())
        if self.logger:
            self.logger.log_check(ref.table, error.code, passed=False,
                                  message=error.problem[:1000], metrics={"run_id": ref.run_id})
            self.changed = True  # the check is published with the next snapshot
        self.emit(RunOutcome(ref.table, ref.run_id, "quarantined", rows_rejected=judged.rows,
                             reason_code=error.code, message=error.problem))

    # -- per table --------------------------------------------------------------------------
    def load_table(self, table: str, refs: list[RunRef]) -> None:
        """Load one table's runs, oldest first, batch by batch.

        Raises:
            LoadAbortedError: a run failed under ``on_invalid = "abort"``; the runs before it
                committed, it and the later ones stay in staging.
        """
        # Repeats are judged within a table: what this load saw of other tables is forgotten.
        self.screener = Screener(self.wh, self.schemas, self.view)
        contract = self.config.tables.get(table) if is_identifier(table) else None
        change = spec_change(self.wh, contract) if contract is not None else None
        if change is not None:
            # Built with another spec: merging now would mix two layouts in one table. Its
            # runs wait in staging, untouched, until `lake repartition` rebuilds the table.
            self.report.refused[table] = change.message()
            return
        if contract is None:
            batch = Batch()
            for ref in refs:
                try:
                    self.area.verify(ref, self.config)  # raises for unknown/hostile tables
                except RunRejectedError as exc:
                    batch.rejected.append((ref, exc, None, None))
            self.flush(None, batch)
            return
        settings = self.config.settings
        batch = Batch()
        for ref, verified_or_error in verify_from(self.area, refs, self.config):
            self.options.stop.raise_if_set()  # a safe point: nothing of this batch committed
            if isinstance(verified_or_error, RunRejectedError):
                batch.rejected.append((ref, verified_or_error, peek_manifest(ref), None))
                continue
            verified = verified_or_error
            failpoints.hit("load.after_verify")
            if batch.candidates and (
                    batch.schema != verified.data.schema
                    or batch.rows + verified.rows > settings.batch_max_rows
                    or len(batch.candidates) >= settings.batch_max_runs
                    # Decoded (Arrow) bytes: a file's size says little about its memory.
                    or batch.bytes + verified.decoded_bytes > settings.batch_max_bytes):
                self.flush(contract, batch)
                batch = Batch()
                if self.screener.abort is not None:
                    break
            batch.candidates.append(Candidate(verified, verified.data))
            batch.rows += verified.rows
            batch.bytes += verified.decoded_bytes
        if not batch.empty:
            self.flush(contract, batch)
        if self.screener.abort is not None:
            raise self.screener.abort

    # -- one transaction ----------------------------------------------------------------
    def flush(self, contract: TableContract | None, batch: Batch) -> None:
        """Screen a batch, merge it and write its ledger rows in one transaction, then
        move its runs."""
        self.options.stop.raise_if_set()
        if contract is not None and batch.candidates:
            self.screener.screen(contract, batch)
        if self.screener.abort is not None:
            # The load stops at the aborting run: runs after it stay in staging untouched,
            # even those judged before validation (empty, corrupt, repeats).
            stop = self.screener.abort.run_id
            batch.rejected = [r for r in batch.rejected if r[0].run_id < stop]
            batch.skipped = [r for r in batch.skipped if r[0].run_id < stop]
        try:
            self.committer.commit(contract, batch)
        except WarehouseError as exc:
            if self.logger:
                self.logger.discard()
            if not exc.caused_by_data or contract is None or not batch.accepted:
                raise
            self._isolate(contract, batch, exc)
            return
        except UNWRITABLE:
            if self.logger:
                self.logger.discard()
            if not self.committer.drop_unwritable(batch):
                raise
            self.flush(contract, batch)  # each round quarantines at least one run
            return
        self.changed = True
        failpoints.hit("load.after_commit")
        self._move(batch)

    def _isolate(self, contract: TableContract, batch: Batch, exc: WarehouseError) -> None:
        """Bisect a batch whose merge failed on its data, to quarantine only the bad run."""
        if len(batch.accepted) == 1:
            run = batch.accepted[0]
            error = MergeFailedError(run.verified.ref.table, run.verified.ref.run_id,
                                     f"the warehouse refused its rows: {exc.detail}")
            batch.rejected.append((run.verified.ref, error, run.verified.manifest,
                                   run.verified.manifest_sha256))
            batch.accepted = []
            self.flush(contract, batch)
            return
        half = len(batch.accepted) // 2
        first = Batch(accepted=batch.accepted[:half], rejected=batch.rejected,
                       skipped=batch.skipped)
        second = Batch(accepted=batch.accepted[half:])
        self.flush(contract, first)
        self.flush(contract, second)

    def _move(self, batch: Batch) -> None:
        """Ordering rule 4: runs leave staging only after their ledger rows committed."""
        moved = 0

        def after_move(_ref: RunRef) -> None:
            nonlocal moved
            moved += 1
            if moved == 1:
                failpoints.hit("load.mid_archive")  # the first run moved, the others not

        self.area.archive_many([run.verified.ref for run in batch.accepted]
                               + [entry[0] for entry in batch.skipped],
                               retention_days=self.config.settings.retention_days,
                               on_moved=after_move)
        for run in batch.accepted:
            ref = run.verified.ref
            self.emit(RunOutcome(ref.table, ref.run_id, "loaded", run.data.num_rows,
                                 0 if run.rejected_rows is None else run.rejected_rows.num_rows,
                                 "rows_dropped" if run.rejected_rows is not None else None,
                                 None if run.rejected_rows is None else
                                 f"{run.rejected_rows.num_rows} invalid rows quarantined"))
        for ref, _manifest, code, message, _ in batch.skipped:
            self.emit(RunOutcome(ref.table, ref.run_id, "skipped", reason_code=code,
                                 message=message))
        for ref, error, manifest, _ in batch.rejected:
            self.area.quarantine(ref.table, ref.run_id, error.reason())
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
    with WarehouseLock(paths, "lake load", options.lock_timeout):
        failpoints.hit("load.after_lock")
        area = staging_area(config)
        area.empty_trash()  # a delete killed halfway left its folder here
        refs = area.discover(options.table)
        if options.max_runs is not None:
            refs = refs[: options.max_runs]
        # Only the contracts of tables with runs waiting are imported (a tick with nothing
        # staged needs neither pandera nor polars), all of them before any run moves: a
        # broken one fails the load with exit 2 and leaves every run in staging. The
        # others' references are checked without importing them.
        schemas = SchemaRegistry(config)
        schemas.load_waiting(ref.table for ref in refs)
        if options.on_discover:
            options.on_discover(len(refs))
        if options.dry_run:
            dry_run(config, area, refs, report)
            report.seconds = time.monotonic() - started
            return report
        wh = open_warehouse(paths.warehouse, lock_timeout=options.lock_timeout)
        loader = None
        try:
            migrate(wh)
            rows_before = rows_before_load(wh, config)
            with RunLogger(wh, "load", triggered_by=options.triggered_by,
                           args={"table": options.table,
                                 "max_runs": options.max_runs}) as logger:
                report.load_run_id = logger.run_id
                loader = _Loader(config, options, wh, logger, report, schemas)
                entries = ledger_entries(wh, [(r.table, r.run_id) for r in refs])
                # Ordering rule 2: the ledger wins for the runs it recorded (same manifest):
                # they only finish their move. Others staged under a known id are new runs.
                afresh = loader.finish_moves(
                    [r for r in refs if (r.table, r.run_id) in entries], entries)
                pending = [r for r in refs if (r.table, r.run_id) not in entries
                           or (r.table, r.run_id) in afresh]
                aborted: list[LoadAbortedError] = []
                for table in dict.fromkeys(r.table for r in pending):
                    try:
                        loader.load_table(table, [r for r in pending if r.table == table])
                    except LoadAbortedError as exc:
                        # An abort stops its own table at that run; the other tables load,
                        # whatever order the tables are visited in.
                        aborted.append(exc)
                report.checks = check_touched_tables(wh, config, logger, rows_before)
                if report.checks:
                    loader.changed = True  # published, so `lake health` shows them
                if aborted:
                    first, *more = aborted
                    also = "".join(f"; table {a.table} also stopped at run {a.run_id}: "
                                   f"{a.reason}" for a in more)
                    raise LoadAbortedError(first.table, first.run_id, first.reason + also)
            report.tables = table_summaries(wh, config)
            wh.checkpoint()
        except BaseException:
            # Batches that committed before the failure, and the failed run row, are
            # published all the same: readers and `lake health` must see them.
            _close_and_publish_after_failure(wh, paths, loader)
            raise
        wh.close()
        failpoints.hit("load.after_archive")
        if loader.changed or publish_pending(paths):
            failpoints.hit("load.before_publish")
            result = publish_snapshot(paths, incremental=True)
            report.published, report.publish_seconds = True, result.seconds
            report.publish_method, report.publish_reason = result.method, result.reason
        else:
            remove_superseded_snapshots(paths)
    report.seconds = time.monotonic() - started
    return report


def _close_and_publish_after_failure(wh: Warehouse, paths: LakePaths,
                                     loader: _Loader | None) -> None:
    """Best effort: a failure while publishing must not hide the load's own error."""
    try:
        if loader is not None:  # the RunLogger row exists: publish it and what committed
            wh.checkpoint()
            wh.close()
            publish_snapshot(paths, incremental=True)
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


__all__ = ["LoadOptions", "LoadReport", "RunOutcome", "StopFlag", "TableSummary", "load_pending"]
