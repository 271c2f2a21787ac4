"""Planning an export: which partitions changed since the export a target's pointer names.

A partition's fingerprint is its row count and an order-independent sum of row hashes over the
exported columns, computed in one scan. It sees every change, whatever made it: a load, an
upsert that moved a row out of a partition (which logs an asset row only for the partition the
row moved to), a replaced or emptied partition, a compaction (which changes nothing, so nothing
is rewritten). A change of columns or of the partition key makes the export full.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lakehouse.db import Warehouse, quote
from lakehouse.errors import ExportError, UsageError
from lakehouse.export_target import ExportTarget
from lakehouse.layout import PARTITION_COLUMN, RUN_ID_COLUMN
from lakehouse.partition_values import HIVE_NULL, hive_folder, split_values

POINTER_FORMAT = "lake.export/1"


@dataclass(frozen=True)
class Partition:
    """One partition folder of an export version, as the pointer lists it."""

    value: str | None  # the ``_lake_partition`` text (None: the whole unpartitioned table)
    folder: str  # ``<key>=<escaped value>[/<key>=...]``, or "" for an unpartitioned table
    rows: int
    bytes: int
    files: tuple[str, ...]  # file names inside the folder
    fingerprint: str
    written_by: str  # the export whose COPY wrote these files (carried over since)

    def as_dict(self) -> dict[str, Any]:
        """Return the pointer's JSON form."""
        return {**asdict(self), "files": list(self.files)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Partition:
        """Read one entry of a pointer's ``partitions`` list."""
        return cls(value=doc["value"], folder=str(doc["folder"]), rows=int(doc["rows"]),
                   bytes=int(doc["bytes"]), files=tuple(str(f) for f in doc["files"]),
                   fingerprint=str(doc["fingerprint"]), written_by=str(doc["written_by"]))


@dataclass(frozen=True)
class Source:
    """The table as the export reads it."""

    table: str
    columns: tuple[tuple[str, str], ...]  # user columns (name, DuckDB type), in order
    partition_column: str | None  # the first partition column (the only one, mostly)
    granularity: str | None
    key: str | None  # the Hive key ``<column>_<granularity>`` (``ts_month``); several: the
    # keys joined by "/" (``symbol_identity/ts_month``), the folder levels they nest in
    partition_columns: tuple[str, ...] = ()
    granularities: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # one Hive key per partition column, outermost first

    def schema(self) -> list[dict[str, str]]:
        """The columns as the pointer lists them."""
        return [{"name": n, "type": t} for n, t in self.columns]

    def partition_by(self) -> dict[str, str] | list[dict[str, str]] | None:
        """The spec as the pointer lists it: one ``{column, granularity}``, or a list of them
        for a table partitioned by several columns."""
        specs = [{"column": c, "granularity": g}
                 for c, g in zip(self.partition_columns, self.granularities, strict=True)]
        return None if not specs else specs[0] if len(specs) == 1 else specs

    def folder(self, value: str | None) -> str:
        """The nested Hive folders of a partition (``_lake_partition`` text), escaped as Spark
        escapes them (``lakehouse/partition_values.py``).

        Raises:
            PartitionValueError: a value not every engine reads back as written.
        """
        if not self.keys:
            return ""
        if value is None:
            return "/".join(f"{k}={HIVE_NULL}" for k in self.keys)
        try:
            values = split_values(value, len(self.keys))
        except ValueError:
            raise ExportError(f"table {self.table} has the partition {value!r}, which is not "
                              f"one of the {len(self.keys)} partition columns the table was "
                              "built with; run lake audit") from None
        return hive_folder(self.table, self.keys, values)


@dataclass
class Plan:
    """What an export will do: partitions to write, to carry over and to drop."""

    fingerprints: dict[str | None, tuple[int, str]]  # value -> (rows, fingerprint), all of them
    write: list[str | None]
    carry: list[Partition]
    remove: list[Partition]
    full: bool
    reason: str
    folders: dict[str | None, str] = field(default_factory=dict)  # value -> its Hive folders

    @property
    def up_to_date(self) -> bool:
        """True when the export would write and remove nothing."""
        return not self.write and not self.remove and not self.full


def describe_source(wh: Warehouse, table: str) -> Source:
    """The table's user columns and partition spec (as the table was built: ``meta.tables``).

    Raises:
        UsageError: the table does not exist yet (nothing was loaded).
    """
    columns = [(n, t) for n, t in wh.columns("main", table)
               if n not in (PARTITION_COLUMN, RUN_ID_COLUMN)]
    if not columns:
        raise UsageError(f"table {table} has no data yet: run `lake load` first, then export")
    row = wh.fetchone("SELECT partition_column, partition_granularity FROM meta.tables "
                      "WHERE table_name = ?", [table], action="reading meta.tables")
    # Several partition columns are listed with commas (``lakehouse/merge.py``).
    names = tuple(row[0].split(",")) if row and row[0] else ()
    listed = (row[1] or "").split(",") if names and row else []
    # A missing granularity is identity (as in lake.toml).
    grains = tuple((listed[i] if i < len(listed) else "") or "identity"
                   for i in range(len(names)))
    keys: list[str] = []
    for name, grain in zip(names, grains, strict=True):
        keys.append(hive_key(name, grain, [*(n for n, _ in columns), *keys]))
    return Source(table, tuple(columns), names[0] if names else None,
                  grains[0] if names else None, "/".join(keys) or None, names, grains,
                  tuple(keys))


def hive_key(column: str, granularity: str | None, columns: list[str]) -> str:
    """The Hive partition key: ``<column>_<granularity>`` (``ts_month``, ``day_identity``),
    prefixed with ``lake_`` while it would clash with a column of the table (or another key),
    or start with ``_`` (Spark and pyarrow skip folders named ``_...``)."""
    key = f"{column}_{granularity or 'identity'}"
    taken = {c.lower() for c in columns}
    while key.lower() in taken or key.startswith("_"):
        key = f"lake_{key}"
    return key


def fingerprint_partitions(wh: Warehouse, source: Source) -> dict[str | None, tuple[int, str]]:
    """Rows and an order-independent checksum (sum of row hashes) per partition value."""
    cols = ", ".join(quote(n) for n, _ in source.columns)
    part = PARTITION_COLUMN if source.key else "NULL::VARCHAR"
    rows = wh.fetchall(
        f"SELECT {part}, count(*), sum(hash({cols}))::HUGEINT FROM {quote(source.table)} "
        "GROUP BY 1", action=f"fingerprinting the partitions of {source.table}")
    return {p: (int(n), f"{int(n)}:{s}") for p, n, s in rows}


def plan_export(wh: Warehouse, source: Source, pointer: dict[str, Any] | None,
                target: ExportTarget, *, full: bool = False) -> Plan:
    """Which partitions to write, carry over and remove, against the current pointer.

    Raises:
        PartitionValueError: a partition value not every engine reads back (nothing written).
    """
    fingerprints = fingerprint_partitions(wh, source)
    # Every folder name first: a value no reader can carry stops the export before it writes.
    folders = {value: source.folder(value) for value in fingerprints}
    full_reason = _full_reason(source, pointer, full)
    try:
        previous = {p.value: p for p in pointer_partitions(pointer)}
    except ExportError:
        if not full_reason:
            raise
        previous = {}  # --full rewrites everything; an unreadable list does not matter
    present = set() if full_reason or not pointer else target.existing_files(
        str(pointer["export_id"]))
    carry, write = [], []
    for value, (_rows, fp) in sorted(fingerprints.items(), key=lambda kv: sort_key(kv[0])):
        old = None if full_reason else previous.get(value)
        # Carried only if unchanged, in the folder this Lake names it (an export by an older
        # Lake escaped values otherwise) and with every file still there (a hand-deleted file
        # is rewritten, not published missing).
        if old is not None and old.fingerprint == fp and old.folder == folders[value] and all(
                relative_path(old.folder, f) in present for f in old.files):
            carry.append(old)
        else:
            write.append(value)
    remove = sorted((p for v, p in previous.items() if v not in fingerprints),
                    key=lambda p: sort_key(p.value))
    reason = full_reason or (
        "up to date: no partition changed since the last export" if not write and not remove
        else f"incremental: {len(write)} partitions changed or new, {len(remove)} removed")
    return Plan(fingerprints, write, carry, remove, bool(full_reason), reason, folders)


def _full_reason(source: Source, pointer: dict[str, Any] | None, full: bool) -> str:
    if full:
        return "full: --full"
    if pointer is None:
        return "full: no previous export at this target"
    if pointer.get("format") != POINTER_FORMAT or pointer.get("table") != source.table:
        return "full: the pointer there is of another format or table"
    if pointer.get("partition_key") != source.key:
        return "full: the partition key changed"
    if pointer.get("schema") != source.schema():
        return "full: the table's columns changed"
    return ""


def pointer_partitions(pointer: dict[str, Any] | None) -> list[Partition]:
    """The partitions a pointer lists (none for no pointer).

    Raises:
        ExportError: the list is not one Lake wrote.
    """
    if not pointer or pointer.get("format") != POINTER_FORMAT:
        return []
    try:
        return [Partition.from_dict(p) for p in pointer.get("partitions", [])]
    except (KeyError, TypeError, ValueError):
        raise ExportError("the export pointer lists partitions Lake cannot read; run "
                          "lake export --full to rewrite the export") from None


def sort_key(value: str | None) -> tuple[int, str]:
    """Partition values in order, NULL last."""
    return (1, "") if value is None else (0, value)


def relative_path(folder: str, name: str) -> str:
    """A file's path relative to its version folder."""
    return f"{folder}/{name}" if folder else name
