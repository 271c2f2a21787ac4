"""`lake query`: one read-only statement on the published snapshot, its rows streamed.

What a query may do is decided before the snapshot is opened (one SELECT, or an EXPLAIN of
one: :func:`lakehouse.db.single_read_statement`) and enforced by the connection (no file
access, configuration locked). DuckDB still writes to its temp directory when a query spills,
and allows a statement to read and write files there; by default that is
``<snapshot>.tmp`` inside the lake, where a file would outlive the query. So each query gets
a private temp directory of its own under the system's (``TMPDIR``), removed when the query
ends, whatever way it ends short of SIGKILL. See docs/SECURITY.md.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakehouse.db import single_read_statement
from lakehouse.errors import UsageError, WarehouseError
from lakehouse.layout import LakePaths

BATCH_ROWS = 10_000  # rows fetched from DuckDB at a time: memory stays flat at any result size
SCRATCH_PREFIX = "lake-query-"


@dataclass
class QueryResult:
    """The columns of a running query and its rows, in batches fetched as they are read."""

    columns: list[str]
    batches: Iterator[list[tuple[Any, ...]]]


@contextmanager
def run_query(root: Path, sql: str, batch_rows: int = BATCH_ROWS) -> Iterator[QueryResult]:
    """Run one read-only statement on the published snapshot; yield its streamed result.

    The connection and the private temp directory last as long as the block.

    Raises:
        UsageError: the SQL is not one read-only statement, fails, or there is no snapshot.
    """
    from lakehouse.publish import open_snapshot, require_snapshot

    single_read_statement(sql)  # refused before the snapshot is opened
    paths = LakePaths.at(root)
    require_snapshot(paths)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    try:
        wh = open_snapshot(paths, temp_directory=scratch)
        try:
            try:
                columns, batches = wh.stream(sql, batch_rows, action="running your query")
            except WarehouseError as exc:  # bad SQL is the caller's input: a usage error
                raise UsageError(f"query failed: {exc.detail}") from None
            yield QueryResult(columns, _as_usage_errors(batches))
        finally:
            wh.close()
    finally:
        # After the connection is closed: DuckDB deletes its spill files on close, and this
        # removes the folder and anything a statement managed to put there.
        shutil.rmtree(scratch, ignore_errors=True)


def _as_usage_errors(batches: Iterator[list[tuple[Any, ...]]]
                     ) -> Iterator[list[tuple[Any, ...]]]:
    try:
        yield from batches
    except WarehouseError as exc:  # a cast that fails on row 10 million is still the SQL's
        raise UsageError(f"query failed: {exc.detail}") from None
