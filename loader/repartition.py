"""`lake repartition TABLE`: rebuild a table under the spec lake.toml now gives it, verified,
swapped in one transaction.

A load refuses a table whose ``partition_by``, ``primary_key`` or ``merge`` in lake.toml
differs from the spec recorded in ``meta.tables`` (``lakehouse/table_spec.py``). This job
resolves that. Steps, each ordering rule commented where it is enforced:

1. Take the warehouse lock for the whole job: no load runs meanwhile, so the table's staged
   runs wait in staging and the next load merges them under the new spec.
2. Open the warehouse, migrate it, drop the build table a killed repartition left behind
   (``_lake_build_<table>``: never read by anything else).
3. Compare the recorded spec with lake.toml's. Equal: nothing to do.
4. Check that the table's data fits the new spec: the partition column exists with a type
   its granularity accepts, no row has a null partition value, and for a keyed merge
   (``append`` or ``upsert`` with a primary key) the key is never null and unique.
5. A new key or merge strategy alone moves no row: the new spec is recorded (one
   transaction), nothing is rebuilt.
6. Otherwise build ``_lake_build_<table>``: every row, ``_lake_partition`` computed by the
   load's own ``partition_expression`` (``lakehouse/merge.py``), in partition order; commit.
7. Parity: row count and an order-independent checksum of the user columns (``_lake_*``
   excluded) equal in both tables, before any swap.
8. The swap, in ONE transaction: drop the old table, rename the build table, record the new
   spec and the run log's rows. A SIGKILL before the commit leaves the old table and the old
   spec (and a build table the next run drops); after it, the new table and the new spec.
9. Checkpoint, close, publish the snapshot.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from lakehouse import failpoints
from lakehouse.config import LakeConfig, TableContract
from lakehouse.db import Warehouse, literal, open_warehouse, quote
from lakehouse.errors import (
    ConfigError,
    LakehouseError,
    RepartitionError,
    RepartitionRefusedError,
    UsageError,
)
from lakehouse.layout import PARTITION_COLUMN, RESERVED_PREFIX, LakePaths
from lakehouse.lock import WarehouseLock
from lakehouse.merge import partition_expression, partition_text
from lakehouse.migrations import migrate
from lakehouse.observability import RunLogger
from lakehouse.publish import mark_publish_pending, publish_pending, publish_snapshot
from lakehouse.table_spec import (
    Spec,
    build_table_name,
    canonical_spec,
    describe_changes,
    needs_rebuild,
    record_spec,
    recorded_specs,
)
from loader.report import StopFlag

_KEYED_MERGES = ("append", "upsert")  # merges that keep a key unique (replace_partition: no)


@dataclass
class RepartitionReport:
    """What a repartition did (or, for a dry run, would do)."""

    table: str
    dry_run: bool
    recorded_spec: Spec | None = None
    new_spec: Spec | None = None
    changes: list[str] = field(default_factory=list)
    up_to_date: bool = False  # the recorded spec already is lake.toml's: nothing to do
    rebuild: bool = False  # the partition spec changed: rows are rewritten
    rows: int = 0
    checksum: str | None = None  # of the user columns, equal before and after
    partitions_before: list[dict[str, Any]] = field(default_factory=list)
    partitions_after: list[dict[str, Any]] = field(default_factory=list)
    table_bytes: int = 0  # the table's blocks: what the build adds to lake.duckdb at most
    space_needed: int = 0  # the build plus a snapshot of the grown file
    disk_free: int = 0
    leftover_dropped: bool = False  # a killed repartition's build table was dropped
    leftover_found: bool = False
    swapped: bool = False
    recorded: bool = False  # the new spec was recorded
    published: bool = False
    run_id: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def repartition_table(config: LakeConfig, table: str, *, dry_run: bool = False,
                      lock_timeout: float = 0.0, stop: StopFlag | None = None,
                      progress: Callable[[str], None] | None = None,
                      triggered_by: str = "cli") -> RepartitionReport:
    """Rebuild ``table`` under the spec lake.toml gives it, or record a key/merge change.

    Args:
        dry_run: report the partitions before and after and the space needed; change nothing.
        lock_timeout: seconds to wait for the warehouse lock.
        stop: checked before the build and before the swap (never during it).
        progress: called with one line per step.
        triggered_by: who started it, for the run log (``cli``, ``cron``, ...).

    Raises:
        ConfigError: the table is not declared, or its new partition column is missing or of
            a type its granularity cannot truncate.
        UsageError: the warehouse or the table does not exist yet.
        RepartitionRefusedError: the data does not fit the new spec (nothing changed).
        RepartitionError: the parity check failed (nothing changed).
        LockHeldError: a load, compaction or another repartition holds the warehouse.
        StopRequestedError: ``stop`` was set before the swap; nothing changed.
    """
    contract = config.table(table)
    paths, say = config.paths, progress or (lambda _line: None)
    if not paths.warehouse.is_file():
        raise UsageError(f"no warehouse at {paths.warehouse}: run `lake init` first")
    started = time.monotonic()
    report = RepartitionReport(table=table, dry_run=dry_run)
    with WarehouseLock(paths, "lake repartition", lock_timeout):
        failpoints.hit("repartition.after_lock")
        wh = open_warehouse(paths.warehouse, lock_timeout=lock_timeout)
        logged = False
        job = _Job(wh, contract, paths, report, say, stop)
        try:
            if dry_run:
                job.plan()  # reads only (a checkpoint aside); no run row
                report.seconds = time.monotonic() - started
                wh.close()
                return report
            migrate(wh)
            # The run row from here on: a refused or failed repartition is in `lake health`.
            with RunLogger(wh, "repartition", triggered_by, args={"table": table}) as logger:
                logged = True
                report.run_id = logger.run_id
                job.plan()
                if not report.up_to_date:
                    job.apply(logger)
            wh.checkpoint()
        except BaseException:
            _close_after_failure(wh, paths, published=logged)
            raise
        wh.close()
        if report.recorded or report.leftover_dropped or publish_pending(paths):
            failpoints.hit("repartition.before_publish")
            publish_snapshot(paths)
            report.published = True
    report.seconds = time.monotonic() - started
    return report


def _close_after_failure(wh: Warehouse, paths: LakePaths, *, published: bool) -> None:
    """Best effort: the failed run row is published, and a failure while publishing must not
    hide the job's own error."""
    try:
        if published:
            wh.checkpoint()
            wh.close()
            publish_snapshot(paths)
        else:
            wh.close()
    except (OSError, LakehouseError):
        wh.close()


@dataclass
class _Job:
    wh: Warehouse
    contract: TableContract
    paths: LakePaths
    report: RepartitionReport
    say: Callable[[str], None]
    stop: StopFlag | None
    expression: str = ""  # the new _lake_partition of a row, as the load computes it

    @property
    def name(self) -> str:
        return self.contract.name

    def plan(self) -> None:
        """Steps 2-4: leftovers, the specs, the checks, and the partitions before and after."""
        report, wh, name = self.report, self.wh, self.name
        build = build_table_name(name)
        if wh.columns("main", build):
            report.leftover_found = True
            if not report.dry_run:
                # Under the lock no other repartition runs: this build is a killed one's, and
                # never was the table (the swap renames it in the transaction that drops the
                # old one), so dropping it loses nothing.
                with wh.transaction(f"dropping the leftover {build}"):
                    wh.execute(f"DROP TABLE {quote(build)}", action=f"dropping {build}")
                report.leftover_dropped = True
                self.say(f"dropped {build}, left by a killed repartition")
        columns = wh.columns("main", name)
        if not columns:
            raise UsageError(f"table {name} has no data in the warehouse yet: nothing to "
                             f"repartition; `lake load` creates it with the spec in lake.toml")
        old = recorded_specs(wh).get(name)
        new = canonical_spec(self.contract)
        report.recorded_spec, report.new_spec = old, new
        if old == new:
            report.up_to_date = True
            self.say(f"table {name} already has the spec in lake.toml: nothing to do")
            return
        report.changes = describe_changes(old or {}, new)
        report.rebuild = old is None or needs_rebuild(old, new)
        self.expression = self.partition_sql(columns)
        self.check_data(old or {}, new)
        self.measure()

    def partition_sql(self, columns: list[tuple[str, str]]) -> str:
        """The load's own ``_lake_partition`` expression for this table's columns."""
        types = {n.lower(): t for n, t in columns}
        sql = partition_expression(self.contract, types)
        if sql is None:
            # No spec always gives an expression: some column of the spec is the cause.
            spec = next(s for s in self.contract.partitions
                        if partition_text(s, types) is None)
            found = types.get(spec.column.lower())
            problem = (f"column {spec.column!r} is not in table {self.name}" if found is None
                       else f"column {spec.column!r} is {found}; granularity "
                            f"{spec.granularity!r} needs a DATE or TIMESTAMP column")
            raise ConfigError(f"{problem}; fix partition_by, nothing was changed",
                              table=self.name, key="partition_by")
        return sql

    def check_data(self, old: Spec, new: Spec) -> None:
        """Step 4: the rows fit the new spec, or RepartitionRefusedError says which do not."""
        wh, q = self.wh, quote(self.name)
        columns = {n.lower() for n, _ in wh.columns("main", self.name)}
        specs = self.contract.partitions
        if specs and old.get("partition_by") != new["partition_by"]:
            for spec in specs:
                nulls = _scalar(wh, f"SELECT count(*) FROM {q} "
                                    f"WHERE {quote(spec.column)} IS NULL")
                if nulls:
                    raise RepartitionRefusedError(self.name, (
                        f"cannot repartition {self.name}: {nulls} row(s) have no value in "
                        f"partition column {spec.column!r} (a load refuses such rows); "
                        "delete or fill them, or choose another column; nothing was changed"))
        keys = self.contract.primary_key
        key_changed = (old.get("primary_key") != new["primary_key"]
                       or old.get("merge") != new["merge"])
        if not keys or self.contract.merge not in _KEYED_MERGES or not key_changed:
            return
        missing = [k for k in keys if k.lower() not in columns]
        if missing:
            raise ConfigError(f"key column(s) {missing} are not in table {self.name}; fix "
                              "primary_key, nothing was changed", table=self.name,
                              key="primary_key")
        key_list = ", ".join(quote(k) for k in keys)
        nulls = _scalar(wh, f"SELECT count(*) FROM {q} WHERE "
                            + " OR ".join(f"{quote(k)} IS NULL" for k in keys))
        repeated = _scalar(wh, f"SELECT count(*) FROM (SELECT 1 FROM {q} GROUP BY {key_list} "
                               "HAVING count(*) > 1)")
        if nulls or repeated:
            what = "; ".join(x for x in (f"{nulls} row(s) with a null key" if nulls else "",
                                         f"{repeated} key(s) on more than one row"
                                         if repeated else "") if x)
            raise RepartitionRefusedError(self.name, (
                f"cannot make ({', '.join(keys)}) the key of {self.name} under merge = "
                f"{self.contract.merge!r}: {what}; find them with lake query 'SELECT "
                f"{key_list}, count(*) FROM {q} GROUP BY ALL HAVING count(*) > 1', fix the "
                "data or the key; nothing was changed"))

    def measure(self) -> None:
        """Partitions before and after, the table's blocks, the space the rebuild needs."""
        wh, report, q = self.wh, self.report, quote(self.name)
        rows = wh.fetchall(f"SELECT {PARTITION_COLUMN}, count(*) FROM {q} GROUP BY 1 "
                           "ORDER BY 1 NULLS FIRST", action=f"reading partitions of {self.name}")
        report.partitions_before = [{"partition": p, "rows": int(n)} for p, n in rows]
        report.rows = sum(int(n) for _, n in rows)
        if report.rebuild:
            rows = wh.fetchall(f"SELECT {self.expression}, count(*) FROM {q} GROUP BY 1 "
                               "ORDER BY 1 NULLS FIRST",
                               action=f"computing the new partitions of {self.name}")
            report.partitions_after = [{"partition": p, "rows": int(n)} for p, n in rows]
        else:
            report.partitions_after = list(report.partitions_before)
        wh.checkpoint()  # the table's rows in the file's blocks, where storage_info sees them
        block = _scalar(wh, "SELECT block_size FROM pragma_database_size() "
                            "WHERE database_name = current_database()")
        blocks = _scalar(wh, f"SELECT count(DISTINCT block_id) FROM pragma_storage_info("
                             f"{literal(self.name)}) WHERE persistent AND block_id >= 0")
        size = self.paths.warehouse.stat().st_size
        report.table_bytes = blocks * block if report.rebuild else 0
        # The build grows lake.duckdb by about the table (1.3 times its blocks for 1M rows:
        # fresh row groups and their metadata; the old table's blocks are freed for later
        # loads, not returned: `lake compact` does that), counted twice to be safe; then
        # publishing copies the grown file (free on a file system with reflinks).
        growth = 2 * report.table_bytes
        report.space_needed = growth + size + growth if report.rebuild else 0
        report.disk_free = shutil.disk_usage(self.paths.warehouse_dir).free
        self.say(f"{self.name}: {report.rows:,} rows, {len(report.partitions_before)} -> "
                 f"{len(report.partitions_after)} partitions ({'; '.join(report.changes)})")

    def apply(self, logger: RunLogger) -> None:
        """Steps 5-8: record the spec, or build, check parity and swap."""
        report, wh, name = self.report, self.wh, self.name
        build = build_table_name(name)
        if self.stop is not None:
            self.stop.raise_if_set()  # a safe point: nothing of this run written yet
        if report.rebuild:
            self.build(build)
            failpoints.hit("repartition.after_build")
            try:
                self.parity(build, logger)
                failpoints.hit("repartition.after_parity")
                if self.stop is not None:
                    self.stop.raise_if_set()  # the last safe point before the swap
            except BaseException:
                self.drop_build(build)  # the old table stays the table
                raise
        # Before the commit: a crash after it must republish (the next writer does).
        mark_publish_pending(self.paths)
        with wh.transaction(f"swapping in the repartitioned {name}"):
            if report.rebuild:
                # The swap: old table out, build table in, new spec recorded, all or nothing.
                wh.execute(f"DROP TABLE {quote(name)}", action=f"dropping the old {name}")
                wh.execute(f"ALTER TABLE {quote(build)} RENAME TO {quote(name)}",
                           action=f"renaming {build} to {name}")
            record_spec(wh, self.contract)
            # A rebuild moves every row: out of its old partition, into its new one (per
            # table, inserted - deleted stays the change in its row count: none).
            for part in report.partitions_before if report.rebuild else []:
                logger.log_asset(name, str(part["partition"]), "success",
                                 rows_deleted=part["rows"],
                                 extra={"repartition": report.changes})
            for part in report.partitions_after:
                logger.log_asset(name, str(part["partition"]), "success",
                                 rows_inserted=part["rows"] if report.rebuild else 0,
                                 extra={"repartition": report.changes})
            logger.flush()
            failpoints.hit("repartition.before_commit")
        report.swapped, report.recorded = report.rebuild, True
        self.say(f"{name}: {'rebuilt and swapped in' if report.rebuild else 'spec recorded'}")
        failpoints.hit("repartition.after_swap")

    def build(self, build: str) -> None:
        """Step 6: every row into the build table, in partition order; committed."""
        wh, q = self.wh, quote(self.name)
        keys = [quote(k) for k in self.contract.primary_key]
        order = ", ".join([self.expression, *keys, "rowid"])
        with wh.transaction(f"building {build}"):
            # `* REPLACE` keeps every column, in order and with its type (columns added by
            # add_columns sit after _lake_run_id); only _lake_partition is recomputed.
            wh.execute(f"CREATE TABLE {quote(build)} AS SELECT * REPLACE ({self.expression} "
                       f"AS {PARTITION_COLUMN}) FROM {q} ORDER BY {order}",
                       action=f"building {build}")
        self.say(f"built {build}")

    def drop_build(self, build: str) -> None:
        """Drop the build table of this run (best effort: the next run drops a leftover)."""
        try:
            with self.wh.transaction(f"dropping {build}"):
                self.wh.execute(f"DROP TABLE IF EXISTS {quote(build)}",
                                action=f"dropping {build}")
        except LakehouseError:
            pass

    def parity(self, build: str, logger: RunLogger) -> None:
        """Step 7: equal row count and checksum of the user columns, or the build is dropped."""
        wh = self.wh
        user = [n for n, _ in wh.columns("main", self.name)
                if not n.lower().startswith(RESERVED_PREFIX)]
        sql = ("SELECT count(*), coalesce(sum(hash({c})::HUGEINT), 0) FROM {t}"
               if user else "SELECT count(*), 0 FROM {t}")
        cols = ", ".join(quote(c) for c in user)
        old = wh.fetchone(sql.format(c=cols, t=quote(self.name)), action="checking parity")
        new = wh.fetchone(sql.format(c=cols, t=quote(build)), action="checking parity")
        ok = old is not None and old == new
        logger.log_check(self.name, "repartition_parity", passed=ok,
                         metrics={"old": [str(v) for v in old or ()],
                                  "new": [str(v) for v in new or ()]})
        if not ok or old is None:
            raise RepartitionError(self.name, (
                f"repartition of {self.name} failed its parity check (rows, checksum: old "
                f"{old}, rebuilt {new}); the table is unchanged; report this as a bug"))
        self.report.rows, self.report.checksum = int(old[0]), str(old[1])
        self.say(f"parity: {old[0]:,} rows, checksum equal")


def _scalar(wh: Warehouse, sql: str) -> int:
    row = wh.fetchone(sql)
    return int(row[0]) if row and row[0] is not None else 0


__all__ = ["RepartitionReport", "repartition_table"]
