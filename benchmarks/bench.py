"""`make bench`: Lake against raw DuckDB (the floor) and dlt, in the same run.

Every measured action runs in a fresh process (``benchmarks/worker.py``) on a fresh copy of
its fixture; the table gives the median of ``--repeat`` runs, rows/s, the peak RSS and the
ratio to the baseline measured in this run. Results replace the section between the markers
in ``docs/BENCHMARKS.md``.

    python -m benchmarks.bench --size small            # under a minute, a smoke test
    python -m benchmarks.bench --size full --repeat 3  # the figures in docs/BENCHMARKS.md
    python -m benchmarks.bench --size full --cases append --repeat 5   # case 2 alone

A subset of cases (``--cases``) prints its table but never rewrites the doc's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"
ALL_CASES = "producer,loads,many_small,memory,compaction,publish,tick,tick_cost,dashboard"

SIZES: dict[str, dict[str, int]] = {
    # runs x rows per case
    "small": {"producer_runs": 20, "producer_rows": 50_000, "load_runs": 20,
              "load_rows": 25_000, "small_runs": 1_000, "small_rows": 100,
              "memory_runs": 10, "memory_rows": 200_000, "churn_loads": 8,
              "churn_rows": 50_000},
    "full": {"producer_runs": 100, "producer_rows": 50_000, "load_runs": 100,
             "load_rows": 50_000, "small_runs": 10_000, "small_rows": 100,
             "memory_runs": 100, "memory_rows": 200_000, "churn_loads": 20,
             "churn_rows": 200_000},
}


@dataclass
class Result:
    """One row of the table: an action's runs, and its baseline's label."""

    case: str
    label: str
    rows: int
    seconds: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    baseline: str | None = None
    target: str = ""
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


class Bench:
    """Fixtures, workers and results of one benchmark run."""

    def __init__(self, size: str, repeat: int, workdir: Path, skip_dlt: bool) -> None:
        self.p = SIZES[size]
        self.size, self.repeat, self.work, self.skip_dlt = size, repeat, workdir, skip_dlt
        self.results: list[Result] = []
        self.counter = 0

    # -- plumbing -------------------------------------------------------------------------
    def fresh(self, name: str) -> Path:
        self.counter += 1
        return self.work / f"{self.counter:03d}-{name}"

    def worker(self, action: str, *args: Any) -> dict[str, float]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-m", "benchmarks.worker", action,
                              *map(str, args)], capture_output=True, text=True, env=env,
                             cwd=str(REPO))
        if out.returncode != 0:
            raise SystemExit(f"worker {action} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def measure(self, result: Result, action: str, prepare: Callable[[], list[Any]]) -> Result:
        for _ in range(self.repeat):
            measured = self.worker(action, *prepare())
            result.seconds.append(measured["seconds"])
            result.rss.append(measured["rss_mib"])
        self.results.append(result)
        print(f"  {result.case:14} {result.label:38} median {result.median:8.3f}s  "
              f"rss {max(result.rss):7.0f} MiB", flush=True)
        return result

    def measure_pair(self, base: Result, base_action: str,
                     base_prepare: Callable[[], list[Any]], result: Result, action: str,
                     prepare: Callable[[], list[Any]]) -> tuple[Result, Result]:
        """Like two ``measure`` calls, but alternating the baseline and the action run by run,
        so that a noisy neighbour slows both alike and the ratio holds."""
        for _ in range(self.repeat):
            for target, name, make in ((base, base_action, base_prepare),
                                       (result, action, prepare)):
                measured = self.worker(name, *make())
                target.seconds.append(measured["seconds"])
                target.rss.append(measured["rss_mib"])
        for target in (base, result):
            self.results.append(target)
            print(f"  {target.case:14} {target.label:38} median {target.median:8.3f}s  "
                  f"rss {max(target.rss):7.0f} MiB", flush=True)
        return base, result

    def template(self, name: str, merge: str, batches: list[tuple[int, int, int]],
                 load_first: list[tuple[int, int, int]] | None = None) -> Path:
        """A lake root with staged runs (start, rows, seed); optionally some loaded first."""
        sys.path.insert(0, str(REPO))
        from benchmarks.data import events, write_root
        from lakehouse.config import load_config
        from loader.init import init_lake
        from loader.load import LoadOptions, load_pending
        from staging import stage

        root = self.fresh(name)
        write_root(root, merge)
        init_lake(root)
        if load_first:
            for start, rows, seed in load_first:
                stage(root, "events", events(start, rows, seed), producer="seed")
            load_pending(load_config(root), LoadOptions())
        for start, rows, seed in batches:
            stage(root, "events", events(start, rows, seed), producer="bench")
        return root

    def copy(self, root: Path, name: str) -> Path:
        target = self.fresh(name)
        shutil.copytree(root, target, symlinks=True)
        return target

    def file_list(self, root: Path, name: str) -> Path:
        files = sorted(str(p) for p in (root / "staging" / "events").glob("*/*.parquet"))
        target = self.work / f"{name}.json"
        target.write_text(json.dumps(files))
        return target

    def keep_files(self, root: Path, name: str) -> Path:
        """Copy a root's staged files aside (loads with retention 0 delete them)."""
        folder = self.fresh(name)
        shutil.copytree(root / "staging" / "events", folder)
        files = sorted(str(p) for p in folder.glob("*/*.parquet"))
        target = folder.with_name(f"{folder.name}.json")
        target.write_text(json.dumps(files))
        return target

    # -- cases ----------------------------------------------------------------------------
    def producer(self) -> None:
        runs, rows = self.p["producer_runs"], self.p["producer_rows"]
        base = self.measure(Result("1 producer", "pyarrow write_table", runs * rows),
                            "stage_plain", lambda: [self.fresh("plain"), runs, rows])
        self.measure(Result("1 producer", "stage_run (fsync, manifest)", runs * rows,
                            baseline=base.label, target="<= 1.15x"),
                     "stage_lake", lambda: [self.fresh("stage"), runs, rows])

    def loads(self) -> None:
        """Cases 2, 3 and 8: validated append and upsert, and dlt on the same files."""
        files = self.append()
        lake_up, seed_files = self._upsert(files)
        self._peer(files, seed_files, lake_up)

    def append(self) -> Path:
        """Case 2 alone: raw insert, then the validated append of the same runs, each action
        run back to back ``--repeat`` times; returns the list of the staged files."""
        runs, rows = self.p["load_runs"], self.p["load_rows"]
        total = runs * rows
        batches = [(i * rows, rows, i) for i in range(runs)]
        append = self.template("append", "append", batches)
        files = self.keep_files(append, "append-files")
        raw = Result("2 append", "raw INSERT ... read_parquet", total)
        self.measure_pair(raw, "raw_insert", lambda: [self.fresh("raw") / "raw.duckdb", files],
                          Result("2 append", "lake load (validated append)", total,
                                 baseline=raw.label, target="<= 2.0x"),
                          "lake_load", lambda: [self._fresh_copy(append, "append-run")])
        self.append_root = self.last_copy
        return files

    def _upsert(self, files: Path) -> tuple[Result, Path]:
        runs, rows = self.p["load_runs"], self.p["load_rows"]
        total = runs * rows
        batches = [(i * rows, rows, i) for i in range(runs)]
        seed_rows = int(total * 0.3)
        seed_batches = [(i * (seed_rows // 10), seed_rows // 10, 10_000 + i) for i in range(10)]
        upsert = self.template("upsert", "upsert", batches, load_first=seed_batches)
        seed = self.template("seed", "upsert", seed_batches)
        seed_files = self.keep_files(seed, "seed-files")
        raw_up = Result("3 upsert", "raw INSERT ... ON CONFLICT", total)
        # Alternating run by run (issue 17): the ratio is the target, and a noisy neighbour
        # then slows both alike.
        _, lake_up = self.measure_pair(
            raw_up, "raw_upsert", lambda: [self.fresh("rawup") / "raw.duckdb", files, seed_files],
            Result("3 upsert", "lake load (validated upsert, 30% exist)", total,
                   baseline=raw_up.label, target="<= 1.0x"),
            "lake_load", lambda: [self._fresh_copy(upsert, "upsert-run")])
        return lake_up, seed_files

    def upsert(self) -> None:
        """Case 3 alone (``--cases upsert``): the staged files, then the raw and Lake upserts
        alternating."""
        runs, rows = self.p["load_runs"], self.p["load_rows"]
        staged = self.template("upsert-files", "append",
                               [(i * rows, rows, i) for i in range(runs)])
        self._upsert(self.keep_files(staged, "upsert-files-kept"))

    def _peer(self, files: Path, seed_files: Path, lake_up: Result) -> None:
        total = self.p["load_runs"] * self.p["load_rows"]
        if self.skip_dlt:
            return
        try:
            import dlt  # noqa: F401
        except ImportError:
            print("  dlt not installed (pip install -e .[bench]): skipping the peer case")
            return
        self.measure(Result("8 dlt", "dlt append (parquet)", total, baseline=None),
                     "dlt_load", lambda: [self.fresh("dlt"), files, "append"])
        dlt_merge = Result("8 dlt", "dlt merge on id (30% exist)", total)
        self.measure(dlt_merge, "dlt_load", lambda: [self.fresh("dltm"), files, "merge",
                                                     seed_files])
        dlt_merge.note = (f"Lake's validated upsert is {dlt_merge.median / lake_up.median:.1f}x "
                          "faster (target >= 5x)")

    def _fresh_copy(self, root: Path, name: str) -> Path:
        copy = self.copy(root, name)
        self.last_copy = copy
        return copy

    def many_small(self) -> None:
        runs, rows = self.p["small_runs"], self.p["small_rows"]
        first = self.template("small", "append", [(i * rows, rows, i) for i in range(runs)])
        second = self.template("small2", "append",
                               [((runs + i) * rows, rows, runs + i) for i in range(runs)])
        files = self.keep_files(first, "small-files")
        raw = self.measure(Result("4 small runs", f"raw read of {runs} files", runs * rows),
                           "raw_insert", lambda: [self.fresh("rawsmall") / "raw.duckdb", files])
        first_load = self.measure(
            Result("4 small runs", f"lake load, first {runs} runs", runs * rows,
                   baseline=raw.label, target="<= 3x"),
            "lake_load", lambda: [self._fresh_copy(first, "small-run")])

        def with_second_batch() -> list[Any]:
            root = self._fresh_copy(first, "small-2nd")
            self.worker("lake_load", root)  # the first runs, untimed here
            for run in (second / "staging" / "events").iterdir():
                shutil.copytree(run, root / "staging" / "events" / run.name)
            return [root]

        again = self.measure(Result("4 small runs", f"lake load, next {runs} runs (after "
                                    f"{runs} loaded)", runs * rows, baseline=first_load.label,
                                    target="~1.0x (no growth)"), "lake_load", with_second_batch)
        again.note = "ratio to the first load: per-run cost must not grow with the ledger"

    def memory(self) -> None:
        runs, rows = self.p["memory_runs"], self.p["memory_rows"]
        root = self.template("memory", "append", [(i * rows, rows, i) for i in range(runs)])
        result = Result("5 memory", f"lake load of {runs * rows:,} rows", runs * rows,
                        target="peak RSS < 2048 MiB")
        saved, self.repeat = self.repeat, 1
        self.measure(result, "lake_load", lambda: [self._fresh_copy(root, "memory-run")])
        self.repeat = saved
        self.memory_root = self.last_copy
        result.note = f"peak RSS {max(result.rss):.0f} MiB"

    def compaction(self) -> None:
        loads, rows = self.p["churn_loads"], self.p["churn_rows"]
        sys.path.insert(0, str(REPO))
        from benchmarks.data import events
        from lakehouse.config import load_config
        from loader.load import LoadOptions, load_pending
        from staging import stage

        root = self.template("churn", "upsert", [])
        for i in range(loads):  # the same keys upserted again and again
            stage(root, "events", events(0, rows, 500 + i), producer="churn")
            load_pending(load_config(root), LoadOptions())
        before = (root / "warehouse" / "lake.duckdb").stat().st_size
        result = Result("6 compaction", f"compact after {loads} upserts of {rows:,} keys", rows)
        self.measure(result, "compact", lambda: [self._fresh_copy(root, "churn-run")])
        after = (self.last_copy / "warehouse" / "lake.duckdb").stat().st_size
        gib = before / 2**30
        result.note = (f"file {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
                       f"({100 * (1 - after / before):.0f}% smaller); "
                       f"{result.median / gib:.1f} s per GiB compacted")

    def publish(self) -> None:
        for name, root in (("append", getattr(self, "append_root", None)),
                           ("memory", getattr(self, "memory_root", None))):
            if root is None:
                continue
            size = (root / "warehouse" / "lake.duckdb").stat().st_size
            result = Result("7 publish", f"publish snapshot ({name} case warehouse)", 0)
            self.measure(result, "publish", partial(list, [root]))
            result.note = (f"{size / 2**20:.0f} MiB in {result.median:.2f} s "
                           f"({size / 2**20 / result.median:.0f} MiB/s)")

    def tick(self) -> None:
        """Case 9 (issue 17): one cron tick, a 100-row run loaded and published, on
        warehouses of growing size; the old publish (a full copy) against the incremental
        one, on the same warehouse in the same run."""
        smallest = None
        for mib in TICK_MIB[self.size]:
            root = self.fresh(f"tick-{mib}")
            build_tick_root(root, mib)
            size = (root / "warehouse" / "lake.duckdb").stat().st_size
            for _ in range(2):  # the versions the first syncs start from (copies)
                stage_tick_run(root)
                age_snapshots(root)
                self.worker("lake_load", root)
            new = Result("9 tick", f"tick, incremental publish ({mib} MiB)", TICK_ROWS,
                         baseline=smallest, target="<= 1.5x" if smallest else "")
            old = Result("9 tick", f"tick, full-copy publish ({mib} MiB)", TICK_ROWS)

            # All incremental ticks first: a copy asked for by a pending note moves the
            # floor, and the two ticks after it are copies again.
            self.measure(new, "tick", partial(staged_tick, root, "incremental"))
            disk_new = tick_disk(root)
            self.measure(old, "tick", partial(staged_tick, root, "copy"))
            smallest = smallest or new.label
            new.note = (f"warehouse file {size / 2**20:,.0f} MiB; the full copy's tick takes "
                        f"{old.median / new.median:.2f}x as long; disk {disk_new}")
            old.note = f"disk {tick_disk(root)} (the baseline, before issue 17)"
            shutil.rmtree(root, ignore_errors=True)  # up to 3x the warehouse on disk


    # -- issue 17, part 3: the fixed cost of a cron tick -------------------------------------
    def tick_cost(self) -> None:
        """Case 10: what a whole `lake load` process costs when nothing is staged, and with one
        100-row run, against ``python -c pass`` (interpreter start-up) in the same run; the
        three alternate round by round. Timed from outside: process start to exit."""
        sys.path.insert(0, str(REPO))
        from benchmarks.data import events
        from staging import stage

        empty = self.template("tick-empty", "append", [])
        one = self.template("tick-one", "append", [])
        start_up = Result("10 fixed cost", "python -c pass", 0)
        idle = Result("10 fixed cost", "lake load, nothing staged", 0, baseline=start_up.label)
        small = Result("10 fixed cost", "lake load, one 100-row run", 100, baseline=start_up.label)
        lake = lake_command()
        for i in range(max(5, 5 * self.repeat)):
            stage(one, "events", events(i * 100, 100, i), producer="tick")
            for result, argv in ((start_up, [sys.executable, "-c", "pass"]),
                                 (idle, [*lake, "--root", str(empty), "load"]),
                                 (small, [*lake, "--root", str(one), "load"])):
                measured = timed_process(argv)
                result.seconds.append(measured["seconds"])
                result.rss.append(measured["rss_mib"])
        for result in (start_up, idle, small):
            self.results.append(result)
            print(f"  {result.case:14} {result.label:38} median {result.median:8.3f}s  "
                  f"rss {max(result.rss):7.0f} MiB", flush=True)
        heavy = sorted({"pandera", "polars", "pandas"}
                       & imported_modules([*lake, "--root", str(empty), "load"]))
        idle.note = (f"{1000 * (idle.median - start_up.median):.0f} ms over start-up; "
                     f"imports {', '.join(heavy) or 'neither pandera nor polars'}")
        small.note = f"{1000 * (small.median - idle.median):.0f} ms over the empty tick"


# Case 9: warehouse sizes (MiB of incompressible data) and the tick's run.
TICK_MIB = {"small": [4, 16], "full": [100, 1024, 4096]}
TICK_ROWS = 100
TICK_PAYLOAD = 1024  # random bytes per row: DuckDB cannot compress them
TICK_TOML = """
[lake]
retention_days = 0

[tables.ticks]
primary_key = ["id"]
partition_by = { column = "ts", granularity = "month" }
merge = "append"
"""


def tick_rows(start: int, rows: int, seed: int) -> Any:
    """``rows`` rows of ``ticks``: an id, a time and ``TICK_PAYLOAD`` random bytes."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    payload = rng.bytes(rows * TICK_PAYLOAD)
    offsets = np.arange(0, (rows + 1) * TICK_PAYLOAD, TICK_PAYLOAD, dtype=np.int32)
    ts = np.datetime64("2026-01-01T00:00:00", "us") + rng.integers(
        0, 86_400 * 90, rows).astype("timedelta64[s]")
    return pa.table({
        "id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
        "ts": pa.array(ts.astype("datetime64[us]")),
        "payload": pa.Array.from_buffers(pa.binary(), rows,
                                         [None, pa.py_buffer(offsets), pa.py_buffer(payload)]),
    })


def build_tick_root(root: Path, mib: int) -> None:
    """A lake root whose warehouse holds ~``mib`` MiB of ``ticks`` (loaded by Lake, in
    loads of at most 512 MiB, so staging never holds more)."""
    sys.path.insert(0, str(REPO))
    from lakehouse.config import load_config
    from loader.init import init_lake
    from loader.load import LoadOptions, load_pending
    from staging import stage

    root.mkdir(parents=True)
    (root / "lake.toml").write_text(TICK_TOML)
    init_lake(root)
    rows_per_run = 32 * 2**20 // TICK_PAYLOAD
    total = mib * 2**20 // TICK_PAYLOAD
    done = 0
    while done < total:
        for _ in range(16):
            rows = min(rows_per_run, total - done)
            if rows <= 0:
                break
            stage(root, "ticks", tick_rows(done, rows, done), producer="seed")
            done += rows
        age_snapshots(root)  # loads sync rather than copy: two versions on disk, not more
        load_pending(load_config(root), LoadOptions())


def staged_tick(root: Path, mode: str) -> list[Any]:
    """The worker's arguments for one tick, its run staged."""
    stage_tick_run(root)
    age_snapshots(root)  # as a cron interval would: the grace period has passed
    return [root, mode]


def stage_tick_run(root: Path) -> None:
    """The tick's run: ``TICK_ROWS`` new rows."""
    import duckdb

    from staging import stage

    con = duckdb.connect(str(root / "warehouse" / "lake.duckdb"), read_only=True)
    try:
        top = con.execute("SELECT max(id) FROM ticks").fetchone()[0]
    finally:
        con.close()
    stage(root, "ticks", tick_rows(top + 1, TICK_ROWS, top), producer="tick")


def age_snapshots(root: Path, seconds: float = 60.0) -> None:
    """Date the snapshot versions back, as the minutes between two cron ticks would."""
    then = time.time() - seconds
    for path in (root / "warehouse" / "snapshots").glob("lake.read.*.duckdb"):
        os.utime(path, (then, then))


def tick_disk(root: Path) -> str:
    """What the warehouse and its snapshot versions use on disk."""
    folder = root / "warehouse"
    used = sum(p.stat().st_blocks * 512 for p in folder.rglob("*.duckdb") if p.is_file()
               and not p.is_symlink())
    live = (folder / "lake.duckdb").stat().st_blocks * 512
    versions = len(list((folder / "snapshots").glob("lake.read.*.duckdb")))
    return (f"{used / 2**20:,.0f} MiB in all ({used / live:.1f}x the warehouse, "
            f"{versions} versions)")

def lake_command() -> list[str]:
    """The `lake` console script beside this interpreter (what cron runs), or its module."""
    script = Path(sys.executable).with_name("lake")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "loader.cli"]


# Times one process from a small launcher: a child forked from this (big) process would
# report this process's RSS as its own peak (ru_maxrss survives exec).
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
errors = process.stderr.read()
_, status, usage = os.wait4(process.pid, 0)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_mib": usage.ru_maxrss / 1024,
                  "code": os.waitstatus_to_exitcode(status),
                  "stderr": errors.decode(errors="replace")[-2000:]}))
"""


def timed_process(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """A whole process, start to exit: ``seconds``, peak RSS (``rss_mib``) and ``stderr``."""
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True,
                         text=True, env=env)
    measured: dict[str, Any] = json.loads(out.stdout)
    if measured["code"] != 0:
        raise SystemExit(f"{argv} exited {measured['code']}: {measured['stderr']}")
    return measured


def imported_modules(argv: list[str]) -> set[str]:
    """The modules a process imported, from its ``-X importtime`` lines."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    return {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def dashboard_case(bench: Bench) -> None:
    """Case 11: every dashboard page's reads once (``lake dashboard``, issue 15), on a copy of
    the memory case's lake (20M rows at size full), snapshot opened each time."""
    source = getattr(bench, "memory_root", None)
    if source is None:
        bench.memory()
        source = bench.memory_root

    from lakehouse.layout import LakePaths
    from lakehouse.publish import publish_snapshot

    root = bench.copy(source, "dashboard")
    publish_snapshot(LakePaths.at(root))
    rows = bench.p["memory_runs"] * bench.p["memory_rows"]
    result = Result("11 dashboard", f"every page's reads on {rows:,} rows", rows,
                    target="< 2 s")
    bench.measure(result, "dashboard", partial(list, [root]))
    result.note = f"all five pages' queries, snapshot opened once: {result.median:.2f} s"


def render(bench: Bench, seconds: float) -> str:
    """The markdown section written into docs/BENCHMARKS.md."""
    by_label = {r.label: r for r in bench.results}
    lines = [
        MARK_START,
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, size `{bench.size}`, median of "
        f"{bench.repeat} runs, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"total {seconds:.0f} s. Each action ran in a fresh process on a fresh copy of its "
        "fixture.",
        "",
        "| case | action | rows | median s | rows/s | peak RSS MiB | ratio to baseline "
        "| target | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in bench.results:
        ratio = ""
        if r.baseline and r.baseline in by_label:
            ratio = f"{r.median / by_label[r.baseline].median:.2f}x ({r.baseline})"
        rate = f"{r.rows / r.median:,.0f}" if r.rows else ""
        lines.append(f"| {r.case} | {r.label} | {r.rows:,} | {r.median:.3f} | {rate} | "
                     f"{max(r.rss):.0f} | {ratio} | {r.target} | {r.note} |")
    lines.append(MARK_END)
    return "\n".join(lines)


def write_doc(section: str, path: Path) -> None:
    """Replace the marked section of the benchmarks doc (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the cases and write the table."""
    parser = argparse.ArgumentParser(description="Lake benchmarks")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per action (default: 1 small, 3 full)")
    parser.add_argument("--cases", default=ALL_CASES,
                        help="comma-separated subset of: " + ALL_CASES + ",append (case 2 "
                        "alone),upsert (case 3 alone); a subset never rewrites the doc")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="do not touch the doc")
    parser.add_argument("--skip-dlt", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.size == "small" else 3)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lake-bench-"))
    started = time.monotonic()
    bench = Bench(args.size, repeat, work, args.skip_dlt)
    try:
        for case in args.cases.split(","):
            print(f"case {case}", flush=True)
            if case == "dashboard":
                dashboard_case(bench)
            else:
                getattr(bench, case)()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    section = render(bench, time.monotonic() - started)
    print(section)
    if args.cases != ALL_CASES:
        print("a subset of the cases: docs/BENCHMARKS.md left as it is")
    elif not args.no_write:
        write_doc(section, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
