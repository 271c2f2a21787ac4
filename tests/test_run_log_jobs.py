"""The run log tells the truth (issue 14, items 1-3): every job that changes the lake records
one run, a run left `started` by a killed process is closed as killed by the next job, and
each row says who triggered it with what code. Real `lake` processes, killed with SIGKILL at
the named crash points."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from conftest import Lake, hand_run_id, lake_cli, write_run_by_hand
from model import JobCall, row_state_allowed, run_log_rows
from test_repartition import LOGS_MONTH, set_table
from test_repartition import logs as repartition_logs

import lakehouse
from lakehouse import failpoints
from lakehouse.errors import StagingError
from staging import stage_run

D = dt.datetime
JOBS = ("load", "compact", "export", "cleanup", "quarantine_replay")


def events(*ids: int, kind: str = "view") -> pa.Table:
    return pa.table({"event_id": pa.array(list(ids), pa.int64()),
                     "ts": pa.array([D(2026, 1, 1 + i % 28) for i in ids], pa.timestamp("us")),
                     "kind": pa.array([kind] * len(ids), pa.string()),
                     "amount": pa.array([1.0] * len(ids), pa.float64())})


def runs(root: Path) -> list[dict[str, Any]]:
    """Every run-log row, oldest first (read-only on the warehouse file; no job running)."""
    con = duckdb.connect(str(root / "warehouse" / "lake.duckdb"), read_only=True)
    try:
        cur = con.execute("SELECT * FROM meta.ingestion_runs ORDER BY started_at")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def ok(result: subprocess.CompletedProcess[str], *codes: int) -> None:
    assert result.returncode in (codes or (0,)), (result.returncode, result.stdout,
                                                  result.stderr)


def quarantined_run(lake: Lake) -> str:
    """A run the load quarantined (an unknown kind breaks the events contract)."""
    manifest = lake.stage("events", events(90, kind="bogus"))
    ok(lake_cli(lake.root, "load"), 3)
    assert lake.quarantined("events") == [manifest.run_id]
    return str(manifest.run_id)


# -- item 1: every job that changes the lake records one run --------------------------------
def test_every_writing_job_records_one_run_and_nothing_else_does(lake: Lake,
                                                                 tmp_path: Path) -> None:
    lake.stage("events", events(1, 2))
    bad = quarantined_run(lake)  # load run 1
    to = str(tmp_path / "exports")
    # Read-only commands and every dry run record nothing.
    for args in (["load", "--dry-run"], ["compact", "--dry-run"], ["cleanup", "--dry-run"],
                 ["export", "events", "--to", to, "--dry-run"],
                 ["quarantine", "replay", bad, "--dry-run"], ["quarantine", "list"],
                 ["query", "SELECT 1"], ["audit"], ["health"]):
        ok(lake_cli(lake.root, *args))
    assert [r["job_name"] for r in runs(lake.root)] == ["load"]
    ok(lake_cli(lake.root, "export", "events", "--to", to))
    ok(lake_cli(lake.root, "cleanup"))
    ok(lake_cli(lake.root, "quarantine", "replay", bad))
    ok(lake_cli(lake.root, "compact", "--force"))
    ok(lake_cli(lake.root, "load"), 3)  # the replayed run fails its contract again
    rows = runs(lake.root)
    assert [r["job_name"] for r in rows] == ["load", "export", "cleanup", "quarantine_replay",
                                             "compact", "load"]
    for r in rows:
        assert r["status"] == "success", r
        assert r["ended_at"] >= r["started_at"] and r["duration_ms"] >= 0
        assert r["error_type"] is None and r["error_message"] is None
        assert r["app_version"] == lakehouse.__version__ and r["triggered_by"] == "cli"
        assert r["pid"] > 0 and r["host"]
    args = {r["job_name"]: json.loads(r["args_json"]) for r in rows}
    assert args["export"] == {"table": "events", "to": f"{to}/events", "full": False,
                              "format": "delta"}  # the default for a new target
    assert args["quarantine_replay"] == {"table": "events", "run": bad, "kind": "run"}
    assert args["compact"] == {"keep_backups": 3, "force": True}
    assert args["cleanup"] == {"grace_minutes": 60.0}
    # The published snapshot shows them: `lake query` reads it.
    shown = lake_cli(lake.root, "query", "SELECT job_name FROM meta.ingestion_runs "
                     "ORDER BY started_at", "--format", "json")
    assert [r["job_name"] for r in json.loads(shown.stdout)] == [r["job_name"] for r in rows]


def test_a_job_with_nothing_to_do_still_records_its_run(lake: Lake) -> None:
    for job in ("load", "cleanup"):
        ok(lake_cli(lake.root, job))
    assert [(r["job_name"], r["status"]) for r in runs(lake.root)] == [
        ("load", "success"), ("cleanup", "success")]


def test_a_failing_job_records_a_failed_run(lake: Lake) -> None:
    lake.stage("events", events(1))
    lake.load()
    con = duckdb.connect(str(lake.root / "warehouse" / "lake.duckdb"))
    con.execute("CREATE SEQUENCE stray")  # compaction cannot copy it: it refuses, unchanged
    con.close()
    result = lake_cli(lake.root, "compact", "--force")
    ok(result, 1)
    compact = [r for r in runs(lake.root) if r["job_name"] == "compact"]
    assert len(compact) == 1
    assert compact[0]["status"] == "failed" and compact[0]["error_type"] == "CompactionError"
    assert "cannot compact" in compact[0]["error_message"]
    assert compact[0]["ended_at"] is not None and compact[0]["error_stack_hash"]


# -- item 2: a run left started by a dead process is closed by the next job ---------------
def setup_load(lake: Lake, tmp_path: Path) -> list[str]:
    lake.stage("events", events(1, 2))
    lake.stage("events", events(3))
    return ["load"]


def setup_loaded(lake: Lake, tmp_path: Path) -> None:
    lake.stage("events", events(1, 2))
    lake.stage("events", events(3))
    lake.load()


def setup_compact(lake: Lake, tmp_path: Path) -> list[str]:
    setup_loaded(lake, tmp_path)
    return ["compact", "--force"]


def setup_export(lake: Lake, tmp_path: Path) -> list[str]:
    setup_loaded(lake, tmp_path)
    return ["export", "events", "--to", str(tmp_path / "exports"), "--format", "parquet"]


def setup_export_delta(lake: Lake, tmp_path: Path) -> list[str]:
    setup_loaded(lake, tmp_path)
    return ["export", "events", "--to", str(tmp_path / "exports"), "--format", "delta"]


def setup_repartition(lake: Lake, tmp_path: Path) -> list[str]:
    lake.stage("logs", repartition_logs(0, 40))
    lake.load()
    set_table(lake.root, "logs", LOGS_MONTH)  # day -> month: the table needs a rebuild
    return ["repartition", "logs"]


def setup_cleanup(lake: Lake, tmp_path: Path) -> list[str]:
    setup_loaded(lake, tmp_path)
    # An abandoned run (no manifest, untouched for two days) ...
    run = write_run_by_hand(lake.root, "events", hand_run_id(7), {"part-00000.parquet":
                                                                  events(9)}, commit=False)
    old = (D.now() - dt.timedelta(days=2)).timestamp()
    for path in (*run.iterdir(), run):
        os.utime(path, (old, old))
    # ... and two archived runs loaded long ago (past retention_days = 7).
    con = duckdb.connect(str(lake.root / "warehouse" / "lake.duckdb"))
    con.execute("UPDATE meta.staged_runs SET recorded_at = recorded_at - INTERVAL 30 DAY")
    con.close()
    return ["cleanup"]


def setup_replay(lake: Lake, tmp_path: Path) -> list[str]:
    return ["quarantine", "replay", quarantined_run(lake)]


SETUPS = {"load": setup_load, "compact": setup_compact, "export": setup_export,
          "cleanup": setup_cleanup, "replay": setup_replay, "repartition": setup_repartition}


def setup_of(point: str) -> Any:
    """The setup that leads the job of ``point`` to it (Delta export points: --format delta)."""
    if point.startswith("export.delta_"):
        return setup_export_delta
    return SETUPS[point.split(".")[0]]
# What the killed job's own row says once the next job ran: no row (killed before the run
# started), "killed" (closed by the next job), or "success" (the run had closed; only the
# publish was left, and the next writer republishes).
AFTER_KILL = {
    "load.after_lock": None, "load.after_verify": "killed", "load.before_commit": "killed",
    "load.after_commit": "killed", "load.mid_archive": "killed",
    "load.after_archive": "success", "load.before_publish": "success",
    "compact.after_lock": None, "compact.after_copy": "killed", "compact.after_verify": "killed",
    "compact.after_backup": "killed", "compact.after_swap": "success",
    "compact.before_publish": "success",
    "export.after_lock": None, "export.after_write": "killed", "export.before_pointer": "killed",
    "export.after_pointer": "killed", "export.after_record": "killed",
    "cleanup.after_record": "killed", "cleanup.mid_expire": "killed",
    "replay.after_forget": "killed",
    "export.delta_mid_write": "killed", "export.delta_after_commit": "killed",
    "export.delta_after_record": "killed",
    "repartition.after_lock": None, "repartition.after_build": "killed",
    "repartition.after_parity": "killed", "repartition.before_commit": "killed",
    # after_swap: the swap committed, the run's row not closed yet (it closes as the job
    # returns, before the publish): a killed run whose table is rebuilt.
    "repartition.after_swap": "killed", "repartition.before_publish": "success",
}


def test_the_crash_points_of_every_job_that_records_a_run_are_covered() -> None:
    # store.* points belong to no job: they are hit inside the moves of load, cleanup and
    # replay, whose own points above cover the run's lifecycle. publish.* points are hit
    # while a load publishes incrementally, after its run closed (as load.before_publish);
    # tests/test_publish_incremental.py kills at each of them.
    assert set(AFTER_KILL) == {p for p in failpoints.POINTS
                               if not p.startswith(("store.", "publish."))}


def kill_at(root: Path, point: str, *args: str) -> int:
    """Run `lake ARGS` armed to SIGKILL itself at ``point``; return its pid."""
    proc = subprocess.Popen([sys.executable, "-m", "loader.cli", "--root", str(root), *args],
                            env={**os.environ, failpoints.ENVIRONMENT_VARIABLE: point},
                            cwd=str(root.parent), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, out, err)
    return proc.pid


# One point per job runs by default; the others are slow (each case runs three processes).
QUICK = {"load.after_commit", "compact.after_backup", "export.after_write",
         "cleanup.after_record", "replay.after_forget"}


@pytest.mark.parametrize("point", [p if p in QUICK else pytest.param(p, marks=pytest.mark.slow)
                                   for p in sorted(AFTER_KILL)])
def test_a_run_killed_at_each_point_is_closed_by_the_next_job(lake: Lake, tmp_path: Path,
                                                              point: str) -> None:
    args = setup_of(point)(lake, tmp_path)
    before = {r["run_id"] for r in runs(lake.root)}
    pid = kill_at(lake.root, point, *args)
    left = [r for r in runs(lake.root) if r["run_id"] not in before]
    expected = AFTER_KILL[point]
    assert [r["status"] for r in left] == ([] if expected is None else
                                           ["started" if expected == "killed" else expected])
    # The next job to take the lock (another kind of job than the killed one) closes it.
    # (Not a load after a repartition: lake.toml's new spec makes it refuse the table.)
    closer = "cleanup" if args[0] in ("load", "repartition") else "load"
    found_from = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    ok(lake_cli(lake.root, closer), 0, 3)
    after = {r["run_id"]: r for r in runs(lake.root)}
    assert [r for r in after.values() if r["status"] == "started"] == []
    closing = [r for r in after.values() if r["run_id"] not in before and r["pid"] != pid]
    assert [(r["job_name"], r["status"]) for r in closing] == [(closer, "success")]
    killed = [after[r["run_id"]] for r in left]
    # The reference model allows what was found (tests/model.py, run_log_rows).
    command = "quarantine replay" if args[0] == "quarantine" else args[0]
    state = (killed[0]["status"], killed[0]["error_type"]) if killed else None
    assert row_state_allowed(state, run_log_rows(JobCall(command, None)))
    if expected != "killed":
        assert [r["status"] for r in killed] == ([] if expected is None else ["success"])
        return
    [row] = killed
    assert row["job_name"] == ("quarantine_replay" if args[0] == "quarantine" else args[0])
    assert (row["status"], row["error_type"], row["pid"]) == ("failed", "killed", pid)
    # ended_at is when the next job found it (as it started), not when the process died.
    assert found_from <= row["ended_at"] == closing[0]["started_at"]
    assert row["duration_ms"] is None
    assert f"pid {pid} on " in row["error_message"]
    assert closing[0]["run_id"] in row["error_message"]


def test_the_killed_run_shows_in_health(lake: Lake, tmp_path: Path) -> None:
    setup_load(lake, tmp_path)
    kill_at(lake.root, "load.after_commit", "load")
    ok(lake_cli(lake.root, "load"))  # finishes the moves, closes the run, republishes
    doc = json.loads(lake_cli(lake.root, "health", "--json").stdout)
    [load] = doc["last_run_per_job"]
    assert (load["job_name"], load["status"], load["runs_7d"], load["failed_7d"],
            load["killed_7d"]) == ("load", "success", 2, 1, 1)
    failures = doc["failures_7d"]
    assert [(f["job_name"], f["error_type"]) for f in failures] == [("load", "killed")]
    text = lake_cli(lake.root, "health").stdout
    assert "Run log by job (last run; killed runs: error_type killed):" in text


def test_a_dry_run_leaves_a_killed_run_for_the_next_real_job(lake: Lake,
                                                             tmp_path: Path) -> None:
    setup_load(lake, tmp_path)
    kill_at(lake.root, "load.before_commit", "load")
    ok(lake_cli(lake.root, "load", "--dry-run"))
    assert [r["status"] for r in runs(lake.root)] == ["started"]
    ok(lake_cli(lake.root, "load"))
    assert [(r["status"], r["error_type"]) for r in runs(lake.root)] == [
        ("failed", "killed"), ("success", None)]


# -- item 3: who triggered it, and with what code -----------------------------------------
def test_triggered_by_comes_from_the_option_then_the_environment_then_cli(lake: Lake) -> None:
    ok(lake_cli(lake.root, "--triggered-by", "cron", "load"))
    ok(lake_cli(lake.root, "cleanup", env={"LAKE_TRIGGERED_BY": "airflow"}))
    ok(lake_cli(lake.root, "--triggered-by", "make", "load",
                env={"LAKE_TRIGGERED_BY": "airflow"}))
    env = {k: v for k, v in os.environ.items() if k != "LAKE_TRIGGERED_BY"}
    result = subprocess.run([sys.executable, "-m", "loader.cli", "--root", str(lake.root),
                             "load"], env=env, capture_output=True, text=True, timeout=120)
    ok(result)
    assert [r["triggered_by"] for r in runs(lake.root)] == ["cron", "airflow", "make", "cli"]


def test_a_bad_triggered_by_is_a_usage_error(lake: Lake) -> None:
    for bad in ("", "x" * 201, "two\nlines"):
        result = lake_cli(lake.root, "--triggered-by", bad, "load")
        ok(result, 2)
        assert "Invalid value for --triggered-by: must be printable text" in result.stderr
    assert runs(lake.root) == []


def test_a_producer_version_reaches_the_ledger_and_health(lake: Lake) -> None:
    with stage_run(lake.root, "events", producer="web-1", version="1.4.2+g3f2a") as run:
        run.write(events(1))
    manifest = json.loads((lake.root / "staging" / "events" / run.run_id /
                           "_manifest.json").read_text())
    assert manifest["producer_version"] == "1.4.2+g3f2a"
    lake.stage("events", events(2), producer="web-1", version="1.5.0")
    lake.stage("events", events(3), producer="batch")  # no version: none recorded
    ok(lake_cli(lake.root, "load"))
    assert sorted(lake.rows("SELECT producer, producer_version FROM meta.staged_runs"),
                  key=str) == [("batch", None), ("web-1", "1.4.2+g3f2a"), ("web-1", "1.5.0")]
    doc = json.loads(lake_cli(lake.root, "health", "--json").stdout)
    assert [(v["table_name"], v["producer"], v["producer_version"], v["runs"])
            for v in doc["producer_versions"]] == [
        ("events", "batch", None, 1), ("events", "web-1", "1.5.0", 1),
        ("events", "web-1", "1.4.2+g3f2a", 1)]


def test_a_producer_version_is_bounded_like_other_manifest_text(lake: Lake) -> None:
    for bad in ("", "v" * 4097, "a\0b", "\ud800"):
        with pytest.raises(StagingError, match="version must be"):
            lake.stage("events", events(1), version=bad)
    # A manifest written by anyone else is checked when it is read: too long, quarantined.
    write_run_by_hand(lake.root, "events", hand_run_id(1), {"part-00000.parquet": events(1)},
                      manifest={"producer_version": "v" * 4097})
    ok(lake_cli(lake.root, "load"), 3)
    assert lake.quarantined("events") == [hand_run_id(1)]
    assert lake.reason("events", hand_run_id(1))["code"] == "manifest_mismatch"


# -- the reference model's run log (tests/model.py), as the chaos check uses it -------------
def test_the_model_says_which_commands_record_which_rows() -> None:
    assert run_log_rows(JobCall("audit", 0)) == {None}
    assert run_log_rows(JobCall("load", 0, dry_run=True)) == {None}
    assert run_log_rows(JobCall("load", 0)) == {("success", None)}
    assert not row_state_allowed(("started", None), run_log_rows(JobCall("load", None)))
    assert not row_state_allowed(None, run_log_rows(JobCall("cleanup", 0)))
    assert row_state_allowed(("failed", "killed"), run_log_rows(JobCall("compact", None)))
    assert not row_state_allowed(("failed", "killed"), run_log_rows(JobCall("compact", 1)))
    assert row_state_allowed(("failed", "LoadAbortedError"), run_log_rows(JobCall("load", 3)))
    assert row_state_allowed(None, run_log_rows(JobCall("export", 75)))


def test_migration_4_upgrades_a_warehouse_and_closes_an_older_lakes_killed_run(
        lake: Lake) -> None:
    lake.stage("events", events(1), producer="web-1")
    lake.load()
    path = lake.root / "warehouse" / "lake.duckdb"
    con = duckdb.connect(str(path))  # what Lake at schema v3 left, killed during a load
    con.execute("ALTER TABLE meta.ingestion_runs DROP COLUMN pid")
    con.execute("ALTER TABLE meta.ingestion_runs DROP COLUMN host")
    con.execute("ALTER TABLE meta.staged_runs DROP COLUMN producer_version")
    con.execute("DELETE FROM meta.schema_migrations WHERE version = 4")
    con.execute("INSERT INTO meta.ingestion_runs (run_id, job_name, triggered_by, status, "
                "started_at) VALUES ('old', 'load', 'cli', 'started', now()::TIMESTAMP)")
    con.close()
    ok(lake_cli(lake.root, "load"))
    assert lake.rows("SELECT count(*) FROM meta.schema_migrations WHERE version = 4") == [(1,)]
    assert lake.rows("SELECT producer, producer_version FROM meta.staged_runs") == [
        ("web-1", None)]
    [old] = [r for r in runs(lake.root) if r["run_id"] == "old"]
    assert (old["status"], old["error_type"], old["pid"]) == ("failed", "killed", None)
    assert "(pid unknown)" in old["error_message"]
