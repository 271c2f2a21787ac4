"""Writing an export's files: DuckDB's COPY of a plan's partitions into a staging folder.

The COPY writes the changed and new partitions only, one folder per partition numbered by
its place in the plan (``_lake_copy/_lake_part=<n>/data_0.parquet``); each file is then renamed
into the partition's own Hive folders (``symbol_identity=AAPL/ts_month=2026-03/``), named by
``lakehouse/partition_values.py`` rather than by DuckDB, whose escaping (``Z%C3%BCrich``) Spark
reads wrong. What COPY wrote is checked against the plan before anything can point at it.
"""

from __future__ import annotations

import os
from pathlib import Path

from lakehouse.db import Warehouse, literal, quote
from lakehouse.errors import ExportError
from lakehouse.export_plan import Partition, Plan, Source, relative_path, sort_key
from lakehouse.fsio import delete_path
from lakehouse.layout import PARTITION_COLUMN

FILE_PATTERN = "data_{i}"  # files are data_0.parquet, data_1.parquet, ... in each folder
_RAW = "_lake_copy"  # DuckDB's own folders, inside the staging folder, emptied after the COPY
_PART = "_lake_part"  # the partition's number in the plan (1-based), DuckDB's folder key


def copy_partitions(wh: Warehouse, source: Source, plan: Plan, staging: Path,
                    export_id: str) -> list[Partition]:
    """COPY the partitions to write into ``staging`` (Hive folders); return them (bytes 0)."""
    staging.mkdir(parents=True, exist_ok=True)
    if not plan.write:
        return []
    cols = ", ".join(quote(n) for n, _ in source.columns)
    order = sorted(plan.write, key=sort_key)
    if source.keys:
        # A number per partition, not the value: DuckDB names the folder, and a number needs
        # no escaping. A hash join with the plan's values (numbered from 1) picks the rows of
        # the partitions to write and numbers them (list_position per row is ~15x slower with
        # 1,000 partitions); NULL, never a loaded row's partition, is number 0.
        values = [v for v in order if v is not None]
        user = ", ".join(f"t.{quote(n)}" for n, _ in source.columns)  # a column may be "v"
        select = (f"SELECT {user}, p.{_PART} FROM {quote(source.table)} t JOIN "
                  f"(SELECT unnest(?::VARCHAR[]) AS _lake_value, "
                  f"generate_subscripts(?::VARCHAR[], 1) AS {_PART}) p "
                  f"ON t.{PARTITION_COLUMN} = p._lake_value")
        params = [values, values]
        if None in plan.write:
            select += (f" UNION ALL SELECT {cols}, 0 FROM {quote(source.table)} "
                       f"WHERE {PARTITION_COLUMN} IS NULL")
        to = literal(str(staging / _RAW))
        opts = (f"FORMAT parquet, COMPRESSION zstd, PARTITION_BY ({_PART}), "
                f"FILENAME_PATTERN {literal(FILE_PATTERN)}, RETURN_FILES true")
    else:
        params = []
        select = f"SELECT {cols} FROM {quote(source.table)}"
        to = literal(str(staging / (FILE_PATTERN.format(i=0) + ".parquet")))
        opts = "FORMAT parquet, COMPRESSION zstd, RETURN_FILES true"
    row = wh.fetchone(f"COPY ({select}) TO {to} ({opts})", params or None,
                      action=f"exporting {source.table}")
    count, files = (int(row[0]), list(row[1])) if row else (0, [])
    numbered = [v for v in order if v is not None]
    by_value: dict[str | None, list[str]] = {}
    for path in files:
        rel = Path(path).relative_to(staging).as_posix()
        if not source.keys:
            by_value.setdefault(None, []).append(rel)
            continue
        raw_folder, _, name = rel.rpartition("/")
        index = int(raw_folder.rpartition("=")[2])
        value = numbered[index - 1] if index > 0 else None
        folder = plan.folders[value]
        # Into the partition's own folders; the staging folder is still private.
        (staging / folder).mkdir(parents=True, exist_ok=True)
        os.rename(staging / rel, staging / folder / name)
        by_value.setdefault(value, []).append(name)
    if source.keys:
        delete_path(staging / _RAW)
    written = []
    for value, names in sorted(by_value.items(), key=lambda kv: sort_key(kv[0])):
        folder = plan.folders[value] if source.keys else ""
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
