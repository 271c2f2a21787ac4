"""Helper processes for the crash and concurrency tests (run as scripts, never imported by Lake).

    python tests/chaos_procs.py produce   --root R --producer-id N --runs K --out F ...
    python tests/chaos_procs.py load-loop --root R --stop-file S --out F ...
    python tests/chaos_procs.py read-loop --root R --stop-file S --out F --tables a,b

``produce`` stages runs through the public producer API (``staging.stage_run``) with keys
unique across producers (``producer_id * 1_000_000 + counter``) and records what it committed
and what it abandoned. ``load-loop`` runs the real ``lake load`` CLI again and again and records
each invocation's exit code, stderr and time span. ``read-loop`` plays an analyst: it opens the
published snapshot read-only again and again and records row counts and any error. Each writes
its JSON report atomically at the end (``<out>.tmp-<pid>`` then rename).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KEY_SPACE = 1_000_000  # keys of producer p are p * KEY_SPACE + counter
BASE_TS = dt.datetime(2026, 3, 1)
KEY_COLUMN = {"plain": "id", "logs": "id", "events": "event_id"}


# -- reading a lake root the way an outsider does (tests share these) ---------------------
def query_db(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run one query on a DuckDB file opened read-only, and close it at once."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def table_exists(path: Path, table: str) -> bool:
    """True when ``table`` exists in the main schema of the DuckDB file."""
    return bool(query_db(path, "SELECT count(*) FROM information_schema.tables WHERE "
                               f"table_schema = 'main' AND table_name = '{table}'")[0][0])


def rows_by_run(path: Path, table: str) -> dict[str, int]:
    """Rows of ``table`` per ``_lake_run_id`` (empty when the table does not exist)."""
    if not table_exists(path, table):
        return {}
    return {r[0]: int(r[1]) for r in query_db(
        path, f'SELECT _lake_run_id, count(*) FROM "{table}" GROUP BY 1')}


def ledger_counts(path: Path) -> dict[str, list[tuple[str, str, int]]]:
    """Every ledger row, grouped by run id: (table, status, rows_loaded)."""
    out: dict[str, list[tuple[str, str, int]]] = {}
    for run_id, table, status, rows in query_db(
            path, "SELECT run_id, table_name, status, coalesce(rows_loaded, 0) "
                  "FROM meta.staged_runs"):
        out.setdefault(run_id, []).append((table, status, int(rows)))
    return out


def run_folders(root: Path, area: str, table: str) -> list[str]:
    """Names of the run folders under ``<root>/<area>/<table>``."""
    folder = root / area / table
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def temp_files(folder: Path) -> list[str]:
    """Every ``*.tmp-*`` path under ``folder`` (relative)."""
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name)


def write_report(path: Path, data: Any) -> None:
    """Write a JSON report atomically (a reader never sees half of it)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def rows_for(table: str, first_id: int, count: int) -> Any:
    """Rows with ids ``first_id .. first_id + count - 1`` in the shape ``table`` expects."""
    import pyarrow as pa

    ids = list(range(first_id, first_id + count))
    if table == "logs":
        # Spread over a few days so a run touches several partitions.
        ts = [BASE_TS + dt.timedelta(hours=(i % 97)) for i in ids]
        return pa.table({"id": ids, "ts": ts, "msg": [f"m{i}" for i in ids]})
    if table == "events":
        ts = [BASE_TS + dt.timedelta(days=(i % 61)) for i in ids]
        kinds = [("view", "click", "purchase")[i % 3] for i in ids]
        return pa.table({"event_id": ids, "ts": ts, "kind": kinds,
                         "amount": [float(i % 100) for i in ids]})
    return pa.table({"id": ids, "v": [f"v{i}" for i in ids]})


def produce(args: argparse.Namespace) -> int:
    """Stage ``--runs`` runs round-robin over ``--tables``; record what committed."""
    from staging import stage_run

    rng = random.Random(args.seed)
    tables = args.tables.split(",")
    counter = 0
    committed: list[dict[str, Any]] = []
    abandoned: list[dict[str, Any]] = []
    for n in range(args.runs):
        table = tables[n % len(tables)]
        count = rng.randint(args.rows_min, args.rows_max)
        first = args.producer_id * KEY_SPACE + counter
        counter += count
        files = 2 if rng.random() < 0.3 and count > 1 else 1
        abandon = args.abandon_every > 0 and n % args.abandon_every == args.abandon_every - 1
        data = rows_for(table, first, count)
        try:
            with stage_run(args.root, table, producer=f"p{args.producer_id}") as run:
                if files == 2:
                    half = count // 2
                    run.write(data.slice(0, half))
                    run.write(data.slice(half))
                else:
                    run.write(data)
                if abandon:
                    raise RuntimeError("producer gave up on purpose")
        except RuntimeError:
            abandoned.append({"run_id": run.run_id, "table": table, "first": first,
                              "rows": count})
        else:
            committed.append({"run_id": run.run_id, "table": table, "first": first,
                              "rows": count})
        if args.pause_max > 0:
            time.sleep(rng.uniform(0, args.pause_max))
    write_report(Path(args.out), {"producer_id": args.producer_id, "committed": committed,
                                  "abandoned": abandoned})
    return 0


def load_loop(args: argparse.Namespace) -> int:
    """Run `lake load` until the stop file exists; record every invocation."""
    rng = random.Random(args.seed)
    calls: list[dict[str, Any]] = []
    stop = Path(args.stop_file)
    while True:
        last = stop.exists()
        started = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "loader.cli", "--root", args.root, "load", "--json",
             "--lock-timeout", str(args.lock_timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.communicate(timeout=300)
        ended = time.time()
        loaded = None
        if proc.returncode in (0, 3):
            try:
                loaded = json.loads(stdout)["runs_loaded"]
            except (ValueError, KeyError):
                loaded = None
        calls.append({"loop": args.name, "pid": proc.pid, "start": started, "end": ended,
                      "rc": proc.returncode, "stderr": stderr[-2000:], "runs_loaded": loaded})
        if last:
            break
        time.sleep(rng.uniform(0, args.pause_max))
    write_report(Path(args.out), {"name": args.name, "calls": calls})
    return 0


def read_loop(args: argparse.Namespace) -> int:
    """Query the published snapshot read-only until the stop file exists."""
    import duckdb

    snapshot = Path(args.root) / "warehouse" / "lake.read.duckdb"
    tables = args.tables.split(",")
    stop = Path(args.stop_file)
    reads: list[dict[str, int]] = []
    errors: list[str] = []
    while not stop.exists():
        try:
            con = duckdb.connect(str(snapshot), read_only=True)
            try:
                present = {r[0] for r in con.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'main'").fetchall()}
                counts = {}
                for t in tables:
                    if t in present:
                        row = con.execute(f'SELECT count(*) FROM "{t}"').fetchall()
                        counts[t] = int(row[0][0])
                    else:
                        counts[t] = 0
                # Hold the old snapshot open a little: publishing must not wait for us.
                time.sleep(args.hold)
            finally:
                con.close()
            reads.append(counts)
        except Exception as exc:  # any failure to read is what the test reports
            errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.01)
    write_report(Path(args.out), {"reads": reads, "errors": errors})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("produce")
    p.add_argument("--root", required=True)
    p.add_argument("--producer-id", type=int, required=True)
    p.add_argument("--tables", default="logs,plain")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rows-min", type=int, default=1)
    p.add_argument("--rows-max", type=int, default=20)
    p.add_argument("--abandon-every", type=int, default=0)
    p.add_argument("--pause-max", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=produce)

    p = sub.add_parser("load-loop")
    p.add_argument("--root", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--name", default="loader")
    p.add_argument("--lock-timeout", type=float, default=0.0)
    p.add_argument("--pause-max", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=load_loop)

    p = sub.add_parser("read-loop")
    p.add_argument("--root", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--tables", default="logs,plain")
    p.add_argument("--hold", type=float, default=0.05)
    p.add_argument("--out", required=True)
    p.set_defaults(func=read_loop)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
