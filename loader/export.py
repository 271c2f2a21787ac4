"""`lake export`: one table as Hive-partitioned Parquet, published atomically, incremental.

Steps, each ordering rule commented where it is enforced:

1. Take the warehouse lock (``lake export``): exports serialise with loads, compaction and each
   other, so the table does not change while it is read and two exports never race for one
   target. Open ``lake.duckdb`` and apply pending migrations (``meta.exports`` is v3).
2. Fingerprint every partition: row count and an order-independent sum of row hashes over the
   exported columns. Compare with the partitions the target's current pointer lists. The
   pointer, not ``meta``, is the baseline: it is what readers see, and it cannot disagree with
   the files (a crash between the pointer and the ``meta`` commit, or a target restored from a
   backup, leaves ``meta`` behind; the next export reconciles ``meta`` from the pointer).
3. ``COPY ... (FORMAT parquet, PARTITION_BY (<key>))`` only the changed and new partitions into
   a fresh folder that nothing points at (``lakehouse/export_copy.py``).
4. Carry unchanged partitions over from the previous version (hard links locally, server-side
   copies on object stores) and make the new version complete and durable (``_v/<id>``).
5. Write the pointer ``_latest.json`` atomically: the commit point. Then swap the local
   ``current`` link, record the export in ``meta``, republish the snapshot, prune old versions.

A SIGKILL before step 5 leaves the previous export as it was (plus an unreferenced folder the
next export deletes); after it, the new export is published and the next run only catches up
on the link and ``meta``. See ``docs/EXPORT.md``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lakehouse import failpoints
from lakehouse.config import LakeConfig
from lakehouse.db import Warehouse, open_warehouse
from lakehouse.errors import ExportError, UsageError, WarehouseError
from lakehouse.export_copy import copy_partitions, with_bytes
from lakehouse.export_delta_target import choose_format
from lakehouse.export_ledger import insert_export, recorded_exports
from lakehouse.export_plan import (
    POINTER_FORMAT,
    Plan,
    Source,
    describe_source,
    plan_export,
    pointer_partitions,
    relative_path,
    sort_key,
)
from lakehouse.export_target import (
    CURRENT_LINK,
    LOCAL_TEMP_BASE,
    POINTER_NAME,
    ExportTarget,
    open_target,
)
from lakehouse.fsio import delete_path
from lakehouse.layout import TMP_MARKER, LakePaths, utc_stamp
from lakehouse.lock import WarehouseLock
from lakehouse.migrations import migrate
from lakehouse.observability import RunLogger
from lakehouse.publish import (
    mark_publish_pending,
    publish_pending,
    publish_snapshot,
    require_snapshot,
)
from loader.export_delta import export_delta

DEFAULT_KEEP_VERSIONS = 2  # the current version and the one before (for readers mid-scan)


@dataclass(frozen=True)
class ExportOptions:
    """What `lake export` was asked to do."""

    to: str
    full: bool = False
    dry_run: bool = False
    lock_timeout: float = 0.0
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    format: str | None = None  # delta | parquet; None: the target's own, delta for a new one
    triggered_by: str = "cli"  # recorded in the run log


@dataclass
class ExportReport:
    """What an export did (or, for a dry run, would do)."""

    table: str
    target: str  # ``<to>/<table>`` as given (absolute path or URL)
    dry_run: bool = False
    export_id: str | None = None  # the published export (the current one when up to date)
    path: str | None = None  # its version folder
    pointer: str = ""
    current: str | None = None  # local targets: the stable folder for Hive readers
    partition_key: str | None = None
    full: bool = False
    up_to_date: bool = False
    reason: str = ""
    written: list[str | None] = field(default_factory=list)
    carried_over: list[str | None] = field(default_factory=list)
    removed: list[str | None] = field(default_factory=list)
    rows: int = 0
    rows_written: int = 0
    bytes: int = 0
    bytes_written: int = 0
    files: int = 0
    versions_removed: list[str] = field(default_factory=list)
    published: bool = False
    seconds: float = 0.0
    format: str = "parquet"  # delta | parquet
    delta_version: int | None = None  # --format delta: the table's version after the export

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (with the counts of written/carried/removed partitions)."""
        data = asdict(self)
        data.update(partitions_written=len(self.written),
                    partitions_carried_over=len(self.carried_over),
                    partitions_removed=len(self.removed))
        return data


def export_table(config: LakeConfig, table: str, options: ExportOptions) -> ExportReport:
    """Export ``table`` to ``options.to`` as Hive-partitioned Parquet; return what it did.

    Raises:
        ConfigError: the table is not declared in lake.toml.
        UsageError: the table has no data yet, or ``--to`` / ``--keep-versions`` is wrong.
        LockHeldError: a load, compaction or another export holds the warehouse.
        ExportError: writing the export failed (the previous export is still published).
    """
    config.table(table)  # an undeclared table is a usage error before anything else
    if options.keep_versions < 1:
        raise UsageError(f"--keep-versions must be 1 or more, got {options.keep_versions}")
    paths = config.paths
    if not paths.warehouse.is_file():
        raise UsageError(f"no warehouse at {paths.warehouse}: run `lake init` first")
    target = open_target(options.to, table, paths, config.settings.staging_root)
    started = time.monotonic()
    report = ExportReport(table=table, target=target.display(), dry_run=options.dry_run,
                          pointer=target.display(POINTER_NAME))
    if choose_format(options.format, target) == "delta":
        return export_delta(config, table, target, options, report)
    if options.dry_run:
        _dry_run(paths, table, target, options, report)
        report.seconds = time.monotonic() - started
        return report
    with WarehouseLock(paths, f"lake export {table}", options.lock_timeout):
        failpoints.hit("export.after_lock")
        # Under the lock no other export runs: a local staging folder is a killed one's.
        _remove_local_temps(paths)
        wh = open_warehouse(paths.warehouse, lock_timeout=options.lock_timeout)
        try:
            migrate(wh)
            # One `export` run, up to date or not; it closes before the publish and the
            # pruning (bookkeeping the next export redoes), so the snapshot shows it.
            with RunLogger(wh, "export", options.triggered_by,
                           args={"table": table, "to": target.display(), "full": options.full,
                                 "format": "parquet",
                                 "keep_versions": options.keep_versions}):
                current = _export(wh, paths, table, target, options, report, started)
            wh.checkpoint()
        finally:
            wh.close()
        with _published(current, target):
            if publish_pending(paths):
                publish_snapshot(paths)  # `lake query` sees meta.exports
                report.published = True
            keep = list(dict.fromkeys([str(current["export_id"]), *current.get("versions", [])]))
            # Pruning comes after the pointer: it never deletes what the pointer names, nor
            # the versions kept for readers that resolved `current` just before it moved.
            report.versions_removed = target.prune(keep[: options.keep_versions])
    report.seconds = time.monotonic() - started
    return report


def _export(wh: Warehouse, paths: LakePaths, table: str, target: ExportTarget,
            options: ExportOptions, report: ExportReport, started: float) -> dict[str, Any]:
    """Plan, write and record the export (under the lock); return the published pointer."""
    source = describe_source(wh, table)
    report.partition_key = source.key
    pointer = target.read_pointer()
    plan = plan_export(wh, source, pointer, target, full=options.full)
    _fill_plan(report, plan, pointer)
    if plan.up_to_date and pointer is not None:
        _report_current(report, target, pointer)
        with _published(pointer, target):
            # A kill after the last pointer may have left the link and meta behind.
            if not target.link_current(str(pointer["export_id"])):
                report.current = None
            _record(wh, paths, target, pointer, None, started)
        return pointer
    current = _write_export(wh, paths, source, plan, pointer, target, options, report)
    failpoints.hit("export.after_pointer")
    with _published(current, target):
        if not target.link_current(current["export_id"]):
            report.current = None  # no symlinks here: readers use the pointer
        _record(wh, paths, target, pointer, current, started)
    failpoints.hit("export.after_record")
    return current


@contextmanager
def _published(doc: dict[str, Any], target: ExportTarget) -> Iterator[None]:
    """After the pointer: a failure leaves the new export published, with its bookkeeping
    (link, meta, snapshot, pruning) for the next export to finish."""
    try:
        yield
    except (OSError, WarehouseError) as exc:
        raise ExportError(f"export {doc['export_id']} of {doc['table']} is published at "
                          f"{target.display(POINTER_NAME)}, but then {exc}; fix that and run "
                          "lake export again to finish its bookkeeping") from exc


def _write_export(wh: Warehouse, paths: LakePaths, source: Source, plan: Plan,
                  pointer: dict[str, Any] | None, target: ExportTarget,
                  options: ExportOptions, report: ExportReport) -> dict[str, Any]:
    """Write a new version, complete it and publish its pointer; return the pointer."""
    export_id = new_export_id()
    ours = pointer is not None and pointer.get("format") == POINTER_FORMAT
    previous_id = str(pointer["export_id"]) if ours and pointer else None
    staging: Path | None = None
    try:
        staging = target.staging_folder(paths)
        written = copy_partitions(wh, source, plan, staging, export_id)
        failpoints.hit("export.after_write")
        carried = {relative_path(p.folder, f): f"{previous_id}/{relative_path(p.folder, f)}"
                   for p in plan.carry for f in p.files}
        files = [relative_path(p.folder, f) for p in written for f in p.files]
        target.complete_version(staging, export_id, files, carried)
        sizes = target.file_sizes(export_id, files)
    except BaseException as exc:
        if staging is not None:
            delete_path(staging)  # nothing points at it; the previous export is untouched
        if isinstance(exc, OSError | WarehouseError):
            raise ExportError(f"export of {source.table} to {target.display()} failed: {exc}; "
                              "the previous export is still the published one; fix that and "
                              "run lake export again") from exc
        raise
    written = [with_bytes(p, sizes) for p in written]
    partitions = sorted([*written, *plan.carry], key=lambda p: sort_key(p.value))
    rows, size = sum(p.rows for p in partitions), sum(p.bytes for p in partitions)
    count = sum(len(p.files) for p in partitions)
    kept = pointer.get("versions", []) if ours and pointer else []
    versions = [export_id, *[str(v) for v in kept if v != export_id]]
    doc = {
        "format": POINTER_FORMAT, "table": source.table, "export_id": export_id,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "path": f"_v/{export_id}", "partition_key": source.key,
        "partition_by": source.partition_by(), "partition_keys": list(source.keys),
        "schema": source.schema(), "rows": rows, "bytes": size, "files": count,
        "partitions": [p.as_dict() for p in partitions],
        "previous": previous_id, "full": plan.full,
        "written": [p.folder for p in written], "removed": [p.folder for p in plan.remove],
        "versions": versions[: options.keep_versions],
    }
    failpoints.hit("export.before_pointer")
    # The commit point: the version is complete and durable before the pointer names it.
    try:
        target.write_pointer(doc)
    except OSError as exc:  # the pointer is written whole or not at all
        raise ExportError(f"could not publish the export pointer {target.display(POINTER_NAME)}"
                          f": {exc}; the previous export is still the published one; fix "
                          "that and run lake export again") from exc
    report.export_id = export_id
    report.path = target.display("_v", export_id)
    report.current = target.display(CURRENT_LINK) if target.local else None
    report.rows, report.bytes, report.files = rows, size, count
    report.rows_written = sum(p.rows for p in written)
    report.bytes_written = sum(p.bytes for p in written)
    return doc


def _record(wh: Warehouse, paths: LakePaths, target: ExportTarget,
            previous: dict[str, Any] | None, doc: dict[str, Any] | None, started: float) -> None:
    """Record the export (and a published export meta does not know yet) in one transaction."""
    ids = [d["export_id"] for d in (previous, doc) if d]
    known = recorded_exports(wh, ids)
    # A kill between a pointer and its meta commit leaves meta one export behind: the
    # pointer is the truth, so its export is recorded now, as 'recovered'.
    recover = (previous is not None and previous.get("format") == POINTER_FORMAT
               and previous["export_id"] not in known)
    if not recover and doc is None:
        return
    mark_publish_pending(paths)  # before the commit: a kill after it still republishes
    with wh.transaction("recording the export"):
        if recover and previous is not None:
            insert_export(wh, target, previous, "recovered", None, [])
        if doc is not None:
            removed = set(doc.get("removed", []))
            gone = [p for p in pointer_partitions(previous) if p.folder in removed] \
                if removed else []
            insert_export(wh, target, doc, "published", started, gone)


def _dry_run(paths: LakePaths, table: str, target: ExportTarget, options: ExportOptions,
             report: ExportReport) -> None:
    """Plan against the published snapshot (no lock: a dry run is a reader)."""
    require_snapshot(paths)
    wh = open_warehouse(paths.read_snapshot, read_only=True)
    try:
        source = describe_source(wh, table)
        report.partition_key = source.key
        pointer = target.read_pointer()
        plan = plan_export(wh, source, pointer, target, full=options.full)
    finally:
        wh.close()
    _fill_plan(report, plan, pointer)
    if plan.up_to_date and pointer is not None:
        _report_current(report, target, pointer)
    else:
        report.rows = sum(n for n, _ in plan.fingerprints.values())
        report.rows_written = sum(plan.fingerprints[v][0] for v in plan.write)


def _fill_plan(report: ExportReport, plan: Plan, pointer: dict[str, Any] | None) -> None:
    report.full, report.reason = plan.full, plan.reason
    report.up_to_date = plan.up_to_date and pointer is not None
    report.written = list(plan.write)
    report.carried_over = [p.value for p in plan.carry]
    report.removed = [p.value for p in plan.remove]


def _report_current(report: ExportReport, target: ExportTarget, pointer: dict[str, Any]) -> None:
    """Nothing changed: the report names the export already published."""
    report.export_id = str(pointer["export_id"])
    report.path = target.display("_v", report.export_id)
    report.current = target.display(CURRENT_LINK) if target.local else None
    report.rows, report.bytes = int(pointer.get("rows", 0)), int(pointer.get("bytes", 0))
    report.files = int(pointer.get("files", 0))


def new_export_id(now: datetime | None = None) -> str:
    """An export id that sorts by time: ``<UTC time>-<8 hex>``."""
    return f"{utc_stamp(now)}-{secrets.token_hex(4)}"


def _remove_local_temps(paths: LakePaths) -> None:
    for path in paths.warehouse_dir.glob(f"{LOCAL_TEMP_BASE}{TMP_MARKER}*"):
        delete_path(path)
