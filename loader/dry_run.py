"""`lake load --dry-run`: what a load would do with each staged run, writing nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa

from lakehouse.areas import StagingArea
from lakehouse.config import LakeConfig, TableContract
from lakehouse.contracts import SchemaRegistry
from lakehouse.db import Warehouse, literal, open_warehouse, quote
from lakehouse.errors import (
    ContractViolation,
    KeyConflictError,
    RunRejectedError,
    SchemaChangeError,
)
from lakehouse.layout import LakePaths
from lakehouse.ledger import ledger_entries
from lakehouse.merge import (
    BATCH_NAME,
    ROW_COLUMN,
    build_batch,
    describe_batch,
    find_key_conflicts,
)
from lakehouse.staged import RunRef
from lakehouse.table_spec import spec_change
from lakehouse.validation import check_run
from loader.batch import drop_files, schema_problem
from loader.recovery import FINISH, REUSED, judge
from loader.report import LoadReport, RunOutcome
from loader.screen import SeenRuns


def dry_run(config: LakeConfig, area: StagingArea, refs: list[RunRef],
             report: LoadReport) -> None:
    """Verify and validate without writing anything: what would load, what would not.

    The ledger is read (``lake.duckdb`` opened read-only; the caller holds the lock) to say
    what the load would do with runs it already accounts for (finish their move, quarantine
    another run under a loaded run's id, or take a run under a skipped or quarantined id as
    new), with
    repeated idempotency keys or content (skip them), and, against the table as it is, with
    schema changes; for an append with a primary key, with keys the table or an earlier run
    of the backlog holds (kept in a temporary table: a read-only connection may have them).
    """
    schemas = SchemaRegistry(config)
    wh = _open_ledger(config.paths)
    # Before the first load there is no warehouse: the backlog's keys go to a scratch one.
    scratch = wh or open_warehouse(Path(":memory:"))
    # DuckDB would spill a big temporary table next to lake.duckdb; a dry run writes nothing
    # under the root.
    spill = tempfile.TemporaryDirectory(prefix="lake-dry-run-")
    try:
        scratch.execute(f"SET temp_directory = {literal(spill.name)}",
                        action="setting the dry run's spill folder")
        entries = ledger_entries(wh, [(r.table, r.run_id) for r in refs]) if wh else {}
        seen: dict[str, SeenRuns] = {}  # table -> what its runs loaded, by key and checksum
        changes: dict[str, str | None] = {}  # table -> why the load would refuse it
        for ref in refs:
            entry = entries.get((ref.table, ref.run_id))
            # What the load's recovery step would decide (``loader/recovery.py``); a run it
            # would take as new is judged below like any other.
            judged = judge(area, ref, entry) if entry is not None else None
            if judged is not None and judged.action == FINISH:
                report.runs.append(RunOutcome(
                    ref.table, ref.run_id, "would_recover",
                    message=f"ledger says {judged.entry.status}; the load would finish its "
                            "move"))
                continue
            if judged is not None and judged.action == REUSED:
                error = judged.error()
                report.runs.append(RunOutcome(
                    ref.table, ref.run_id, "would_quarantine", rows_rejected=judged.rows,
                    reason_code=error.code, message=error.problem))
                continue
            if ref.table not in changes:  # a changed spec: the load would refuse the table
                contract = config.tables.get(ref.table)
                change = spec_change(wh, contract) if wh and contract else None
                changes[ref.table] = change.message() if change else None
            if changes[ref.table] is not None:
                report.refused[ref.table] = str(changes[ref.table])
                continue
            report.runs.append(_dry_run_one(config, area, ref, schemas, wh, scratch,
                                            seen.setdefault(ref.table, SeenRuns())))
    finally:
        scratch.close()
        spill.cleanup()


def _open_ledger(paths: LakePaths) -> Warehouse | None:
    """The warehouse, read-only, for its ledger; None before the first load."""
    if not paths.warehouse.exists():
        return None
    return open_warehouse(paths.warehouse, read_only=True)


def _dry_run_one(config: LakeConfig, area: StagingArea, ref: RunRef, schemas: SchemaRegistry,
                 wh: Warehouse | None, scratch: Warehouse, seen: SeenRuns) -> RunOutcome:
    """What the load would do with one run the ledger does not know, in the load's order:
    verify, skip repeats, drop repeated files, validate, screen against the table. ``seen``
    holds what earlier loads and earlier runs of this dry run loaded; ``scratch``
    is ``wh`` or, before the first load, an in-memory database."""
    try:
        verified = area.verify(ref, config)
    except RunRejectedError as exc:
        return RunOutcome(ref.table, ref.run_id, "would_quarantine", reason_code=exc.code,
                          message=exc.problem)
    contract = config.table(ref.table)
    manifest = verified.manifest
    if wh is not None:
        seen.look_up(wh, ref.table, [manifest])
    repeats = seen.repeats(manifest, contract.merge)
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
    result = _against_table(scratch, contract, ref, data)
    if result.status == "would_load":
        seen.remember(manifest, ref.run_id)
    return result


def _against_table(wh: Warehouse, contract: TableContract, ref: RunRef,
                   data: pa.Table) -> RunOutcome:
    """What the table as it is makes of a valid run, as the load screens a batch: a schema
    the table refuses, and for an append with a primary key, keys already in the table or
    in an earlier run of the backlog that would load (whose keys are kept in a temporary
    table here)."""
    keyed_append = contract.merge == "append" and bool(contract.primary_key)
    table_columns = wh.columns("main", contract.name)
    rows: set[int] = set()
    wh.register(BATCH_NAME, build_batch([data], [ref.run_id]))
    try:
        problem = schema_problem(contract, describe_batch(wh), table_columns)
        if problem is not None:
            return RunOutcome(ref.table, ref.run_id, "would_quarantine",
                              reason_code=SchemaChangeError.code, message=problem)
        if keyed_append:
            if table_columns:
                rows.update(find_key_conflicts(wh, contract, True, several_runs=False)[0])
            rows.update(_earlier_runs_conflicts(wh, contract))
        outcome = _key_outcome(contract, ref, data.num_rows, len(rows))
        if keyed_append and outcome.status == "would_load":
            # Every key of the run: the dropped ones are in the table or the keys already.
            wh.execute(f"INSERT INTO {_keys_table(contract)} SELECT "
                       f"{', '.join(quote(k) for k in contract.primary_key)} FROM {BATCH_NAME}",
                       action="remembering the backlog's keys")
        return outcome
    finally:
        wh.unregister(BATCH_NAME)


def _keys_table(contract: TableContract) -> str:
    return quote(f"lake_dry_run_keys_{contract.name}")


def _earlier_runs_conflicts(wh: Warehouse, contract: TableContract) -> list[int]:
    """Rows of the registered run whose key an earlier run of this dry run would load."""
    keys = [quote(k) for k in contract.primary_key]
    name = _keys_table(contract)
    wh.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} AS SELECT {', '.join(keys)} "
               f"FROM {BATCH_NAME} LIMIT 0", action="keeping the backlog's keys")
    join = " AND ".join(f"b.{k} = t.{k}" for k in keys)
    return [r[0] for r in wh.fetchall(
        f"SELECT b.{ROW_COLUMN} FROM {BATCH_NAME} b SEMI JOIN {name} t ON {join}",
        action=f"checking keys of {contract.name} against the backlog")]


def _key_outcome(contract: TableContract, ref: RunRef, num_rows: int,
                 conflicts: int) -> RunOutcome:
    """``on_invalid`` applied to ``conflicts`` rows whose key was loaded before."""
    if not conflicts:
        return RunOutcome(ref.table, ref.run_id, "would_load", num_rows)
    key = ",".join(contract.primary_key)
    message = (f"{conflicts} rows repeat primary keys ({key}) already in the table or in an "
               "earlier run")
    if contract.on_invalid == "drop_rows" and conflicts < num_rows:
        return RunOutcome(ref.table, ref.run_id, "would_load", num_rows - conflicts,
                          rows_rejected=conflicts, reason_code=KeyConflictError.code,
                          message=f"{message}; they would be dropped")
    return RunOutcome(ref.table, ref.run_id, "would_quarantine", rows_rejected=conflicts,
                      reason_code=KeyConflictError.code, message=message)


__all__ = ["dry_run"]
