"""DuckDB connections: the one place that opens DuckDB or catches ``duckdb.Error``.

DuckDB has no busy timeout: opening a file another process holds fails at once with the
holder's PID in the message. :func:`open_warehouse` retries with backoff up to a deadline and
then raises :class:`LockHeldError` naming the holder. Driver errors become ``WarehouseError``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from lakehouse.errors import LockHeldError, WarehouseError

_LOCK_PID = re.compile(r"Conflicting lock is held in (?P<cmd>.*?) \(PID (?P<pid>\d+)\)")


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

    def query(self, sql: str, params: Sequence[Any] | None = None, *,
              action: str = "running a query") -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a query; return its column names and every row."""
        try:
            cur = self.con.execute(sql, params) if params is not None else self.con.execute(sql)
            columns = [d[0] for d in cur.description] if cur.description else []
            return columns, (cur.fetchall() if columns else [])
        except duckdb.Error as exc:
            raise WarehouseError(action, _one_line(exc), type(exc).__name__) from exc

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
                   external_access: bool = True) -> Warehouse:
    """Open the DuckDB file, retrying lock conflicts with backoff up to ``lock_timeout``.

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
    return Warehouse(con, path, read_only)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
