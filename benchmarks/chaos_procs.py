"""The chaos run's processes (run as ``python -m benchmarks.chaos_procs <role> ...``).

    produce --root R --work W --pid N --seed S --stop-file F   good runs, through stage_run
    hostile --root R --work W --pid N --seed S --stop-file F   runs from the hostile catalogue
    read    --root R --stop-file F --out O --seed S            queries on the published snapshot

Producers journal every run to ``W/journal/<g|h><pid>.jsonl`` (``begin`` before the first data
file, ``committed`` after the manifest), so the checker knows what may and what must have
committed even when the process was SIGKILLed in between. A producer restarted with the id of
one that was killed first retries the run it was killed in, with the same idempotency key and
the same rows, as a real producer that does not know whether its run committed would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.chaos_lake import Journal, good_rows, plan_run, read_journal, split

TERMINAL = ("committed", "abandoned", "failed")


class ProducerGaveUpError(Exception):
    """A producer abandoning its run on purpose (the run is never committed)."""


def journal_path(work: Path, prefix: str, pid: int) -> Path:
    return work / "journal" / f"{prefix}{pid}.jsonl"


def resume(path: Path) -> tuple[int, int | None]:
    """The next sequence number of a producer, and the run to retry (begun, never finished)."""
    done: set[int] = set()
    begun: list[int] = []
    tried = 0  # the hostile producer marks each attempt before it touches the disk
    for event in read_journal(path):
        if event["ev"] == "begin":
            begun.append(event["seq"])
        elif event["ev"] == "attempt":
            tried = max(tried, event["seq"])
        elif event["ev"] in TERMINAL:
            done.add(event["seq"])
    if not begun:
        return tried + 1, None
    last = begun[-1]
    return max(*begun, tried) + 1, (None if last in done else last)


def produce(args: argparse.Namespace) -> int:
    """Stage good runs round the tables until the stop file appears."""
    from staging import stage_run

    work, root, stop = Path(args.work), Path(args.root), Path(args.stop_file)
    path = journal_path(work, "g", args.pid)
    next_seq, retry = resume(path)
    journal = Journal(path)
    rng = random.Random(f"chaos-pause:{args.seed}:{args.pid}:{next_seq}")
    queue = [retry] if retry is not None else []
    while not stop.exists():
        seq = queue.pop() if queue else next_seq
        if seq == next_seq:
            next_seq += 1
        plan = plan_run(args.seed, args.pid, seq)
        parts = split(good_rows(plan), plan.files)
        run_id = None
        try:
            with stage_run(root, plan.table, producer=f"g{args.pid}", key=plan.key) as run:
                run_id = run.run_id
                journal.write(ev="begin", seq=seq, run=run_id, table=plan.table,
                              rows=plan.rows, files=plan.files, retry=seq == retry)
                for part in parts:
                    run.write(part)
                    # A producer takes its time between files (and before it commits): a
                    # SIGKILL lands inside a run as often as between runs.
                    time.sleep(rng.uniform(0, args.pause_max / 3))
                if plan.abandon:
                    raise ProducerGaveUpError("gave up on purpose")
        except ProducerGaveUpError:
            journal.write(ev="abandoned", seq=seq, run=run_id)
        except Exception as exc:  # the run did not commit; say why, carry on
            journal.write(ev="failed", seq=seq, run=run_id, error=f"{type(exc).__name__}: {exc}")
        else:
            journal.write(ev="committed", seq=seq, run=run_id)
        time.sleep(rng.uniform(args.pause_max / 8, args.pause_max / 2))
    journal.close()
    return 0


def hostile(args: argparse.Namespace) -> int:
    """Stage runs from the hostile catalogue until the stop file appears."""
    from benchmarks.chaos_hostile import Ctx, commit_manifest, pick_kind
    from lakehouse.layout import new_run_id
    from staging import stage_run

    work, root, stop = Path(args.work), Path(args.root), Path(args.stop_file)
    outside = work / "outside"
    path = journal_path(work, "h", args.pid)
    seq, _ = resume(path)
    journal = Journal(path)
    rng = random.Random(f"chaos-pause:{args.seed}:{args.pid}:{seq}")
    while not stop.exists():
        ctx = Ctx(args.seed, args.pid, seq)
        kind = pick_kind(ctx)
        # Never reuse an attempt's number after a kill: its fixed folder names (hostile run
        # names, symlink targets outside the root) may already exist.
        journal.write(ev="attempt", seq=seq, kind=kind.name)
        for index, step in enumerate(kind.build(ctx)):
            common = {"seq": seq, "kind": kind.name, "step": index, "table": step.table}
            try:
                if step.api:
                    assert step.data is not None
                    with stage_run(root, step.table, producer=f"h{args.pid}",
                                   key=step.key) as run:
                        journal.write(ev="begin", run=run.run_id, **common)
                        run.write(step.data)
                    journal.write(ev="committed", run=run.run_id, **common)
                    continue
                assert step.write is not None
                table_dir = root / "staging" / step.table
                table_dir.mkdir(parents=True, exist_ok=True)
                if step.reuse:
                    reused = loaded_run_to_reuse(root, step.table, args.pid, ctx)
                    if reused is None:  # none of ours loaded yet: nothing to reuse
                        journal.write(ev="no_run_to_reuse", **common)
                        break
                    built = outside / f"h{args.pid}-{seq}-{index}" / reused
                    built.mkdir(parents=True)
                    commit_manifest(built, step.write(built, reused, outside))
                    # Journaled before it appears in staging, with every file's checksum:
                    # the checker finds it in quarantine byte for byte.
                    journal.write(ev="begin", run=reused, reuse=True,
                                  files=folder_digests(built), **common)
                    try:
                        os.rename(built, table_dir / reused)  # appears committed, whole
                    except OSError:  # another hostile producer took that id first
                        journal.write(ev="reuse_lost", run=reused, reuse=True, **common)
                        break
                    journal.write(ev="committed", run=reused, reuse=True, **common)
                    continue
                folder = step.folder or new_run_id(f"h{args.pid}")
                if step.link:
                    target = outside / f"h{args.pid}-{seq}-{index}" / folder
                    target.mkdir(parents=True)
                    commit_manifest(target, step.write(target, folder, outside))
                    journal.write(ev="begin", run=folder, link=str(target), **common)
                    (table_dir / folder).symlink_to(target, target_is_directory=True)
                else:
                    (table_dir / folder).mkdir()
                    journal.write(ev="begin", run=folder, **common)
                    commit_manifest(table_dir / folder,
                                    step.write(table_dir / folder, folder, outside))
                journal.write(ev="committed", run=folder, **common)
            except Exception as exc:
                journal.write(ev="failed", error=f"{type(exc).__name__}: {exc}", **common)
                break
        seq += 1
        time.sleep(rng.uniform(0, args.pause_max))
    journal.close()
    return 0


def loaded_run_to_reuse(root: Path, table: str, pid: int, ctx: Any) -> str | None:
    """The id of a run of a hostile producer (this one's first) that loaded (the published
    snapshot's ledger says so) and whose folder is in archive/ alone, neither staged again
    nor quarantined: a new run under that id must be quarantined as ``run_id_reused``. The
    ledger never forgets a loaded row and nothing moves a folder out of archive/ during a
    chaos run (retention is 7 days), so the outcome does not depend on timing; which id is
    picked does."""
    import duckdb

    try:
        con = duckdb.connect(str(root / "warehouse" / "lake.read.duckdb"), read_only=True)
        try:
            loaded = [r[0] for r in con.execute(
                "SELECT run_id FROM meta.staged_runs WHERE table_name = ? AND status = 'loaded' "
                "AND regexp_matches(run_id, '-h[0-9]+-[0-9a-f]+$') "
                "ORDER BY run_id LIKE ? DESC, run_id", [table, f"%-h{pid}-%"]).fetchall()]
        finally:
            con.close()
    except Exception:  # a snapshot being replaced: try another time
        return None

    def taken(area: str, run_id: str) -> bool:
        folder = root / area / table
        return os.path.lexists(folder / run_id) or (
            area == "quarantine" and any(folder.glob(f"{run_id}.*")))

    free = [r for r in loaded if (root / "archive" / table / r).is_dir()
            and not taken("staging", r) and not taken("quarantine", r)]
    own = [r for r in free if f"-h{pid}-" in r]
    return ctx.rng.choice(own or free) if free else None


def folder_digests(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file of a run folder (regular files only: the hostile producer
    built it)."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# -- the reader -----------------------------------------------------------------------------
DUPLICATE_SQL = {
    "logs": 'SELECT count(*) - count(DISTINCT id) FROM logs',
    "events": 'SELECT count(*) - count(DISTINCT event_id) FROM events',
    "snap": 'SELECT count(*) - count(DISTINCT id) FROM snap',
    "readings": 'SELECT count(*) - count(DISTINCT (sensor, ts)) FROM readings',
}
# An append table: each run's rows are all there, or none (and then the run is not loaded).
TORN_SQL = """
SELECT count(*) FROM (SELECT _lake_run_id AS run_id, count(*) AS n FROM "{t}" GROUP BY 1) AS t
LEFT JOIN meta.staged_runs AS s ON s.run_id = t.run_id AND s.table_name = '{t}'
WHERE s.status IS DISTINCT FROM 'loaded' OR s.rows_loaded <> t.n
"""


class Reader:
    """An analyst: opens the published snapshot read-only again and again."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.root = Path(args.root)
        self.snapshot = self.root / "warehouse" / "lake.read.duckdb"
        self.rng = random.Random(f"chaos-reader:{args.seed}:{args.name}")
        self.cli_every = args.cli_every
        self.served = 0
        self.cli_served = 0
        self.failures: list[str] = []
        self.failed = 0
        self.anomalies: list[str] = []
        self.last: dict[str, int] = {}

    def fail(self, message: str) -> None:
        self.failed += 1
        if len(self.failures) < 50:
            self.failures.append(message)

    def anomaly(self, message: str) -> None:
        if len(self.anomalies) < 50:
            self.anomalies.append(message)

    def grows(self, name: str, value: int) -> None:
        """Append-only counts never go back: a newer snapshot holds at least as much."""
        if value < self.last.get(name, 0):
            self.anomaly(f"{name} went back from {self.last[name]} to {value}")
        self.last[name] = value

    def read_once(self) -> None:
        import duckdb

        try:
            con = duckdb.connect(str(self.snapshot), read_only=True)
        except Exception as exc:
            self.fail(f"connect: {type(exc).__name__}: {exc}")
            return
        try:
            def one(sql: str) -> Any:
                row = con.execute(sql).fetchall()[0][0]
                self.served += 1
                return row

            tables = {r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'main'").fetchall()}
            self.served += 1
            for table, sql in DUPLICATE_SQL.items():
                if table in tables and one(sql):
                    self.anomaly(f"{table}: duplicate keys in the snapshot")
            for table in ("logs", "readings"):
                if table in tables:
                    torn = one(TORN_SQL.format(t=table))
                    if torn:
                        self.anomaly(f"{table}: {torn} runs partly there or without ledger row")
                    self.grows(table, one(f'SELECT count(*) FROM "{table}"'))
            # Runs recorded loaded or skipped stay so (a replay forgets only quarantined rows).
            self.grows("ledger (loaded, skipped)", one(
                "SELECT count(*) FROM meta.staged_runs WHERE status IN ('loaded', 'skipped')"))
            one("SELECT kind, count(*), sum(amount) FROM events GROUP BY ALL ORDER BY ALL"
                if "events" in tables else "SELECT 1")
            # Hold the snapshot open a little: publishing must not wait for us.
            time.sleep(self.rng.uniform(0, 0.2))
        except Exception as exc:
            self.fail(f"query: {type(exc).__name__}: {exc}")
        finally:
            con.close()

    def query_cli(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "loader.cli", "--root", str(self.root), "query",
             "SELECT count(*) AS n FROM logs", "--format", "json"],
            capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            self.fail(f"lake query exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
            return
        try:
            rows = json.loads(proc.stdout)
            n = int(rows[0]["n"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self.fail(f"lake query output: {exc}: {proc.stdout[:200]!r}")
            return
        self.served += 1
        self.cli_served += 1
        self.grows("logs (lake query)", n)

    def report(self) -> dict[str, Any]:
        return {"served": self.served, "cli_served": self.cli_served, "failed": self.failed,
                "failures": self.failures, "anomalies": self.anomalies}


def read(args: argparse.Namespace) -> int:
    """Query the snapshot until the stop file appears; write the report."""
    reader = Reader(args)
    stop = Path(args.stop_file)
    loops = 0
    while not stop.exists():
        loops += 1
        if reader.cli_every and loops % reader.cli_every == 0:
            reader.query_cli()
        else:
            reader.read_once()
        time.sleep(reader.rng.uniform(0.05, 0.3))
    out = Path(args.out)
    tmp = out.with_name(f"{out.name}.part")
    tmp.write_text(json.dumps(reader.report(), indent=1))
    os.replace(tmp, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    for role, func in (("produce", produce), ("hostile", hostile)):
        p = sub.add_parser(role)
        p.add_argument("--root", required=True)
        p.add_argument("--work", required=True)
        p.add_argument("--pid", type=int, required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--stop-file", required=True)
        p.add_argument("--pause-max", type=float, default=0.4)
        p.set_defaults(func=func)
    p = sub.add_parser("read")
    p.add_argument("--root", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--name", default="reader")
    p.add_argument("--cli-every", type=int, default=10)
    p.set_defaults(func=read)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
