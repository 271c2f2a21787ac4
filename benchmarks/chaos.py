"""`make chaos`: producers, loaders, maintenance and readers at once, killed at random; then
DESIGN.md's invariants checked against the reference model.

    python -m benchmarks.chaos --minutes 2 --seed 1          # what CI runs
    python -m benchmarks.chaos --minutes 20 --seed 7 --json  # docs/RELIABILITY.md

For ``--minutes`` it runs, on a fresh lake root in a temp folder (or ``--root``):

- good producers staging runs through ``staging.stage_run`` into four tables (append with a
  key, upsert, replace_partition, drop_rows), with keys unique per producer; some give up
  inside a run on purpose; every few seconds one producer is SIGKILLed and restarted, half the
  time under the same id, when it retries its interrupted run with the same idempotency key;
- a hostile producer staging runs from a catalogue of bad inputs (``chaos_hostile.py``);
- a loader loop: ``lake load`` again and again, some SIGKILLed at a random moment, some killed
  at a named crash point (``LAKE_TEST_CRASH_AT``), some with ``--max-runs``, ``--table`` or
  ``--dry-run``;
- now and then ``lake compact`` (also at its crash points), ``lake cleanup`` and
  ``lake audit``, also SIGKILLed at random;
- once, partway through, ``logs`` changes from day to month partitions in lake.toml: loads
  refuse it (exit 2) until ``lake repartition logs``, killed at its crash points or at random
  and retried, succeeds (the final checks expect month partitions);
- readers querying the published snapshot all the time (DuckDB read-only and ``lake query``).

Then it stops everything, runs a final ``lake load`` and ``lake cleanup --grace-minutes 0``,
and checks (``chaos_check.py``). It prints one summary (``--json``: one JSON object) and exits
1 when an invariant failed. Every random choice comes from ``random.Random(seed)``; timing
(and so what a kill interrupts) still varies from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.chaos_check import Checker
from benchmarks.chaos_lake import (
    MAX_PID,
    RESPEC_TABLE,
    TABLES,
    Journal,
    Plan,
    good_rows,
    respec_lake_files,
    write_lake_files,
)
from lakehouse import failpoints

REPO = Path(__file__).resolve().parent.parent
LOAD_CRASH_POINTS = failpoints.named("load")  # load.after_lock, ... (lakehouse/failpoints.py)
COMPACT_CRASH_POINTS = failpoints.named("compact")
REPARTITION_CRASH_POINTS = failpoints.named("repartition")
KILLED = -signal.SIGKILL
# Exit codes each command may end with under chaos (besides being SIGKILLed by us).
ALLOWED = {"load": {0, 3, 75}, "compact": {0, 75}, "cleanup": {0, 75}, "audit": {0},
           "init": {0}, "quarantine": {0, 75}, "repartition": {0, 75}}


@dataclass
class Call:
    """One `lake` command the chaos run started."""

    command: str
    args: list[str]
    rc: int
    seconds: float
    crash_point: str | None = None
    kill_after: float | None = None
    stderr: str = ""
    stdout: str = ""
    term_after: float | None = None
    hung: bool = False
    pid: int = 0  # the `lake` process: its run-log row names it

    @property
    def killed(self) -> bool:
        return self.rc == KILLED

    @property
    def refused_logs(self) -> bool:
        """A load that refused logs (its spec changed, not repartitioned yet), exit 2: it
        loaded the other tables."""
        return (self.command == "load" and self.rc == 2 and "Traceback" not in self.stderr
                and "`lake repartition logs`" in self.stderr)

    @property
    def done(self) -> bool:
        """A load that ran to its end (0 or 3; or 2 when it only refused logs)."""
        return self.rc in (0, 3) or self.refused_logs

    @property
    def unexpected(self) -> bool:
        """Not an exit code the command may end with, a traceback, or a hang."""
        if self.hung:
            return True
        if self.killed:
            return self.kill_after is None and self.crash_point is None
        if self.rc == -signal.SIGTERM and self.term_after is not None:
            # Our SIGTERM while the interpreter was still starting, before any of `lake`'s
            # code ran (it installs an exit-75 handler first thing): it did nothing, said
            # nothing. Once it has printed anything, -15 is a wrong exit code.
            return bool(self.stdout or self.stderr)
        if self.refused_logs:
            return False  # logs' spec changed and it is not repartitioned yet: refused
        if self.rc not in ALLOWED[self.command] or "Traceback" in self.stderr:
            return True
        # Busy or stopped (75): one line that says what happened (the holder, or the signal).
        lines = self.stderr.strip().splitlines()
        return self.rc == 75 and not (lines and lines[-1].startswith("lake: "))


@dataclass
class Producer:
    role: str  # "g" good | "h" hostile
    pid: int
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stats:
    kills: Counter[str] = field(default_factory=Counter)
    producers_started: Counter[str] = field(default_factory=Counter)


class Chaos:
    """One chaos run: setup, the chaos itself, the final load and the checks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.minutes, self.seed = args.minutes, args.seed
        self.quiet = args.json
        self.rng = random.Random(args.seed)
        if args.root:
            given = Path(args.root).absolute()
            data = (REPO / "data").resolve()
            if given.resolve() == data or data in given.resolve().parents:
                raise SystemExit("chaos: refusing to run in the repository's data/ folder")
            if given.exists() and any(given.iterdir()):
                raise SystemExit(f"chaos: {given} is not empty; give a new folder")
        self.work = Path(tempfile.mkdtemp(prefix="lake-chaos-"))
        self.root = Path(args.root).absolute() if args.root else self.work / "lake"
        for name in ("journal", "outside", "logs", "reports"):
            (self.work / name).mkdir()
        self.stop_file = self.work / "stop"
        self.stop = threading.Event()
        self.calls: list[Call] = []
        self.every_call: list[Call] = []  # also setup and final ones: each is in the run log
        self.stats = Stats()
        self.producers: list[Producer] = []
        self.next_pid = 1
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.good_producers, self.hostile_producers = args.producers, args.hostile
        self.readers_count = args.readers
        self.timings: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.load_start = [round(x, 2) for x in os.getloadavg()]
        self.product = product_version()
        # The spec change of logs: when (set when the chaos starts), done, repartitioned.
        self.respec_at: float | None = None
        self.respecced = self.repartitioned = False

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"chaos: {message}", file=sys.stderr, flush=True)

    # -- commands -------------------------------------------------------------------------
    def lake(self, command: str, *args: str, crash_point: str | None = None,
             kill_after: float | None = None, term_after: float | None = None,
             record: bool = True) -> Call:
        """Run `lake --root R <command> <args>`; SIGKILL it after ``kill_after`` seconds, or
        SIGTERM it after ``term_after`` seconds."""
        env = dict(self.env)
        if crash_point:
            env[failpoints.ENVIRONMENT_VARIABLE] = crash_point
        argv = [sys.executable, "-m", "loader.cli", "--root", str(self.root), command, *args]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=str(self.work))
        hung = False
        signalled = kill_after if kill_after is not None else term_after
        try:
            out, err = proc.communicate(timeout=signalled if signalled is not None else 900)
        except subprocess.TimeoutExpired:
            if term_after is not None:
                proc.terminate()
            else:
                proc.kill()
            try:
                out, err = proc.communicate(timeout=900)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                hung = True
            hung = hung or signalled is None
        if hung:
            err += "\n(chaos: killed after 900 s: hung)"
        call = Call(command, list(args), proc.returncode, time.monotonic() - started, crash_point,
                    kill_after if proc.returncode == KILLED else None, err[-3000:], out,
                    term_after, hung, proc.pid)
        self.every_call.append(call)
        if record:
            self.calls.append(call)
            with (self.work / "logs" / "calls.jsonl").open("a") as log:
                log.write(json.dumps({"t": round(started - self.t0, 2), **call.__dict__,
                                      "stdout": call.stdout[:2000]}) + "\n")
        if call.killed and call.kill_after is not None:
            self.stats.kills[f"{command} (random moment)"] += 1
        elif call.killed and crash_point:
            self.stats.kills[f"{command} (crash point)"] += 1
        elif term_after is not None and call.rc == 75:
            self.stats.kills[f"{command} (SIGTERM, stopped at a safe point)"] += 1
        elif term_after is not None and call.rc == -signal.SIGTERM and not call.unexpected:
            self.stats.kills[f"{command} (SIGTERM while Python starts)"] += 1
        if call.unexpected:
            self.say(f"UNEXPECTED: lake {command} {' '.join(args)} exit {call.rc}"
                     f"{' at ' + crash_point if crash_point else ''}: {err.strip()[-600:]}")
        return call

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        """A new lake root, and one loaded run per table so every table exists, frozen."""
        from staging import stage_run

        write_lake_files(self.root)
        call = self.lake("init", record=False)
        if call.rc != 0:
            raise SystemExit(f"chaos: lake init failed: {call.stderr}")
        journal = Journal(self.work / "journal" / "g0.jsonl")
        for seq, table in enumerate(TABLES, start=1):
            plan = Plan(self.seed, 0, seq, table, rows=5, files=1, abandon=False)
            with stage_run(self.root, table, producer="setup", key=plan.key) as run:
                journal.write(ev="begin", seq=seq, run=run.run_id, table=table, rows=5, files=1)
                run.write(good_rows(plan))
            journal.write(ev="committed", seq=seq, run=run.run_id)
        journal.close()
        call = self.lake("load", "--json", record=False)
        if call.rc != 0:
            raise SystemExit(f"chaos: the setup load failed: {call.stderr}")

    # -- processes ------------------------------------------------------------------------
    def start_producer(self, role: str, pid: int | None = None) -> None:
        if pid is None:
            pid, self.next_pid = self.next_pid, self.next_pid + 1
        log = self.work / "logs" / f"{role}{pid}.log"
        argv = [sys.executable, "-m", "benchmarks.chaos_procs",
                "produce" if role == "g" else "hostile", "--root", str(self.root),
                "--work", str(self.work), "--pid", str(pid), "--seed", str(self.seed),
                "--stop-file", str(self.stop_file),
                "--pause-max", "1.6" if role == "g" else "2.0"]
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out, env=self.env,
                                    cwd=str(self.work))
        self.producers.append(Producer(role, pid, proc, log))
        self.stats.producers_started["good" if role == "g" else "hostile"] += 1

    def start_readers(self) -> list[subprocess.Popen[bytes]]:
        readers = []
        for n in range(self.readers_count):
            log = self.work / "logs" / f"reader{n}.log"
            argv = [sys.executable, "-m", "benchmarks.chaos_procs", "read", "--root",
                    str(self.root), "--stop-file", str(self.stop_file), "--seed", str(self.seed),
                    "--name", f"reader{n}", "--out", str(self.work / "reports" / f"reader{n}.json"),
                    "--cli-every", "0" if n else "8"]
            with log.open("ab") as out:
                readers.append(subprocess.Popen(argv, stdout=out, stderr=out, env=self.env,
                                                cwd=str(self.work)))
        return readers

    # -- the loops (one thread each; each has its own Random drawn from the seed) -------------
    def loader_loop(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            r = rng.random()
            crash_point = kill_after = term_after = None
            if r < 0.12:
                crash_point = rng.choice(LOAD_CRASH_POINTS)
            elif r < 0.35:
                kill_after = rng.uniform(0.05, 3.0)
            elif r < 0.40:
                term_after = rng.uniform(1.0, 5.0)
            args = ["--json", "--lock-timeout", rng.choice(["0", "0", "1", "3"])]
            extra = rng.random()
            if extra < 0.08:
                args += ["--max-runs", str(rng.randint(1, 20))]
            elif extra < 0.14:
                args += ["--table", rng.choice(TABLES)]
            elif extra < 0.18:
                args += ["--dry-run"]
            self.lake("load", *args, crash_point=crash_point, kill_after=kill_after,
                      term_after=term_after)
            self.stop.wait(rng.uniform(0, 0.6))

    def maintenance_loop(self, rng: random.Random) -> None:
        while not self.stop.wait(rng.uniform(3, 10)):
            if (self.respec_at is not None and time.monotonic() >= self.respec_at
                    and not self.repartitioned):
                self.repartition_step(rng)
                continue
            what = rng.choice(["compact", "cleanup", "cleanup", "audit", "replay", "load"])
            crash_point = kill_after = None
            r = rng.random()
            if what == "compact" and r < 0.2:
                crash_point = rng.choice(COMPACT_CRASH_POINTS)
            elif what != "audit" and r < 0.45:
                kill_after = rng.uniform(0.1, 3.0)
            if what == "compact":
                # Half of them --force: a lake with little churn would otherwise rarely
                # reach the backup and the swap (a rebuild that is not smaller is dropped).
                force = ["--force"] if crash_point or rng.random() < 0.5 else []
                self.lake("compact", "--json", "--keep-backups", "2", "--lock-timeout", "5",
                          *force, crash_point=crash_point, kill_after=kill_after)
            elif what == "cleanup":
                self.lake("cleanup", "--json", "--grace-minutes", "1", "--lock-timeout", "5",
                          kill_after=kill_after)
            elif what == "load":  # a second loader, as when a cron tick overlaps a long load
                self.lake("load", "--json", kill_after=kill_after)
            elif what == "audit":
                self.lake("audit", "--json")
            else:
                self.replay_one(rng)

    def repartition_step(self, rng: random.Random) -> None:
        """Change logs' spec (once), then `lake repartition logs`, killed at a crash point or
        at random now and then; the loop calls it again until one succeeds."""
        if not self.respecced:
            respec_lake_files(self.root, self.work)
            self.respecced = True
            self.say("lake.toml: logs now month partitions; loads refuse it until repartitioned")
        crash_point = kill_after = None
        r = rng.random()
        if r < 0.4:
            crash_point = rng.choice(REPARTITION_CRASH_POINTS)
        elif r < 0.6:
            kill_after = rng.uniform(0.1, 2.0)
        call = self.lake("repartition", RESPEC_TABLE, "--json", "--lock-timeout", "5",
                         crash_point=crash_point, kill_after=kill_after)
        self.repartitioned = call.rc == 0

    def replay_one(self, rng: random.Random) -> None:
        """An operator retries a quarantined run (`lake quarantine replay`) without fixing
        anything: the next load must quarantine it again, for the same reason, under its name."""
        found = []
        for table in TABLES:
            folder = self.root / "quarantine" / table
            if folder.is_dir():
                # lexists: a run whose manifest is a FIFO or a link to a device is replayed
                # too (and must be quarantined again without being opened).
                found += [p for p in sorted(folder.iterdir())
                          if os.path.lexists(p / "_manifest.json")
                          and not (p / "_symlink").exists() and ".tmp-" not in p.name]
        if found:
            target = rng.choice(found)
            self.lake("quarantine", "replay", str(target.relative_to(self.root)),
                      "--lock-timeout", "5")

    def producer_loop(self, rng: random.Random) -> None:
        """Every few seconds SIGKILL one producer and start another (or the same id again)."""
        while not self.stop.wait(rng.uniform(2, 7)):
            live = [p for p in self.producers if p.proc.poll() is None]
            if not live:
                continue
            victim = rng.choice(live)
            victim.proc.kill()
            if victim.proc.wait() == KILLED:
                self.stats.kills["good producer" if victim.role == "g"
                                 else "hostile producer"] += 1
            self.producers.remove(victim)
            same = rng.random() < 0.5 or self.next_pid > MAX_PID
            if self.stop.is_set():
                break
            self.start_producer(victim.role, victim.pid if same else None)

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.say(f"seed {self.seed}, {self.minutes} min, root {self.root}")
        self.setup()
        self.timings["setup_s"] = time.monotonic() - t0
        readers = self.start_readers()
        for _ in range(self.good_producers):
            self.start_producer("g")
        for _ in range(self.hostile_producers):
            self.start_producer("h")
        threads = [threading.Thread(target=loop, args=(random.Random(self.rng.getrandbits(64)),),
                                    name=loop.__name__, daemon=True)
                   for loop in (self.loader_loop, self.maintenance_loop, self.producer_loop)]
        started = time.monotonic()
        # Bounded: one spec change, partway through, repartitioned before the final load.
        self.respec_at = started + self.minutes * 60 * self.rng.uniform(0.2, 0.5)
        for t in threads:
            t.start()
        deadline = started + self.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            if not self.quiet:
                loads = sum(1 for c in self.calls if c.command == "load" and c.done
                            and "--dry-run" not in c.args)
                self.say(f"{(time.monotonic() - started) / 60:5.1f} min: {loads} loads, "
                         f"{sum(self.stats.kills.values())} kills")
        # Stop: the loops finish their current command; producers their current run.
        self.stop.set()
        self.stop_file.touch()
        for t in threads:
            t.join()
        self.timings["chaos_minutes"] = (time.monotonic() - started) / 60
        for p in self.producers:
            try:
                p.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
                self.stats.kills["producer (hung at the end)"] += 1
        for r in readers:
            r.wait(timeout=300)
        t1 = time.monotonic()
        final = self.finish()
        self.timings["final_s"] = time.monotonic() - t1
        self.timings["total_minutes"] = (time.monotonic() - t0) / 60
        final["timings"] = {k: round(v, 2) for k, v in self.timings.items()}
        return final

    def finish(self) -> dict[str, Any]:
        """The final clean load and cleanup, then every check."""
        result: dict[str, Any] = {}
        if self.respecced and not self.repartitioned:  # the chaos ended before one succeeded
            for _ in range(5):
                if self.lake("repartition", RESPEC_TABLE, "--json", "--lock-timeout", "60",
                             record=False).rc == 0:
                    self.repartitioned = True
                    break
        first = self.lake("load", "--json", record=False)
        again = self.lake("load", "--json", record=False)
        cleanup = self.lake("cleanup", "--json", "--grace-minutes", "0", record=False)
        audit = self.lake("audit", "--json", record=False)
        listed = self.lake("quarantine", "list", "--json", record=False)
        checker = Checker(self.root, self.work, self.seed)
        final = checker.check("final_load_clean",
                              "the final `lake load` exits 0 or 3, a second one finds nothing "
                              "to do, `lake cleanup` exits 0")
        if first.rc not in (0, 3):
            final.fail(f"final load exit {first.rc}: {first.stderr.strip()[-500:]}")
        try:
            again_runs = json.loads(again.stdout)["runs"] if again.rc == 0 else None
        except (ValueError, KeyError):
            again_runs = None
        if again.rc != 0 or again_runs:
            final.fail(f"second final load exit {again.rc}, runs {again_runs!r:.300}: "
                       f"{again.stderr.strip()[-300:]}")
        if cleanup.rc != 0:
            final.fail(f"final cleanup exit {cleanup.rc}: {cleanup.stderr.strip()[-500:]}")
        audit_check = checker.check("audit_no_errors",
                                    "`lake audit --json` reports no problem of severity error")
        try:
            payload = json.loads(audit.stdout)
            for problem in payload["problems"]:
                if problem.get("severity") == "error":
                    audit_check.fail(f"{problem.get('code')}: {problem.get('message')}")
            result["audit_summary"] = payload.get("summary")
        except (ValueError, KeyError, TypeError):
            audit_check.fail(f"audit exit {audit.rc}: {audit.stderr.strip()[-500:]}")
        try:
            quarantine = json.loads(listed.stdout) if listed.rc == 0 else None
        except ValueError:
            quarantine = None
        figures = checker.run(quarantine)
        checker.check_run_log(self.every_call)
        readers = self.reader_reports()
        reader_check = checker.check("readers_never_failed",
                                     "every reader query on the published snapshot succeeded "
                                     "and saw a consistent snapshot (no duplicate key, no torn "
                                     "run, counts never going back)")
        for n, rep in enumerate(readers):
            if rep is None:
                reader_check.fail(f"reader{n} wrote no report")
                continue
            for message in rep["failures"] + rep["anomalies"]:
                reader_check.fail(f"reader{n}: {message}")
            reader_check.count += max(0, rep["failed"] - len(rep["failures"]))
            if rep["served"] == 0:
                reader_check.fail(f"reader{n} served no query")
        repartitioned = checker.check("repartition_completed",
                                      "after logs' spec changed, `lake repartition logs` "
                                      "succeeded (the table checks then expect its new "
                                      "partitions)")
        if self.respecced and not self.repartitioned:
            repartitioned.fail("no `lake repartition logs` succeeded")
        commands = checker.check("commands_exit_as_documented",
                                 "every lake command exited with a documented code (load 0/3/75, "
                                 "compact and cleanup 0/75, audit 0) or was killed by us; no "
                                 "traceback")
        for call in self.calls:
            if call.unexpected:
                commands.fail(f"lake {call.command} {' '.join(call.args)}"
                              f"{' at ' + call.crash_point if call.crash_point else ''}: exit "
                              f"{call.rc}: {call.stderr.strip()[-400:]}")
        checker_checks = [c.as_dict() for c in checker.checks.values()]
        result.update(self.figures(figures, readers))
        result["checks"] = checker_checks
        result["ok"] = all(c["ok"] for c in checker_checks)
        result["root"] = str(self.root)
        result["work"] = str(self.work)
        result["product"] = self.product
        if product_version() != self.product:
            result["product_at_end"] = product_version()  # others committed during the run
        result["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": self.load_start,
                             "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
        return result

    def reader_reports(self) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for n in range(self.readers_count):
            path = self.work / "reports" / f"reader{n}.json"
            out.append(json.loads(path.read_text()) if path.exists() else None)
        return out

    def figures(self, checked: dict[str, Any],
                readers: list[dict[str, Any] | None]) -> dict[str, Any]:
        loads = [c for c in self.calls if c.command == "load"]
        runs_loaded = 0
        for c in loads:
            if c.done and "--dry-run" not in c.args:
                try:
                    runs_loaded += int(json.loads(c.stdout)["runs_loaded"])
                except (ValueError, KeyError, TypeError):
                    pass
        by_command = {cmd: dict(sorted(Counter(str(c.rc) for c in self.calls
                                               if c.command == cmd).items()))
                      for cmd in ("load", "compact", "cleanup", "audit", "quarantine",
                                  "repartition")}
        return {
            "seed": self.seed,
            "minutes_requested": self.minutes,
            "minutes_run": round(self.timings.get("chaos_minutes", 0), 2),
            "runs_staged": checked["good_runs_committed"] + checked["hostile_runs_committed"],
            **{k: checked[k] for k in ("good_runs_committed", "good_runs_uncommitted",
                                       "good_runs_retried", "hostile_runs_committed",
                                       "hostile_runs_uncommitted")},
            "loads_completed": sum(1 for c in loads if c.done
                                   and "--dry-run" not in c.args),
            "dry_runs_completed": sum(1 for c in loads if c.done
                                      and "--dry-run" in c.args),
            "loads_busy": sum(1 for c in loads if c.rc == 75),
            "runs_loaded_during_chaos": runs_loaded,
            "exit_codes": by_command,
            "processes_killed": dict(sorted(self.stats.kills.items())),
            "processes_killed_total": sum(self.stats.kills.values()),
            "producers_started": dict(self.stats.producers_started),
            "bad_input_kinds_tried": len(checked["bad_inputs_by_kind"]),
            "bad_inputs_by_kind": checked["bad_inputs_by_kind"],
            "reader_queries_served": sum(r["served"] for r in readers if r),
            "reader_cli_queries_served": sum(r["cli_served"] for r in readers if r),
            "reader_queries_failed": sum(r["failed"] for r in readers if r),
            "rows_expected": checked["rows_expected"],
            "rows_lost": checked["rows_lost"],
            "rows_duplicated": checked["rows_duplicated"],
            "rows_unexpected": checked["rows_unexpected"],
            "ledger": checked["ledger"],
            "run_log": checked.get("run_log", {}),
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


def product_version() -> str:
    """The commit the product code came from, and whether it had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=str(REPO), capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "lakehouse", "loader", "staging")
    return commit + (" + uncommitted changes" if dirty else "")


def print_summary(result: dict[str, Any]) -> None:
    """The one human summary."""
    k = result
    kills = ", ".join(f"{n} {what}" for what, n in k["processes_killed"].items()) or "none"
    bad = ", ".join(f"{name} {n}" for name, n in k["bad_inputs_by_kind"].items())
    lines = [
        f"chaos summary (seed {k['seed']}, product {k['product']}): "
        f"{'PASS' if k['ok'] else 'FAIL'}",
        f"  minutes run           {k['minutes_run']} (setup {k['timings'].get('setup_s', 0)} s,"
        f" final load and checks {k['timings'].get('final_s', 0)} s)",
        f"  runs staged           {k['runs_staged']} committed: {k['good_runs_committed']} good "
        f"({k['good_runs_retried']} retries after a kill), {k['hostile_runs_committed']} hostile;"
        f" {k['good_runs_uncommitted'] + k['hostile_runs_uncommitted']} never committed",
        f"  loads completed       {k['loads_completed']} ({k['runs_loaded_during_chaos']} runs "
        f"loaded; and {k['dry_runs_completed']} dry runs), {k['loads_busy']} busy (75); "
        f"exit codes {k['exit_codes']}",
        f"  processes killed      {k['processes_killed_total']}: {kills}",
        f"  bad inputs tried      {sum(k['bad_inputs_by_kind'].values())} runs of "
        f"{k['bad_input_kinds_tried']} kinds: {bad}",
        f"  reader queries        {k['reader_queries_served']} served "
        f"({k['reader_cli_queries_served']} through `lake query`), "
        f"{k['reader_queries_failed']} failed",
        f"  rows                  {k['rows_expected']} expected, lost {k['rows_lost']}, "
        f"duplicated {k['rows_duplicated']}, unexpected {k['rows_unexpected']}",
        "  invariants:",
    ]
    for c in k["checks"]:
        lines.append(f"    {'ok  ' if c['ok'] else 'FAIL'} {c['name']}"
                     + ("" if c["ok"] else f" ({c['failures']})"))
        for p in c["problems"][:10]:
            lines.append(f"           - {p}")
    if not k["ok"]:
        lines.append(f"  lake root kept for inspection: {k['root']} (work: {k['work']})")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="How long the chaos lasts.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of every random choice.")
    parser.add_argument("--root", help="Lake root to create (new or empty; default: a temp "
                                       "folder). Never the repository's data/.")
    parser.add_argument("--producers", type=int, default=3, help="Good producer processes.")
    parser.add_argument("--hostile", type=int, default=1, help="Hostile producer processes.")
    parser.add_argument("--readers", type=int, default=2, help="Reader processes.")
    parser.add_argument("--keep", action="store_true", help="Keep the temp folder on success.")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    args = parser.parse_args(argv)
    chaos = Chaos(args)
    try:
        result = chaos.run()
    finally:
        chaos.stop.set()
        chaos.stop_file.touch()
        for p in chaos.producers:
            if p.proc.poll() is None:
                p.proc.kill()
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print_summary(result)
    if result["ok"] and not args.keep:
        shutil.rmtree(chaos.work, ignore_errors=True)  # a --root of the caller's is kept
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

