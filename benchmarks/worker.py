"""One measured action, in a fresh process: prints ``{"seconds": .., "rss_mib": ..}``.

Run by ``benchmarks/bench.py``; every action of a case (Lake's and its baseline) runs the same
way, so the ratios compare like with like. Setup (creating tables, seeding) is not timed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _rss_mib() -> float:
    """Peak RSS of this process since its exec (VmHWM; ru_maxrss can carry the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_lake(root: str, runs: int, rows: int) -> float:
    """Stage ``runs`` one-file runs of ``rows`` rows with the producer API."""
    from benchmarks.data import events
    from staging import stage_run

    tables = [events(i * rows, rows, i) for i in range(runs)]
    start = time.perf_counter()
    for table in tables:
        with stage_run(root, "events", producer="bench") as run:
            run.write(table)
    return time.perf_counter() - start


def stage_plain(folder: str, runs: int, rows: int) -> float:
    """The baseline: plain ``pyarrow.parquet.write_table`` of the same tables."""
    import pyarrow.parquet as pq

    from benchmarks.data import events

    Path(folder).mkdir(parents=True, exist_ok=True)
    tables = [events(i * rows, rows, i) for i in range(runs)]
    start = time.perf_counter()
    for i, table in enumerate(tables):
        pq.write_table(table, f"{folder}/part-{i:05d}.parquet")
    return time.perf_counter() - start


def lake_load(root: str) -> float:
    """Time one `lake load` of everything staged under ``root``."""
    from lakehouse.config import load_config
    from lakehouse.contracts import SchemaRegistry
    from loader.load import LoadOptions, load_pending

    config = load_config(root)
    SchemaRegistry(config).load_all()  # imports pandera/polars before the clock starts
    start = time.perf_counter()
    report = load_pending(config, LoadOptions())
    seconds = time.perf_counter() - start
    if report.rejected or report.count("loaded") == 0:
        raise SystemExit(f"benchmark load rejected runs or loaded nothing: {report.as_dict()}")
    return seconds


def _files(list_file: str) -> list[str]:
    return json.loads(Path(list_file).read_text())


def raw_insert(db: str, files: str) -> float:
    """The floor: DuckDB's own INSERT ... SELECT FROM read_parquet of the same files."""
    import duckdb

    paths = _files(files)
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(db)
    con.execute("CREATE TABLE events AS SELECT * FROM read_parquet(?) LIMIT 0", [paths[:1]])
    start = time.perf_counter()
    con.execute("INSERT INTO events SELECT * FROM read_parquet(?)", [paths])
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - start
    con.close()
    return seconds


def raw_upsert(db: str, files: str, seed: str) -> float:
    """The upsert floor: INSERT ... ON CONFLICT DO UPDATE into a keyed table."""
    import duckdb

    paths, seed_paths = _files(files), _files(seed)
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(db)
    con.execute("CREATE TABLE events (id BIGINT PRIMARY KEY, ts TIMESTAMP, value DOUBLE, "
                "kind VARCHAR, note VARCHAR)")
    con.execute("INSERT INTO events SELECT * FROM read_parquet(?)", [seed_paths])
    con.execute("CHECKPOINT")
    start = time.perf_counter()
    con.execute("INSERT INTO events SELECT * FROM read_parquet(?) ON CONFLICT (id) DO UPDATE "
                "SET ts = excluded.ts, value = excluded.value, kind = excluded.kind, "
                "note = excluded.note", [paths])
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - start
    con.close()
    return seconds


def dlt_load(workdir: str, files: str, disposition: str, seed: str = "") -> float:
    """dlt loading the same Parquet files into a DuckDB file (append or merge on id)."""
    import os

    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    import pyarrow.parquet as pq

    def tables(paths: list[str]) -> Any:
        for p in paths:
            yield pq.read_table(p)

    pipeline = dlt.pipeline(pipeline_name="bench", pipelines_dir=f"{workdir}/pipelines",
                            destination=dlt.destinations.duckdb(f"{workdir}/dlt.duckdb"),
                            dataset_name="bench")
    kwargs: dict[str, Any] = {"table_name": "events", "write_disposition": disposition,
                              "loader_file_format": "parquet"}
    if disposition == "merge":
        kwargs["primary_key"] = "id"
    if seed:
        pipeline.run(tables(_files(seed)), **kwargs)
    start = time.perf_counter()
    pipeline.run(tables(_files(files)), **kwargs)
    return time.perf_counter() - start


def compact(root: str) -> float:
    """Time `lake compact` of a root."""
    from lakehouse.config import load_config
    from loader.compact import compact_warehouse

    config = load_config(root)
    start = time.perf_counter()
    compact_warehouse(config)
    return time.perf_counter() - start


def publish(root: str) -> float:
    """Time publishing the read snapshot of a root."""
    from lakehouse.layout import LakePaths
    from lakehouse.publish import publish_snapshot

    return publish_snapshot(LakePaths.at(root)).seconds


def dashboard(root: str) -> float:
    """Time every dashboard page's reads once on the published snapshot (issue 15)."""
    from loader.dashboard import read_every_page

    start = time.perf_counter()
    read_every_page(root)
    return time.perf_counter() - start


ACTIONS = {f.__name__: f for f in (stage_lake, stage_plain, lake_load, raw_insert, raw_upsert,
                                   dlt_load, compact, publish, dashboard)}


def tick(root: str, mode: str) -> float:
    """Issue 17: time one cron tick, the load of the run staged under ``root`` and its
    publish; ``mode`` ``copy`` is the old publish (a pending note that asks for a full copy),
    ``incremental`` the new one. Fails if the publish was not made the way asked."""
    from lakehouse.config import load_config
    from lakehouse.publish import mark_publish_pending
    from loader.load import LoadOptions, load_pending

    config = load_config(root)
    if mode == "copy":
        mark_publish_pending(config.paths)  # what every write did before issue 17
    _warm_imports()
    start = time.perf_counter()
    report = load_pending(config, LoadOptions())
    seconds = time.perf_counter() - start
    want = {"copy": ("copy", "reflink"), "incremental": ("incremental", "reflink")}[mode]
    if report.count("loaded") != 1 or report.publish_method not in want:
        raise SystemExit(f"tick {mode}: published by {report.publish_method!r} "
                         f"({report.publish_reason}); {report.as_dict()}")
    return seconds


def _warm_imports() -> None:
    """What a load imports lazily (registering Arrow data makes DuckDB import pandas: ~1-3 s
    on a busy machine), so that a tick's clock measures the load and the publish; the fixed
    cost of a tick is measured on its own (issue 17, part 3)."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.register("warm", pa.table({"a": [1]}))
    con.execute("SELECT count(*) FROM warm").fetchall()
    con.close()


ACTIONS["tick"] = tick


def main() -> None:
    """``python -m benchmarks.worker ACTION ARG...``"""
    action, args = sys.argv[1], sys.argv[2:]
    function: Any = ACTIONS[action]
    converted = [int(a) if a.isdigit() else a for a in args]
    seconds = function(*converted)
    print(json.dumps({"seconds": seconds, "rss_mib": round(_rss_mib(), 1)}))


if __name__ == "__main__":
    main()
