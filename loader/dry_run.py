"""`lake load --dry-run`: what a load would do with each staged run, writing nothing."""

from __future__ import annotations

from lakehouse.areas import StagingArea
from lakehouse.config import LakeConfig
from lakehouse.contracts import SchemaRegistry, check_run
from lakehouse.db import Warehouse, open_warehouse
from lakehouse.errors import ContractViolation, RunRejectedError
from lakehouse.layout import LakePaths
from lakehouse.ledger import ledger_entries, loaded_checksums, loaded_keys
from lakehouse.staged import RunRef
from loader.report import LoadReport, RunOutcome


def dry_run(config: LakeConfig, area: StagingArea, refs: list[RunRef],
             report: LoadReport) -> None:
    """Verify and validate without writing anything: what would load, what would not.

    The ledger is read (``lake.duckdb`` opened read-only; the caller holds the lock) to say
    what the load would do with runs it already accounts for (finish their move) and with
    repeated idempotency keys or content (skip them). Key conflicts with rows already in a
    table are not predicted.
    """
    schemas = SchemaRegistry(config)
    wh = _open_ledger(config.paths)
    try:
        entries = ledger_entries(wh, [(r.table, r.run_id) for r in refs]) if wh else {}
        keys_seen: dict[str, dict[str, str]] = {}  # table -> idempotency key -> run
        sums_seen: dict[str, dict[str, str]] = {}  # table -> file checksum -> run
        for ref in refs:
            entry = entries.get((ref.table, ref.run_id))
            if entry is not None:
                report.runs.append(RunOutcome(
                    ref.table, ref.run_id, "would_recover",
                    message=f"ledger says {entry.status}; the load would finish its move"))
                continue
            report.runs.append(_dry_run_one(config, area, ref, schemas, wh,
                                            keys_seen.setdefault(ref.table, {}),
                                            sums_seen.setdefault(ref.table, {})))
    finally:
        if wh is not None:
            wh.close()


def _open_ledger(paths: LakePaths) -> Warehouse | None:
    """The warehouse, read-only, for its ledger; None before the first load."""
    if not paths.warehouse.exists():
        return None
    return open_warehouse(paths.warehouse, read_only=True)


def _dry_run_one(config: LakeConfig, area: StagingArea, ref: RunRef, schemas: SchemaRegistry,
                 wh: Warehouse | None, keys: dict[str, str], sums: dict[str, str]
                 ) -> RunOutcome:
    """What the load would do with one run the ledger does not know; ``keys`` and ``sums``
    hold what earlier runs of this dry run would load."""
    try:
        verified = area.verify(ref, config)
        contract = config.table(ref.table)
        outcome = check_run(verified.data, contract, schemas.get(contract))
    except RunRejectedError as exc:
        return RunOutcome(ref.table, ref.run_id, "would_quarantine", reason_code=exc.code,
                          message=exc.problem)
    if not outcome.ok:
        violation = ContractViolation(ref.table, ref.run_id, outcome.failures,
                                      total_failures=outcome.total_failures)
        return RunOutcome(ref.table, ref.run_id, "would_quarantine",
                          rows_rejected=len(outcome.invalid_rows),
                          reason_code=violation.code, message=violation.problem)
    manifest = verified.manifest
    key = manifest.key
    if key is not None:
        first = keys.get(key) or (loaded_keys(wh, ref.table, [key]).get(key) if wh else None)
        if first is not None:
            return RunOutcome(ref.table, ref.run_id, "would_skip", reason_code="duplicate_key",
                              message=f"idempotency key {key!r} already loaded by run {first}")
    rows = verified.rows
    if contract.merge == "append":
        digests = [f.sha256 for f in manifest.files]
        loaded = loaded_checksums(wh, ref.table, digests) if wh else {}
        repeats = [f for f in manifest.files if f.sha256 in sums or f.sha256 in loaded]
        if repeats and len(repeats) == len(manifest.files):
            first = sums.get(repeats[0].sha256) or loaded[repeats[0].sha256]
            return RunOutcome(ref.table, ref.run_id, "would_skip",
                              reason_code="duplicate_content",
                              message=f"every file was already loaded (first by run {first})")
        rows -= sum(f.rows for f in repeats)
    if key is not None:
        keys[key] = ref.run_id
    for f in manifest.files:
        sums.setdefault(f.sha256, ref.run_id)
    return RunOutcome(ref.table, ref.run_id, "would_load", rows)


__all__ = ["dry_run"]
