"""`lake export --format delta`: one table as a Delta Lake table, one Delta commit per export.

Steps, each ordering rule commented where it is enforced:

1. Take the warehouse lock (as the Parquet export does: exports serialise with loads,
   compaction and each other). Publish the snapshot first if a load left it pending, so the
   source of the export is the published snapshot readers see, and name it in the commit.
2. Read the Delta log: its last Lake commit lists every partition's fingerprint. Fingerprint
   the table and plan: changed and new partitions are written, gone ones removed.
3. ONE ``write_deltalake(mode="overwrite", predicate=...)``: the commit is the moment the new
   version exists (``lakehouse/export_delta.py``). Its metadata carries the provenance.
4. Record the export in ``meta.exports`` (one transaction), republish the snapshot.

A SIGKILL before the commit leaves the table at its previous version; after it, the next
export finds the commit missing from ``meta`` and records it as ``recovered``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lakehouse import failpoints
from lakehouse.config import LakeConfig
from lakehouse.db import Warehouse, open_warehouse
from lakehouse.errors import ExportError, WarehouseError
from lakehouse.export_delta import (
    DELTA_FORMAT,
    DeltaPartition,
    DeltaPlan,
    DeltaState,
    commit_export,
    load_runs_since,
    partition_columns,
    partition_keys,
    partition_sizes,
    plan_delta,
    read_state,
)
from lakehouse.export_delta_target import DeltaTarget, delta_target
from lakehouse.export_ledger import insert_delta_export, recorded_exports
from lakehouse.export_plan import Source, describe_source
from lakehouse.export_target import ExportTarget
from lakehouse.layout import LakePaths, utc_stamp
from lakehouse.ledger import utcnow
from lakehouse.lock import WarehouseLock
from lakehouse.migrations import migrate
from lakehouse.observability import RunLogger
from lakehouse.publish import (
    current_snapshot,
    mark_publish_pending,
    publish_pending,
    publish_snapshot,
    require_snapshot,
)

if TYPE_CHECKING:
    from loader.export import ExportOptions, ExportReport

MAX_LOAD_RUN_IDS = 1000  # load run ids named in one commit's metadata (the count is exact)


def export_delta(config: LakeConfig, table: str, target: ExportTarget, options: ExportOptions,
                 report: ExportReport) -> ExportReport:
    """Export ``table`` to ``target`` as a Delta table; fill and return ``report``.

    Raises:
        UsageError: the table has no data, or the store is one delta-rs cannot write.
        LockHeldError: a load, compaction or another export holds the warehouse.
        ExportError: writing failed (the table is still at its previous version).
    """
    started = time.monotonic()
    paths = config.paths
    dtarget = delta_target(target)
    report.format = "delta"
    report.pointer = target.display("_delta_log")
    report.path = target.display()
    if options.dry_run:
        _dry_run(paths, table, dtarget, options, report)
        report.seconds = time.monotonic() - started
        return report
    with WarehouseLock(paths, f"lake export {table}", options.lock_timeout):
        failpoints.hit("export.after_lock")
        # The source is the published snapshot: a load killed before publishing left it
        # behind lake.duckdb, so publish first; under the lock nothing changes it after.
        if publish_pending(paths):
            publish_snapshot(paths)
        snapshot = current_snapshot(paths)
        wh = open_warehouse(paths.warehouse, lock_timeout=options.lock_timeout)
        try:
            migrate(wh)
            # One `export` run, as for Parquet; it closes before the republish, so the
            # snapshot shows it.
            with RunLogger(wh, "export", options.triggered_by,
                           args={"table": table, "to": target.display(), "full": options.full,
                                 "format": "delta"}):
                source = describe_source(wh, table)
                report.partition_key = source.key
                state = read_state(dtarget)
                plan = plan_delta(wh, source, state, full=options.full)
                _fill_plan(report, plan)
                if plan.up_to_date and state is not None:
                    report.export_id, report.delta_version = state.export_id, state.version
                    with _committed(report, dtarget):
                        _record(wh, paths, dtarget, target, state, None, started)
                        _report_sizes(report, dtarget, plan, source)
                else:
                    meta = _metadata(wh, source, plan, state, snapshot)
                    version = commit_export(wh, source, plan, dtarget, state, meta,
                                            meta.pop("_keys"))
                    report.export_id, report.delta_version = meta["lake.export_id"], version
                    with _committed(report, dtarget):
                        sizes = _report_sizes(report, dtarget, plan, source)
                        _record(wh, paths, dtarget, target, state, (meta, version, sizes),
                                started)
                    failpoints.hit("export.delta_after_record")
            wh.checkpoint()
        finally:
            wh.close()
        with _committed(report, dtarget):
            if publish_pending(paths):
                publish_snapshot(paths)  # `lake query` sees meta.exports
                report.published = True
    report.seconds = time.monotonic() - started
    return report


@contextmanager
def _committed(report: ExportReport, target: DeltaTarget) -> Iterator[None]:
    """After the commit: a failure leaves the new version published, with its bookkeeping
    (meta, snapshot) for the next export to finish."""
    try:
        yield
    except (OSError, WarehouseError) as exc:
        raise ExportError(f"export {report.export_id} of {report.table} is committed as "
                          f"version {report.delta_version} of {target.shown}, but then {exc}; "
                          "fix that and run lake export again to finish its bookkeeping"
                          ) from exc


def _metadata(wh: Warehouse, source: Source, plan: DeltaPlan, state: DeltaState | None,
              snapshot: str | None) -> dict[str, Any]:
    """The commit's ``lake.*`` metadata: the next export's baseline and the provenance."""
    export_id = f"{utc_stamp()}-{secrets.token_hex(4)}"  # as the Parquet export's ids
    keys = partition_keys(wh, source, plan.write)
    written = [DeltaPartition(v, keys[v], plan.fingerprints[v][0], plan.fingerprints[v][1],
                              export_id) for v in plan.write]
    partitions = sorted([*written, *plan.carry], key=lambda p: (p.value is None, p.value or ""))
    since = None if state is None or plan.full else state.metadata.get("lake.exported_at")
    runs = load_runs_since(wh, source.table, since)
    return {
        "lake.format": DELTA_FORMAT, "lake.export_id": export_id, "lake.table": source.table,
        "lake.exported_at": utcnow().isoformat(timespec="microseconds"),
        "lake.source_snapshot": snapshot or "",
        "lake.last_load_run_id": runs[-1] if runs else (
            state.metadata.get("lake.last_load_run_id", "") if state else ""),
        "lake.load_run_ids": runs[-MAX_LOAD_RUN_IDS:], "lake.load_run_count": len(runs),
        "lake.previous_export_id": state.export_id if state and state.export_id else "",
        "lake.full": plan.full,
        "lake.partition_key": source.key or "",
        "lake.partition_by": ({"column": source.partition_column,
                               "granularity": source.granularity} if source.key else None),
        "lake.partition_columns": [n for n, _ in partition_columns(source)],
        "lake.schema": source.schema(),
        "lake.partitions": [p.as_list() for p in partitions],
        "lake.written": list(plan.write),
        "lake.removed": [p.as_list() for p in plan.remove],
        "_keys": keys,
    }


def _record(wh: Warehouse, paths: LakePaths, dtarget: DeltaTarget, target: ExportTarget,
            state: DeltaState | None, new: tuple[dict[str, Any], int, Any] | None,
            started: float) -> None:
    """Record the new export (and a committed one meta does not know yet) in one
    transaction."""
    known = recorded_exports(wh, [i for i in (state.export_id if state else None,
                                               new[0]["lake.export_id"] if new else None) if i])
    # A kill between a Delta commit and its meta commit leaves meta one export behind: the
    # log is the truth, so that export is recorded now, as 'recovered'.
    recover = (state is not None and state.export_id is not None and not state.foreign
               and state.lake_version is not None and state.export_id not in known)
    if not recover and new is None:
        return
    mark_publish_pending(paths)  # before the commit: a kill after it still republishes
    with wh.transaction("recording the export"):
        if recover and state is not None and state.lake_version is not None:
            names = list(state.metadata.get("lake.partition_columns", []))
            insert_delta_export(wh, target.url, state.metadata, state.lake_version,
                                "recovered", None, partition_sizes(dtarget, names))
        if new is not None:
            meta, version, sizes = new
            insert_delta_export(wh, target.url, meta, version, "published", started, sizes)


def _report_sizes(report: ExportReport, dtarget: DeltaTarget, plan: DeltaPlan,
                  source: Source) -> dict[tuple[str | None, ...], tuple[int, int]]:
    names = [n for n, _ in partition_columns(source)]
    sizes = partition_sizes(dtarget, names)
    report.rows = sum(n for n, _ in plan.fingerprints.values())
    report.files = sum(f for f, _ in sizes.values())
    report.bytes = sum(b for _, b in sizes.values())
    carried = {p.keys for p in plan.carry}
    report.bytes_written = 0 if plan.up_to_date else sum(
        b for k, (_, b) in sizes.items() if k not in carried)
    return sizes


def _dry_run(paths: LakePaths, table: str, dtarget: DeltaTarget, options: ExportOptions,
             report: ExportReport) -> None:
    """Plan against the published snapshot (no lock: a dry run is a reader)."""
    require_snapshot(paths)
    wh = open_warehouse(paths.read_snapshot, read_only=True)
    try:
        source = describe_source(wh, table)
        report.partition_key = source.key
        state = read_state(dtarget)
        plan = plan_delta(wh, source, state, full=options.full)
    finally:
        wh.close()
    _fill_plan(report, plan)
    if plan.up_to_date and state is not None:
        report.export_id, report.delta_version = state.export_id, state.version
    report.rows = sum(n for n, _ in plan.fingerprints.values())


def _fill_plan(report: ExportReport, plan: DeltaPlan) -> None:
    report.full, report.reason = plan.full, plan.reason
    report.up_to_date = plan.up_to_date
    report.written = list(plan.write)
    report.carried_over = [p.value for p in plan.carry]
    report.removed = [p.value for p in plan.remove]
    report.rows_written = sum(plan.fingerprints[v][0] for v in plan.write)

