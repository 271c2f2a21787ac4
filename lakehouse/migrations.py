"""Versioned migrations of the warehouse: ordered, named functions.

Each migration runs in one transaction together with the ``meta.schema_migrations`` row that
records it, so a crash leaves it applied or not, never half. Applying is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lakehouse.db import Warehouse
from lakehouse.table_spec import spec_of, spec_text


@dataclass(frozen=True)
class Migration:
    """One schema change, applied once."""

    version: int
    name: str
    apply: Callable[[Warehouse], None]


def _v1_meta_schema(wh: Warehouse) -> None:
    for sql in [
        # The observability spec's run ledger, run assets, watermarks and checks.
        """CREATE TABLE meta.ingestion_runs (
            run_id VARCHAR PRIMARY KEY, parent_run_id VARCHAR, job_name VARCHAR NOT NULL,
            triggered_by VARCHAR NOT NULL, status VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL, ended_at TIMESTAMP, duration_ms BIGINT,
            provider VARCHAR, storage_backend VARCHAR, args_json VARCHAR, git_sha VARCHAR,
            app_version VARCHAR, error_type VARCHAR, error_message VARCHAR,
            error_stack_hash VARCHAR)""",
        """CREATE TABLE meta.ingestion_run_assets (
            run_id VARCHAR NOT NULL, asset_key VARCHAR NOT NULL, asset_kind VARCHAR NOT NULL,
            partition_key VARCHAR NOT NULL, status VARCHAR NOT NULL,
            rows_inserted BIGINT, rows_updated BIGINT, rows_deleted BIGINT,
            bytes_written BIGINT, min_event_ts TIMESTAMP, max_event_ts TIMESTAMP,
            extra_json VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, duration_ms BIGINT)""",
        """CREATE TABLE meta.asset_watermarks (
            asset_key VARCHAR NOT NULL, scope_key VARCHAR NOT NULL,
            watermark_ts TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
            last_run_id VARCHAR, PRIMARY KEY (asset_key, scope_key))""",
        """CREATE TABLE meta.asset_checks (
            check_id VARCHAR NOT NULL, asset_key VARCHAR NOT NULL, partition_key VARCHAR,
            check_name VARCHAR NOT NULL, severity VARCHAR NOT NULL, status VARCHAR NOT NULL,
            checked_at TIMESTAMP NOT NULL, metrics_json VARCHAR, message VARCHAR,
            run_id VARCHAR)""",
        # The exactly-once ledger: one row per staged run that left (or is leaving) staging.
        # Its row commits in the same transaction as the run's data rows.
        """CREATE TABLE meta.staged_runs (
            run_id VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, producer VARCHAR,
            idempotency_key VARCHAR, manifest_sha256 VARCHAR, status VARCHAR NOT NULL,
            reason_code VARCHAR, reason_json VARCHAR, rows_staged BIGINT, rows_loaded BIGINT,
            rows_rejected BIGINT, bytes_staged BIGINT, load_run_id VARCHAR,
            created_at TIMESTAMP, committed_at TIMESTAMP, recorded_at TIMESTAMP NOT NULL)""",
        # Every loaded file's checksum, kept for good: the same content staged twice is caught.
        """CREATE TABLE meta.staged_files (
            table_name VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, run_id VARCHAR NOT NULL,
            file_name VARCHAR NOT NULL, rows BIGINT, bytes BIGINT,
            loaded_at TIMESTAMP NOT NULL)""",
        # The data tables Lake created, with the partition spec they were built with.
        """CREATE TABLE meta.tables (
            table_name VARCHAR PRIMARY KEY, partition_column VARCHAR,
            partition_granularity VARCHAR, merge VARCHAR, primary_key VARCHAR,
            created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)""",
    ]:
        wh.execute(sql, action="creating the meta schema")


def _v2_ledger_key_by_table(wh: Warehouse) -> None:
    """Key the ledger by (table, run id): a run id is unique per table folder, and a hostile
    or careless reuse of one id under two tables must not make one run look loaded."""
    cols = ", ".join(name for name, _ in wh.columns("meta", "staged_runs"))
    wh.execute("""CREATE TABLE meta.staged_runs_v2 (
        run_id VARCHAR NOT NULL, table_name VARCHAR NOT NULL, producer VARCHAR,
        idempotency_key VARCHAR, manifest_sha256 VARCHAR, status VARCHAR NOT NULL,
        reason_code VARCHAR, reason_json VARCHAR, rows_staged BIGINT, rows_loaded BIGINT,
        rows_rejected BIGINT, bytes_staged BIGINT, load_run_id VARCHAR,
        created_at TIMESTAMP, committed_at TIMESTAMP, recorded_at TIMESTAMP NOT NULL,
        PRIMARY KEY (table_name, run_id))""", action="migrating the ledger")
    wh.execute(f"INSERT INTO meta.staged_runs_v2 ({cols}) SELECT {cols} FROM meta.staged_runs",
               action="migrating the ledger")
    wh.execute("DROP TABLE meta.staged_runs", action="migrating the ledger")
    wh.execute("ALTER TABLE meta.staged_runs_v2 RENAME TO staged_runs",
               action="migrating the ledger")


def _v3_exports(wh: Warehouse) -> None:
    """`lake export`: one row per published export of a table to a target, and one per
    partition of it (written, carried over from the previous export, or removed)."""
    for sql in [
        """CREATE TABLE meta.exports (
            export_id VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, target VARCHAR NOT NULL,
            path VARCHAR NOT NULL, partition_key VARCHAR, full_export BOOLEAN NOT NULL,
            status VARCHAR NOT NULL, rows BIGINT, bytes BIGINT, files BIGINT,
            partitions_written INTEGER, partitions_carried INTEGER, partitions_removed INTEGER,
            rows_written BIGINT, bytes_written BIGINT, started_at TIMESTAMP,
            ended_at TIMESTAMP, duration_ms BIGINT, recorded_at TIMESTAMP NOT NULL)""",
        """CREATE TABLE meta.export_partitions (
            export_id VARCHAR NOT NULL, table_name VARCHAR NOT NULL, target VARCHAR NOT NULL,
            partition_value VARCHAR, folder VARCHAR NOT NULL, action VARCHAR NOT NULL,
            rows BIGINT, bytes BIGINT, files INTEGER, fingerprint VARCHAR,
            written_by VARCHAR, PRIMARY KEY (export_id, folder))""",
    ]:
        wh.execute(sql, action="creating the export tables")


def _v4_run_origin(wh: Warehouse) -> None:
    """Who ran what: the pid and host of the process behind each run-log row (so the job
    that closes a run left ``started`` by a killed process can name it), and the producer's
    own code version of each staged run (``stage_run(..., version=...)``)."""
    for sql in [
        "ALTER TABLE meta.ingestion_runs ADD COLUMN pid BIGINT",
        "ALTER TABLE meta.ingestion_runs ADD COLUMN host VARCHAR",
        "ALTER TABLE meta.staged_runs ADD COLUMN producer_version VARCHAR",
    ]:
        wh.execute(sql, action="adding the run origin columns")


def _v5_run_log_keys(wh: Warehouse) -> None:
    """Keys for the run log (issue 14): one asset row per (run, table, partition), one check
    row per ``check_id``; and the columns of a pandera check's row (column, failure count,
    example values). Both tables are rebuilt (create ``_v5``, copy, drop, rename, as
    migration 2 does) rather than ALTERed: ``ALTER TABLE ... ADD PRIMARY KEY`` works in
    DuckDB 2.0.1 but not in every version, and rows that repeat a key must be merged first
    (the kept row is the latest one)."""
    action = "keying the run log"
    wh.execute("""CREATE TABLE meta.ingestion_run_assets_v5 (
        run_id VARCHAR NOT NULL, asset_key VARCHAR NOT NULL, asset_kind VARCHAR NOT NULL,
        partition_key VARCHAR NOT NULL, status VARCHAR NOT NULL,
        rows_inserted BIGINT, rows_updated BIGINT, rows_deleted BIGINT,
        bytes_written BIGINT, min_event_ts TIMESTAMP, max_event_ts TIMESTAMP,
        extra_json VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, duration_ms BIGINT,
        PRIMARY KEY (run_id, asset_key, partition_key))""", action=action)
    cols = ", ".join(name for name, _ in wh.columns("meta", "ingestion_run_assets"))
    wh.execute(f"INSERT INTO meta.ingestion_run_assets_v5 ({cols}) SELECT {cols} "
               "FROM meta.ingestion_run_assets QUALIFY row_number() OVER (PARTITION BY run_id, "
               "asset_key, partition_key ORDER BY ended_at DESC NULLS LAST) = 1", action=action)
    wh.execute("DROP TABLE meta.ingestion_run_assets", action=action)
    wh.execute("ALTER TABLE meta.ingestion_run_assets_v5 RENAME TO ingestion_run_assets",
               action=action)
    wh.execute("""CREATE TABLE meta.asset_checks_v5 (
        check_id VARCHAR PRIMARY KEY, asset_key VARCHAR NOT NULL, partition_key VARCHAR,
        check_name VARCHAR NOT NULL, severity VARCHAR NOT NULL, status VARCHAR NOT NULL,
        checked_at TIMESTAMP NOT NULL, metrics_json VARCHAR, message VARCHAR,
        run_id VARCHAR, column_name VARCHAR, failure_count BIGINT, examples_json VARCHAR)""",
               action=action)
    cols = ", ".join(name for name, _ in wh.columns("meta", "asset_checks"))
    wh.execute(f"INSERT INTO meta.asset_checks_v5 ({cols}) SELECT {cols} FROM meta.asset_checks "
               "QUALIFY row_number() OVER (PARTITION BY check_id ORDER BY checked_at DESC) = 1",
               action=action)
    wh.execute("DROP TABLE meta.asset_checks", action=action)
    wh.execute("ALTER TABLE meta.asset_checks_v5 RENAME TO asset_checks", action=action)


def _v6_table_spec(wh: Warehouse) -> None:
    """Record each table's whole spec canonically (``lakehouse/table_spec.py``), so that a
    load can tell a changed ``partition_by``, key or merge strategy from the one the table
    was built with; backfilled from the columns that held it before."""
    wh.execute("ALTER TABLE meta.tables ADD COLUMN spec_json VARCHAR",
               action="adding meta.tables.spec_json")
    rows = wh.fetchall("SELECT table_name, partition_column, partition_granularity, merge, "
                       "primary_key FROM meta.tables", action="reading meta.tables")
    for name, column, granularity, merge, key in rows:
        parts = [(column, granularity or "identity")] if column else []
        spec = spec_of(parts, [k for k in (key or "").split(",") if k], merge or "append")
        wh.execute("UPDATE meta.tables SET spec_json = ? WHERE table_name = ?",
                   [spec_text(spec), name], action="backfilling meta.tables.spec_json")


def _v8_delta_exports(wh: Warehouse) -> None:
    """`lake export --format delta`: which format an export wrote, the Delta version it
    committed, and its provenance (the snapshot it was read from, the load runs since the
    previous export, as a JSON list)."""
    for sql in [
        "ALTER TABLE meta.exports ADD COLUMN format VARCHAR DEFAULT 'parquet'",
        "ALTER TABLE meta.exports ADD COLUMN delta_version BIGINT",
        "ALTER TABLE meta.exports ADD COLUMN source_snapshot VARCHAR",
        "ALTER TABLE meta.exports ADD COLUMN load_run_ids VARCHAR",
    ]:
        wh.execute(sql, action="adding the Delta export columns")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "meta_schema", _v1_meta_schema),
    Migration(2, "ledger_key_by_table", _v2_ledger_key_by_table),
    Migration(3, "exports", _v3_exports),
    Migration(4, "run_origin", _v4_run_origin),
    Migration(5, "run_log_keys", _v5_run_log_keys),
    Migration(6, "table_spec", _v6_table_spec),
    Migration(8, "delta_exports", _v8_delta_exports),
)


def schema_version(wh: Warehouse) -> int:
    """The highest applied migration (0 for a fresh file)."""
    exists = wh.fetchone(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'meta' AND table_name = 'schema_migrations'")
    if not exists or not exists[0]:
        return 0
    row = wh.fetchone("SELECT coalesce(max(version), 0) FROM meta.schema_migrations")
    return int(row[0]) if row else 0


def migrate(wh: Warehouse) -> list[int]:
    """Apply every pending migration in order; return the versions applied."""
    wh.execute("CREATE SCHEMA IF NOT EXISTS meta", action="creating the meta schema")
    wh.execute(
        "CREATE TABLE IF NOT EXISTS meta.schema_migrations ("
        "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)",
        action="creating meta.schema_migrations")
    # Every version not recorded yet, not only those above the highest: versions are handed
    # out to branches in advance (6 may land before 4 and 5), and a warehouse already at 6
    # must still get 4 and 5 when they arrive.
    done = {int(r[0]) for r in wh.fetchall("SELECT version FROM meta.schema_migrations",
                                          action="reading meta.schema_migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        # The migration and the row recording it commit together.
        with wh.transaction(f"applying migration {migration.version} {migration.name}"):
            migration.apply(wh)
            wh.execute("INSERT INTO meta.schema_migrations VALUES (?, ?, now())",
                       [migration.version, migration.name])
        applied.append(migration.version)
    return applied


LATEST_VERSION = MIGRATIONS[-1].version
