"""Per-scope watermarks: the newest event time of a batch for each value of a table's
``watermark_scope`` column (per ticker, per producer, ...), read from the registered batch."""

from __future__ import annotations

from typing import Any

from lakehouse.config import TableContract
from lakehouse.db import Warehouse, quote
from lakehouse.merge import BATCH_NAME, range_column

# The scope of the table-wide watermark; a scope column's values are kept beside it.
SCOPE_ALL = "ALL"


def scope_watermarks(wh: Warehouse, contract: TableContract,
                     column_types: dict[str, str]) -> list[tuple[str, Any]]:
    """(scope value as text, newest event time) per value of the scope column in the batch.

    The event time is the partition column of the run log's event range
    (``merge.range_column``), as for the table's 'ALL' watermark; nothing is
    returned when the table has no date or timestamp partition column or no scope column.
    Rows whose scope is NULL count only towards 'ALL'.
    """
    spec, scope = range_column(contract), contract.watermark_scope
    if spec is None or scope is None:
        return []
    kind = column_types.get(spec.column.lower(), "")
    if not kind.startswith(("DATE", "TIMESTAMP")) or scope.lower() not in column_types:
        return []
    value = quote(spec.column)
    if kind.startswith("TIMESTAMP WITH TIME ZONE"):
        value = f"CAST({value} AS TIMESTAMP)"  # UTC wall time (the session time zone is UTC)
    rows = wh.fetchall(
        f"SELECT CAST({quote(scope)} AS VARCHAR), max({value}) FROM {BATCH_NAME} "
        f"WHERE {quote(scope)} IS NOT NULL GROUP BY 1",
        action=f"reading watermarks of {contract.name} by {scope}")
    return [(str(r[0]), r[1]) for r in rows if r[1] is not None]
