"""Operations on staging in an object store: cleanup, quarantine list/replay and audit.

Against moto's S3 server over HTTP (tests/s3server.py); the warehouse stays on local disk.
S3 sets an object's last-modified time itself, so a test makes runs look old by passing a
later ``now`` to the library function, never by sleeping. Crash tests SIGKILL a real
``lake`` subprocess at a named point (LAKE_TEST_CRASH_AT) and then check that every run is
still whole somewhere, and that running the command again finishes the job.
"""

# ruff: noqa: F811  (the s3 fixtures are imported by name, then requested as arguments)
from __future__ import annotations

import io
import json
import signal
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import LAKE_TOML, Lake, hand_run_id, holding_the_lock, lake_cli, make_root
from s3server import S3, s3, s3_endpoint  # noqa: F401  (fixtures)

from lakehouse import failpoints
from loader.audit import AUDIT_KEYS, AuditThresholds, audit_lake
from loader.cleanup import cleanup_lake
from loader.cli import cli
from loader.quarantine import list_quarantine, replay_run
from loader.render import render_audit
from staging import stage, stage_run

PLAIN = '[tables.plain]\nmerge = "append"\nschema_evolution = "freeze"\n'
# Where cleanup and replay can be killed: their own points, and those of the object store's
# moves they make (replay writes no _reason.json, so it never reaches store.reason).
CLEANUP_POINTS = (*failpoints.named("cleanup"), *failpoints.named("store"))
REPLAY_POINTS = (*failpoints.named("replay"), "store.mid_copy", "store.copied",
                 "store.mid_delete")


def s3_lake(tmp_path: Path, s3: S3, lake: str = "", tables: str = LAKE_TOML) -> Lake:
    """A local lake root whose staging, archive and quarantine live in the test bucket."""
    head = textwrap.dedent(f"""\
        [lake]
        staging_root = "{s3.url}"
        staging_options = {{ endpoint_url = "{s3.endpoint}" }}
        """) + lake
    toml = tables.replace("[lake]\n", head, 1) if "[lake]\n" in tables else head + tables
    lk = Lake(make_root(tmp_path / "lake", toml))
    lk.init()
    return lk


def plain(*ids: int) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64())})


def put(s3: S3, key: str, data: bytes) -> None:
    s3.fs.pipe_file(f"{s3.bucket}/lake/{key}", data)


def get(s3: S3, key: str) -> bytes:
    return bytes(s3.fs.cat_file(f"{s3.bucket}/lake/{key}"))


def snapshot(s3: S3) -> dict[str, bytes]:
    """Every object in the bucket and its bytes (to show that nothing changed)."""
    return {k: get(s3, k) for k in s3.keys()}


def ledger(lk: Lake) -> dict[str, tuple[str, str | None]]:
    return {r: (s, c) for r, s, c in lk.rows(
        "SELECT run_id, status, reason_code FROM meta.staged_runs")}


def abandon(s3: S3, table: str = "plain") -> str:
    """A producer that raised after writing two files: objects and a note, no manifest."""
    with pytest.raises(RuntimeError), stage_run(s3.url, table, producer="p",
                                                storage_options=s3.options) as run:
        run.write(plain(1, 2))
        run.write(plain(3))
        raise RuntimeError("producer crashed")
    return run.run_id


LATER = timedelta(hours=30)  # past abandon_after_hours (24)


# -- cleanup ------------------------------------------------------------------------------
def test_cleanup_quarantines_an_abandoned_run_in_the_bucket(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    run_id = abandon(s3)
    young = cleanup_lake(lk.config())  # just written: below abandon_after_hours
    assert young.count("abandoned_run") == 0
    assert [k.path for k in young.kept] == [f"{s3.url}/staging/plain/{run_id}"]
    before = snapshot(s3)
    dry = cleanup_lake(lk.config(), dry_run=True, now=datetime.now(UTC) + LATER)
    assert dry.count("abandoned_run") == 1 and snapshot(s3) == before
    assert run_id not in ledger(lk)
    report = cleanup_lake(lk.config(), now=datetime.now(UTC) + LATER)
    assert [(a.kind, a.path) for a in report.actions] == [
        ("abandoned_run", f"{s3.url}/staging/plain/{run_id}")]
    assert s3.keys("staging") == []
    folder = f"quarantine/plain/{run_id}"
    assert s3.keys(folder) == [f"{folder}/{n}" for n in (
        "_abandoned.json", "_reason.json", "part-00000.parquet", "part-00001.parquet")]
    for name in ("part-00000.parquet", "part-00001.parquet"):  # byte for byte
        assert get(s3, f"{folder}/{name}") == before[f"staging/plain/{run_id}/{name}"]
    reason = json.loads(get(s3, f"{folder}/_reason.json"))
    assert reason["code"] == "abandoned" and "producer crashed" in reason["producer_error"]
    assert ledger(lk)[run_id] == ("quarantined", "abandoned")
    assert lk.load().runs == []
    [listed] = list_quarantine(lk.config())
    assert (listed.run_id, listed.kind, listed.code, listed.path) == (
        run_id, "run", "abandoned", f"{s3.url}/{folder}")
    # Nothing left to do: a second cleanup at the same time moves nothing.
    assert cleanup_lake(lk.config(), now=datetime.now(UTC) + LATER).actions == []


def age_ledger(lk: Lake, days: int) -> None:
    """Make every ledger row older (no loader runs: the test may write the warehouse)."""
    con = duckdb.connect(str(lk.root / "warehouse" / "lake.duckdb"))
    con.execute(f"UPDATE meta.staged_runs SET recorded_at = recorded_at - INTERVAL {days} DAY")
    con.close()


def test_cleanup_deletes_expired_archived_runs_the_ledger_knows(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3, "retention_days = 1\n", PLAIN)
    loaded = [stage(s3.url, "plain", plain(i), storage_options=s3.options) for i in (1, 2)]
    lk.load()
    ids = sorted(m.run_id for m in loaded if m)
    assert s3.runs("archive", "plain") == ids
    # An archived run the ledger does not know (copied in by hand): never touched.
    stranger = hand_run_id(7)
    for key in s3.keys(f"archive/plain/{ids[0]}"):
        put(s3, key.replace(ids[0], stranger), get(s3, key))
    now = datetime.now(UTC)
    assert cleanup_lake(lk.config(), now=now).count("expired_archive") == 0  # not yet
    before = snapshot(s3)
    dry = cleanup_lake(lk.config(), dry_run=True, now=now + timedelta(days=2))
    assert dry.count("expired_archive") == 2 and snapshot(s3) == before
    report = cleanup_lake(lk.config(), now=now + timedelta(days=2))
    assert sorted(a.path for a in report.actions) == [f"{s3.url}/archive/plain/{r}"
                                                      for r in ids]
    assert [k.path for k in report.kept] == [f"{s3.url}/archive/plain/{stranger}"]
    assert s3.runs("archive", "plain") == [stranger]
    assert lk.rows("SELECT count(*) FROM plain") == [(2,)]  # data untouched


def test_cleanup_on_a_bucket_waits_for_the_lock(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3, "abandon_after_hours = 0\n")
    abandon(s3)
    with holding_the_lock(lk.root) as holder:
        result = lake_cli(lk.root, "cleanup", env=s3.env)
        assert result.returncode == 75 and f"pid {holder.pid}" in result.stderr
        assert len(s3.keys("staging")) == 3 and s3.keys("quarantine") == []


def whole(s3: S3, folder: str, names: list[str]) -> bool:
    keys = set(s3.keys(folder))
    return all(f"{folder}/{n}" in keys for n in names)


@pytest.mark.parametrize("point", CLEANUP_POINTS)
def test_a_cleanup_killed_at_any_point_loses_nothing(tmp_path: Path, s3: S3,
                                                     point: str) -> None:
    # abandon_after_hours = 0: the subprocess uses the real clock, so any run is abandoned.
    lk = s3_lake(tmp_path, s3, "abandon_after_hours = 0\n")
    run_id = abandon(s3)
    data = {n: get(s3, f"staging/plain/{run_id}/{n}") for n in
            ("part-00000.parquet", "part-00001.parquet", "_abandoned.json")}
    archived = [stage(s3.url, "logs", pa.table({
        "id": pa.array([i], pa.int64()), "ts": pa.array([0], pa.timestamp("us"))}),
        storage_options=s3.options) for i in (1, 2)]
    lk.load()
    age_ledger(lk, 30)  # archived long ago, past retention_days (7)
    killed = lake_cli(lk.root, "cleanup", env={**s3.env, "LAKE_TEST_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The abandoned run is whole in staging or in quarantine (or both).
    assert (whole(s3, f"staging/plain/{run_id}", list(data))
            or whole(s3, f"quarantine/plain/{run_id}", [*data, "_reason.json"]))
    again = lake_cli(lk.root, "cleanup", "--json", env=s3.env)
    assert again.returncode == 0, again.stderr
    assert s3.keys("staging") == [] and s3.keys("archive") == []
    folder = f"quarantine/plain/{run_id}"
    assert {n: get(s3, f"{folder}/{n}") for n in data} == data
    assert json.loads(get(s3, f"{folder}/_reason.json"))["code"] == "abandoned"
    assert s3.keys("quarantine") == [f"{folder}/{n}" for n in sorted([*data, "_reason.json"])]
    assert ledger(lk)[run_id] == ("quarantined", "abandoned")
    assert lk.rows("SELECT count(*) FROM logs") == [(len([m for m in archived if m]),)]


# -- quarantine ---------------------------------------------------------------------------
def invoke(lk: Lake, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--root", str(lk.root), *args])


def rejected_run(tmp_path: Path, s3: S3) -> tuple[Lake, str]:
    """A plain table that freezes its schema, and a run quarantined for a new column."""
    lk = s3_lake(tmp_path, s3, "", PLAIN)
    stage(s3.url, "plain", plain(1), storage_options=s3.options)
    lk.load()
    bad = stage(s3.url, "plain", pa.table({"id": pa.array([2], pa.int64()), "extra": ["x"]}),
                storage_options=s3.options)
    assert bad is not None
    report = lk.load()
    assert [r.status for r in report.runs] == ["quarantined"]
    return lk, bad.run_id


def allow_new_columns(lk: Lake) -> None:
    toml = lk.root / "lake.toml"
    toml.write_text(toml.read_text().replace("freeze", "add_columns"))


def test_quarantine_list_and_replay_round_trip_in_the_bucket(tmp_path: Path, s3: S3) -> None:
    lk, run_id = rejected_run(tmp_path, s3)
    listed = invoke(lk, "quarantine", "list", "--json")
    assert listed.exit_code == 0, listed.output
    [entry] = json.loads(listed.output)
    assert (entry["run_id"], entry["code"], entry["kind"], entry["path"]) == (
        run_id, "schema_change", "run", f"{s3.url}/quarantine/plain/{run_id}")
    assert "schema_change" in invoke(lk, "quarantine", "list").output
    assert ledger(lk)[run_id] == ("quarantined", "schema_change")
    before = snapshot(s3)
    dry = invoke(lk, "quarantine", "replay", run_id, "--dry-run")
    assert dry.exit_code == 0 and dry.output.startswith("would move run ")
    assert snapshot(s3) == before and run_id in ledger(lk)
    allow_new_columns(lk)
    replay = invoke(lk, "quarantine", "replay", run_id)
    assert replay.exit_code == 0, replay.output
    assert replay.output == (f"moved run {s3.url}/quarantine/plain/{run_id} -> "
                             f"{s3.url}/staging/plain/{run_id}; the next `lake load` retries it\n")
    assert s3.keys("quarantine") == [] and run_id not in ledger(lk)
    staged = f"staging/plain/{run_id}"
    for key in before:  # copied back byte for byte, the reason too (as a local move keeps it)
        if key.startswith("quarantine/"):
            assert get(s3, key.replace(f"quarantine/plain/{run_id}", staged)) == before[key]
    again = lk.load()
    assert [r.status for r in again.runs] == ["loaded"]
    assert lk.rows("SELECT id, extra FROM plain ORDER BY id") == [(1, None), (2, "x")]
    assert ledger(lk)[run_id] == ("loaded", None)
    assert s3.keys("staging") == [] and run_id in s3.runs("archive", "plain")
    assert invoke(lk, "quarantine", "list").output.strip() == "quarantine is empty"


def test_replay_refuses_to_overwrite_another_run_in_staging(tmp_path: Path, s3: S3) -> None:
    lk, run_id = rejected_run(tmp_path, s3)
    put(s3, f"staging/plain/{run_id}/_manifest.json", b'{"another": "run"}')
    result = lake_cli(lk.root, "quarantine", "replay", run_id, env=s3.env)
    assert result.returncode == 2 and "already exists in staging" in result.stderr
    assert s3.runs("quarantine", "plain") == [run_id] and run_id in ledger(lk)


def test_replay_never_follows_a_hostile_run_id_in_a_manifest(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3, "", PLAIN)
    staged = stage(s3.url, "plain", plain(1), storage_options=s3.options)
    assert staged is not None
    key = f"staging/plain/{staged.run_id}/_manifest.json"
    doc = json.loads(get(s3, key))
    put(s3, key, json.dumps({**doc, "run_id": "../../outside"}).encode())
    assert [r.reason_code for r in lk.load().runs] == ["manifest_mismatch"]
    result = replay_run(lk.config(), staged.run_id)
    assert result.staged == f"{s3.url}/staging/plain/{staged.run_id}"
    assert s3.runs("staging", "plain") == [staged.run_id] and s3.keys("quarantine") == []
    assert not [k for k in s3.keys() if "outside" in k]


def test_replay_of_dropped_rows_in_the_bucket_stages_a_new_run(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    ts = datetime(2026, 3, 1, 12, 0)
    first = stage(s3.url, "readings", pa.table({"sensor": ["s-1", "s-2"], "ts": [ts, ts],
                                                "celsius": [20.0, 99.0]}),
                  storage_options=s3.options)
    assert first is not None
    assert lk.load().runs[0].rows_rejected == 1
    key = f"quarantine/readings/{first.run_id}/_rejected_rows.parquet"
    fixed = pq.read_table(io.BytesIO(get(s3, key))).set_column(2, "celsius", pa.array([21.5]))
    sink = io.BytesIO()
    pq.write_table(fixed, sink)
    put(s3, key, sink.getvalue())  # the operator corrected the reading
    assert [q.kind for q in list_quarantine(lk.config())] == ["rejected_rows"]
    result = replay_run(lk.config(), first.run_id)
    assert result.kind == "rejected_rows" and s3.keys("quarantine") == []
    new_run = result.staged.rsplit("/", 1)[1]
    assert result.staged == f"{s3.url}/staging/readings/{new_run}"
    manifest = json.loads(get(s3, f"staging/readings/{new_run}/_manifest.json"))
    assert manifest["producer"] == "replay"
    assert manifest["extra"] == {"replayed_from": f"{s3.url}/quarantine/readings/{first.run_id}"}
    again = lk.load()
    assert [r.status for r in again.runs] == ["loaded"]
    assert lk.rows("SELECT sensor, celsius FROM readings ORDER BY sensor") == [
        ("s-1", 20.0), ("s-2", 21.5)]


def run_files(s3: S3, kind: str, run_id: str) -> dict[str, bytes]:
    return {k.rsplit("/", 1)[1]: get(s3, k) for k in s3.keys(f"{kind}/plain/{run_id}")}


@pytest.mark.parametrize("point", REPLAY_POINTS)
def test_a_replay_killed_at_any_point_loses_nothing(tmp_path: Path, s3: S3,
                                                    point: str) -> None:
    lk, run_id = rejected_run(tmp_path, s3)
    allow_new_columns(lk)
    original = run_files(s3, "quarantine", run_id)
    data = {n: b for n, b in original.items() if n != "_reason.json"}
    killed = lake_cli(lk.root, "quarantine", "replay", run_id,
                      env={**s3.env, "LAKE_TEST_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Whole in quarantine, or else whole in staging with the ledger row already forgotten.
    in_staging = run_files(s3, "staging", run_id)
    assert original == run_files(s3, "quarantine", run_id) or (
        {n: in_staging.get(n) for n in data} == data and run_id not in ledger(lk))
    again = lake_cli(lk.root, "quarantine", "replay", run_id, env=s3.env)
    assert again.returncode == 0, again.stderr
    assert s3.keys("quarantine") == [] and run_files(s3, "staging", run_id) == original
    loaded = lake_cli(lk.root, "load", "--json", env=s3.env)
    assert loaded.returncode == 0, loaded.stderr
    assert lk.rows("SELECT id, extra FROM plain ORDER BY id") == [(1, None), (2, "x")]
    assert ledger(lk)[run_id] == ("loaded", None)


def test_a_load_after_a_replay_killed_before_the_ledger_puts_the_run_back(
        tmp_path: Path, s3: S3) -> None:
    """Killed after the copy and before the ledger forgot the run: the run is committed in
    staging and quarantined in the ledger, so the load finishes the quarantine (nothing is
    lost), and the replay can simply be run again."""
    lk, run_id = rejected_run(tmp_path, s3)
    allow_new_columns(lk)
    killed = lake_cli(lk.root, "quarantine", "replay", run_id,
                      env={**s3.env, "LAKE_TEST_CRASH_AT": "store.copied"})
    assert killed.returncode == -signal.SIGKILL
    assert [r.status for r in lk.load().runs] == ["recovered"]
    assert s3.keys("staging") == [] and s3.runs("quarantine", "plain") == [run_id]
    assert json.loads(get(s3, f"quarantine/plain/{run_id}/_reason.json"))["code"] == (
        "schema_change")
    replay_run(lk.config(), run_id)
    assert [r.status for r in lk.load().runs] == ["loaded"]
    assert lk.rows("SELECT count(*) FROM plain") == [(2,)]


def test_a_load_between_a_killed_replay_and_its_retry_loads_the_run_once(
        tmp_path: Path, s3: S3) -> None:
    """Killed while deleting from quarantine, then a load: the staged copy loads and a
    remainder stays in quarantine. Replaying that remainder is harmless: the ledger's
    loaded row makes the next load only archive it."""
    lk, run_id = rejected_run(tmp_path, s3)
    allow_new_columns(lk)
    killed = lake_cli(lk.root, "quarantine", "replay", run_id,
                      env={**s3.env, "LAKE_TEST_CRASH_AT": "store.mid_delete"})
    assert killed.returncode == -signal.SIGKILL
    assert [r.status for r in lk.load().runs] == ["loaded"]
    assert s3.runs("quarantine", "plain") == [run_id]  # the remainder, with its manifest
    replay_run(lk.config(), run_id)
    assert [r.status for r in lk.load().runs] == ["recovered"]
    assert lk.rows("SELECT id FROM plain ORDER BY id") == [(1,), (2,)]
    assert s3.keys("quarantine") == [] and s3.keys("staging") == []
    assert ledger(lk)[run_id] == ("loaded", None)


# -- audit --------------------------------------------------------------------------------
def test_audit_reads_staging_quarantine_and_archive_from_the_bucket(tmp_path: Path,
                                                                    s3: S3) -> None:
    lk, bad = rejected_run(tmp_path, s3)
    waiting = stage(s3.url, "plain", plain(5), storage_options=s3.options)
    assert waiting is not None
    dropped = abandon(s3)
    # A loaded run copied back into staging: the ledger accounts for it (a move to finish).
    [done] = [r for r in s3.runs("archive", "plain")]
    for key in s3.keys(f"archive/plain/{done}"):
        put(s3, key.replace("archive/", "staging/", 1), get(s3, key))
    now = datetime.now(UTC) + timedelta(hours=2)
    report = audit_lake(lk.config(), now=now)
    p = report.payload
    assert tuple(p) == AUDIT_KEYS and json.loads(json.dumps(p)) == p
    assert p["root"] == str(lk.root) and p["staging_root"] == s3.url
    committed = p["staging"]["committed"]
    assert (committed["count"], committed["by_table"], committed["oldest_run_id"]) == (
        1, {"plain": 1}, waiting.run_id)
    assert 1.9 < committed["oldest_age_hours"] < 2.1
    [uncommitted] = p["staging"]["uncommitted"]["runs"]
    assert uncommitted["path"] == f"{s3.url}/staging/plain/{dropped}"
    assert uncommitted["abandoned_marker"] is True and 1.9 < uncommitted["age_hours"] < 2.1
    assert p["staging"]["temp_files"]["count"] == 0
    q = p["quarantine"]
    assert q["count"] == 1 and q["tables"]["plain"]["reasons"] == {"schema_change": 1}
    assert q["tables"]["plain"]["oldest_run_id"] == bad
    ledger_part = p["ledger"]
    assert ledger_part["archived_runs"] == 1 and ledger_part["archive_not_in_ledger"] == []
    assert ledger_part["unfinished_moves"] == [{
        "table": "plain", "run_id": done, "status": "loaded",
        "path": f"{s3.url}/staging/plain/{done}"}]
    codes = {x["code"] for x in report.problems}
    assert {"backlog", "quarantined_runs", "ledger_unfinished_move"} <= codes
    assert "abandoned_runs" not in codes  # 2 h < abandon_after_hours
    later = audit_lake(lk.config(), now=now + timedelta(days=1))
    [abandoned] = [x for x in later.problems if x["code"] == "abandoned_runs"]
    assert abandoned["path"] == f"{s3.url}/staging/plain/{dropped}"
    assert f"(staging in {s3.url})" in render_audit(report).splitlines()[0]


def test_audit_compares_the_bucket_archive_with_the_snapshot_ledger(tmp_path: Path,
                                                                    s3: S3) -> None:
    lk = s3_lake(tmp_path, s3, "", PLAIN)
    first = stage(s3.url, "plain", plain(1), storage_options=s3.options)
    assert first is not None
    lk.load()
    stranger = hand_run_id(9)  # archived by hand: unknown to the ledger
    for key in s3.keys(f"archive/plain/{first.run_id}"):
        put(s3, key.replace(first.run_id, stranger), get(s3, key))
    behind = audit_lake(lk.config()).payload["ledger"]
    # Archived after the snapshot was published: the snapshot cannot know it yet.
    assert behind["archived_after_snapshot"] == [{
        "table": "plain", "run_id": stranger, "path": f"{s3.url}/archive/plain/{stranger}"}]
    assert behind["archive_not_in_ledger"] == []
    stage(s3.url, "plain", plain(2), storage_options=s3.options)
    lk.load()  # publishes a newer snapshot that still does not know the stranger
    report = audit_lake(lk.config(), thresholds=AuditThresholds(clock_skew_minutes=0))
    [problem] = [x for x in report.problems if x["code"] == "archive_not_in_ledger"]
    assert problem["path"] == f"{s3.url}/archive/plain/{stranger}" and report.has_errors
    assert f"{s3.url}/staging/plain/{stranger}/" in problem["fix"]
    # With the default allowance for the store's clock, a run archived moments before the
    # snapshot is not called missing yet.
    relaxed = audit_lake(lk.config()).payload["ledger"]
    assert relaxed["archive_not_in_ledger"] == [] and len(relaxed["archived_after_snapshot"]) == 1


def test_audit_reports_an_unreachable_store_as_a_problem(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    toml = lk.root / "lake.toml"
    toml.write_text(toml.read_text().replace(s3.endpoint, "http://127.0.0.1:9"))
    report = audit_lake(lk.config())
    [problem] = [x for x in report.problems if x["code"] == "staging_unavailable"]
    assert problem["severity"] == "error" and "cannot list" in problem["message"]
    assert report.payload["staging"]["committed"]["count"] == 0
    assert report.payload["tables"]["plain"]["declared"]  # the warehouse part still ran
