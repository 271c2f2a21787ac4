"""`lake audit` on real lake roots: a healthy lake, then one fixture per problem, and the
read-only promise (no lock, never `lake.duckdb`) checked against real competing processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from conftest import LAKE_TOML, REPO, Lake, hand_run_id, make_root, write_run_by_hand

from lakehouse.errors import LoadAbortedError, LockHeldError
from lakehouse.migrations import LATEST_VERSION
from loader.audit import (
    AUDIT_KEYS,
    PROBLEM_CODES,
    PROBLEM_KEYS,
    SEVERITIES,
    AuditReport,
    AuditThresholds,
    audit_lake,
)
from loader.render import render_audit

D = dt.datetime
UTC = dt.UTC
DOC = REPO / "docs" / "AUDIT.md"
# Values that are maps keyed by data (table names, statuses, reason codes), not fixed keys.
MAPS = {"lock_holder", "by_table", "tables", "reasons", "runs_by_status"}


def events(*ids: int, kind: str = "view", month: int = 1) -> pa.Table:
    return pa.table({"event_id": pa.array(ids, pa.int64()),
                     "ts": pa.array([D(2026, month, 1 + i % 20) for i in ids], pa.timestamp("us")),
                     "kind": pa.array([kind] * len(ids), pa.string()),
                     "amount": pa.array([1.5] * len(ids), pa.float64())})


def logs(*ids: int) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "ts": pa.array([D(2026, 2, 1)] * len(ids), pa.timestamp("us")),
                     "msg": pa.array(["m"] * len(ids), pa.string())})


def audit(lake: Lake, **kw: Any) -> AuditReport:
    """Run the audit and check the shape every payload must have."""
    report = audit_lake(lake.config(), **kw)
    payload = report.payload
    assert tuple(payload) == AUDIT_KEYS
    assert json.loads(json.dumps(payload)) == payload  # plain JSON, nothing needs a default
    for p in payload["problems"]:
        assert set(PROBLEM_KEYS) <= set(p), p
        assert p["severity"] in SEVERITIES and p["code"] in PROBLEM_CODES, p
        assert p["message"] and p["fix"], p
    counts = {s: sum(p["severity"] == s for p in payload["problems"]) for s in SEVERITIES}
    assert {s: payload["summary"][s] for s in SEVERITIES} == counts
    assert report.has_errors == (counts["error"] > 0)
    assert "problems:" in render_audit(report)
    return report


def found(report: AuditReport, code: str) -> list[dict[str, Any]]:
    return [p for p in report.problems if p["code"] == code]


def serious(report: AuditReport) -> list[dict[str, Any]]:
    return [p for p in report.problems if p["severity"] in ("error", "warn")]


def republish(lake: Lake) -> None:
    """Copy the warehouse over the snapshot, as a load's publish does."""
    shutil.copyfile(lake.root / "warehouse" / "lake.duckdb",
                    lake.root / "warehouse" / "lake.read.duckdb")


def age(path: Path, hours: float) -> None:
    stamp = time.time() - hours * 3600
    os.utime(path, (stamp, stamp))


def python(code: str) -> subprocess.Popen[str]:
    """A helper process that prints 'ready' once it holds what it was asked to hold."""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=str(REPO))


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


# -- a healthy lake -----------------------------------------------------------------------
def test_a_healthy_lake_has_no_errors_or_warnings(lake: Lake) -> None:
    lake.stage("events", events(1, 2, 3))
    lake.stage("events", events(3, 40, month=2))  # upsert: key 3 moves to February
    lake.stage("logs", logs(1, 2))
    lake.load()
    report = audit(lake)
    assert serious(report) == [], render_audit(report)
    p = report.payload
    assert p["summary"]["status"] == "ok" and not report.has_errors
    assert p["root"] == str(lake.root)
    ev = p["tables"]["events"]
    assert (ev["rows"], ev["partition_count"], ev["duplicate_keys"]) == (4, 2, 0)
    assert ev["partitions"] == [{"partition": "2026-01", "rows": 2},
                                {"partition": "2026-02", "rows": 2}]
    assert ev["partition_min"] == "2026-01-02T00:00:00+00:00"
    assert ev["partition_max"] == "2026-02-04T00:00:00+00:00"
    assert ev["watermark"] == ev["partition_max"] and ev["hours_since_watermark"] > 0
    assert 0 <= ev["hours_since_load"] < 1 and ev["declared"] and ev["exists"]
    assert p["tables"]["logs"]["duplicate_keys"] == 0  # append with a key is checked too
    assert p["tables"]["plain"]["exists"] is False  # declared, no data: info only
    assert [x["table"] for x in found(report, "table_empty")] == [
        "plain", "readings", "snap", "strict"]
    wh = p["warehouse"]
    assert wh["path"] == "warehouse/lake.duckdb"
    assert wh["size_bytes"] == (lake.root / "warehouse" / "lake.duckdb").stat().st_size
    assert wh["snapshot"]["size_bytes"] == (
        lake.root / "warehouse" / "lake.read.duckdb").stat().st_size
    assert wh["database"]["total_blocks"] >= wh["database"]["free_blocks"] >= 0
    assert wh["schema_version"] == LATEST_VERSION and wh["lock_holder"] is None
    assert p["ledger"]["runs_by_status"] == {"loaded": 3} and p["ledger"]["archived_runs"] == 3
    assert [(r["job_name"], r["status"]) for r in p["runs"]["latest"]] == [("load", "success")]
    assert p["staging"]["committed"]["count"] == 0 and p["quarantine"]["count"] == 0
    text = render_audit(report)
    for section in ("warehouse:", "tables:", "staging:", "quarantine:", "problems:"):
        assert f"\n{section}" in text
    assert re.search(r"\n  events\s+4\s+2\s+2026-01-02", text), text


def doc_section(heading: str) -> str:
    """The text under a ``## heading`` of docs/AUDIT.md."""
    return DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def doc_keys(heading: str) -> list[str]:
    """The first-column keys of the table under a heading."""
    return re.findall(r"^\| `([^`]+)` \|", doc_section(heading), re.M)


def flatten(obj: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in obj.items():
        if isinstance(value, dict) and key not in MAPS:
            keys |= flatten(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_the_payload_has_exactly_the_documented_keys(lake: Lake) -> None:
    lake.stage("events", events(1))
    lake.stage("events", events(2, kind="refund"))  # quarantined: fills that section
    lake.load()
    p = audit(lake).payload
    assert tuple(doc_keys("Top-level keys")) == AUDIT_KEYS == tuple(p)
    for section in ("warehouse", "staging", "quarantine", "ledger", "runs", "summary"):
        assert flatten(p[section]) == set(doc_keys(f"`{section}`")), section
    assert flatten(p["tables"]["events"]) == set(doc_keys("`tables.<name>`"))
    documented = {code: severity.split()[0] for code, severity in re.findall(
        r"^\| `(\w+)` \| (\w+[^|]*) \|", doc_section("Problems"), re.M)}
    assert documented == PROBLEM_CODES


# -- one problem at a time ------------------------------------------------------------------
def test_a_missing_snapshot_is_an_error_and_the_files_are_still_audited(lake: Lake) -> None:
    lake.stage("events", events(1))
    lake.load()
    lake.stage("events", events(2))
    (lake.root / "warehouse" / "lake.read.duckdb").unlink()
    report = audit(lake)
    [problem] = found(report, "snapshot_missing")
    assert problem["severity"] == "error" and problem["fix"] == "lake init"
    assert problem["path"] == "warehouse/lake.read.duckdb" and report.has_errors
    p = report.payload
    assert p["tables"] == {} and p["ledger"] == {"checked": False} and p["runs"] == {}
    assert p["warehouse"]["snapshot"]["exists"] is False and p["warehouse"]["database"] is None
    assert p["staging"]["committed"]["count"] == 1  # the file system part still ran
    assert "blocks unknown" in render_audit(report)


def test_duplicate_keys_and_undeclared_tables_in_the_warehouse(lake: Lake) -> None:
    lake.stage("events", events(1, 2))
    lake.load()
    # No loader runs: the test may write the warehouse itself, then republish it.
    con = duckdb.connect(str(lake.root / "warehouse" / "lake.duckdb"))
    con.execute("INSERT INTO events SELECT * FROM events WHERE event_id = 1")
    con.execute("CREATE TABLE extra AS SELECT 1 AS x")
    con.execute("CHECKPOINT")
    con.close()
    republish(lake)
    report = audit(lake)
    [dup] = found(report, "duplicate_keys")
    assert (dup["severity"], dup["table"], dup["count"]) == ("error", "events", 1)
    assert dup["fix"] == ("""lake query 'SELECT "event_id", count(*) FROM "events" """
                          """GROUP BY ALL HAVING count(*) > 1'""")
    assert report.payload["tables"]["events"]["duplicate_keys"] == 1
    [extra] = found(report, "undeclared_table")
    assert (extra["severity"], extra["table"]) == ("warn", "extra")
    assert report.payload["tables"]["extra"]["declared"] is False
    assert report.payload["tables"]["extra"]["rows"] == 1
    assert report.problems[0]["severity"] == "error"  # errors first


def test_committed_runs_waiting_over_an_hour_are_a_backlog(lake: Lake) -> None:
    manifest = lake.stage("events", events(1))
    assert manifest is not None
    assert found(audit(lake), "backlog") == []  # just committed: not late yet
    report = audit(lake, now=dt.datetime.now(UTC) + dt.timedelta(hours=2))
    [backlog] = found(report, "backlog")
    assert (backlog["severity"], backlog["fix"], backlog["count"]) == ("warn", "lake load", 1)
    assert backlog["run_id"] == manifest.run_id and backlog["table"] == "events"
    committed = report.payload["staging"]["committed"]
    assert committed["count"] == 1 and committed["by_table"] == {"events": 1}
    assert committed["oldest_age_hours"] >= 2


def test_an_abandoned_uncommitted_run(lake: Lake) -> None:
    run = write_run_by_hand(lake.root, "events", hand_run_id(1), {"part.parquet": events(1)},
                            commit=False)
    report = audit(lake)
    assert found(report, "abandoned_runs") == []  # a producer may still be writing it
    assert report.payload["staging"]["uncommitted"]["count"] == 1
    for path in (run / "part.parquet", run):
        age(path, 30)  # untouched for longer than abandon_after_hours (24)
    report = audit(lake)
    [problem] = found(report, "abandoned_runs")
    assert (problem["severity"], problem["fix"]) == ("warn", "lake cleanup")
    assert problem["path"] == f"staging/events/{hand_run_id(1)}"
    [entry] = report.payload["staging"]["uncommitted"]["runs"]
    assert entry["age_hours"] >= 30 and entry["abandoned_marker"] is False


def test_stray_temp_files_under_staging_and_warehouse(lake: Lake) -> None:
    old = [lake.root / "staging" / "events" / "part.parquet.tmp-1a2b",
           lake.root / "warehouse" / "lake.read.duckdb.tmp-3c4d"]
    fresh = lake.root / "staging" / "logs" / "part.parquet.tmp-5e6f"  # being written now
    for path in [*old, fresh]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    # A drop_rows quarantine folder being built when its loader died (lake cleanup removes it).
    half_built = lake.root / "quarantine" / "readings" / f"{hand_run_id(3)}.tmp-7a8b"
    (half_built / "inner").mkdir(parents=True)
    for path in [*old, half_built]:
        age(path, 2)
    report = audit(lake)
    [problem] = found(report, "stray_temp_files")
    assert (problem["severity"], problem["fix"], problem["count"]) == ("warn", "lake cleanup", 3)
    temps = report.payload["staging"]["temp_files"]
    assert temps["count"] == 4 and temps["oldest_age_hours"] >= 2
    assert {t["path"] for t in temps["files"]} == {
        "staging/events/part.parquet.tmp-1a2b", "warehouse/lake.read.duckdb.tmp-3c4d",
        "staging/logs/part.parquet.tmp-5e6f", f"quarantine/readings/{hand_run_id(3)}.tmp-7a8b"}
    assert report.payload["quarantine"]["count"] == 0  # not a quarantined run


def test_quarantined_runs_are_reported_per_table(lake: Lake) -> None:
    bad = lake.stage("events", events(1, kind="refund"))
    assert bad is not None
    lake.load()
    report = audit(lake)
    [problem] = found(report, "quarantined_runs")
    assert (problem["severity"], problem["table"], problem["count"]) == ("warn", "events", 1)
    assert problem["fix"] == "lake quarantine list"
    assert report.payload["quarantine"]["tables"]["events"] == {
        "runs": 1, "oldest_run_id": bad.run_id,
        "oldest_age_hours": report.payload["quarantine"]["tables"]["events"]["oldest_age_hours"],
        "reasons": {"contract_violation": 1}}


def test_a_run_left_in_staging_after_its_commit_is_an_unfinished_move(lake: Lake) -> None:
    manifest = lake.stage("events", events(1))
    assert manifest is not None
    lake.load()
    archived = lake.root / "archive" / "events" / manifest.run_id
    shutil.copytree(archived, lake.root / "staging" / "events" / manifest.run_id)
    report = audit(lake)
    [problem] = found(report, "ledger_unfinished_move")
    assert (problem["severity"], problem["fix"], problem["run_id"]) == (
        "warn", "lake load", manifest.run_id)
    assert problem["status"] == "loaded"
    assert report.payload["staging"]["committed"]["count"] == 0  # not a backlog
    outcome = lake.load()
    assert [r.status for r in outcome.runs] == ["recovered"]
    after = audit(lake)
    assert serious(after) == [], render_audit(after)  # archive/<run>.1 is the same run
    assert after.payload["ledger"]["archived_runs"] == 2


def test_an_archived_run_the_ledger_does_not_know_is_an_error(lake: Lake) -> None:
    lake.stage("events", events(1))
    lake.load()
    stranger = lake.root / "archive" / "events" / hand_run_id(7)
    stranger.mkdir()
    (stranger / "part-00000.parquet").write_bytes(b"PAR1")
    # Moved in after the snapshot was made: the snapshot cannot know it yet.
    report = audit(lake)
    [behind] = found(report, "snapshot_behind")
    assert behind["severity"] == "warn" and behind["run_id"] == hand_run_id(7)
    assert not report.has_errors
    lake.stage("events", events(2))
    lake.load()  # publishes a snapshot made after the folder appeared
    report = audit(lake)
    [problem] = found(report, "archive_not_in_ledger")
    assert (problem["severity"], problem["table"], problem["run_id"]) == (
        "error", "events", hand_run_id(7))
    assert problem["path"] == f"archive/events/{hand_run_id(7)}"
    assert problem["fix"] == (f"mv archive/events/{hand_run_id(7)} "
                              f"staging/events/{hand_run_id(7)} && lake load")
    assert found(report, "snapshot_behind") == [] and report.has_errors


def test_a_load_killed_before_its_publish_leaves_the_snapshot_behind(lake: Lake) -> None:
    lake.stage("events", events(1))
    lake.load()
    old = lake.root / "old.duckdb"
    shutil.copy2(lake.root / "warehouse" / "lake.read.duckdb", old)  # keeps its mtime
    lake.stage("events", events(2))
    lake.load()
    # The state a SIGKILL between archiving and publishing leaves: the previous snapshot.
    os.replace(old, lake.root / "warehouse" / "lake.read.duckdb")
    report = audit(lake)
    [behind] = found(report, "snapshot_behind")
    assert behind["severity"] == "warn" and behind["count"] == 1
    assert behind["fix"].endswith("rm warehouse/lake.read.duckdb && lake init")
    assert not report.has_errors and found(report, "archive_not_in_ledger") == []
    assert report.payload["ledger"]["archived_after_snapshot"][0]["run_id"] == behind["run_id"]


def test_a_failed_load_in_the_last_7_days(lake: Lake) -> None:
    lake.stage("logs", logs(1))
    lake.stage("strict", pa.table({"sensor": ["bad"], "ts": pa.array(
        [D(2026, 1, 1)], pa.timestamp("us")), "celsius": [500.0]}))
    with pytest.raises(LoadAbortedError):
        lake.load()  # commits the logs run, stops at the strict one, publishes both
    report = audit(lake)
    [problem] = found(report, "failed_runs_7d")
    assert (problem["severity"], problem["fix"], problem["count"]) == ("warn", "lake health", 1)
    assert "LoadAbortedError" in problem["message"]
    assert report.payload["runs"]["failures_7d"][0]["error_type"] == "LoadAbortedError"
    assert report.payload["runs"]["latest"][0]["status"] == "failed"
    assert report.payload["tables"]["logs"]["rows"] == 1 and not report.has_errors
    assert found(report, "snapshot_behind") == []  # the failed load published what committed
    assert report.payload["staging"]["committed"]["by_table"] == {"strict": 1}
    later = audit(lake, now=dt.datetime.now(UTC) + dt.timedelta(days=8))
    assert found(later, "failed_runs_7d") == []  # the window follows `now`
    assert {"loader_stale", "stale_table", "backlog"} <= {p["code"] for p in serious(later)}


def test_free_blocks_after_a_partition_is_replaced(lake: Lake) -> None:
    rng = np.random.default_rng(7)
    n = 300_000  # random 64-bit values do not compress: many blocks, freed by the replace
    lake.stage("snap", pa.table({"day": ["d1"] * n, "a": rng.integers(0, 2**62, n),
                                 "b": rng.integers(0, 2**62, n)}))
    lake.load()
    lake.stage("snap", pa.table({"day": ["d1"], "a": [1], "b": [2]}))
    lake.load()
    report = audit(lake)
    database = report.payload["warehouse"]["database"]
    assert database["free_ratio"] > 0.5, database
    assert found(report, "free_space") == []  # a small file is not worth compacting
    report = audit(lake, thresholds=AuditThresholds(compact_min_bytes=0))
    [problem] = found(report, "free_space")
    assert (problem["severity"], problem["fix"]) == ("warn", "lake compact")
    assert problem["free_ratio"] == database["free_ratio"]
    assert found(audit(lake, thresholds=AuditThresholds(compact_min_bytes=0,
                                                        free_ratio=0.99)), "free_space") == []


# -- read-only: no lock, never lake.duckdb -----------------------------------------------------
def test_audit_runs_while_another_process_holds_the_lock(lake: Lake) -> None:
    lake.stage("events", events(1))
    lake.load()
    holder = python("import sys, time\nfrom lakehouse.layout import LakePaths\n"
                    "from lakehouse.lock import WarehouseLock\n"
                    # keep a reference: a collected FileLock releases itself
                    f"lock = WarehouseLock(LakePaths.at({str(lake.root)!r}), 'holder').acquire()\n"
                    "print('ready', flush=True)\ntime.sleep(60)")
    try:
        wait_ready(holder)
        with pytest.raises(LockHeldError):
            lake.load()  # the lock really is held
        report = audit(lake)
        assert serious(report) == [], render_audit(report)
        assert report.payload["warehouse"]["lock_holder"]["pid"] == holder.pid
        assert report.payload["tables"]["events"]["rows"] == 1
    finally:
        holder.kill()
        holder.wait()


def test_audit_never_opens_the_live_warehouse(lake: Lake) -> None:
    lake.stage("events", events(1, 2))
    lake.load()
    path = lake.root / "warehouse" / "lake.duckdb"
    writer = python(f"import duckdb, time\ncon = duckdb.connect({str(path)!r})\n"
                    "print('ready', flush=True)\ntime.sleep(60)")
    try:
        wait_ready(writer)
        with pytest.raises(duckdb.Error):  # any open of lake.duckdb fails now
            duckdb.connect(str(path), read_only=True)
        report = audit(lake)
        assert serious(report) == [], render_audit(report)
        assert report.payload["tables"]["events"]["rows"] == 2
    finally:
        writer.kill()
        writer.wait()


def test_audit_during_a_real_load_reports_no_errors(tmp_path: Path) -> None:
    lk = Lake(make_root(tmp_path / "lake", LAKE_TOML.replace(
        "retention_days = 7", "retention_days = 7\nbatch_max_runs = 1")))  # a slow load
    lk.init()
    for n in range(40):
        lk.stage("logs", logs(n))
    loader = subprocess.Popen([sys.executable, "-m", "loader.cli", "--root", str(lk.root),
                               "load"], cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    audits, during = 0, 0
    while loader.poll() is None:
        report = audit(lk)
        audits += 1
        during += report.payload["warehouse"]["lock_holder"] is not None
        assert not report.has_errors, render_audit(report)
    _, err = loader.communicate(timeout=120)
    assert loader.returncode == 0, err
    assert audits > 1 and during > 0, (audits, during)
    final = audit(lk)
    assert serious(final) == [], render_audit(final)
    assert final.payload["tables"]["logs"]["rows"] == 40
