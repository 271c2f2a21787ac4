"""Exporting a table as a Delta Lake table: delta-rs writes it, one Delta commit per export.

The Delta log (``<to>/<table>/_delta_log/``) is the commit point: delta-rs writes the data
files first, under fresh names nothing references, then the next log entry in one atomic
put-if-absent. A SIGKILL before that entry leaves the table at its previous version (the
orphaned files are removed by a later vacuum); after it, the new version is complete.

Each export is ONE commit: ``write_deltalake(mode="overwrite", predicate=...)`` replaces the
rows of every changed partition and drops every partition that is gone, in the same commit
(the predicate names all of them; the data holds the new rows of the changed ones). A first
export, or a full one, overwrites the whole table.

The baseline of an incremental export is the log itself, as the pointer is for the Parquet
export: each Lake commit's metadata carries every partition's fingerprint (rows and row-hash
sum, ``lakehouse/export_plan.py``) and its Delta partition values, plus the provenance (the
source snapshot, the load runs). A commit another engine made that may have changed rows makes
the next export full.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lakehouse import failpoints
from lakehouse.config import PartitionSpec
from lakehouse.db import Warehouse, quote
from lakehouse.errors import ExportError, PartitionValueError, UsageError
from lakehouse.export_delta_target import DeltaTarget
from lakehouse.export_plan import Source, fingerprint_partitions, sort_key
from lakehouse.layout import PARTITION_COLUMN
from lakehouse.merge import partition_text

DELTA_FORMAT = "lake.export.delta/1"  # the value of ``lake.format`` in a Lake commit's metadata
BATCH_ROWS = 65_536  # rows per Arrow batch streamed from DuckDB to delta-rs
HISTORY_DEPTH = 100  # commits looked through for the last Lake commit
# Commits that leave the rows as they were: Lake's own vacuum, and what other engines run
# to maintain a table. Anything else since the last Lake commit makes the next export full.
NEUTRAL_OPERATIONS = frozenset({"VACUUM START", "VACUUM END", "OPTIMIZE", "SET TBLPROPERTIES",
                                "CHECKPOINT", "UPGRADE PROTOCOL", "ADD CONSTRAINT"})
# DuckDB types Delta has no type for, exported as the next wider signed type (exact).
_WIDER = {"UTINYINT": "SMALLINT", "USMALLINT": "INTEGER", "UINTEGER": "BIGINT",
          "UBIGINT": "DECIMAL(20, 0)", "UHUGEINT": "DECIMAL(38, 0)", "HUGEINT": "DECIMAL(38, 0)",
          "TIMESTAMP_NS": "TIMESTAMP", "TIMESTAMP_S": "TIMESTAMP", "TIMESTAMP_MS": "TIMESTAMP"}
# ... and types that have no faithful Delta type at all: refused, with the way out.
_REFUSED = ("TIME", "TIME WITH TIME ZONE", "TIMETZ", "INTERVAL", "BIT", "VARINT", "BIGNUM")


@dataclass(frozen=True)
class DeltaPartition:
    """One partition as a Lake commit's metadata lists it."""

    value: str | None  # ``_lake_partition`` (None: NULL, or the whole unpartitioned table)
    keys: tuple[str | None, ...]  # its values of the Delta partition columns, in order
    rows: int
    fingerprint: str
    written_by: str  # the export whose commit wrote its files

    def as_list(self) -> list[Any]:
        return [self.value, list(self.keys), self.rows, self.fingerprint, self.written_by]

    @classmethod
    def from_list(cls, item: list[Any]) -> DeltaPartition:
        value, keys, rows, fp, by = item
        return cls(value, tuple(keys), int(rows), str(fp), str(by))


@dataclass(frozen=True)
class DeltaState:
    """The Delta table at the target, as its log says."""

    version: int  # the latest version (a vacuum's commits included)
    export_id: str | None  # the last Lake commit's export (None: none found)
    lake_version: int | None  # that commit's version
    metadata: dict[str, Any]  # that commit's ``lake.*`` metadata, decoded
    partitions: dict[str | None, DeltaPartition]
    partition_columns: tuple[str, ...]  # the table's Delta partition columns
    foreign: str  # why the log cannot serve as the baseline ("" when it can)


@dataclass
class DeltaPlan:
    """What one export commits: partitions to write, keep and drop."""

    fingerprints: dict[str | None, tuple[int, str]]
    write: list[str | None]
    carry: list[DeltaPartition]
    remove: list[DeltaPartition]
    full: bool
    reason: str

    @property
    def up_to_date(self) -> bool:
        return not self.write and not self.remove and not self.full


def partition_columns(source: Source) -> list[tuple[str, str]]:
    """The Delta partition columns of a table, as (name, DuckDB expression) pairs.

    One pair per partition column: the Hive key of the Parquet export (``ts_month``) holding
    that column's partition text, a column of its own beside the partition column itself
    (``ts``, kept with its exact type). One column's text is ``_lake_partition``; several are
    computed with the load's own per-column expression (``merge.partition_text``).
    """
    if not source.keys:
        return [(source.key, PARTITION_COLUMN)] if source.key else []
    if len(source.keys) == 1:
        return [(source.keys[0], PARTITION_COLUMN)]
    types = {name.lower(): kind for name, kind in source.columns}
    pairs = []
    for key, column, grain in zip(source.keys, source.partition_columns, source.granularities,
                                  strict=True):
        text = partition_text(PartitionSpec(column, grain or "identity"), types)
        if text is None:
            raise UsageError(f"partition column {column} of {source.table} is missing or cannot "
                             f"take granularity {grain}; run `lake audit`")
        pairs.append((key, text))
    return pairs


def check_types(source: Source) -> list[tuple[str, str]]:
    """The table's columns as the export writes them: (name, SQL select expression).

    Raises:
        UsageError: a column has a type Delta cannot hold (TIME, INTERVAL, BIT, VARINT).
    """
    selected = []
    for name, kind in source.columns:
        base = kind.upper()
        if base in _REFUSED:
            raise UsageError(f"column {name} of {source.table} is {kind}, which Delta Lake has "
                             "no type for; export it with --format parquet, or load it as "
                             "another type (e.g. VARCHAR or BIGINT microseconds)")
        wider = _WIDER.get(base)
        selected.append((name, f"CAST({quote(name)} AS {wider})" if wider else quote(name)))
    return selected


def read_state(target: DeltaTarget) -> DeltaState | None:
    """The Delta table's latest Lake commit, or None when there is no table yet.

    Raises:
        ExportError: the log cannot be read.
    """
    if not target.exists():
        return None
    try:
        dt = target.table()
        version = int(dt.version())
        history = dt.history(HISTORY_DEPTH)
        columns = tuple(dt.metadata().partition_columns)
    except Exception as exc:  # delta-rs raises its own and plain exceptions
        raise ExportError(f"cannot read the Delta log at {target.shown}: {_one_line(exc)}; "
                          "fix the store or export with --full to another --to") from None
    foreign = ""
    for commit in history:  # newest first
        if commit.get("lake.format") == DELTA_FORMAT:
            meta = {k: _decode(v) for k, v in commit.items() if k.startswith("lake.")}
            try:
                parts = [DeltaPartition.from_list(p) for p in meta.get("lake.partitions", [])]
            except (TypeError, ValueError):
                parts, foreign = [], "its last Lake commit lists partitions Lake cannot read"
            return DeltaState(version, str(meta.get("lake.export_id")),
                              int(commit.get("version", version)), meta,
                              {p.value: p for p in parts}, columns, foreign)
        operation = str(commit.get("operation", ""))
        if operation not in NEUTRAL_OPERATIONS and not foreign:
            foreign = f"version {commit.get('version')} ({operation}) was not written by Lake"
    return DeltaState(version, None, None, {}, {}, columns,
                      foreign or f"no Lake commit in its last {HISTORY_DEPTH} versions")


def plan_delta(wh: Warehouse, source: Source, state: DeltaState | None, *,
               full: bool = False) -> DeltaPlan:
    """Which partitions to write, keep and drop, against the last Lake commit."""
    fingerprints = fingerprint_partitions(wh, source)
    names = tuple(n for n, _ in partition_columns(source))
    if names and "" in fingerprints:
        # Delta stores partition values as strings and reads "" as NULL: the partition
        # would come back as NULL and collide with a NULL partition.
        # Neither format carries it (the Parquet export refuses it too, for Spark's sake).
        raise PartitionValueError(
            f"cannot export table {source.table}: a partition value is the empty string, "
            "which Delta Lake reads back as NULL; give those rows another value (or partition "
            "by another column) and export again")
    reason = ""
    if full:
        reason = "full: --full"
    elif state is None:
        reason = "full: no Delta table at this target yet"
    elif state.foreign:
        reason = f"full: {state.foreign}"
    elif state.metadata.get("lake.table") != source.table:
        reason = "full: the Delta table there holds another table's export"
    elif state.partition_columns != names:
        reason = "full: the partition columns changed"
    elif state.metadata.get("lake.schema") != source.schema():
        reason = "full: the table's columns changed"
    previous = {} if reason or state is None else state.partitions
    write, carry = [], []
    for value, (_rows, fp) in sorted(fingerprints.items(), key=lambda kv: sort_key(kv[0])):
        old = previous.get(value)
        if old is not None and old.fingerprint == fp:
            carry.append(old)
        else:
            write.append(value)
    remove = sorted((p for v, p in previous.items() if v not in fingerprints),
                    key=lambda p: sort_key(p.value))
    if not reason:
        reason = ("up to date: no partition changed since the last export" if not write
                  and not remove else
                  f"incremental: {len(write)} partitions changed or new, {len(remove)} removed")
    return DeltaPlan(fingerprints, write, carry, remove, reason.startswith("full"), reason)


def partition_keys(wh: Warehouse, source: Source, values: list[str | None]
                   ) -> dict[str | None, tuple[str | None, ...]]:
    """The Delta partition values of each ``_lake_partition`` value to write."""
    columns = partition_columns(source)
    if not columns:
        return {v: () for v in values}
    if [e for _, e in columns] == [PARTITION_COLUMN]:
        return {v: (v,) for v in values}
    exprs = ", ".join(e for _, e in columns)
    rows = wh.fetchall(f"SELECT DISTINCT {PARTITION_COLUMN}, {exprs} FROM {quote(source.table)}",
                       action=f"reading the partition values of {source.table}")
    wanted = set(values)
    return {r[0]: tuple(None if x is None else str(x) for x in r[1:]) for r in rows
            if r[0] in wanted}


def predicate(names: list[str], partitions: list[tuple[str | None, ...]]) -> str:
    """A SQL predicate delta-rs accepts, true exactly for the rows of ``partitions``."""
    terms = []
    for keys in partitions:
        parts = [f"{quote(n)} IS NULL" if v is None else f"{quote(n)} = {_sql_text(v)}"
                 for n, v in zip(names, keys, strict=True)]
        terms.append(parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")")
    return " OR ".join(terms)


def commit_export(wh: Warehouse, source: Source, plan: DeltaPlan, target: DeltaTarget,
                  state: DeltaState | None, metadata: dict[str, Any],
                  keys: dict[str | None, tuple[str | None, ...]]) -> int:
    """Write the plan's partitions and commit them (and the removals) as ONE Delta version;
    return that version.

    Raises:
        ExportError: delta-rs failed; the table is still at its previous version.
    """
    from deltalake import CommitProperties, WriterProperties, write_deltalake

    columns = partition_columns(source)
    names = [n for n, _ in columns]
    selected = ", ".join(f"{expr} AS {quote(n)}" for n, expr in check_types(source))
    extra = "".join(f", {expr} AS {quote(n)}" for n, expr in columns)
    sql = f"SELECT {selected}{extra} FROM {quote(source.table)}"
    params: list[Any] | None = None
    where: str | None = None
    if not plan.full:
        values = [v for v in plan.write if v is not None]
        clauses = []
        if values:
            clauses.append(f"{PARTITION_COLUMN} IN (SELECT unnest(?::VARCHAR[]))")
            params = [values]
        if None in plan.write:
            clauses.append(f"{PARTITION_COLUMN} IS NULL")
        sql += " WHERE " + (" OR ".join(clauses) if clauses else "false")
        where = predicate(names, [keys[v] for v in plan.write] + [p.keys for p in plan.remove])
    reader = wh.arrow_reader(sql, params, BATCH_ROWS, action=f"exporting {source.table}")
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    try:
        write_deltalake(
            target.uri, _batches(reader), partition_by=names or None, mode="overwrite",
            predicate=where,
            # A full export may change the columns or the partitioning: the new schema
            # replaces the old one in the same commit.
            schema_mode="overwrite" if plan.full and state is not None else None,
            storage_options=target.storage_options or None,
            writer_properties=WriterProperties(compression="ZSTD"),
            commit_properties=CommitProperties(custom_metadata=encoded))
    except Exception as exc:  # delta-rs raises its own and plain exceptions
        raise ExportError(f"Delta export of {source.table} to {target.shown} failed: "
                          f"{_one_line(exc)}; the table is still at its previous version; fix "
                          "that and run lake export again") from None
    failpoints.hit("export.delta_after_commit")
    return int(target.table().version())


def _batches(reader: Any) -> Any:
    """The reader, handing batches on as delta-rs asks; a test can kill the export after the
    first batch, while delta-rs is writing data files and the log is untouched."""
    import pyarrow as pa

    def batches() -> Iterator[Any]:
        count = 0
        for batch in reader:
            if count == 1:
                failpoints.hit("export.delta_mid_write")
            count += 1
            yield batch
        if count <= 1:  # one batch: every data file is being written, nothing committed
            failpoints.hit("export.delta_mid_write")

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


def partition_sizes(target: DeltaTarget, names: list[str]
                    ) -> dict[tuple[str | None, ...], tuple[int, int]]:
    """(files, bytes) per tuple of partition values in the latest version."""
    import pyarrow as pa

    actions = pa.table(target.table().get_add_actions(flatten=True))
    sizes: dict[tuple[str | None, ...], tuple[int, int]] = {}
    columns = [actions.column(f"partition.{n}").to_pylist() for n in names]
    for i, size in enumerate(actions.column("size_bytes").to_pylist()):
        key = tuple(c[i] for c in columns)
        files, total = sizes.get(key, (0, 0))
        sizes[key] = (files + 1, total + int(size))
    return sizes


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _decode(value: Any) -> Any:
    """A metadata value as it was before JSON encoding (delta-rs keeps strings as they are)."""
    if value in ("true", "false"):
        return value == "true"
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def load_runs_since(wh: Warehouse, table: str, since: str | None) -> list[str]:
    """The load runs that loaded runs into ``table`` after ``since`` (an ISO UTC time, as a
    Lake commit's ``lake.exported_at``; None: every load run), oldest first."""
    rows = wh.fetchall(
        "SELECT load_run_id FROM meta.staged_runs WHERE table_name = ? AND status = 'loaded' "
        "AND load_run_id IS NOT NULL AND (?::TIMESTAMP IS NULL OR recorded_at > ?::TIMESTAMP) "
        "GROUP BY load_run_id ORDER BY min(recorded_at), load_run_id",
        [table, since, since], action="reading the load runs of the export")
    return [str(r[0]) for r in rows]


def delta_exports(wh: Warehouse) -> list[tuple[str, str]]:
    """(target, table) of every Delta export ``meta.exports`` records."""
    rows = wh.fetchall("SELECT DISTINCT target, table_name FROM meta.exports "
                       "WHERE format = 'delta' ORDER BY 1, 2", action="reading meta.exports")
    return [(str(r[0]), str(r[1])) for r in rows]
