"""Writing an export's files: DuckDB's COPY of a plan's partitions into a staging folder.

The COPY writes Hive folders (``<key>=<value>/data_0.parquet``) for the changed and new
partitions only; what it wrote is checked against the plan before anything can point at it.
"""

from __future__ import annotations

from pathlib import Path

from lakehouse.db import Warehouse, literal, quote
from lakehouse.errors import ExportError
from lakehouse.export_plan import Partition, Plan, Source, folder_value, relative_path, sort_key
from lakehouse.layout import PARTITION_COLUMN

FILE_PATTERN = "data_{i}"  # files are data_0.parquet, data_1.parquet, ... in each folder


def copy_partitions(wh: Warehouse, source: Source, plan: Plan, staging: Path,
                     export_id: str) -> list[Partition]:
    """COPY the partitions to write into ``staging`` (Hive folders); return them (bytes 0)."""
    if not plan.write:
        staging.mkdir(parents=True, exist_ok=True)
        return []
    cols = ", ".join(quote(n) for n, _ in source.columns)
    where, params = "", []
    if not plan.full and source.key:
        values = [v for v in plan.write if v is not None]
        where = f" WHERE {PARTITION_COLUMN} IN (SELECT unnest(?::VARCHAR[]))"
        params = [values]
        if None in plan.write:
            where += f" OR {PARTITION_COLUMN} IS NULL"
    if source.key:
        select = f"SELECT {cols}, {PARTITION_COLUMN} AS {quote(source.key)} FROM " \
                 f"{quote(source.table)}{where}"
        to = literal(str(staging))
        opts = (f"FORMAT parquet, COMPRESSION zstd, PARTITION_BY ({quote(source.key)}), "
                f"FILENAME_PATTERN {literal(FILE_PATTERN)}, RETURN_FILES true")
    else:
        staging.mkdir(parents=True, exist_ok=True)
        select = f"SELECT {cols} FROM {quote(source.table)}"
        to = literal(str(staging / (FILE_PATTERN.format(i=0) + ".parquet")))
        opts = "FORMAT parquet, COMPRESSION zstd, RETURN_FILES true"
    row = wh.fetchone(f"COPY ({select}) TO {to} ({opts})", params or None,
                      action=f"exporting {source.table}")
    count, files = (int(row[0]), list(row[1])) if row else (0, [])
    by_folder: dict[str, list[str]] = {}
    for path in files:
        rel = Path(path).relative_to(staging).as_posix()
        folder, _, name = rel.rpartition("/")
        by_folder.setdefault(folder, []).append(name)
    written = []
    for folder, names in sorted(by_folder.items()):
        value = folder_value(folder) if source.key else None
        rows, fp = plan.fingerprints[value] if value in plan.fingerprints else (-1, "")
        written.append(Partition(value, folder, rows, 0, tuple(sorted(names)), fp, export_id))
    expected = sum(plan.fingerprints[v][0] for v in plan.write)
    got = {p.value for p in written}
    if count != expected or got != set(plan.write):
        raise ExportError(f"export of {source.table} wrote {count} rows in partitions "
                          f"{sorted(got, key=sort_key)}, expected {expected} rows in "
                          f"{sorted(plan.write, key=sort_key)}; nothing was published; run "
                          "lake export again")
    return written


def with_bytes(p: Partition, sizes: dict[str, int]) -> Partition:
    """The partition with its size: the sum of its files' ``sizes`` (by relative path)."""
    total = sum(sizes[relative_path(p.folder, f)] for f in p.files)
    return Partition(p.value, p.folder, p.rows, total, p.files, p.fingerprint, p.written_by)
