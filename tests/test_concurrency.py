"""Concurrency (DESIGN.md invariants 3, 4, 5, 6): producers stage while loaders load and readers
read, all real processes on one real lake root; every committed row lands exactly once, a
second loader exits 75 naming the holder, readers never fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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
)
from conftest import LAKE_TOML, Lake, lake_cli, make_root

CHAOS = Path(__file__).resolve().parent / "chaos_procs.py"
EXIT_BUSY = 75


def lake_root(tmp_path: Path, batch_max_runs: int) -> Lake:
    toml = LAKE_TOML.replace("retention_days = 7",
                             f"retention_days = 7\nbatch_max_runs = {batch_max_runs}")
    lk = Lake(make_root(tmp_path / "lake", toml=toml))
    lk.init()
    return lk


def spawn(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHAOS), *args], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float) -> None:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args!r} did not finish in {timeout}s: {err[-2000:]}") from None
    assert proc.returncode == 0, (proc.args, out[-2000:], err[-2000:])


@dataclass
class Chaos:
    """What the helper processes reported."""

    committed: list[dict[str, Any]]
    abandoned: list[dict[str, Any]]
    calls: list[dict[str, Any]]
    reads: list[dict[str, int]]
    read_errors: list[str]


def run_chaos(tmp_path: Path, root: Path, *, producers: int, runs: int, tables: str,
              loaders: int, lock_timeouts: list[float], pause_max: float) -> Chaos:
    """Producers stage while loader loops load and a reader reads; return their reports."""
    stop = tmp_path / "stop"
    out = tmp_path / "reports"
    out.mkdir()
    prods = [spawn(tmp_path, "produce", "--root", str(root), "--producer-id", str(p),
                   "--tables", tables, "--runs", str(runs), "--rows-max", "25",
                   "--abandon-every", "9", "--pause-max", str(pause_max), "--seed", str(p),
                   "--out", str(out / f"producer-{p}.json"))
             for p in range(1, producers + 1)]
    loops = [spawn(tmp_path, "load-loop", "--root", str(root), "--stop-file", str(stop),
                   "--name", f"loader-{n}", "--seed", str(n),
                   "--lock-timeout", str(lock_timeouts[n % len(lock_timeouts)]),
                   "--out", str(out / f"loader-{n}.json"))
             for n in range(loaders)]
    reader = spawn(tmp_path, "read-loop", "--root", str(root), "--stop-file", str(stop),
                   "--tables", tables, "--out", str(out / "reader.json"))
    try:
        for proc in prods:
            finish(proc, timeout=600)
    finally:
        stop.touch()  # each loader loop runs one more load after this, then exits
    for proc in [*loops, reader]:
        finish(proc, timeout=600)

    committed, abandoned = [], []
    for p in range(1, producers + 1):
        report = json.loads((out / f"producer-{p}.json").read_text())
        committed += report["committed"]
        abandoned += report["abandoned"]
    calls = [c for n in range(loaders)
             for c in json.loads((out / f"loader-{n}.json").read_text())["calls"]]
    reader_report = json.loads((out / "reader.json").read_text())
    return Chaos(committed, abandoned, calls, reader_report["reads"], reader_report["errors"])


def assert_loader_calls(calls: list[dict[str, Any]]) -> None:
    """Every loader exited 0, or 75 while another load overlapped it."""
    for c in calls:
        assert c["rc"] in (0, EXIT_BUSY), (c["rc"], c["stderr"])
        if c["rc"] == EXIT_BUSY:
            assert overlapping_pids(c, calls), f"exit 75 while no other load ran: {c}"
            line = c["stderr"].strip()
            assert line.startswith("lake: warehouse busy:") and len(line.splitlines()) == 1, line


def overlapping_pids(call: dict[str, Any], calls: list[dict[str, Any]]) -> set[int]:
    return {o["pid"] for o in calls if o["loop"] != call["loop"]
            and o["start"] < call["end"] and o["end"] > call["start"]}


def assert_busy_errors_name_the_holder(calls: list[dict[str, Any]]) -> None:
    """Invariant 4: the busy error names the holder (pid, host, since when)."""
    host = socket.gethostname()
    for c in calls:
        if c["rc"] != EXIT_BUSY:
            continue
        line = c["stderr"].strip()
        overlapping = overlapping_pids(c, calls)
        named = [pid for pid in overlapping if f"pid {pid} " in line]
        assert named, f"the busy error names no overlapping loader {sorted(overlapping)}: {line}"
        assert f"on {host}" in line and " since " in line, line


def assert_landed_exactly_once(root: Path, chaos: Chaos, tables: list[str]) -> None:
    db = root / "warehouse" / "lake.duckdb"
    snapshot = root / "warehouse" / "lake.read.duckdb"
    ledger = ledger_counts(db)
    for table in tables:
        mine = [r for r in chaos.committed if r["table"] == table]
        expected = {k for r in mine for k in range(r["first"], r["first"] + r["rows"])}
        key = KEY_COLUMN[table]
        count, distinct = query_db(db, f'SELECT count(*), count(DISTINCT {key}) FROM "{table}"')[0]
        assert count == sum(r["rows"] for r in mine), table
        assert distinct == count, f"{table}: {count - distinct} keys loaded twice"
        assert {k for (k,) in query_db(db, f'SELECT {key} FROM "{table}"')} == expected, table
        assert rows_by_run(db, table) == {r["run_id"]: r["rows"] for r in mine}, table
        assert query_db(snapshot, f'SELECT count(*), count(DISTINCT {key}) FROM "{table}"')[0] \
            == (count, distinct), f"published snapshot of {table} is not the warehouse"
        archived = set(run_folders(root, "archive", table))
        staged = set(run_folders(root, "staging", table))
        for r in mine:
            assert ledger.get(r["run_id"]) == [(table, "loaded", r["rows"])], r
            assert r["run_id"] in archived and r["run_id"] not in staged, r
        assert run_folders(root, "quarantine", table) == []
    for r in chaos.abandoned:  # never committed: never loaded, left for `lake cleanup`
        assert r["run_id"] not in ledger, r
        run = root / "staging" / r["table"] / r["run_id"]
        assert (run / "_abandoned.json").exists() and not (run / "_manifest.json").exists()
    assert len(ledger) == len(chaos.committed)


def assert_readers_never_failed(chaos: Chaos, tables: list[str]) -> None:
    assert chaos.read_errors == []
    assert chaos.reads, "the reader never managed a read"
    for table in tables:  # append-only tables: a published snapshot never goes back in time
        counts = [r[table] for r in chaos.reads]
        assert counts == sorted(counts), f"{table} snapshot went backwards: {counts}"


def test_producers_loaders_and_a_reader_at_once(tmp_path: Path) -> None:
    lk = lake_root(tmp_path, batch_max_runs=4)
    tables = ["logs", "plain"]
    chaos = run_chaos(tmp_path, lk.root, producers=3, runs=45, tables=",".join(tables),
                      loaders=2, lock_timeouts=[0.0], pause_max=0.15)
    final = lake_cli(lk.root, "load")
    assert final.returncode == 0, final.stderr

    assert len(chaos.committed) == 3 * (45 - 45 // 9)
    assert_loader_calls(chaos.calls)
    during = [c for c in chaos.calls if c["rc"] == 0 and c["runs_loaded"]]
    assert during, "no load ran while the producers staged"
    assert_landed_exactly_once(lk.root, chaos, tables)
    assert_readers_never_failed(chaos, tables)
    assert_busy_errors_name_the_holder(chaos.calls)


def stage_backlog(root: Path, runs: int, table: str = "logs") -> int:
    """Commit ``runs`` small runs; return how many rows."""
    from staging import stage

    total = 0
    for n in range(runs):
        stage(root, table, rows_for(table, n * 10, 5), producer="backlog")
        total += 5
    return total


def lake_load_proc(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "loader.cli", "--root", str(root), "load",
                             "--json", *args], cwd=str(root.parent),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_loaders_started_at_once_one_exits_75_naming_the_holder(tmp_path: Path) -> None:
    lk = lake_root(tmp_path, batch_max_runs=2)  # a slow load: many transactions
    rows = stage_backlog(lk.root, 160)
    procs = [lake_load_proc(lk.root), lake_load_proc(lk.root)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p, p.returncode, out, err))
    codes = sorted(r[1] for r in results)
    assert lk.rows("SELECT count(*), count(DISTINCT id) FROM logs") == [(rows, rows)]
    assert lk.rows("SELECT count(*), count(DISTINCT run_id) FROM meta.staged_runs") == [
        (160, 160)]
    assert lk.staged("logs") == []
    if codes == [0, 0]:  # allowed only if they did not overlap: then one found nothing to do
        loaded = sorted(json.loads(r[2])["runs_loaded"] for r in results)
        assert loaded == [0, 160], loaded
        return
    assert codes == [0, EXIT_BUSY], [(r[1], r[3]) for r in results]
    winner = next(r for r in results if r[1] == 0)
    loser = next(r for r in results if r[1] == EXIT_BUSY)
    assert json.loads(winner[2])["runs_loaded"] == 160
    assert loser[2] == ""
    line = loser[3].strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith("lake: warehouse busy:"), line
    # Invariant 4: the error names the holder (pid, host, since when, what it runs).
    assert f"pid {winner[0].pid} " in line, line
    assert f"on {socket.gethostname()}" in line and " since " in line, line
    assert "lake load" in line, line


def test_second_loader_with_lock_timeout_waits_then_loads(tmp_path: Path) -> None:
    lk = lake_root(tmp_path, batch_max_runs=2)
    stage_backlog(lk.root, 80)
    first = lake_load_proc(lk.root)
    note = lk.root / "warehouse" / "lake.lock.json"
    deadline = time.monotonic() + 60
    while not note.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert note.exists(), "the first loader never took the lock"
    assert json.loads(note.read_text())["pid"] == first.pid
    stage_backlog(lk.root, 3, table="plain")  # new work for the waiting loader
    second = lake_load_proc(lk.root, "--lock-timeout", "120")
    out1, err1 = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    loaded = json.loads(out1)["runs_loaded"] + json.loads(out2)["runs_loaded"]
    assert loaded == 83
    assert lk.rows("SELECT count(*), count(DISTINCT id) FROM logs") == [(400, 400)]
    assert lk.rows("SELECT count(*) FROM plain") == [(15,)]
    assert lk.rows("SELECT count(*), count(DISTINCT run_id) FROM meta.staged_runs") == [(83, 83)]


def test_sigterm_stops_the_loader_at_a_safe_point(tmp_path: Path) -> None:
    """SIGTERM (cron's timeout, a deploy) stops at a safe point: exit 75, committed work kept,
    the next load finishes exactly once."""
    lk = lake_root(tmp_path, batch_max_runs=2)
    rows = stage_backlog(lk.root, 120)
    proc = lake_load_proc(lk.root)
    deadline = time.monotonic() + 60
    # Wait until some runs committed and moved: the stop must keep them.
    while not lk.archived("logs") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, EXIT_BUSY), err
    if proc.returncode == EXIT_BUSY:
        assert "SIGTERM" in err, err
    assert not (lk.root / "warehouse" / "lake.lock.json").exists(), "holder note left behind"
    loaded = len(lk.ledger())
    assert loaded > 0
    assert sum(rows_by_run(lk.root / "warehouse" / "lake.duckdb", "logs").values()) == loaded * 5
    assert len(lk.staged("logs")) == 120 - loaded
    assert len(lk.archived("logs")) == loaded
    final = lake_cli(lk.root, "load")
    assert final.returncode == 0, final.stderr
    assert lk.rows("SELECT count(*), count(DISTINCT id) FROM logs") == [(rows, rows)]
    assert lk.staged("logs") == []


@pytest.mark.slow
def test_soak_producers_loaders_readers(tmp_path: Path) -> None:
    """The same, longer: more producers' runs, three loader loops (one waits for the lock)."""
    scale = int(os.environ.get("LAKE_SLOW_ITERATIONS", "15"))
    lk = lake_root(tmp_path, batch_max_runs=7)
    tables = ["logs", "plain", "events"]
    runs = 12 * scale
    chaos = run_chaos(tmp_path, lk.root, producers=3, runs=runs, tables=",".join(tables),
                      loaders=3, lock_timeouts=[0.0, 0.0, 0.5], pause_max=0.05)
    final = lake_cli(lk.root, "load")
    assert final.returncode == 0, final.stderr
    assert len(chaos.committed) == 3 * (runs - runs // 9)
    assert_loader_calls(chaos.calls)
    assert_landed_exactly_once(lk.root, chaos, tables)
    # events is an upsert table: only the append-only tables are checked for monotonic reads.
    assert_readers_never_failed(chaos, ["logs", "plain"])
    assert_busy_errors_name_the_holder(chaos.calls)


HOLD_LOCK = """
import sys, time
from lakehouse.layout import LakePaths
from lakehouse.lock import WarehouseLock
held = WarehouseLock(LakePaths.at(sys.argv[1]), "test holder", 0).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_sigterm_outside_a_load_exits_75_with_a_message(tmp_path: Path) -> None:
    """A command stopped before it installs its own safe-point handlers (here `lake cleanup`
    waiting for a held lock) still exits 75 with a line on stderr, not a bare -15."""
    lk = lake_root(tmp_path, batch_max_runs=2)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lk.root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiter = subprocess.Popen([sys.executable, "-m", "loader.cli", "--root", str(lk.root),
                                   "cleanup", "--lock-timeout", "60"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)  # past the imports: it waits for the lock
        assert waiter.poll() is None, waiter.communicate()
        waiter.send_signal(signal.SIGTERM)
        _, err = waiter.communicate(timeout=30)
        assert waiter.returncode == EXIT_BUSY, err
        assert "stopped by SIGTERM" in err
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_after_the_report_never_exits_minus_15(tmp_path: Path) -> None:
    """A SIGTERM that lands after a load printed its report (while Python shuts down) leaves
    the exit code the load's own, or 75, never a bare -15 (found by make chaos)."""
    from staging import stage

    lk = lake_root(tmp_path, batch_max_runs=2)
    codes = []
    for i in range(6):
        stage(lk.root, "plain", pa.table({"id": pa.array([i], pa.int64())}))
        proc = subprocess.Popen([sys.executable, "-m", "loader.cli", "--root", str(lk.root),
                                 "load", "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        out = ""
        for line in proc.stdout:
            out += line
            if line.startswith("}"):  # the report is complete: the load is done
                proc.send_signal(signal.SIGTERM)
                break
        rest, err = proc.communicate(timeout=60)
        assert json.loads(out + rest)["runs_loaded"] == 1
        codes.append(proc.returncode)
        assert proc.returncode in (0, EXIT_BUSY), (codes, err)
    assert lk.rows("SELECT count(*) FROM plain") == [(6,)]
