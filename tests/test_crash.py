"""Crash safety (DESIGN.md invariants 1, 3, 5, 6): the loader SIGKILLed, or the disk state a crash
leaves behind arranged by hand; then the next `lake load` finishes the job exactly once.

Every check reads the root from the outside: folders, and the DuckDB files opened read-only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from chaos_procs import (
    KEY_COLUMN,
    ledger_counts,
    query_db,
    rows_by_run,
    rows_for,
    run_folders,
    table_exists,
    temp_files,
)
from conftest import LAKE_TOML, Lake, lake_cli, make_root

from lakehouse import failpoints

TABLES = ("plain", "logs", "events")  # append, keyed partitioned append, upsert
RUNS_PER_TABLE = 4
BATCH_MAX_RUNS = 2  # so one load spans several transactions per table


def batched_toml(batch_max_runs: int, retention_days: int = 7) -> str:
    """The test contracts with a small batch size (a load spans many transactions)."""
    return LAKE_TOML.replace(
        "retention_days = 7",
        f"retention_days = {retention_days}\nbatch_max_runs = {batch_max_runs}")


@dataclass
class Staged:
    """What the test committed to staging: run id -> (table, first key, rows)."""

    runs: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def of(self, table: str) -> dict[str, tuple[str, int, int]]:
        return {r: v for r, v in self.runs.items() if v[0] == table}

    def keys(self, table: str) -> set[int]:
        return {k for _, first, n in self.of(table).values() for k in range(first, first + n)}

    def rows(self, table: str) -> int:
        return sum(n for _, _, n in self.of(table).values())


def stage_known(root: Path, staged: Staged, runs_per_table: int, *,
                tables: tuple[str, ...] = TABLES, rows_min: int = 3, rows_max: int = 6,
                rng: random.Random | None = None) -> None:
    """Commit ``runs_per_table`` runs per table, interleaved, with keys unique per table."""
    from staging import stage_run

    rng = rng or random.Random(7)
    for _ in range(runs_per_table):
        for table in tables:
            first = 1 + max((f + n for t, f, n in staged.runs.values() if t == table), default=0)
            count = rng.randint(rows_min, rows_max)
            data = rows_for(table, first, count)
            with stage_run(root, table, producer="crash") as run:
                if count >= 4:  # some runs have two files
                    run.write(data.slice(0, 2))
                    run.write(data.slice(2))
                else:
                    run.write(data)
            staged.runs[run.run_id] = (table, first, count)


def crash_root(tmp_path: Path, batch_max_runs: int = BATCH_MAX_RUNS) -> Lake:
    lk = Lake(make_root(tmp_path / "lake", toml=batched_toml(batch_max_runs)))
    lk.init()
    return lk


def where_is(root: Path, table: str, run_id: str) -> list[str]:
    """The areas (staging, archive, quarantine) holding a folder of this run."""
    return [area for area in ("staging", "archive", "quarantine")
            if any(name == run_id or name.startswith(f"{run_id}.")
                   for name in run_folders(root, area, table))]


def assert_all_or_none(root: Path, staged: Staged) -> dict[str, str]:
    """Invariants 3 and 6 at any instant: each run is wholly in the warehouse and the ledger,
    or in neither and still in staging; nothing left staging unaccounted for.

    Returns run id -> "committed" | "pending".
    """
    db = root / "warehouse" / "lake.duckdb"
    ledger = ledger_counts(db)
    state: dict[str, str] = {}
    per_table = {t: rows_by_run(db, t) for t in {t for t, _, _ in staged.runs.values()}}
    for run_id, (table, _, rows) in staged.runs.items():
        areas = where_is(root, table, run_id)
        loaded = per_table[table].get(run_id, 0)
        if run_id in ledger:
            assert ledger[run_id] == [(table, "loaded", rows)], (run_id, ledger[run_id])
            assert loaded == rows, f"{run_id}: ledger says loaded, warehouse holds {loaded}/{rows}"
            assert areas in (["staging"], ["archive"]), (run_id, areas)
            state[run_id] = "committed"
        else:
            assert loaded == 0, f"{run_id}: {loaded} rows in the warehouse without a ledger row"
            assert areas == ["staging"], f"{run_id} left staging without a ledger row: {areas}"
            state[run_id] = "pending"
    return state


def table_dump(db: Path, table: str) -> list[tuple[Any, ...]]:
    if not table_exists(db, table):
        return []
    return query_db(db, f'SELECT * FROM "{table}" ORDER BY {KEY_COLUMN[table]}')


def assert_exactly_once(root: Path, staged: Staged, *, check_temp: bool = True) -> None:
    """Every committed run is in the warehouse once, archived once, out of staging; the
    published snapshot shows the same rows."""
    db = root / "warehouse" / "lake.duckdb"
    snapshot = root / "warehouse" / "lake.read.duckdb"
    ledger = ledger_counts(db)
    for table in {t for t, _, _ in staged.runs.values()}:
        key = KEY_COLUMN[table]
        count, distinct = query_db(db, f'SELECT count(*), count(DISTINCT {key}) FROM "{table}"')[0]
        assert (count, distinct) == (staged.rows(table), staged.rows(table)), table
        keys = {r[0] for r in query_db(db, f'SELECT {key} FROM "{table}"')}
        assert keys == staged.keys(table), table
        expected_runs = {r: n for r, (_, _, n) in staged.of(table).items()}
        assert rows_by_run(db, table) == expected_runs, table
        assert table_dump(snapshot, table) == table_dump(db, table), (
            f"published snapshot of {table} differs from the warehouse")
        for run_id in expected_runs:
            assert run_id not in run_folders(root, "staging", table), run_id
        archived = [n for n in run_folders(root, "archive", table) if n in expected_runs
                    or n.split(".")[0] in expected_runs]
        assert sorted(archived) == sorted(expected_runs), f"archive of {table}: {archived}"
        assert run_folders(root, "quarantine", table) == []
    for run_id, (table, _, rows) in staged.runs.items():
        assert ledger.get(run_id) == [(table, "loaded", rows)], (run_id, ledger.get(run_id))
    ledger_sql = "SELECT run_id, status, rows_loaded FROM meta.staged_runs ORDER BY run_id"
    assert query_db(snapshot, ledger_sql) == query_db(db, ledger_sql)
    assert not (root / "archive" / ".trash").exists() or not any(
        (root / "archive" / ".trash").iterdir())
    if check_temp:
        assert temp_files(root / "warehouse") == []
        assert temp_files(root / "staging") == []
    assert not (root / "warehouse" / "lake.lock.json").exists(), "holder note left behind"


def load_json(root: Path, **env: str) -> dict[str, Any]:
    proc = lake_cli(root, "load", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


# -- the loader SIGKILLed at every named point -------------------------------------------------
# How many runs have committed when the loader dies there: the load goes table by table
# (plain first: it was staged first), BATCH_MAX_RUNS runs per transaction.
COMMITTED_AT = {"load.after_lock": 0, "load.after_verify": 0, "load.before_commit": 0,
                "load.after_commit": BATCH_MAX_RUNS, "load.mid_archive": BATCH_MAX_RUNS,
                "load.after_archive": RUNS_PER_TABLE * len(TABLES),
                "load.before_publish": RUNS_PER_TABLE * len(TABLES)}


def test_crash_points_are_the_ones_tested() -> None:
    assert set(COMMITTED_AT) == set(failpoints.named("load"))


@pytest.mark.parametrize("point", failpoints.named("load"))
def test_sigkill_at_crash_point_then_load_finishes_exactly_once(tmp_path: Path,
                                                                point: str) -> None:
    lk = crash_root(tmp_path)
    staged = Staged()
    stage_known(lk.root, staged, RUNS_PER_TABLE)
    snapshot = lk.root / "warehouse" / "lake.read.duckdb"
    published_before = snapshot.stat().st_ino

    crashed = lake_cli(lk.root, "load", env={"LAKE_TEST_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)

    state = assert_all_or_none(lk.root, staged)
    committed = [r for r, s in state.items() if s == "committed"]
    assert len(committed) == COMMITTED_AT[point]
    # Committed runs still in staging are what the next load must only finish moving.
    unmoved = {r for r in committed if where_is(lk.root, staged.runs[r][0], r) == ["staging"]}
    assert snapshot.stat().st_ino == published_before, "published before the crash point?"

    report = load_json(lk.root)
    recovered = {r["run_id"] for r in report["runs"] if r["status"] == "recovered"}
    loaded = {r["run_id"] for r in report["runs"] if r["status"] == "loaded"}
    assert recovered == unmoved
    assert loaded == set(staged.runs) - set(committed)
    assert report["runs_quarantined"] == report["runs_skipped"] == 0
    assert_exactly_once(lk.root, staged)

    assert lk.load().runs == []  # and once more: nothing to do, nothing changes
    assert_exactly_once(lk.root, staged)


@pytest.mark.parametrize("point", ["load.after_commit", "load.mid_archive",
                                   "load.after_archive", "load.before_publish"])
def test_recovery_only_load_publishes_what_the_killed_load_committed(tmp_path: Path,
                                                                     point: str) -> None:
    """The killed load committed its only batch but never published; the next load has nothing
    new to merge, and must still publish (invariant 5: readers see every committed run)."""
    lk = crash_root(tmp_path)
    staged = Staged()
    stage_known(lk.root, staged, BATCH_MAX_RUNS, tables=("logs",))  # exactly one batch
    crashed = lake_cli(lk.root, "load", env={"LAKE_TEST_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert set(assert_all_or_none(lk.root, staged).values()) == {"committed"}
    load_json(lk.root)
    assert_exactly_once(lk.root, staged)


def test_sigkill_twice_in_a_row_then_load(tmp_path: Path) -> None:
    """A load killed after its first commit, and the recovery load killed mid-archive."""
    lk = crash_root(tmp_path)
    staged = Staged()
    stage_known(lk.root, staged, RUNS_PER_TABLE)
    for point in ("load.after_commit", "load.mid_archive", "load.before_commit"):
        proc = lake_cli(lk.root, "load", env={"LAKE_TEST_CRASH_AT": point})
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert_all_or_none(lk.root, staged)
    load_json(lk.root)
    assert_exactly_once(lk.root, staged)


# -- the disk state a crash leaves behind, arranged by hand ------------------------------------
@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("how", ["moved", "copied"])
def test_committed_run_left_in_staging_is_recovered_not_loaded_twice(lake: Lake, table: str,
                                                                     how: str) -> None:
    """The ledger row committed, the move out of staging did not happen (killed between)."""
    staged = Staged()
    stage_known(lake.root, staged, 2, tables=(table,))
    first = lake.load()
    assert first.count("loaded") == 2
    run_id = sorted(staged.runs)[0]
    archived = lake.root / "archive" / table / run_id
    back = lake.root / "staging" / table / run_id
    if how == "moved":
        os.rename(archived, back)
    else:
        shutil.copytree(archived, back)
    stage_known(lake.root, staged, 1, tables=(table,))  # and one new run beside it

    report = lake.load()
    statuses = {r.run_id: r.status for r in report.runs}
    assert statuses == {run_id: "recovered", max(staged.runs): "loaded"}
    assert lake.staged(table) == []
    if how == "moved":
        assert lake.archived(table) == sorted(staged.runs)
    else:  # the copy and the original: both kept, neither loaded again
        assert set(lake.archived(table)) >= set(staged.runs)
    assert_exactly_once(lake.root, staged)


def test_quarantined_run_left_in_staging_is_moved_to_quarantine_not_loaded(lake: Lake) -> None:
    """A quarantine move cut short: the run is verified again (a quarantined run has no rows
    in the table), fails the same way and ends in quarantine under its one ledger row."""
    import datetime as dt

    bad = pa.table({"event_id": [1], "ts": [dt.datetime(2026, 1, 1)], "kind": ["nope"],
                    "amount": [1.0]})
    manifest = lake.stage("events", bad)
    run_id = manifest.run_id
    assert lake.load().count("quarantined") == 1
    os.rename(lake.root / "quarantine" / "events" / run_id,
              lake.root / "staging" / "events" / run_id)

    report = lake.load()
    assert [(r.run_id, r.status, r.reason_code) for r in report.runs] == [
        (run_id, "quarantined", "contract_violation")]
    assert lake.staged("events") == []
    assert lake.quarantined("events") == [run_id]
    assert lake.ledger() == {run_id: "quarantined"}
    assert lake.rows("SELECT count(*) FROM meta.staged_runs") == [(1,)]
    assert lake.reason("events", run_id)["code"]


def test_leftover_trash_is_removed_by_the_next_load(lake: Lake) -> None:
    """A delete (retention 0, or a replaced quarantine) killed halfway leaves only trash."""
    trash = lake.root / "archive" / ".trash" / f"plain--{uuid.uuid4().hex}--deadbeef"
    trash.mkdir(parents=True)
    (trash / "part-00000.parquet").write_bytes(b"PAR1 half of a file")
    (trash / "nested").mkdir()
    (trash / "nested" / "x").write_bytes(b"x")
    staged = Staged()
    stage_known(lake.root, staged, 1)

    report = lake.load()
    assert report.count("loaded") == len(TABLES)
    assert list((lake.root / "archive" / ".trash").iterdir()) == []
    assert ".trash" not in lake.archived("plain")
    assert_exactly_once(lake.root, staged)


def test_leftover_trash_is_removed_even_when_nothing_is_pending(lake: Lake) -> None:
    trash = lake.root / "archive" / ".trash" / "events--x--00000000"
    trash.mkdir(parents=True)
    (trash / "_manifest.json").write_text("{}")
    assert lake.load().runs == []
    assert list((lake.root / "archive" / ".trash").iterdir()) == []


def test_half_written_temp_files_are_ignored(lake: Lake) -> None:
    """A producer or a publish killed mid-write leaves ``<name>.tmp-<uuid>``: nobody reads it."""
    staged = Staged()
    stage_known(lake.root, staged, 1)
    # In a committed run: a torn extra file that never got its rename.
    plain_run = next(r for r, (t, _, _) in staged.runs.items() if t == "plain")
    torn = (lake.root / "staging" / "plain" / plain_run
            / f"part-00009.parquet.tmp-{uuid.uuid4().hex}")
    torn.write_bytes(b"PAR1\x00\x01 torn")
    # A run that never committed: only temp files, no manifest.
    uncommitted = lake.root / "staging" / "logs" / "20260101T000000.000000Z-dead-0badc0de"
    uncommitted.mkdir(parents=True)
    (uncommitted / f"part-00000.parquet.tmp-{uuid.uuid4().hex}").write_bytes(b"PAR1")
    (uncommitted / f"_manifest.json.tmp-{uuid.uuid4().hex}").write_bytes(b'{"format": "la')
    # In warehouse/: a publish killed mid-copy, and some other torn temp file.
    warehouse = lake.root / "warehouse"
    (warehouse / f"lake.read.duckdb.tmp-{uuid.uuid4().hex}").write_bytes(b"\x00" * 4096)
    (warehouse / f"lake.lock.json.tmp-{uuid.uuid4().hex}").write_bytes(b'{"pid"')

    report = lake.load()
    assert report.count("loaded") == len(TABLES) and not report.rejected
    assert lake.staged("logs") == [uncommitted.name]  # left alone: never committed
    assert uncommitted.name not in lake.ledger()
    assert_exactly_once(lake.root, staged, check_temp=False)
    # The published snapshot is a real database, not the torn temp file.
    proc = lake_cli(lake.root, "query", "SELECT count(*) AS n FROM plain", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["n", str(staged.rows("plain"))]


# -- SIGKILL at random moments ---------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_at_random_moments_then_exactly_once(tmp_path: Path) -> None:
    iterations = int(os.environ.get("LAKE_SLOW_ITERATIONS", "15"))
    seed = int(os.environ.get("LAKE_SLOW_SEED", "20261123"))
    rng = random.Random(seed)
    lk = crash_root(tmp_path, batch_max_runs=5)
    staged = Staged()
    stage_known(lk.root, staged, 200 // len(TABLES), rows_min=1, rows_max=5, rng=rng)
    outcomes: list[int] = []
    committed: list[int] = []  # runs committed after each kill
    for i in range(iterations):
        proc = subprocess.Popen(
            [sys.executable, "-m", "loader.cli", "--root", str(lk.root), "load"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        time.sleep(rng.uniform(0.05, 1.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        outcomes.append(proc.returncode)
        assert proc.returncode in (0, -signal.SIGKILL), (i, proc.returncode, err)
        state = assert_all_or_none(lk.root, staged)
        committed.append(sum(1 for s in state.values() if s == "committed"))
        # Keep a backlog: producers go on committing between the crashes.
        stage_known(lk.root, staged, rng.randint(2, 6), rows_min=1, rows_max=5, rng=rng)
    final = lake_cli(lk.root, "load")
    assert final.returncode == 0, final.stderr
    assert outcomes.count(-signal.SIGKILL) >= iterations // 2, (
        f"too few kills landed mid-load (seed {seed}): {outcomes}")
    assert committed[-1] > 0, f"no load ever committed between the kills (seed {seed})"
    # A kill mid-publish may leave a snapshot temp file in warehouse/ (`lake cleanup` removes
    # it); everything else must be exactly once.
    assert_exactly_once(lk.root, staged, check_temp=False)
    assert temp_files(lk.root / "staging") == []
