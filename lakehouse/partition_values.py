"""Partition values as text: ``_lake_partition`` of several columns, and Hive folder names.

``_lake_partition`` of a table partitioned by one column is that column's partition text
(``2026-03``, ``AAPL``), as it always was. With several columns it names each one, in the
order of ``partition_by``: ``symbol=AAPL/ts=2026-03``. A value's ``%`` and ``/`` are written
``%25`` and ``%2F`` there, so the text splits back into its values exactly (a column name never
holds ``=``, so a value's ``=`` needs no escape). One text per (symbol, month) pair keeps every
part that groups, deletes or prunes by partition working on one column: replace_partition,
the run log's asset rows, audit, compaction's sort, the export's fingerprints.

An export writes each value into a Hive folder name ``<key>=<value>`` the way Spark and Hive
escape it (``escapePathName``): the ASCII characters ``"#%'*/:=?\\{[]^``, DEL and the control
characters become ``%XX``, everything else stays as it is, non-ASCII included (UTF-8 folder
names). Spark decodes ``%XX`` as one character, not as UTF-8 bytes, so ``Z%C3%BCrich`` (DuckDB's
own escaping) reads as ``ZÃ¼rich`` there; with every escaped character ASCII, Spark, DuckDB,
pyarrow and polars read the same value back. Values not every engine carries are refused,
naming the table and key: the empty string (Spark fails the whole scan on a ``key=`` folder,
``EMPTY_PARTITION_COLUMN_VALUE``), ``__HIVE_DEFAULT_PARTITION__`` (every engine reads it as
NULL) and a value whose folder name would pass the 255 bytes a file name may have.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lakehouse.errors import PartitionValueError

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # the folder value every engine reads as NULL
MAX_NAME_BYTES = 255  # the longest file or folder name ext4, xfs, APFS and S3 tools accept

# Spark's ExternalCatalogUtils.escapePathName (the Unix set): what Hive and Spark escape.
_HIVE_ESCAPED = frozenset([*map(chr, range(0x20)), '"', "#", "%", "'", "*", "/", ":", "=", "?",
                           "\\", "\x7f", "{", "[", "]", "^"])
_TEXT_UNESCAPE = re.compile("%(25|2F)")


def join_values(columns: Sequence[str], values: Sequence[str]) -> str:
    """The ``_lake_partition`` text of one row's partition ``values`` (Python twin of the SQL
    in :func:`lakehouse.merge.partition_expression`)."""
    if len(columns) == 1:
        return values[0]
    return "/".join(f"{c}={v.replace('%', '%25').replace('/', '%2F')}"
                    for c, v in zip(columns, values, strict=True))


def split_values(text: str, count: int) -> tuple[str, ...]:
    """The values a ``_lake_partition`` text of ``count`` columns holds, in spec order.

    Raises:
        ValueError: ``text`` is not a partition text of ``count`` columns.
    """
    if count == 1:
        return (text,)
    segments = text.split("/")
    if len(segments) != count or any("=" not in s for s in segments):
        raise ValueError(f"{text!r} is not a partition of {count} columns")
    return tuple(_TEXT_UNESCAPE.sub(lambda m: "%" if m[1] == "25" else "/",
                                    s.partition("=")[2]) for s in segments)


def escape_hive(value: str) -> str:
    """``value`` as Spark and Hive write it in a folder name (``a/b`` -> ``a%2Fb``)."""
    return "".join(f"%{ord(c):02X}" if c in _HIVE_ESCAPED else c for c in value)


def hive_folder(table: str, keys: Sequence[str], values: Sequence[str]) -> str:
    """The nested Hive folders of one partition: ``symbol_identity=AAPL/ts_month=2026-03``.

    Raises:
        PartitionValueError: a value not every engine reads back as written (empty, the literal NULL
            marker, or a folder name longer than a file system allows).
    """
    parts = []
    for key, value in zip(keys, values, strict=True):
        name = f"{key}={escape_hive(value)}"
        problem = None
        if value == "":
            problem = ("an empty partition value, and Spark fails to read a Hive folder "
                       "with an empty value (EMPTY_PARTITION_COLUMN_VALUE)")
        elif value == HIVE_NULL:
            problem = (f"the partition value {HIVE_NULL!r}, which Spark, DuckDB, pyarrow and "
                       "polars read back as NULL")
        elif len(name.encode()) > MAX_NAME_BYTES:
            problem = (f"a partition value of {len(value)} characters ({value[:20]!r}...), "
                       f"too long for a folder name (at most {MAX_NAME_BYTES} bytes escaped)")
        if problem:
            raise PartitionValueError(f"cannot export table {table}: partition key {key} "
                                      f"has {problem}; give those rows another value (or "
                                      "partition by another column) and export again")
        parts.append(name)
    return "/".join(parts)
