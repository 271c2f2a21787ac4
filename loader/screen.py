"""Screening a batch before its commit: repeats, validation and key conflicts.

Each run of a batch ends accepted (maybe with rows dropped), skipped (a repeat of a run
loaded before) or rejected. Runs are judged in order, so a run rejected here never makes a
later run look like a repeat of it or conflict with its keys: when a run is rejected after
later ones were judged, what they were judged against (:class:`SeenRuns`) is restored and
the batch judged again without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.config import TableContract
from lakehouse.contracts import SchemaRegistry
from lakehouse.db import Warehouse
from lakehouse.errors import (
    ContractViolation,
    FailureRecord,
    KeyConflictError,
    LoadAbortedError,
    ManifestError,
    SchemaChangeError,
    WarehouseError,
)
from lakehouse.ledger import loaded_checksums, loaded_keys
from lakehouse.manifest import FileEntry, Manifest
from lakehouse.merge import describe_batch, find_key_conflicts
from lakehouse.staged import VerifiedRun
from lakehouse.validation import ValidationOutcome, check_runs, keys_unique, summarize_checks
from loader.batch import Accepted, Batch, BatchView, Candidate, drop_files, row_mask, schema_problem


@dataclass
class Repeats:
    """What of a run earlier runs already loaded: a reason to skip it whole, or some files."""

    skip: tuple[str, str] | None = None  # (reason code, message)
    files: list[FileEntry] = field(default_factory=list)  # files whose content was loaded


class SeenRuns:
    """The idempotency keys and file checksums counted as loaded, each with the run that
    loaded it: runs judged earlier in this load, and earlier loads' runs looked up in the
    ledger. The load and its dry run both judge repeats here."""

    def __init__(self, keys: dict[str, str] | None = None,
                 sums: dict[str, str] | None = None) -> None:
        self.keys: dict[str, str] = keys if keys is not None else {}  # key -> run id
        self.sums: dict[str, str] = sums if sums is not None else {}  # sha256 -> run id

    def snapshot(self) -> SeenRuns:
        """A copy, to :meth:`restore` when the runs judged since are judged again."""
        return SeenRuns(dict(self.keys), dict(self.sums))

    def restore(self, snapshot: SeenRuns) -> None:
        """Forget what was remembered since ``snapshot`` (which stays usable again)."""
        self.keys, self.sums = dict(snapshot.keys), dict(snapshot.sums)

    def remember(self, manifest: Manifest, run_id: str) -> None:
        """Count a run as loaded for the repeat checks of the runs after it."""
        if manifest.key is not None:
            self.keys[manifest.key] = run_id
        for f in manifest.files:
            self.sums.setdefault(f.sha256, run_id)

    def repeats(self, manifest: Manifest, merge: str) -> Repeats:
        """Skip a run whose idempotency key was loaded, and an ``append`` run whose every file
        was (appending the same content again would duplicate rows); otherwise list the files
        loaded before."""
        if manifest.key is not None and manifest.key in self.keys:
            return Repeats(("duplicate_key", f"idempotency key {manifest.key!r} already loaded "
                                             f"by run {self.keys[manifest.key]}"))
        files = [f for f in manifest.files if f.sha256 in self.sums]
        if files and merge == "append" and len(files) == len(manifest.files):
            return Repeats(("duplicate_content", f"every file was already loaded (first by run "
                                                 f"{self.sums[files[0].sha256]})"), files)
        return Repeats(None, files)

    def look_up(self, wh: Warehouse, table: str, manifests: list[Manifest]) -> None:
        """Add the idempotency keys and file checksums of these manifests that earlier loads
        loaded into ``table``: one ledger query each."""
        keys = [k for m in manifests if (k := m.key) is not None and k not in self.keys]
        sums = [f.sha256 for m in manifests for f in m.files if f.sha256 not in self.sums]
        for key, run_id in loaded_keys(wh, table, keys).items():
            self.keys.setdefault(key, run_id)
        for digest, run_id in loaded_checksums(wh, table, sums).items():
            self.sums.setdefault(digest, run_id)


class Screener:
    """Judges the batches of one table, in order; ``abort`` is set when a run of a table with
    ``on_invalid = "abort"`` fails (the runs before it commit, it and the later ones stay)."""

    def __init__(self, wh: Warehouse, schemas: SchemaRegistry, view: BatchView) -> None:
        self.wh, self.schemas, self.view = wh, schemas, view
        self.seen = SeenRuns()
        self.abort: LoadAbortedError | None = None

    def screen(self, contract: TableContract, batch: Batch) -> None:
        """Turn the batch's candidates into accepted, skipped and rejected runs."""
        self._look_up_ledger(contract.name, batch)
        self._settle_and_screen(contract, batch)
        batch.candidates = []

    def _look_up_ledger(self, table: str, batch: Batch) -> None:
        """What earlier loads loaded of these runs, from the manifests verification already
        parsed (a manifest is read once per load): one query each per batch.

        A manifest's key or checksum that DuckDB refuses (the parser bounds them; this is the
        second line of defence) quarantines that run, not the load: the batch is looked up
        again run by run."""
        try:
            self.seen.look_up(self.wh, table, [c.verified.manifest for c in batch.candidates])
            return
        except WarehouseError as exc:
            if not exc.caused_by_data:
                raise
        kept = []
        for candidate in batch.candidates:
            v = candidate.verified
            try:
                self.seen.look_up(self.wh, table, [v.manifest])
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

    def _settle(self, contract: TableContract, batch: Batch) -> None:
        """Turn the batch's candidates into accepted, skipped or rejected runs, in order.

        Fast path: drop repeats, then validate all remaining runs in one grouped call. If any
        run fails, undo and redo the batch one run at a time, so that a rejected run never
        makes a later run look like a repeat of it.
        """
        resolved = self.schemas.get(contract)
        saved = self.seen.snapshot()
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
        self.seen.restore(saved)
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
        saved = self.seen.snapshot()
        base_skipped, base_rejected = list(batch.skipped), list(batch.rejected)
        candidates = batch.candidates
        screened: list[Any] = []
        excluded: set[str] = set()
        while True:
            batch.candidates = [c for c in candidates if c.verified.ref.run_id not in excluded]
            batch.accepted, batch.keys_unique = [], False
            batch.skipped, batch.rejected = list(base_skipped), base_rejected + screened
            self.seen.restore(saved)
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
        repeats = self.seen.repeats(manifest, contract.merge)
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
        self.seen.remember(verified.manifest, verified.ref.run_id)

    def _apply(self, contract: TableContract, candidate: Candidate, outcome: ValidationOutcome,
               batch: Batch) -> Accepted | None:
        """Apply ``on_invalid`` to one validated run."""
        verified, data = candidate.verified, candidate.data
        ref = verified.ref
        if outcome.ok:
            return Accepted(verified, data, outcome, skipped_files=candidate.skipped_files)
        # One asset-check row per failed check, before rows are dropped (row numbers are
        # positions in ``data``).
        outcome.summaries = summarize_checks(outcome, data, contract)
        violation = ContractViolation(ref.table, ref.run_id, outcome.failures,
                                      total_failures=outcome.total_failures,
                                      schema_level=outcome.schema_level)
        violation.check_summaries = outcome.summaries
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

    def _screen_batch(self, contract: TableContract, batch: Batch) -> None:
        """Checks that need the table: schema changes and, for keyed appends, key conflicts."""
        while batch.accepted:
            self.view.register(batch)
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


def _with_repeat_warning(outcome: ValidationOutcome, candidate: Candidate,
                         contract: TableContract) -> ValidationOutcome:
    if candidate.repeated_files and contract.merge != "append":
        outcome.warnings.append(FailureRecord(
            "content_not_repeated", None,
            f"{candidate.repeated_files} file(s) were loaded before; merged again "
            f"({contract.merge} is idempotent)"))
    return outcome


__all__ = ["Repeats", "Screener", "SeenRuns"]
