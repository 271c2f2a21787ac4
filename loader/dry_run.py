"""`lake load --dry-run`: what a load would do with each staged run, writing nothing."""

from __future__ import annotations

from lakehouse.areas import StagingArea
from lakehouse.config import LakeConfig
from lakehouse.contracts import SchemaRegistry, check_run
from lakehouse.db import Warehouse, open_warehouse
from lakehouse.errors import ContractViolation, RunRejectedError
from lakehouse.layout import LakePaths
from lakehouse.ledger import ledger_entries
from lakehouse.staged import RunRef
from loader.batch import drop_files, find_repeats, lookup_loaded, remember
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
    """What the load would do with one run the ledger does not know, in the load's order:
    verify, skip repeats, drop repeated files, validate. ``keys`` and ``sums`` hold what
    earlier loads and earlier runs of this dry run loaded."""
    try:
        verified = area.verify(ref, config)
    except RunRejectedError as exc:
        return RunOutcome(ref.table, ref.run_id, "would_quarantine", reason_code=exc.code,
                          message=exc.problem)
    contract = config.table(ref.table)
    manifest = verified.manifest
    if wh is not None:
        lookup_loaded(wh, ref.table, [manifest], keys, sums)
    repeats = find_repeats(manifest, contract.merge, keys, sums)
    if repeats.skip is not None:
        code, message = repeats.skip
        return RunOutcome(ref.table, ref.run_id, "would_skip", reason_code=code, message=message)
    data = verified.data
    if repeats.files and contract.merge == "append":
        data, _ = drop_files(data, manifest, {f.name for f in repeats.files})
    outcome = check_run(data, contract, schemas.get(contract))
    if not outcome.ok:
        violation = ContractViolation(ref.table, ref.run_id, outcome.failures,
                                      total_failures=outcome.total_failures)
        return RunOutcome(ref.table, ref.run_id, "would_quarantine",
                          rows_rejected=len(outcome.invalid_rows),
                          reason_code=violation.code, message=violation.problem)
    remember(manifest, ref.run_id, keys, sums)
    return RunOutcome(ref.table, ref.run_id, "would_load", data.num_rows)


__all__ = ["dry_run"]
