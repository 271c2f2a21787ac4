"""DuckDB connections: the one place that opens DuckDB or catches ``duckdb.Error``.

DuckDB has no busy timeout: opening a file another process holds fails at once with the
holder's PID in the message. :func:`open_warehouse` retries with backoff up to a deadline and
then raises :class:`LockHeldError` naming the holder. Driver errors become ``WarehouseError``.

A reader's connection (``external_access=False``) is locked down for SQL Lake did not write
(``lake query``, docs/SECURITY.md): no file access, the configuration locked once Lake has set
it, and the temp directory one the caller owns. :func:`single_read_statement` admits one
read-only statement, judged by DuckDB's own parser. :func:`space_usage` reads a file's block
usage (what compaction would free; the audit reports it too).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from lakehouse.errors import CompactionError, LockHeldError, UsageError, WarehouseError

_LOCK_PID = re.compile(r"Conflicting lock is held in (?P<cmd>.*?) \(PID (?P<pid>\d+)\)")

# What `lake query` runs: a SELECT (WITH, VALUES, FROM-first, DESCRIBE, SHOW and SUMMARIZE
# parse as SELECT too) or an EXPLAIN of one. Everything else -- SET/RESET, PRAGMA, CALL,
# COPY, EXPORT, ATTACH, INSTALL/LOAD, DDL and DML -- is refused before anything is opened.
READ_STATEMENTS = frozenset({"SELECT"})
_EXPLAIN = re.compile(r"\s*EXPLAIN(\s+ANALY[SZ]E)?(\s*\([^()]*\))?\s+(?P<inner>.*)",
                      re.IGNORECASE | re.DOTALL)
_FIRST_WORD = re.compile(r"(?:\s|--[^\n]*\n?|/\*.*?\*/)*([A-Za-z_]+)", re.DOTALL)


def quote(name: str) -> str:
    """Quote an identifier for SQL (double quotes, inner quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """Quote a string literal for SQL (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


class Warehouse:
    """A DuckDB connection with Lake's settings and error translation."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
        self.con = con
        self.path = path
        self.read_only = read_only
        self._registered: set[str] = set()

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None,
                *, action: str = "running a statement") -> duckdb.DuckDBPyConnection:
        """Run one statement; translate driver errors to ``WarehouseError``."""
        try:
            return self.con.execute(sql, params) if params is not None else self.con.execute(sql)
        except duckdb.Error as exc:
            raise WarehouseError(action, _one_line(exc), type(exc).__name__) from exc

    def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None,
                 *, action: str = "reading") -> list[tuple[Any, ...]]:
        """Run a query and fetch every row (never leave a result half-fetched)."""
        cur = self.execute(sql, params, action=action)
        try:
            return cur.fetchall()
        except duckdb.Error as exc:  # conversion errors surface while fetching
            raise WarehouseError(action, _one_line(exc), type(exc).__name__) from exc

    def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None,
                 *, action: str = "reading") -> tuple[Any, ...] | None:
        """Run a query and return its first row. Fetches every row: DuckDB refuses to
        register an Arrow table while a result is partly fetched."""
        rows = self.fetchall(sql, params, action=action)
        return rows[0] if rows else None

    def fetch_arrow(self, sql: str, params: Sequence[Any] | None = None,
                    *, action: str = "reading") -> Any:
        """Run a query and fetch the whole result as a pyarrow Table."""
        try:
            cur = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
            return cur.to_arrow_table()
        except duckdb.Error as exc:
            raise WarehouseError(action, _one_line(exc), type(exc).__name__) from exc

    def arrow_reader(self, sql: str, params: Sequence[Any] | None, batch_rows: int, *,
                     action: str = "reading") -> Any:
        """Run a query; return a pyarrow ``RecordBatchReader`` over its result, streamed in
        batches of ``batch_rows`` (memory stays bounded). Consume it before the next call."""
        try:
            return self.con.sql(sql, params=params).to_arrow_reader(batch_rows)
        except duckdb.Error as exc:
            raise WarehouseError(action, _one_line(exc), type(exc).__name__) from exc

    def query(self, sql: str, params: Sequence[Any] | None = None, *,
              action: str = "running a query") -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a query; return its column names and every row."""
        try:
            cur = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
            columns = [d[0] for d in cur.description] if cur.description else []
            return columns, (cur.fetchall() if columns else [])
        except duckdb.Error as exc:
            raise WarehouseError(action, _one_line(exc), type(exc).__name__) from exc

    def stream(self, sql: str, batch_rows: int, *, action: str = "running a query"
               ) -> tuple[list[str], Iterator[list[tuple[Any, ...]]]]:
        """Run a query; return its column names and an iterator over batches of at most
        ``batch_rows`` rows, fetched as they are consumed (DuckDB streams the result: memory
        stays bounded whatever the number of rows). Consume or close before the next call.
        """
        try:
            cur = self.con.execute(sql)
        except duckdb.Error as exc:
            raise WarehouseError(action, _one_line(exc), type(exc).__name__) from exc
        columns = [d[0] for d in cur.description] if cur.description else []

        def batches() -> Iterator[list[tuple[Any, ...]]]:
            while columns:
                try:
                    rows = cur.fetchmany(batch_rows)
                except duckdb.Error as exc:  # runtime and conversion errors surface here
                    raise WarehouseError(action, _one_line(exc), type(exc).__name__) from exc
                if not rows:
                    return
                yield rows

        return columns, batches()

    def register(self, name: str, data: Any) -> None:
        """Expose an Arrow table to SQL as ``name`` (fetch results fully before calling)."""
        try:
            self.con.register(name, data)
        except duckdb.Error as exc:
            raise WarehouseError(f"registering {name}", _one_line(exc), type(exc).__name__) from exc
        self._registered.add(name)

    def unregister(self, name: str) -> None:
        if name in self._registered:
            try:
                self.con.unregister(name)
            except duckdb.Error:
                pass
            self._registered.discard(name)

    @contextmanager
    def transaction(self, action: str = "committing") -> Iterator[Warehouse]:
        """BEGIN ... COMMIT, rolled back when the block raises."""
        self.execute("BEGIN TRANSACTION", action=action)
        try:
            yield self
        except BaseException:
            try:
                self.con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
        self.execute("COMMIT", action=action)

    def checkpoint(self) -> None:
        """Fold the WAL into the database file."""
        self.execute("CHECKPOINT", action="checkpointing")

    def columns(self, schema: str, table: str) -> list[tuple[str, str]]:
        """(name, DuckDB type) of a table's columns, in order; empty if it does not exist."""
        rows = self.fetchall(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [schema, table], action=f"reading the columns of {table}",
        )
        return [(r[0], r[1]) for r in rows]

    def close(self) -> None:
        for name in list(self._registered):
            self.unregister(name)
        try:
            self.con.close()
        except duckdb.Error:
            pass


def open_warehouse(path: Path, *, read_only: bool = False, lock_timeout: float = 0.0,
                   external_access: bool = True, temp_directory: Path | None = None
                   ) -> Warehouse:
    """Open the DuckDB file, retrying lock conflicts with backoff up to ``lock_timeout``.

    With ``external_access=False`` (a reader running SQL it did not write) the connection
    reads and writes no file but the database, and its configuration is locked once Lake has
    set it, so no statement can turn file access back on, move the temp directory or start
    file logging. DuckDB still allows its temp directory (by default ``<database>.tmp``,
    beside the file), so such a caller passes ``temp_directory``: a private folder it removes.

    Raises:
        LockHeldError: another process holds the file after the deadline.
        WarehouseError: the file cannot be opened for another reason.
    """
    deadline = time.monotonic() + max(lock_timeout, 0.0)
    delay = 0.05
    started = time.monotonic()
    config: dict[str, Any] = {}
    if not external_access:
        config["enable_external_access"] = False
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=config)
            break
        except duckdb.Error as exc:
            match = _LOCK_PID.search(str(exc))
            if match is None:
                raise WarehouseError(f"opening {path}", _one_line(exc)) from exc
            if time.monotonic() + delay > deadline:
                holder = {"pid": int(match.group("pid")), "command": match.group("cmd")}
                raise LockHeldError(str(path), holder, waited=time.monotonic() - started,
                                    detail="DuckDB file lock") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        con.execute("SET TimeZone = 'UTC'")  # partition boundaries never depend on the host
    except duckdb.Error:
        pass
    if not external_access:
        # After the TimeZone: a locked configuration refuses every SET, RESET and
        # configuration-changing function (enable_logging) until the connection closes.
        try:
            con.execute("SET lock_configuration = true")
        except duckdb.Error as exc:
            con.close()
            raise WarehouseError(f"opening {path}", _one_line(exc)) from exc
    return Warehouse(con, path, read_only)


@dataclass(frozen=True)
class SpaceUsage:
    """Block usage of one DuckDB file, from ``pragma_database_size()``."""

    block_size: int
    total_blocks: int
    used_blocks: int
    free_blocks: int

    @property
    def used_bytes(self) -> int:
        return self.used_blocks * self.block_size

    @property
    def free_bytes(self) -> int:
        return self.free_blocks * self.block_size

    @property
    def free_ratio(self) -> float:
        return self.free_blocks / self.total_blocks if self.total_blocks else 0.0


def space_usage(wh: Warehouse) -> SpaceUsage:
    """Block size and total/used/free blocks of the connection's own database file."""
    row = wh.fetchone(
        "SELECT block_size, total_blocks, used_blocks, free_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()", action="reading the database size")
    if row is None:
        raise CompactionError("compaction failed: DuckDB reported no size for the warehouse")
    return SpaceUsage(*(int(v or 0) for v in row))


def estimate_free_ratio(wh: Warehouse) -> float:
    """Share of the file's blocks that are free (what a rebuild surely gives back)."""
    return space_usage(wh).free_ratio


def single_read_statement(sql: str) -> str:
    """Check that ``sql`` is exactly one read-only statement (DuckDB's parser counts them and
    names their type); return it.

    Raises:
        UsageError: the text does not parse, holds no statement or more than one, or its
            statement is not a SELECT (or an EXPLAIN of one).
    """
    statements = _parse(sql)
    if len(statements) != 1:
        raise UsageError(f"lake query runs exactly one statement and got {len(statements)}; "
                         "run them one at a time" if statements else
                         "lake query got no SQL statement; give one SELECT")
    statement = statements[0]
    kind = statement.type.name
    word = _first_word(statement.query, kind)
    if kind == "EXPLAIN":
        match = _EXPLAIN.match(statement.query)
        inner = _parse(match.group("inner")) if match else []
        if len(inner) == 1 and inner[0].type.name in READ_STATEMENTS:
            return sql
        if len(inner) == 1:
            word = f"EXPLAIN {_first_word(inner[0].query, inner[0].type.name)}"
    elif kind in READ_STATEMENTS:
        return sql
    raise UsageError(f"lake query refuses {word} statements: it runs one read-only SELECT on "
                     "the snapshot, with no settings changed and no file access (see "
                     "docs/SECURITY.md)")


def _first_word(sql: str, default: str) -> str:
    first = _FIRST_WORD.match(sql)
    return first.group(1).upper() if first else default


def _parse(sql: str) -> list[Any]:
    try:
        return list(duckdb.extract_statements(sql))
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
