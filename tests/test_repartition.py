"""A changed table spec is detected at load, and `lake repartition` rebuilds the table.

Real lake roots, real DuckDB files, real `lake` subprocesses; the crash tests SIGKILL
`lake repartition` at each of its named points (``LAKE_TEST_CRASH_AT=repartition.<point>``)
and check that the table is the old one, intact, or the new one, complete: never a mix, and
never the build table in its place. The property test compares a repartitioned table with
the reference model (``tests/model.py``).
"""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import Lake, holding_the_lock, lake_cli, make_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import PARTITION_COLUMN, TableSpec, one_file_run, repartition, simulate

from lakehouse import failpoints
from lakehouse.db import open_warehouse
from lakehouse.errors import ConfigError, RepartitionRefusedError, StopRequestedError
from lakehouse.migrations import migrate
from lakehouse.table_spec import build_table_name, canonical_spec, spec_text
from loader.audit import audit_lake
from loader.repartition import repartition_table
from loader.report import StopFlag

LOGS_DAY = 'primary_key = ["id"]\npartition_by = { column = "ts", granularity = "day" }\n' \
           'merge = "append"\n'
LOGS_MONTH = LOGS_DAY.replace('"day"', '"month"')
# The `loaded` fixture's 70 rows under month partitions (40 from Jan 30, 30 from Mar 1).
NEW_PARTITIONS = [("2026-01", 7), ("2026-02", 33), ("2026-03", 30)]


def set_table(root: Path, table: str, body: str) -> None:
    """Rewrite the body of ``[tables.<table>]`` in lake.toml (by hand, not with Lake's code)."""
    path = root / "lake.toml"
    text = path.read_text()
    pattern = re.compile(rf"(\[tables\.{table}\]\n)(.*?)(?=\n\[|\Z)", re.S)
    assert pattern.search(text), table
    path.write_text(pattern.sub(lambda m: m.group(1) + body, text, count=1))


def logs(first: int, n: int, start: datetime = datetime(2026, 1, 30)) -> pa.Table:
    """``n`` log rows with ids from ``first``, seven hours apart (several days and months)."""
    return pa.table({
        "id": pa.array(range(first, first + n), pa.int64()),
        "ts": pa.array([start + timedelta(hours=7 * i) for i in range(n)], pa.timestamp("us")),
        "msg": pa.array([f"m{first + i}" for i in range(n)], pa.string()),
    })


def content(lake: Lake, table: str = "logs") -> list[tuple[Any, ...]]:
    """Every row of a table, its run id too, without its partition: what must survive."""
    return lake.rows(f'SELECT * EXCLUDE ({PARTITION_COLUMN}) FROM "{table}" ORDER BY ALL')


def partitions(lake: Lake, table: str = "logs") -> list[tuple[Any, ...]]:
    return lake.rows(f'SELECT {PARTITION_COLUMN}, count(*) FROM "{table}" GROUP BY 1 ORDER BY 1')


def recorded(lake: Lake, table: str = "logs") -> dict[str, Any]:
    return json.loads(lake.rows(f"SELECT spec_json FROM meta.tables WHERE table_name = "
                                f"'{table}'")[0][0])


def snapshot_partitions(lake: Lake, table: str = "logs") -> list[tuple[Any, ...]]:
    import duckdb

    con = duckdb.connect(str(lake.root / "warehouse" / "lake.read.duckdb"), read_only=True)
    try:
        return con.execute(f'SELECT {PARTITION_COLUMN}, count(*) FROM "{table}" GROUP BY 1 '
                           "ORDER BY 1").fetchall()
    finally:
        con.close()


@pytest.fixture
def loaded(lake: Lake) -> Lake:
    """`logs` (day partitions) holding two runs, `plain` one; then lake.toml says month."""
    lake.stage("logs", logs(0, 40))
    lake.stage("logs", logs(40, 30, datetime(2026, 3, 1)))
    lake.stage("plain", pa.table({"a": pa.array([1, 2, 2], pa.int64())}))
    report = lake.load()
    assert report.count("loaded") == 3 and not report.refused
    set_table(lake.root, "logs", LOGS_MONTH)
    return lake


# -- 1. a changed spec is detected -----------------------------------------------------------
def test_a_changed_partition_spec_refuses_its_table_and_the_others_still_load(
        loaded: Lake) -> None:
    lake = loaded
    before = content(lake), partitions(lake)
    waiting = lake.stage("logs", logs(100, 5)).run_id
    lake.stage("plain", pa.table({"a": pa.array([3], pa.int64())}))
    proc = lake_cli(lake.root, "load")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "`lake repartition logs`" in lines[0], proc.stderr
    assert "partition_by ts/day -> ts/month" in lines[0]
    assert lake.staged("logs") == [waiting]  # nothing lost: the run waits in staging
    assert (content(lake), partitions(lake)) == before
    assert lake.rows("SELECT count(*) FROM plain") == [(4,)]  # the other table loaded
    problems = [p for p in audit_lake(lake.config()).problems
                if p["code"] == "partition_spec_mismatch"]
    assert [(p["table"], p["severity"]) for p in problems] == [("logs", "error")]
    assert "lake repartition logs" in problems[0]["fix"]
    data = json.loads(lake_cli(lake.root, "load", "--json").stdout)
    assert list(data["tables_refused"]) == ["logs"]
    dry = lake_cli(lake.root, "load", "--dry-run", "--json")
    assert dry.returncode == 2 and "`lake repartition logs`" in dry.stderr
    assert list(json.loads(dry.stdout)["tables_refused"]) == ["logs"]
    assert not [r for r in json.loads(dry.stdout)["runs"] if r["table"] == "logs"]


@pytest.mark.parametrize("body", [
    LOGS_DAY.replace('["id"]', '["id", "ts"]'),  # another key
    LOGS_DAY.replace('"append"', '"upsert"'),  # another merge strategy
    'primary_key = ["id"]\nmerge = "append"\n',  # no partitions any more
])
def test_a_changed_key_merge_or_partitioning_is_refused_too(lake: Lake, body: str) -> None:
    lake.stage("logs", logs(0, 10))
    lake.load()
    set_table(lake.root, "logs", body)
    lake.stage("logs", logs(10, 3))
    report = lake.load()
    assert list(report.refused) == ["logs"] and len(lake.staged("logs")) == 1


def test_the_same_spec_written_differently_is_no_change(lake: Lake) -> None:
    snap = pa.table({"day": pa.array(["d1"], pa.string()), "v": pa.array([1], pa.int64())})
    lake.stage("snap", snap)
    lake.load()
    set_table(lake.root, "snap", 'partition_by = "day"\nmerge = "replace_partition"\n')
    lake.stage("snap", snap)
    report = lake.load()
    assert not report.refused and report.count("loaded") == 1


def test_migration_6_backfills_the_spec_of_existing_tables(loaded: Lake) -> None:
    lake = loaded
    wh = open_warehouse(lake.root / "warehouse" / "lake.duckdb")
    try:  # the warehouse as schema v3 left it: no spec_json, no row for v6
        wh.execute("ALTER TABLE meta.tables DROP COLUMN spec_json")
        wh.execute("DELETE FROM meta.schema_migrations WHERE version = 6")
        assert migrate(wh) == [6]
    finally:
        wh.close()
    config = lake.config()
    assert recorded(lake, "plain") == canonical_spec(config.table("plain"))
    assert spec_text(recorded(lake, "logs")) == (
        '{"merge":"append","partition_by":[{"column":"ts","granularity":"day"}],'
        '"primary_key":["id"]}')
    lake.stage("logs", logs(500, 2))
    assert list(lake.load().refused) == ["logs"]  # the backfilled spec is the day one


# -- 2. lake repartition ------------------------------------------------------------------
def test_repartition_rebuilds_the_table_under_the_new_spec(loaded: Lake) -> None:
    lake = loaded
    rows_before = content(lake)
    waiting = lake.stage("logs", logs(200, 4, datetime(2026, 5, 1))).run_id
    proc = lake_cli(lake.root, "repartition", "logs", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["rebuild"] and report["swapped"] and report["published"]
    assert report["changes"] == ["partition_by ts/day -> ts/month"]
    assert report["rows"] == 70 and report["checksum"]
    assert content(lake) == rows_before  # every row, run id included, exactly once
    assert partitions(lake) == NEW_PARTITIONS
    assert snapshot_partitions(lake) == partitions(lake)  # published
    assert recorded(lake) == canonical_spec(lake.config().table("logs"))
    assert lake.rows("SELECT partition_column, partition_granularity FROM meta.tables "
                     "WHERE table_name = 'logs'") == [("ts", "month")]
    assert lake.rows("SELECT status FROM meta.ingestion_runs WHERE job_name = "
                     "'repartition'") == [("success",)]
    # The run log: every row moved out of its day and into its month, none gained or lost.
    assert lake.rows("SELECT sum(rows_deleted), sum(rows_inserted) FROM "
                     "meta.ingestion_run_assets WHERE run_id = (SELECT run_id FROM "
                     "meta.ingestion_runs WHERE job_name = 'repartition')") == [(70, 70)]
    assert lake.staged("logs") == [waiting]  # repartition never loads: the next load does
    assert lake.load().count("loaded") == 1
    assert ("2026-05", 4) in partitions(lake)
    assert not [p for p in audit_lake(lake.config()).problems if p["severity"] == "error"]
    again = lake_cli(lake.root, "repartition", "logs")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_repartition_to_several_columns_and_back(loaded: Lake) -> None:
    """month -> (msg prefix, month) nests the partitions; the load's own key expression
    builds them, so a run loaded afterwards lands in the same pairs; then back to one."""
    lake = loaded
    rows_before = content(lake)
    set_table(lake.root, "logs", LOGS_DAY.replace(
        'partition_by = { column = "ts", granularity = "day" }',
        'partition_by = [{ column = "kind" }, { column = "ts", granularity = "month" }]'))
    refused = lake_cli(lake.root, "repartition", "logs")  # no column `kind` in the table
    assert refused.returncode == 2 and "'kind' is not in table logs" in refused.stderr
    set_table(lake.root, "logs", LOGS_DAY.replace(
        'partition_by = { column = "ts", granularity = "day" }',
        'partition_by = [{ column = "msg" }, { column = "ts", granularity = "year" }]'))
    proc = lake_cli(lake.root, "repartition", "logs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert content(lake) == rows_before
    parts = partitions(lake)
    assert len(parts) == 70 and all(p[1] == 1 for p in parts)  # one message per row
    assert ("msg=m0/ts=2026", 1) in parts
    assert recorded(lake)["partition_by"] == [{"column": "msg", "granularity": "identity"},
                                              {"column": "ts", "granularity": "year"}]
    lake.stage("logs", logs(0, 1, datetime(2026, 6, 1)).slice(0, 1).set_column(
        0, "id", pa.array([500], pa.int64())))
    assert lake.load().count("loaded") == 1
    assert ("msg=m0/ts=2026", 2) in partitions(lake)  # the load's key is the same text
    set_table(lake.root, "logs", LOGS_MONTH)
    assert lake_cli(lake.root, "repartition", "logs").returncode == 0
    assert ("2026-06", 1) in partitions(lake) and len(content(lake)) == 71


def test_dry_run_prints_partitions_before_and_after_and_changes_nothing(loaded: Lake) -> None:
    lake = loaded
    before = content(lake), partitions(lake), recorded(lake)
    proc = lake_cli(lake.root, "repartition", "logs", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] and not report["swapped"] and not report["published"]
    assert [p["rows"] for p in report["partitions_before"]] == [r[1] for r in before[1]]
    assert [(p["partition"], p["rows"]) for p in report["partitions_after"]] == NEW_PARTITIONS
    assert report["table_bytes"] > 0 and report["space_needed"] > report["table_bytes"]
    assert (content(lake), partitions(lake), recorded(lake)) == before
    text = lake_cli(lake.root, "repartition", "logs", "--dry-run")
    days = len(before[1])
    assert f"would rebuild the table: 70 rows, {days} -> 3 partitions" in text.stdout
    assert "partitions after:" in text.stdout and "space needed" in text.stdout


def test_a_new_key_is_checked_and_recorded_without_a_rebuild(loaded: Lake) -> None:
    lake = loaded
    set_table(lake.root, "logs", LOGS_DAY.replace('"append"', '"upsert"'))
    before = partitions(lake)
    report = repartition_table(lake.config(), "logs")
    assert report.recorded and not report.rebuild and not report.swapped
    assert partitions(lake) == before
    assert recorded(lake)["merge"] == "upsert"
    assert not lake.load().refused


def test_a_key_that_is_not_unique_refuses_the_change(loaded: Lake) -> None:
    lake = loaded
    set_table(lake.root, "plain", 'primary_key = ["a"]\nmerge = "append"\n')
    with pytest.raises(RepartitionRefusedError, match="1 key"):
        repartition_table(lake.config(), "plain")
    assert recorded(lake, "plain")["primary_key"] == []
    assert lake.rows("SELECT status, error_type FROM meta.ingestion_runs WHERE job_name = "
                     "'repartition'") == [("failed", "RepartitionRefusedError")]
    proc = lake_cli(lake.root, "repartition", "plain")
    assert proc.returncode == 3 and "nothing was changed" in proc.stderr


def test_rows_without_a_partition_value_refuse_the_change(lake: Lake) -> None:
    lake.stage("plain", pa.table({"a": pa.array([1, 2], pa.int64()),
                                  "day": pa.array(["x", None], pa.string())}))
    lake.load()
    set_table(lake.root, "plain", 'partition_by = "day"\nmerge = "append"\n')
    with pytest.raises(RepartitionRefusedError, match="1 row"):
        repartition_table(lake.config(), "plain")
    assert lake.rows("SELECT count(*) FROM plain") == [(2,)]


def test_a_partition_column_its_granularity_cannot_take_is_a_config_error(loaded: Lake) -> None:
    lake = loaded
    set_table(lake.root, "logs", LOGS_DAY.replace('"ts"', '"msg"'))
    with pytest.raises(ConfigError, match="needs a DATE or TIMESTAMP"):
        repartition_table(lake.config(), "logs")
    proc = lake_cli(lake.root, "repartition", "logs")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


def test_an_undeclared_or_empty_table_is_a_usage_error(lake: Lake) -> None:
    assert lake_cli(lake.root, "repartition", "nope").returncode == 2
    proc = lake_cli(lake.root, "repartition", "logs")
    assert proc.returncode == 2 and "no data" in proc.stderr


def test_a_busy_warehouse_exits_75(loaded: Lake) -> None:
    with holding_the_lock(loaded.root):
        proc = lake_cli(loaded.root, "repartition", "logs")
    assert proc.returncode == 75 and proc.stderr.startswith("lake: warehouse busy")


def test_a_stop_after_the_build_drops_it_and_keeps_the_old_table(loaded: Lake) -> None:
    lake = loaded
    before = content(lake), partitions(lake), recorded(lake)
    stop = StopFlag()

    def progress(line: str) -> None:  # SIGTERM arrives while the build is being committed
        if line.startswith("built"):
            stop.signal_name = "SIGTERM"

    with pytest.raises(StopRequestedError):
        repartition_table(lake.config(), "logs", stop=stop, progress=progress)
    assert (content(lake), partitions(lake), recorded(lake)) == before
    assert lake.rows("SELECT count(*) FROM information_schema.tables WHERE table_name = "
                     f"'{build_table_name('logs')}'") == [(0,)]
    assert lake.rows("SELECT status FROM meta.ingestion_runs WHERE job_name = "
                     "'repartition'") == [("failed",)]


# -- crashes ----------------------------------------------------------------------------------
NEW_AFTER = {"repartition.after_swap", "repartition.before_publish"}


@pytest.mark.parametrize("point", failpoints.named("repartition"))
def test_a_kill_at_any_point_leaves_the_old_table_or_the_new_one(loaded: Lake,
                                                                 point: str) -> None:
    lake = loaded
    old = content(lake), partitions(lake), recorded(lake)
    proc = lake_cli(lake.root, "repartition", "logs",
                    env={failpoints.ENVIRONMENT_VARIABLE: point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert content(lake) == old[0]  # every row once, whichever table it is
    new_partitions = NEW_PARTITIONS
    if point in NEW_AFTER:
        assert partitions(lake) == new_partitions
        assert recorded(lake) == canonical_spec(lake.config().table("logs"))
    else:
        assert (partitions(lake), recorded(lake)) == old[1:]
    build = build_table_name("logs")
    assert not (point in NEW_AFTER and lake.rows(
        f"SELECT count(*) FROM information_schema.tables WHERE table_name = '{build}'")[0][0])
    # The next run finishes the job: drops a leftover build table, or has nothing to do.
    report = repartition_table(lake.config(), "logs")
    assert report.up_to_date == (point in NEW_AFTER)
    assert report.leftover_dropped == (point in {"repartition.after_build",
                                                 "repartition.after_parity",
                                                 "repartition.before_commit"})
    assert content(lake) == old[0] and partitions(lake) == new_partitions
    assert lake.rows(f"SELECT count(*) FROM information_schema.tables "
                     f"WHERE table_name = '{build}'") == [(0,)]
    lake.load()  # republishes what a kill before the publish left unpublished
    assert snapshot_partitions(lake) == new_partitions
    assert not [p for p in audit_lake(lake.config()).problems if p["severity"] == "error"]


def test_a_leftover_build_table_is_reported_by_the_audit(loaded: Lake) -> None:
    lake = loaded
    proc = lake_cli(lake.root, "repartition", "logs",
                    env={failpoints.ENVIRONMENT_VARIABLE: "repartition.after_build"})
    assert proc.returncode == -signal.SIGKILL
    set_table(lake.root, "logs", LOGS_DAY)  # the operator gives up: the old spec again
    lake.stage("plain", pa.table({"a": pa.array([9], pa.int64())}))
    lake.load()  # publishes the snapshot, the leftover in it
    codes = {(p["code"], p.get("table")) for p in audit_lake(lake.config()).problems}
    assert ("repartition_unfinished", "logs") in codes
    assert not any(t.startswith("_lake_") for t in audit_lake(lake.config()).payload["tables"])
    report = repartition_table(lake.config(), "logs")
    assert report.up_to_date and report.leftover_dropped and report.published


# -- the reference model ----------------------------------------------------------------------
GRANULARITIES = ["identity", "day", "month", "year"]


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(first=st.sampled_from(GRANULARITIES), second=st.sampled_from(GRANULARITIES),
       hours=st.lists(st.integers(0, 24 * 800), min_size=1, max_size=30))
def test_a_repartitioned_table_equals_the_model(tmp_path_factory: pytest.TempPathFactory,
                                                first: str, second: str,
                                                hours: list[int]) -> None:
    body = 'partition_by = {{ column = "ts", granularity = "{g}" }}\nmerge = "append"\n'
    lake = Lake(make_root(tmp_path_factory.mktemp("model") / "lake",
                          f"[tables.t]\n{body.format(g=first)}"))
    lake.init()
    stamps = [datetime(2025, 12, 31, 23) + timedelta(hours=h) for h in hours]
    lake.stage("t", pa.table({"n": pa.array(range(len(hours)), pa.int64()),
                              "ts": pa.array(stamps, pa.timestamp("us"))}))
    lake.load()
    set_table(lake.root, "t", body.format(g=second))
    report = repartition_table(lake.config(), "t")
    assert report.up_to_date == (first == second)
    got = sorted(lake.rows(f"SELECT n, ts, {PARTITION_COLUMN} FROM t"))
    run = one_file_run("t", (("n", "int64"), ("ts", "timestamp[us]")),
                       tuple((n, ts) for n, ts in enumerate(stamps)))
    before = simulate({"t": TableSpec("t", partition_column="ts", granularity=first)}, [run])
    after = repartition(before.tables["t"],
                        TableSpec("t", partition_column="ts", granularity=second))
    assert got == sorted((r["n"], r["ts"], r[PARTITION_COLUMN]) for r in after.rows)
