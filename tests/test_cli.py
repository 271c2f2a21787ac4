"""The `lake` CLI: exact output and exit codes (CliRunner), and lock behaviour (real processes)."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pyarrow as pa
import pytest
from click.testing import CliRunner, Result
from conftest import REPO, Lake, lake_cli, make_root

from lakehouse.migrations import LATEST_VERSION, MIGRATIONS
from loader.cli import cli

D = dt.datetime


def run(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--root", str(root), *args])


def raw_stdout(result: Result) -> str:
    """Stdout as written (``Result.stdout`` turns CRLF into LF)."""
    return result.stdout_bytes.decode()


def events(*rows: tuple[int, dt.datetime, str, float | None]) -> pa.Table:
    return pa.table({"event_id": pa.array([r[0] for r in rows], pa.int64()),
                     "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "kind": pa.array([r[2] for r in rows], pa.string()),
                     "amount": pa.array([r[3] for r in rows], pa.float64())})


def logs(*ids: int) -> pa.Table:
    return pa.table({"id": pa.array(list(ids), pa.int64()),
                     "ts": pa.array([D(2026, 1, 1)] * len(ids), pa.timestamp("us")),
                     "msg": pa.array([f"m{i}" for i in ids], pa.string())})


def one_line_error(result: Result) -> str:
    """The error a command printed: exactly one line on stderr, no traceback."""
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("lake: ")
    return result.stderr


# -- init ---------------------------------------------------------------------------------
def test_init_creates_the_layout_then_is_idempotent(tmp_path: Path) -> None:
    root = make_root(tmp_path / "lake")
    first = run(root, "init")
    assert first.exit_code == 0, first.output
    assert first.stdout == (
        f"lake root {root}\n"
        "  created: staging, quarantine, archive, warehouse, warehouse/backups\n"
        f"  warehouse schema version {LATEST_VERSION} "
        f"(applied {[m.version for m in MIGRATIONS]})\n"
        "  tables declared: events, logs, plain, readings, snap, strict\n")
    for folder in ("staging", "quarantine", "archive", "warehouse/backups"):
        assert (root / folder).is_dir()
    assert (root / "warehouse" / "lake.duckdb").is_file()
    assert (root / "warehouse" / "lake.read.duckdb").is_file()
    second = run(root, "init")
    assert second.exit_code == 0
    assert second.stdout == (
        f"lake root {root}\n"
        "  created: nothing (exists)\n"
        f"  warehouse schema version {LATEST_VERSION}\n"
        "  tables declared: events, logs, plain, readings, snap, strict\n")
    again = run(root, "init", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout) == {
        "root": str(root), "created": [], "migrations_applied": [],
        "schema_version": LATEST_VERSION,
        "tables": ["events", "logs", "plain", "readings", "snap", "strict"]}


def test_init_in_an_empty_folder_writes_a_starter_config(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    result = run(root, "init", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "lake.toml" in report["created"]
    assert report["tables"] == [] and report["schema_version"] == LATEST_VERSION
    assert (root / "lake.toml").is_file()
    assert json.loads(run(root, "init", "--json").stdout)["created"] == []


def test_a_root_that_was_never_initialised_is_a_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path / "nowhere", "load")
    assert result.exit_code == 2
    message = one_line_error(result)
    assert "no lake.toml" in message and " init`" in message


# -- load ---------------------------------------------------------------------------------
def test_load_prints_a_summary_and_exits_0(lake: Lake) -> None:
    lake.stage("events", events((1, D(2026, 1, 5), "view", None), (2, D(2026, 2, 1), "click", 2.5)))
    lake.stage("logs", logs(1, 2, 3))
    result = run(lake.root, "load")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"loaded 2 runs \(5 rows\); quarantined 0; skipped 0; recovered 0 "
                        r"in \d+\.\d\ds", lines[0]), lines[0]
    assert lines[1:] == [
        "tables:",
        "  events                              2 rows       2 partitions",
        "  logs                                3 rows       1 partitions",
    ]


def test_load_json_has_the_summary_keys(lake: Lake) -> None:
    first = lake.stage("logs", logs(1, 2))
    again = lake.stage("logs", logs(1, 2))  # same content: skipped
    result = run(lake.root, "load", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"dry_run", "load_run_id", "runs_loaded", "runs_quarantined", "runs_skipped",
            "runs_recovered", "rows_loaded", "rows_rejected", "published", "seconds",
            "tables", "runs"} <= set(doc)
    assert (doc["runs_loaded"], doc["runs_quarantined"], doc["runs_skipped"],
            doc["rows_loaded"], doc["rows_rejected"]) == (1, 0, 1, 2, 0)
    assert doc["dry_run"] is False and doc["published"] is True
    assert doc["tables"] == {"logs": {"rows": 2, "partitions": 1}}
    assert [(r["run_id"], r["status"]) for r in doc["runs"]] == [
        (first.run_id, "loaded"), (again.run_id, "skipped")]
    assert result.stderr == ""  # no progress lines mixed into --json runs


def test_load_exits_3_when_a_run_is_quarantined(lake: Lake) -> None:
    good = lake.stage("events", events((1, D(2026, 1, 5), "view", None)))
    bad = lake.stage("events", events((2, D(2026, 1, 6), "bogus", -1.0)))
    result = run(lake.root, "load")
    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("loaded 1 runs (1 rows); quarantined 1; skipped 0; recovered 0")
    assert lines[1].startswith(f"  quarantined events/{bad.run_id}: [contract_violation] ")
    assert "kind" in lines[1] and "amount" in lines[1]
    assert lake.ledger() == {good.run_id: "loaded", bad.run_id: "quarantined"}
    assert lake.quarantined("events") == [bad.run_id]
    json_result = run(lake.root, "load", "--json")  # nothing left: exit 0 again
    assert json_result.exit_code == 0
    assert json.loads(json_result.stdout)["runs"] == []


def test_load_json_exit_3_with_counts(lake: Lake) -> None:
    lake.stage("events", events((2, D(2026, 1, 6), "bogus", 1.0)))
    result = run(lake.root, "load", "--json")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert (doc["runs_loaded"], doc["runs_quarantined"], doc["rows_rejected"]) == (0, 1, 1)


def test_load_dry_run_reports_and_moves_nothing(lake: Lake) -> None:
    good = lake.stage("events", events((1, D(2026, 1, 5), "view", None), (2, D(2026, 1, 6),
                                                                          "view", None)))
    bad = lake.stage("events", events((3, D(2026, 1, 6), "bogus", 1.0)))
    result = run(lake.root, "load", "--dry-run")
    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "dry run: 1 runs would load, 1 would be quarantined"
    assert lines[1] == f"  would_load        events/{good.run_id}  2 rows"
    assert lines[2].startswith(f"  would_quarantine  events/{bad.run_id}  [contract_violation] ")
    assert len(lines) == 3
    assert lake.staged("events") == sorted([good.run_id, bad.run_id])
    assert lake.ledger() == {}
    only_good = run(lake.root, "load", "--dry-run", "--table", "logs", "--json")
    assert only_good.exit_code == 0
    assert json.loads(only_good.stdout)["dry_run"] is True


def test_load_dry_run_says_which_runs_would_be_skipped_as_repeats(lake: Lake) -> None:
    lake.stage("logs", logs(1), key="once")
    assert run(lake.root, "load").exit_code == 0
    again = lake.stage("logs", logs(2), key="once")
    result = run(lake.root, "load", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "dry run: 0 runs would load, 0 would be quarantined, 1 would be skipped " \
        "as repeats"
    assert lines[1].startswith(f"  would_skip        logs/{again.run_id}  [duplicate_key] "
                               "idempotency key 'once' already loaded by run ")
    assert len(lines) == 2


def test_load_dry_run_shows_rows_an_append_would_drop_for_keys_in_the_table(lake: Lake) -> None:
    lake.stage("readings", pa.table({"sensor": ["s-1"], "ts": [D(2026, 1, 1)],
                                     "celsius": [20.0]}))
    assert run(lake.root, "load").exit_code == 0
    partly = lake.stage("readings", pa.table({"sensor": ["s-1", "s-2"],
                                              "ts": [D(2026, 1, 1), D(2026, 1, 1)],
                                              "celsius": [21.0, 22.0]}))
    result = run(lake.root, "load", "--dry-run")
    assert result.exit_code == 3, result.output  # as the load would: part of a run rejected
    assert result.stdout.splitlines() == [
        "dry run: 1 runs would load, 0 would be quarantined",
        f"  would_load        readings/{partly.run_id}  1 rows, 1 dropped: [key_conflict] "
        "1 rows repeat primary keys (sensor,ts) already in the table or in an earlier run; they "
        "would be dropped"]


def test_load_of_an_undeclared_table_is_a_usage_error(lake: Lake) -> None:
    result = run(lake.root, "load", "--table", "nosuch")
    assert result.exit_code == 2
    assert "nosuch" in one_line_error(result)


# -- query --------------------------------------------------------------------------------
@pytest.fixture
def known(lake: Lake) -> Lake:
    """A lake whose events table holds two known rows, published."""
    lake.stage("events", events((1, D(2026, 1, 5, 8, 30), "view", None),
                                (2, D(2026, 2, 1), "purchase", 12.5)))
    assert run(lake.root, "load").exit_code == 0
    return lake


QUERY = "SELECT event_id, ts, kind, amount FROM events ORDER BY event_id"


def test_query_table_format(known: Lake) -> None:
    result = run(known.root, "query", QUERY)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "event_id  ts                   kind      amount\n"
        "--------  -------------------  --------  ------\n"
        "1         2026-01-05 08:30:00  view      NULL  \n"
        "2         2026-02-01 00:00:00  purchase  12.5  \n")
    assert run(known.root, "query", QUERY, "--format", "table").stdout == result.stdout


def test_query_csv_format(known: Lake) -> None:
    result = run(known.root, "query", QUERY, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert raw_stdout(result) == ("event_id,ts,kind,amount\r\n"
                             "1,2026-01-05 08:30:00,view,\r\n"
                             "2,2026-02-01 00:00:00,purchase,12.5\r\n")


def test_query_json_format(known: Lake) -> None:
    result = run(known.root, "query", QUERY, "--format", "json")
    assert result.exit_code == 0, result.output
    expected = [{"event_id": 1, "ts": "2026-01-05T08:30:00", "kind": "view", "amount": None},
                {"event_id": 2, "ts": "2026-02-01T00:00:00", "kind": "purchase", "amount": 12.5}]
    assert json.loads(result.stdout) == expected
    assert result.stdout == json.dumps(expected, indent=2) + "\n"


def test_query_with_no_rows(known: Lake) -> None:
    result = run(known.root, "query", "SELECT event_id FROM events WHERE false", "--format", "csv")
    assert (result.exit_code, raw_stdout(result)) == (0, "event_id\r\n")
    result = run(known.root, "query", "SELECT event_id FROM events WHERE false", "--format", "json")
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT * FROM no_such_table",
                                 "SELECT nope FROM events"])
def test_bad_sql_exits_2_with_one_line(known: Lake, sql: str) -> None:
    result = run(known.root, "query", sql)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert one_line_error(result).startswith("lake: query failed: ")


@pytest.mark.parametrize("template", [
    "COPY (SELECT * FROM events) TO '{target}' (HEADER)",
    "SET enable_external_access = true; COPY (SELECT * FROM events) TO '{target}'",
    "ATTACH '{target}' AS other",
], ids=["copy", "reenable-then-copy", "attach"])
def test_query_cannot_write_files(known: Lake, tmp_path: Path, template: str) -> None:
    target = tmp_path / "stolen.out"
    result = run(known.root, "query", template.format(target=target))
    assert result.exit_code == 2
    assert result.stdout == ""
    one_line_error(result)
    assert not target.exists()


@pytest.mark.parametrize("template", ["SELECT * FROM read_csv('{path}')",
                                      "SELECT * FROM glob('{folder}/*')"])
def test_query_cannot_read_files(known: Lake, tmp_path: Path, template: str) -> None:
    secret = tmp_path / "secret42.csv"
    secret.write_text("a\n42\n")
    result = run(known.root, "query", template.format(path=secret, folder=tmp_path))
    assert result.exit_code == 2
    assert "42" not in result.stdout
    one_line_error(result)


@pytest.mark.parametrize("sql", ["DELETE FROM events", "CREATE TABLE x (a INT)",
                                 "ATTACH ':memory:' AS m"])
def test_query_is_read_only(known: Lake, sql: str) -> None:
    result = run(known.root, "query", sql)
    assert result.exit_code == 2
    one_line_error(result)
    assert known.rows("SELECT count(*) FROM events") == [(2,)]


def test_query_before_init_is_a_usage_error(tmp_path: Path) -> None:
    root = make_root(tmp_path / "lake")
    result = run(root, "query", "SELECT 1")
    assert result.exit_code == 2
    one_line_error(result)


# -- health -------------------------------------------------------------------------------
def test_health_text_and_json(known: Lake) -> None:
    known.stage("events", events((3, D(2026, 3, 1), "bogus", None)))
    assert run(known.root, "load").exit_code == 3
    result = run(known.root, "health", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"latest_runs", "failures_7d", "freshness", "failing_checks",
                        "last_run_per_job", "producer_versions", "table_checks",
                        "check_failures_7d"}
    assert [(r["job_name"], r["status"]) for r in doc["latest_runs"]] == [("load", "success")]
    assert doc["failures_7d"] == []
    assert [(r["asset_key"], r["scope_key"], r["watermark_ts"]) for r in doc["freshness"]] == [
        ("events", "ALL", "2026-02-01T00:00:00")]
    assert [(r["asset_key"], r["check_name"], r["severity"])
            for r in doc["failing_checks"]] == [
        ("events", "isin(['view', 'click', 'purchase'])", "error")]  # pandera's check name
    text = run(known.root, "health")
    assert text.exit_code == 0
    out = text.stdout
    for title in ("Latest run per job:", "Failures, last 7 days:", "Freshness (watermarks):",
                  "Recent failing checks:"):
        assert f"\n{title}\n" in f"\n{out}"
    assert out.split("Failures, last 7 days:\n")[1].startswith("  (none)\n")
    latest = out.split("Latest run per job:\n")[1].split("Failures")[0].splitlines()
    assert latest[0].split() == ["job_name", "status", "started_at", "ended_at", "duration_ms"]
    assert latest[2].split()[:2] == ["load", "success"]
    assert "isin(" in out.split("Recent failing checks:\n")[1]


def _aborted_load(lake: Lake) -> None:
    """A load that commits a logs run, then aborts on an invalid run of ``strict``."""
    lake.stage("logs", logs(1, 2))
    lake.stage("strict", pa.table({"sensor": ["bad"],
                                   "ts": pa.array([D(2026, 1, 1)], pa.timestamp("us")),
                                   "celsius": [500.0]}))
    result = run(lake.root, "load")
    assert result.exit_code == 3
    assert "load aborted" in one_line_error(result)
    assert lake.rows("SELECT count(*) FROM logs") == [(2,)]  # committed before the abort


def test_health_reports_a_failed_load(lake: Lake) -> None:
    _aborted_load(lake)
    doc = json.loads(run(lake.root, "health", "--json").stdout)
    assert [(r["job_name"], r["status"]) for r in doc["latest_runs"]] == [("load", "failed")]
    assert [r["error_type"] for r in doc["failures_7d"]] == ["LoadAbortedError"]


def test_query_sees_runs_committed_before_an_abort(lake: Lake) -> None:
    """The loader publishes after each load, also one that stopped on an abort."""
    _aborted_load(lake)
    query = run(lake.root, "query", "SELECT count(*) AS n FROM logs", "--format", "csv")
    assert (query.exit_code, raw_stdout(query)) == (0, "n\r\n2\r\n")


# -- help ---------------------------------------------------------------------------------
def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
    return found


def test_help_of_every_command(tmp_path: Path) -> None:
    top = CliRunner().invoke(cli, ["--help"])
    assert top.exit_code == 0 and top.stdout.startswith("Usage: ")
    names = _commands(cli)
    assert {("init",), ("load",), ("query",), ("health",)} <= set(names)
    for path in names:
        assert path[-1] in top.stdout or len(path) > 1
        result = CliRunner().invoke(cli, ["--root", str(tmp_path / "none"), *path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert result.stdout.startswith("Usage: ")
        command = cli
        for part in path:
            command = command.commands[part]  # type: ignore[attr-defined]
        summary = (command.help or "").strip().splitlines()[0]
        assert summary and "".join(summary.split()) in "".join(result.stdout.split()), path
    assert "--lock-timeout" in CliRunner().invoke(cli, ["load", "--help"]).stdout
    assert "--format" in CliRunner().invoke(cli, ["query", "--help"]).stdout
    assert not (tmp_path / "none").exists()  # --help never creates a root


def test_unknown_option_is_exit_2() -> None:
    result = CliRunner().invoke(cli, ["load", "--no-such-option"])
    assert result.exit_code == 2


# -- the warehouse lock (real processes) -------------------------------------------------
HOLDER = """
import sys, time
from lakehouse.lock import WarehouseLock
from lakehouse.layout import LakePaths
lock = WarehouseLock(LakePaths.at(sys.argv[1]), "test holder").acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
print("released", flush=True)
time.sleep(30)
"""

DUCKDB_READER = """
import sys, time
import duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT count(*) FROM " + sys.argv[2]).fetchone()[0], flush=True)
sys.stdin.readline()
print(con.execute("SELECT count(*) FROM " + sys.argv[2]).fetchone()[0], flush=True)
time.sleep(30)
"""


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    """Start helper processes; each one this test started is killed by its pid at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def start(procs: list[subprocess.Popen[str]], script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    procs.append(proc)
    return proc


def first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "no output"
    return line.strip()


def test_load_exits_75_at_once_naming_the_lock_holder(
        lake: Lake, spawn: list[subprocess.Popen[str]]) -> None:
    run_id = lake.stage("logs", logs(1)).run_id
    holder = start(spawn, HOLDER, str(lake.root), "60")
    assert first_line(holder) == "held"
    started = time.monotonic()
    done = lake_cli(lake.root, "load")
    elapsed = time.monotonic() - started
    assert done.returncode == 75, done.stderr
    # "At once": it did not wait for the holder, which keeps the lock for 60 s. (Not a speed
    # bound: a busy machine takes seconds to start the CLI.)
    assert elapsed < 30.0
    assert f"pid {holder.pid}" in done.stderr
    assert "test holder" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert lake.staged("logs") == [run_id]  # nothing moved


def test_load_waits_for_a_holder_that_releases(
        lake: Lake, spawn: list[subprocess.Popen[str]]) -> None:
    run_id = lake.stage("logs", logs(1)).run_id
    holder = start(spawn, HOLDER, str(lake.root), "1")
    assert first_line(holder) == "held"
    done = lake_cli(lake.root, "load", "--lock-timeout", "5")
    assert done.returncode == 0, done.stderr
    assert first_line(holder) == "released"
    assert lake.ledger() == {run_id: "loaded"}


def test_a_reader_of_the_warehouse_file_makes_load_exit_75(
        lake: Lake, spawn: list[subprocess.Popen[str]]) -> None:
    run_id = lake.stage("logs", logs(1)).run_id
    reader = start(spawn, DUCKDB_READER, str(lake.root / "warehouse" / "lake.duckdb"),
                   "meta.schema_migrations")
    assert first_line(reader) == str(len(MIGRATIONS))  # one row per applied migration
    started = time.monotonic()
    done = lake_cli(lake.root, "load", "--lock-timeout", "1")
    elapsed = time.monotonic() - started
    assert done.returncode == 75, done.stderr
    assert f"pid {reader.pid}" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    # It retried for its --lock-timeout of 1 s, then gave up: the reader never lets go.
    assert 1.0 <= elapsed < 30.0
    assert lake.staged("logs") == [run_id]


def test_a_reader_of_the_snapshot_does_not_block_load(
        lake: Lake, spawn: list[subprocess.Popen[str]]) -> None:
    lake.stage("logs", logs(1))
    assert run(lake.root, "load").exit_code == 0
    reader = start(spawn, DUCKDB_READER, str(lake.root / "warehouse" / "lake.read.duckdb"),
                   "logs")
    assert first_line(reader) == "1"
    lake.stage("logs", logs(2, 3))
    done = lake_cli(lake.root, "load")
    assert done.returncode == 0, done.stderr
    new = run(lake.root, "query", "SELECT count(*) AS n FROM logs", "--format", "csv")
    assert raw_stdout(new) == "n\r\n3\r\n"
    assert reader.stdin is not None
    reader.stdin.write("again\n")
    reader.stdin.flush()
    assert first_line(reader) == "1"  # the old snapshot stays consistent for its reader


# -- crash points (tests only: LAKE_TEST_CRASH_AT, real processes) ---------------------------
@pytest.mark.parametrize("name", ["after_commit", "load.no_such_point", "load"])
def test_an_unknown_crash_point_is_a_usage_error_before_any_command_runs(
        lake: Lake, name: str) -> None:
    """A short name from before the registry, a typo, a job name: exit 2 with one line that
    lists the points, and the command never runs."""
    run_id = lake.stage("logs", logs(1)).run_id
    done = lake_cli(lake.root, "load", env={"LAKE_TEST_CRASH_AT": name})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"lake: unknown crash point {name!r}")
    assert "load.after_commit" in done.stderr
    assert done.stdout == ""
    assert lake.staged("logs") == [run_id] and lake.ledger() == {}


def test_a_crash_point_another_job_hits_leaves_this_one_alone(lake: Lake) -> None:
    run_id = lake.stage("logs", logs(1)).run_id
    done = lake_cli(lake.root, "load", env={"LAKE_TEST_CRASH_AT": "compact.after_lock"})
    assert done.returncode == 0, done.stderr
    assert lake.ledger() == {run_id: "loaded"}
