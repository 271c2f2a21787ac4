"""One load: discover -> verify -> validate -> merge -> publish -> archive.

Ordering rules, each enforced where it is commented below:

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
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse import failpoints
from lakehouse.areas import LocalArea, StagingArea, staging_area
from lakehouse.config import LakeConfig, TableContract
from lakehouse.contracts import SchemaRegistry
from lakehouse.db import Warehouse, open_warehouse, quote
from lakehouse.errors import (
    ContractViolation,
    FailureRecord,
    KeyConflictError,
    LoadAbortedError,
    ManifestError,
    MergeFailedError,
    RunRejectedError,
    SchemaChangeError,
    WarehouseError,
)
from lakehouse.layout import PARTITION_COLUMN, LakePaths, is_identifier
from lakehouse.ledger import (
    STAGED_FILES_SCHEMA,
    STAGED_RUNS_SCHEMA,
    STATUS_LOADED,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    LedgerEntry,
    forget_runs,
    ledger_entries,
    ledger_row,
    record_files,
    record_runs,
    utcnow,
)
from lakehouse.lock import WarehouseLock
from lakehouse.merge import (
    BATCH_NAME,
    build_batch,
    describe_batch,
    ensure_table,
    find_key_conflicts,
    merge_batch,
    partition_expression,
    retype_null_columns,
    schema_changes,
)
from lakehouse.merge import add_columns as add_table_columns
from lakehouse.migrations import migrate
from lakehouse.observability import RunLogger
from lakehouse.publish import (
    mark_publish_pending,
    publish_pending,
    publish_snapshot,
    remove_superseded_snapshots,
)
from lakehouse.staged import RunRef, VerifiedRun, verify_run
from lakehouse.validation import ValidationOutcome, check_runs, keys_unique
from loader.batch import (
    Accepted,
    Batch,
    Candidate,
    drop_files,
    drop_rows_reason,
    find_repeats,
    lookup_loaded,
    peek_manifest,
    remember,
    row_mask,
    schema_problem,
)
from loader.dry_run import dry_run
from loader.recovery import AFRESH, REUSED, Recovery, judge
from loader.report import LoadOptions, LoadReport, RunOutcome, StopFlag, TableSummary


class _Loader:
    def __init__(self, config: LakeConfig, options: LoadOptions, wh: Warehouse,
                 logger: RunLogger | None, report: LoadReport) -> None:
        self.config, self.options, self.wh, self.logger, self.report = (
            config, options, wh, logger, report)
        self.paths: LakePaths = config.paths
        self.area: StagingArea = staging_area(config)
        # Local runs are read from the page cache and hashed: as many threads as cores help.
        # An object store is round trips: more requests in flight hide their latency.
        self.io_threads = _VERIFY_THREADS if isinstance(self.area, LocalArea) else _REMOTE_THREADS
        self.schemas = SchemaRegistry(config)
        self.changed = False
        self.abort: LoadAbortedError | None = None
        self._registered: tuple[pa.Table, ...] | None = None  # the runs registered now
        self._batch_table: pa.Table | None = None  # ... and the batch made of them
        # Idempotency key / file checksum -> the run that loaded it: this load's runs, and
        # earlier loads' runs looked up batch by batch (``_lookup_ledger``).
        self.keys_seen: dict[str, str] = {}
        self.sums_seen: dict[str, str] = {}

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
            mark_publish_pending(self.paths)
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
        contract = self.config.tables.get(table) if is_identifier(table) else None
        if contract is None:
            batch = Batch()
            for ref in refs:
                try:
                    self.area.verify(ref, self.config)  # raises for unknown/hostile tables
                except RunRejectedError as exc:
                    batch.rejected.append((ref, exc, None, None))
            self.flush(None, batch)
            return
        self.keys_seen, self.sums_seen = {}, {}
        settings = self.config.settings
        batch = Batch()
        for ref, verified_or_error in _verify_ahead(refs, self.config, self.io_threads,
                                                         isinstance(self.area, LocalArea)):
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
                if self.abort is not None:
                    break
            batch.candidates.append(Candidate(verified, verified.data))
            batch.rows += verified.rows
            batch.bytes += verified.decoded_bytes
        if not batch.empty:
            self.flush(contract, batch)
        if self.abort is not None:
            raise self.abort

    def _lookup_ledger(self, table: str, batch: Batch) -> None:
        """What earlier loads loaded of these runs, from the manifests verification already
        parsed (a manifest is read once per load): one query each per batch.

        A manifest's key or checksum that DuckDB refuses (the parser bounds them; this is the
        second line of defence) quarantines that run, not the load: the batch is looked up
        again run by run."""
        try:
            lookup_loaded(self.wh, table, [c.verified.manifest for c in batch.candidates],
                          self.keys_seen, self.sums_seen)
            return
        except WarehouseError as exc:
            if not exc.caused_by_data:
                raise
        kept = []
        for candidate in batch.candidates:
            v = candidate.verified
            try:
                lookup_loaded(self.wh, table, [v.manifest], self.keys_seen, self.sums_seen)
            except WarehouseError as exc:
                if not exc.caused_by_data:
                    raise
                batch.rejected.append((v.ref, ManifestError(
                    v.ref.table, v.ref.run_id,
                    f"the ledger cannot look up its manifest's key or checksums: {exc.detail}"),
                    None, None))
                continue
            kept.append(candidate)
        batch.candidates = kept

    # -- validation ---------------------------------------------------------------------
    def _settle(self, contract: TableContract, batch: Batch) -> None:
        """Turn the batch's candidates into accepted, skipped or rejected runs, in order.

        Fast path: drop repeats, then validate all remaining runs in one grouped call. If any
        run fails, undo and redo the batch one run at a time, so that a rejected run never
        makes a later run look like a repeat of it.
        """
        resolved = self.schemas.get(contract)
        saved_keys, saved_sums = dict(self.keys_seen), dict(self.sums_seen)
        skipped_before = len(batch.skipped)
        planned = [c for c in (self._drop_repeats(contract, c, batch) for c in batch.candidates)
                   if c is not None]
        datas = [c.data for c in planned]
        group_unique = len(datas) > 1 and keys_unique(datas, contract.primary_key)
        outcomes = check_runs(datas, contract, resolved, group_unique=group_unique)
        if all(o.ok for o in outcomes):
            batch.keys_unique = group_unique if len(datas) > 1 else \
                not any(o.duplicate_keys for o in outcomes)
            batch.accepted = [Accepted(c.verified, c.data, _with_repeat_warning(o, c, contract),
                                       skipped_files=c.skipped_files)
                              for c, o in zip(planned, outcomes, strict=True)]
            return
        self.keys_seen, self.sums_seen = saved_keys, saved_sums
        del batch.skipped[skipped_before:]
        for candidate in batch.candidates:
            kept = self._drop_repeats(contract, candidate, batch, register=False)
            if kept is None:
                continue
            outcome = check_runs([kept.data], contract, resolved)[0]
            accepted = self._apply(contract, kept, _with_repeat_warning(outcome, kept, contract),
                                   batch)
            if self.abort is not None:
                break  # this run and the later ones stay in staging
            if accepted is not None:
                batch.accepted.append(accepted)
                self._remember(accepted.verified)

    def _settle_and_screen(self, contract: TableContract, batch: Batch) -> None:
        """Settle the candidates, then run the checks that need the table; repeat without the
        runs those checks rejected, since they were counted as loaded while later runs were
        judged (a repeated idempotency key or content). Each round drops at least one run."""
        saved_keys, saved_sums = dict(self.keys_seen), dict(self.sums_seen)
        base_skipped, base_rejected = list(batch.skipped), list(batch.rejected)
        candidates = batch.candidates
        screened: list[Any] = []
        excluded: set[str] = set()
        while True:
            batch.candidates = [c for c in candidates if c.verified.ref.run_id not in excluded]
            batch.accepted, batch.keys_unique = [], False
            batch.skipped, batch.rejected = list(base_skipped), base_rejected + screened
            self.keys_seen, self.sums_seen = dict(saved_keys), dict(saved_sums)
            self._settle(contract, batch)
            if self.abort is not None or not batch.accepted:
                return
            before = len(batch.rejected)
            self._screen_batch(contract, batch)
            new = batch.rejected[before:]
            if not new or self.abort is not None:
                return
            screened += new
            excluded |= {entry[0].run_id for entry in new}

    def _drop_repeats(self, contract: TableContract, candidate: Candidate, batch: Batch,
                      register: bool = True) -> Candidate | None:
        """Skip a run whose idempotency key was loaded; for append, drop files whose content
        was loaded (skip the run if all were). ``register``: count the run as accepted."""
        verified = candidate.verified
        ref, manifest = verified.ref, verified.manifest
        repeats = find_repeats(manifest, contract.merge, self.keys_seen, self.sums_seen)
        if repeats.skip is not None:
            batch.skipped.append((ref, manifest, *repeats.skip, verified.manifest_sha256))
            return None
        data, skipped_files = verified.data, list[str]()
        if repeats.files and contract.merge == "append":
            # Content loaded before under another run: appending it again would duplicate rows.
            data, skipped_files = drop_files(data, manifest, {f.name for f in repeats.files})
        if register:
            self._remember(verified)
        return Candidate(verified, data, skipped_files, len(repeats.files))

    def _remember(self, verified: VerifiedRun) -> None:
        remember(verified.manifest, verified.ref.run_id, self.keys_seen, self.sums_seen)

    def _apply(self, contract: TableContract, candidate: Candidate, outcome: ValidationOutcome,
               batch: Batch) -> Accepted | None:
        """Apply ``on_invalid`` to one validated run."""
        verified, data = candidate.verified, candidate.data
        ref = verified.ref
        if outcome.ok:
            return Accepted(verified, data, outcome, skipped_files=candidate.skipped_files)
        violation = ContractViolation(ref.table, ref.run_id, outcome.failures,
                                      total_failures=outcome.total_failures,
                                      schema_level=outcome.schema_level)
        if contract.on_invalid == "abort":
            # Stop here, but first commit the runs before this one (oldest first).
            self.abort = LoadAbortedError(ref.table, ref.run_id, violation.problem)
            return None
        if contract.on_invalid == "drop_rows" and not outcome.schema_level:
            mask = row_mask(data.num_rows, outcome.invalid_rows)
            kept = data.filter(pc.invert(mask))
            if kept.num_rows:
                return Accepted(verified, kept, outcome, rejected_rows=data.filter(mask),
                                skipped_files=candidate.skipped_files)
        batch.rejected.append((ref, violation, verified.manifest, verified.manifest_sha256))
        return None

    # -- one transaction ----------------------------------------------------------------
    def flush(self, contract: TableContract | None, batch: Batch) -> None:
        """Validate a batch, merge it and write its ledger rows in one transaction, then
        move its runs."""
        self.options.stop.raise_if_set()
        if contract is not None and batch.candidates:
            self._lookup_ledger(contract.name, batch)
            self._settle_and_screen(contract, batch)
            batch.candidates = []
        if self.abort is not None:
            # The load stops at the aborting run: runs after it stay in staging untouched,
            # even those judged before validation (empty, corrupt, repeats).
            stop = self.abort.run_id
            batch.rejected = [r for r in batch.rejected if r[0].run_id < stop]
            batch.skipped = [r for r in batch.skipped if r[0].run_id < stop]
        try:
            self._commit(contract, batch)
        except WarehouseError as exc:
            if self.logger:
                self.logger.discard()
            if not exc.caused_by_data or contract is None or not batch.accepted:
                raise
            self._isolate(contract, batch, exc)
            return
        except _UNWRITABLE:
            if self.logger:
                self.logger.discard()
            if not self._drop_unwritable(batch):
                raise
            self.flush(contract, batch)  # each round quarantines at least one run
            return
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

    def _screen_batch(self, contract: TableContract, batch: Batch) -> None:
        """Checks that need the table: schema changes and, for keyed appends, key conflicts."""
        while batch.accepted:
            self._register(batch)
            table_columns = self.wh.columns("main", contract.name)
            problem = schema_problem(contract, describe_batch(self.wh), table_columns)
            if problem is not None:
                for run in batch.accepted:
                    ref = run.verified.ref
                    batch.rejected.append((ref, SchemaChangeError(ref.table, ref.run_id, problem),
                                           run.verified.manifest, run.verified.manifest_sha256))
                batch.accepted = []
                break
            if contract.merge != "append" or not contract.primary_key:
                break
            rows, repeats = find_key_conflicts(
                self.wh, contract, bool(table_columns),
                len(batch.accepted) > 1 and not batch.keys_unique)
            if not rows and not repeats:
                break
            self._reject_conflicts(contract, batch, rows, repeats)
            batch.keys_unique = True  # what is left repeats no key

    def _reject_conflicts(self, contract: TableContract, batch: Batch, rows: list[int],
                          repeats: bool) -> None:
        """Apply ``on_invalid`` to rows whose key is in the table (``rows``) or, when keys
        repeat across runs, in an earlier run of the batch that is kept — settled in run
        order, so a run rejected here never makes a later run a conflict."""
        offsets, start = [], 0
        for run in batch.accepted:
            offsets.append((start, start + run.data.num_rows))
            start += run.data.num_rows
        keep = []
        kept_keys: set[tuple[Any, ...]] = set()
        for run, (lo, hi) in zip(batch.accepted, offsets, strict=True):
            local = [r - lo for r in rows if lo <= r < hi]
            run_keys: list[tuple[Any, ...]] = []
            if repeats:
                run_keys = list(zip(*(run.data.column(k).to_pylist()
                                      for k in contract.primary_key), strict=True))
                in_table = set(local)
                local = sorted(in_table | {i for i, key in enumerate(run_keys)
                                           if key in kept_keys and i not in in_table})
            if not local:
                keep.append(run)
                kept_keys.update(run_keys)
                continue
            ref = run.verified.ref
            key = ",".join(contract.primary_key)
            failures = [FailureRecord("key_not_loaded_before", key,
                                      ",".join(str(run.data.column(k)[r].as_py())
                                               for k in contract.primary_key), r)
                        for r in local[:20]]
            if contract.on_invalid == "drop_rows" and len(local) < run.data.num_rows:
                mask = row_mask(run.data.num_rows, set(local))
                rejected = run.data.filter(mask)
                if run.rejected_rows is not None:
                    rejected = pa.concat_tables([run.rejected_rows, rejected])
                run.outcome.failures += failures
                run.outcome.total_failures += len(local)
                keep.append(Accepted(run.verified, run.data.filter(pc.invert(mask)),
                                      run.outcome, rejected, run.skipped_files))
                dropped = set(local)
                kept_keys.update(k for i, k in enumerate(run_keys) if i not in dropped)
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

    def _register(self, batch: Batch) -> None:
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
        self._registered, self._batch_table = key, data

    def _register_contiguous(self) -> None:
        """Re-register the batch as one chunk per column (for an insert in batch order)."""
        data = self._batch_table
        if data is not None and any(c.num_chunks > 1 for c in data.columns):
            self._batch_table = data.combine_chunks()
            self.wh.unregister(BATCH_NAME)
            self.wh.register(BATCH_NAME, self._batch_table)

    def _unregister(self) -> None:
        self.wh.unregister(BATCH_NAME)
        self._registered, self._batch_table = None, None

    def _commit(self, contract: TableContract | None, batch: Batch) -> None:
        now = utcnow()
        load_id = self.logger.run_id if self.logger else None
        stats = None
        run_rows: list[dict[str, Any]] = []
        file_rows: list[dict[str, Any]] = []
        for _, runs, files in self._ledger_rows(batch, load_id, now):
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
                    retype_null_columns(self.wh, contract.name, run_columns, table_columns)
                stats = merge_batch(
                    self.wh, contract, run_columns, partition_sql,
                    several_runs=len(batch.accepted) > 1,
                    has_duplicates=any(a.outcome.duplicate_keys for a in batch.accepted),
                    keys_unique=batch.keys_unique, contiguous=self._register_contiguous)
                stats.created = created
                self._unregister()
            # Ordering rule 3: ledger rows commit with the data rows.
            record_runs(self.wh, run_rows)
            record_files(self.wh, file_rows)
            if self.logger:
                mark = self.logger.mark()
                try:
                    self._log(contract, batch, stats)
                    self.logger.flush()
                    failpoints.hit("load.before_commit")
                except BaseException:
                    self.logger.rollback_to(mark)  # the transaction rolls back too
                    raise
            else:
                failpoints.hit("load.before_commit")
        self.changed = True

    def _ledger_rows(self, batch: Batch, load_id: str | None, now: Any
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

    def _drop_unwritable(self, batch: Batch) -> bool:
        """Quarantine the runs whose ledger rows the ledger cannot hold; False if none.

        The manifest parser bounds a manifest's numbers and texts; this is the second line of
        defence, so that one run's values (a number past BIGINT, text UTF-8 cannot hold) fail
        that run and never the whole load. A rejected run keeps its reason and is recorded
        without its manifest's values.
        """
        bad: dict[tuple[str, str], str] = {}
        for ref, runs, files in self._ledger_rows(batch, None, utcnow()):
            problem = _unwritable(runs, STAGED_RUNS_SCHEMA) or _unwritable(
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

    def _log(self, contract: TableContract | None, batch: Batch, stats: Any) -> None:
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
        for ref, _, code, message, _ in batch.skipped:
            log.log_check(ref.table, code, passed=False, severity="warn", message=message,
                          metrics={"run_id": ref.run_id})

    def _archive_in_parallel(self, refs: list[RunRef], retention: int) -> None:
        """Object stores: move runs concurrently (each run's copy-then-delete stays in order);
        a move is a handful of round trips, so one at a time would be latency-bound."""
        with ThreadPoolExecutor(max_workers=self.io_threads) as pool:
            futures = [pool.submit(self.area.archive, ref.table, ref.run_id,
                                   retention_days=retention) for ref in refs]
            for done, future in enumerate(as_completed(futures)):
                future.result()
                if done == 0:
                    failpoints.hit("load.mid_archive")

    def _move(self, batch: Batch) -> None:
        """Ordering rule 4: runs leave staging only after their ledger rows committed."""
        retention = self.config.settings.retention_days
        moved = 0
        tables = set()
        if not isinstance(self.area, LocalArea):
            self._archive_in_parallel([run.verified.ref for run in batch.accepted]
                                      + [entry[0] for entry in batch.skipped], retention)
        for run in batch.accepted:
            ref = run.verified.ref
            # No fsync per run: the ledger committed, so a lost rename is redone next load.
            if isinstance(self.area, LocalArea):
                self.area.archive(ref.table, ref.run_id, retention_days=retention, sync=False)
            tables.add(ref.table)
            moved += 1
            if moved == 1 and isinstance(self.area, LocalArea):
                failpoints.hit("load.mid_archive")
            self.emit(RunOutcome(ref.table, ref.run_id, "loaded", run.data.num_rows,
                                 0 if run.rejected_rows is None else run.rejected_rows.num_rows,
                                 "rows_dropped" if run.rejected_rows is not None else None,
                                 None if run.rejected_rows is None else
                                 f"{run.rejected_rows.num_rows} invalid rows quarantined"))
        for ref, _manifest, code, message, _ in batch.skipped:
            if isinstance(self.area, LocalArea):
                self.area.archive(ref.table, ref.run_id, retention_days=retention, sync=False)
            tables.add(ref.table)
            self.emit(RunOutcome(ref.table, ref.run_id, "skipped", reason_code=code,
                                 message=message))
        self.area.sync(tables)
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
    SchemaRegistry(config).load_all()  # a broken contract fails every load with exit 2
    with WarehouseLock(paths, "lake load", options.lock_timeout):
        failpoints.hit("load.after_lock")
        area = staging_area(config)
        area.empty_trash()  # a delete killed halfway left its folder here
        refs = area.discover(options.table)
        if options.max_runs is not None:
            refs = refs[: options.max_runs]
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
            with RunLogger(wh, "load", args={"table": options.table,
                                             "max_runs": options.max_runs}) as logger:
                report.load_run_id = logger.run_id
                loader = _Loader(config, options, wh, logger, report)
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
                        loader.abort = None
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
            result = publish_snapshot(paths)
            report.published, report.publish_seconds = True, result.seconds
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


_VERIFY_THREADS = max(2, min(8, os.cpu_count() or 2))
_REMOTE_THREADS = 16
_CHUNK_BYTES = 4 << 20  # runs verified per task: about this many staged bytes ...
_MAX_CHUNK_RUNS = 64  # ... and at most this many runs
_SMALL_RUN_BYTES = 256 << 10  # runs smaller than this verify on one thread, in chunks ...
_SMALL_AHEAD_CHUNKS = 8  # ... at most this many chunks ahead (32 MiB of staged files)


def _verify_ahead(refs: list[RunRef], config: LakeConfig, threads: int = _VERIFY_THREADS,
                  local: bool = True) -> Iterator[tuple[RunRef, VerifiedRun | RunRejectedError]]:
    """Verify runs on a few threads, yielding them in order, a bounded number of bytes ahead.

    Hashing and Parquet decoding release the GIL, so big runs verify in parallel with each
    other and with the merge. Small runs are mostly Python (paths, the manifest, a tiny
    decode): handed over one per task they cost twice as much as verified in line (measured:
    100-row runs 0.45 ms each on a pool against 0.22 ms serially), and two threads verifying
    them contend for the GIL. So they go in chunks of about ``_CHUNK_BYTES`` to one thread
    that works through up to ``_SMALL_AHEAD_CHUNKS`` chunks while the main thread validates
    and merges a batch. In an object store (``local`` false) every run is its own task:
    there the time is round trips, hidden by many requests in flight. The look-ahead is
    bounded so the backlog is never held in memory.
    """
    def verify(chunk: list[RunRef]) -> list[VerifiedRun | RunRejectedError]:
        done: list[VerifiedRun | RunRejectedError] = []
        for ref in chunk:
            try:
                done.append(verify_run(ref, config))
            except RunRejectedError as exc:
                done.append(exc)
        return done

    run_bytes = _CHUNK_BYTES  # running estimate of a run's size; the first chunk is one run
    with ThreadPoolExecutor(max_workers=threads) as pool, \
            ThreadPoolExecutor(max_workers=1) as lane:
        pending: deque[tuple[list[RunRef], Future[list[VerifiedRun | RunRejectedError]]]] = \
            deque()
        start = 0

        def refill() -> None:
            nonlocal start
            small = local and run_bytes < _SMALL_RUN_BYTES
            while start < len(refs) and len(pending) < (
                    _SMALL_AHEAD_CHUNKS if small else threads * 2):
                size = max(1, min(_MAX_CHUNK_RUNS, _CHUNK_BYTES // max(run_bytes, 1))) \
                    if local else 1
                chunk = refs[start:start + size]
                start += size
                pending.append((chunk, (lane if small else pool).submit(verify, chunk)))

        refill()
        while pending:
            chunk, future = pending.popleft()
            results = future.result()
            sizes = [r.manifest.bytes for r in results if isinstance(r, VerifiedRun)]
            if sizes:
                run_bytes = (run_bytes + sum(sizes) // len(sizes)) // 2
            refill()
            yield from zip(chunk, results, strict=True)


# What converting a run's ledger rows to Arrow raises when a value does not fit a column.
_UNWRITABLE = (OverflowError, UnicodeError, pa.ArrowException)


def _unwritable(rows: list[dict[str, Any]], schema: pa.Schema) -> str | None:
    """Why ``rows`` cannot be written to a ledger table of ``schema`` (None: they can)."""
    try:
        pa.Table.from_pylist(rows, schema=schema)
    except _UNWRITABLE as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def _with_repeat_warning(outcome: ValidationOutcome, candidate: Candidate,
                         contract: TableContract) -> ValidationOutcome:
    if candidate.repeated_files and contract.merge != "append":
        outcome.warnings.append(FailureRecord(
            "content_not_repeated", None,
            f"{candidate.repeated_files} file(s) were loaded before; merged again "
            f"({contract.merge} is idempotent)"))
    return outcome


__all__ = ["LoadOptions", "LoadReport", "RunOutcome", "StopFlag",
           "TableSummary", "load_pending"]
