"""Bring a stale snapshot version up to date with the warehouse by applying only what changed.

The publisher (``lakehouse/publish.py``) opens a superseded snapshot version read-write,
attaches the (closed, checkpointed) warehouse read-only as ``live`` and calls
:func:`sync_snapshot` inside one transaction. What changed since the version was current is
read from the two files themselves, never from a log kept beside them:

- **Runs loaded since**: ``meta.staged_runs`` rows with status ``loaded`` in the warehouse and
  not in the version. Every data row carries its run in ``_lake_run_id``, so their rows are
  the warehouse's rows of those runs.
- **Deletes**: only a merge deletes data rows (``lakehouse/merge.py``), and what it deleted
  follows from the rows of the runs loaded since, given the table's merge strategy:
  ``upsert`` deleted every older row whose key a loaded row has (the newest row of a key is
  always one of the runs loaded since, since each upsert re-inserts the keys it deletes);
  ``replace_partition`` deleted every older row of a partition a loaded row is in (the last
  run to replace a partition put at least one row in it); ``append`` deleted nothing. The
  same SQL predicates as the merge (``=`` on the key, ``IN`` on ``_lake_partition``) keep
  NULL semantics identical. This holds only while the table kept one strategy and key: the
  committer records them in ``meta.tables`` (``updated_at`` changes with each change, see
  :func:`record_merge`), so a version whose ``meta.tables`` differs is not synced.
- **Meta rows**: every ``meta`` table is replaced whole (they are small beside the data: the
  ledger and run log, ~1 KiB per run).

Anything this cannot account for raises :class:`NotIncrementalError` and the publisher falls
back to a full copy: another schema version, a table or column added or retyped, a changed
strategy, a run that left the ledger, or row counts that differ after the sync (the last
check is a safety net, not the proof). Jobs that change data in other ways (compaction,
migrations, a repartition, ``lake init``) publish a full copy and move the publisher's floor,
so older versions are never synced across them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lakehouse.config import TableContract
from lakehouse.db import Warehouse, quote
from lakehouse.layout import PARTITION_COLUMN, RUN_ID_COLUMN
from lakehouse.ledger import STATUS_LOADED
from lakehouse.merge import key_range

LIVE = "live"  # the warehouse's alias in the snapshot's connection
_NEW_RUNS = "lake_sync_runs"  # a temp table: the run ids of one table loaded since


class NotIncrementalError(Exception):
    """The version cannot be brought up to date by applying changes: publish a full copy."""


@dataclass
class SyncStats:
    """What one sync applied."""

    runs: int = 0
    rows_inserted: int = 0
    rows_deleted: int = 0
    tables: dict[str, int] = field(default_factory=dict)  # data table -> runs applied


def record_merge(wh: Warehouse, contract: TableContract) -> None:
    """Record the merge strategy and key a table is being loaded with in ``meta.tables``
    (``updated_at`` moves only when they change). Call in the load transaction, after
    :func:`lakehouse.merge.ensure_table`: an incremental publish syncs a snapshot only if
    these did not change since it was current."""
    key = ",".join(contract.primary_key)
    wh.execute("UPDATE meta.tables SET merge = ?, primary_key = ?, updated_at = now() "
               "WHERE table_name = ? AND (merge IS DISTINCT FROM ? "
               "OR primary_key IS DISTINCT FROM ?)",
               [contract.merge, key, contract.name, contract.merge, key],
               action=f"recording the merge of {contract.name}")


def sync_snapshot(snap: Warehouse) -> SyncStats:
    """Apply to ``snap`` (a snapshot version, opened read-write, with the warehouse attached
    as ``live``) what changed in the warehouse since ``snap`` was current. Call inside a
    transaction: on any error nothing of it stays.

    Raises:
        NotIncrementalError: the changes cannot be applied exactly (publish a full copy).
        WarehouseError: DuckDB failed.
    """
    name = _current_catalog(snap)
    own = quote(name)
    tables = _check_same_shape(snap, name)
    stats = SyncStats()
    merges = {r[0]: (r[1], r[2]) for r in snap.fetchall(
        f"SELECT table_name, merge, primary_key FROM {LIVE}.meta.tables",
        action="reading meta.tables")}
    for table, runs in _runs_loaded_since(snap, own).items():
        if table not in merges or ("main", table) not in tables:
            raise NotIncrementalError(f"runs of {table} were loaded, but it is no Lake table")
        merge, key = merges[table]
        _apply_runs(snap, own, table, runs, merge, [k for k in (key or "").split(",") if k],
                    stats)
    for schema, table in tables:
        if schema == "meta":
            target = f"meta.{quote(table)}"
            snap.execute(f"DELETE FROM {own}.{target}", action=f"syncing meta.{table}")
            snap.execute(f"INSERT INTO {own}.{target} SELECT * FROM {LIVE}.{target}",
                         action=f"syncing meta.{table}")
    _check_counts(snap, own, tables)
    return stats


def _current_catalog(snap: Warehouse) -> str:
    row = snap.fetchone("SELECT current_database()", action="naming the snapshot")
    assert row is not None
    return str(row[0])


def _check_same_shape(snap: Warehouse, name: str) -> list[tuple[str, str]]:
    """The same tables (returned), columns, views and migrations, and the same merge and
    key per table, in the snapshot and the warehouse."""
    rows = snap.fetchall(
        "SELECT database_name = ?, schema_name, table_name, column_index, column_name, "
        "data_type FROM duckdb_columns() WHERE database_name IN (?, ?) AND NOT internal "
        "ORDER BY 2, 3, 4", [LIVE, name, LIVE], action="reading the tables")
    views = snap.fetchall(
        "SELECT database_name = ?, schema_name, view_name, sql FROM duckdb_views() "
        "WHERE database_name IN (?, ?) AND NOT internal ORDER BY 2, 3", [LIVE, name, LIVE],
        action="reading the views")
    for found in (rows, views):
        if [r[1:] for r in found if r[0]] != [r[1:] for r in found if not r[0]]:
            raise NotIncrementalError("a table, column or view changed")
    tables = list(dict.fromkeys((str(r[1]), str(r[2])) for r in rows if r[0]))
    if not {("meta", "schema_migrations"), ("meta", "tables"), ("meta", "staged_runs")
            } <= set(tables):
        raise NotIncrementalError("the meta schema is incomplete")
    own = quote(name)
    diff = snap.fetchone("SELECT " + " + ".join(
        f"(SELECT count(*) FROM (FROM {a}.meta.{t} EXCEPT ALL FROM {b}.meta.{t}))"
        for t in ("schema_migrations", "tables") for a, b in ((own, LIVE), (LIVE, own))),
        action="comparing the migrations and merges")
    if diff and diff[0]:
        raise NotIncrementalError("meta.schema_migrations or meta.tables changed (a "
                                  "migration, or a table's merge strategy or key)")
    return tables


def _runs_loaded_since(snap: Warehouse, own: str) -> dict[str, list[str]]:
    """The runs the warehouse's ledger has loaded and the snapshot's has not, per table."""
    gone = snap.fetchone(
        f"SELECT count(*) FROM (SELECT table_name, run_id FROM {own}.meta.staged_runs "
        f"WHERE status = ? EXCEPT SELECT table_name, run_id FROM {LIVE}.meta.staged_runs "
        "WHERE status = ?)", [STATUS_LOADED, STATUS_LOADED], action="comparing the ledgers")
    if gone and gone[0]:
        raise NotIncrementalError(f"{gone[0]} loaded runs left the ledger")
    rows = snap.fetchall(
        f"SELECT table_name, list(run_id ORDER BY run_id) FROM (SELECT table_name, run_id "
        f"FROM {LIVE}.meta.staged_runs WHERE status = ? EXCEPT SELECT table_name, run_id "
        f"FROM {own}.meta.staged_runs WHERE status = ?) GROUP BY 1 ORDER BY 1",
        [STATUS_LOADED, STATUS_LOADED], action="finding the runs loaded since")
    return {str(r[0]): list(r[1]) for r in rows}


def _apply_runs(snap: Warehouse, own: str, table: str, runs: list[str], merge: str,
                keys: list[str], stats: SyncStats) -> None:
    """Delete what the merges of ``runs`` deleted, then insert their rows as they are now."""
    target, source = f"{own}.main.{quote(table)}", f"{LIVE}.main.{quote(table)}"
    snap.execute(f"CREATE OR REPLACE TEMP TABLE {_NEW_RUNS} AS "
                 "SELECT unnest(?::VARCHAR[]) AS run_id", [runs],
                 action=f"listing the new runs of {table}")
    # Run ids sort by time: the lower bound lets DuckDB skip older row groups by their
    # min/max (by day, as DuckDB keeps 8 bytes of a string's bounds).
    new_rows = (f"SELECT * FROM {source} WHERE {RUN_ID_COLUMN} >= ? AND {RUN_ID_COLUMN} IN "
                f"(SELECT run_id FROM {_NEW_RUNS})")
    params: list[Any] = [runs[0]]
    deleted = 0
    if merge == "upsert" and keys:
        join = " AND ".join(f"{target}.{quote(k)} = n.{quote(k)}" for k in keys)
        cols = ", ".join(quote(k) for k in keys)
        bounds, bound_params = key_range(snap, keys, target, source=f"({new_rows})",
                                         source_params=params)
        row = snap.fetchone(f"DELETE FROM {target} USING (SELECT DISTINCT {cols} FROM "
                            f"({new_rows})) n WHERE {join} AND {bounds}",
                            params + bound_params, action=f"syncing the upserts of {table}")
        deleted = int(row[0]) if row else 0
    elif merge == "replace_partition":
        row = snap.fetchone(f"DELETE FROM {target} WHERE {PARTITION_COLUMN} IN (SELECT "
                            f"DISTINCT {PARTITION_COLUMN} FROM ({new_rows}))", params,
                            action=f"syncing the replaced partitions of {table}")
        deleted = int(row[0]) if row else 0
    elif merge != "append" and merge != "upsert":
        raise NotIncrementalError(f"table {table} has merge {merge!r}")
    # Rows keep the warehouse's order (partition order within each batch): no ORDER BY.
    row = snap.fetchone(f"INSERT INTO {target} {new_rows}", params,
                        action=f"syncing the new rows of {table}")
    stats.runs += len(runs)
    stats.rows_inserted += int(row[0]) if row else 0
    stats.rows_deleted += deleted
    stats.tables[table] = len(runs)


def _check_counts(snap: Warehouse, own: str, tables: list[tuple[str, str]]) -> None:
    """Every table has as many rows in the snapshot as in the warehouse (a safety net)."""
    if not tables:
        return
    counts = " UNION ALL ".join(
        f"SELECT {i}, (SELECT count(*) FROM {own}.{quote(s)}.{quote(t)}) = "
        f"(SELECT count(*) FROM {LIVE}.{quote(s)}.{quote(t)})"
        for i, (s, t) in enumerate(tables))
    for i, same in snap.fetchall(counts, action="counting rows"):
        if not same:
            schema, table = tables[i]
            raise NotIncrementalError(f"{schema}.{table} has another row count after the sync")


__all__ = ["LIVE", "NotIncrementalError", "SyncStats", "record_merge", "sync_snapshot"]
