"""The chaos run's lake: its ``lake.toml``, contracts, good rows and the producers' journals.

Everything a chaos process stages is a pure function of ``(seed, producer id, sequence
number)``, so the checker recomputes what each committed run held from the journals alone.
Keys are unique per producer (``pid * KEY_SPACE + seq * SEQ_SPACE + j``), which keeps producers
independent: no two producers ever touch the same key, partition or file content.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

KEY_SPACE = 10_000_000  # keys of producer p are p * KEY_SPACE + ... (fits int32 up to p = 214)
SEQ_SPACE = 1_000  # a run holds fewer rows than this
MAX_PID = 200
BASE_TS = dt.datetime(2026, 3, 1)
KINDS = ("view", "click", "purchase")
EVENT_KEY_POOL = 300  # each producer upserts its own 300 event ids again and again
SNAP_PARTS = 6  # each producer replaces its own six partitions again and again

# Four tables, one per way a run enters the warehouse.
TABLES = ("logs", "events", "snap", "readings")
TABLE_WEIGHTS = (0.35, 0.25, 0.15, 0.25)
KEY_COLUMNS = {"logs": ("id",), "events": ("event_id",), "snap": ("id",),
               "readings": ("sensor", "ts")}

LAKE_TOML = """
[lake]
retention_days = 7
# 72 s: uncommitted runs of killed producers go to quarantine (abandoned) during the run.
abandon_after_hours = 0.02
batch_max_runs = 25
# 64 MiB of decoded (Arrow) bytes per run: a decompression bomb of modest CPU cost trips it,
# while the biggest legitimate chaos run (a 1 MiB string cell) is far below.
max_run_bytes = 67108864

# append with a key, day partitions, no pandera contract (Lake's own checks only)
[tables.logs]
primary_key = ["id"]
partition_by = { column = "ts", granularity = "day" }
merge = "append"

# upsert, month partitions, a pandera.polars contract
[tables.events]
schema = "contracts.events:EventSchema"
primary_key = ["event_id"]
partition_by = { column = "ts", granularity = "month" }
merge = "upsert"

# replace_partition on a text column
[tables.snap]
partition_by = { column = "part", granularity = "identity" }
merge = "replace_partition"

# append, a pandera.pandas contract, invalid rows dropped (drop_rows)
[tables.readings]
schema = "contracts.readings:ReadingSchema"
primary_key = ["sensor", "ts"]
partition_by = { column = "ts", granularity = "day" }
merge = "append"
on_invalid = "drop_rows"
"""

EVENTS_CONTRACT = '''
import polars as pl
import pandera.polars as pa


class EventSchema(pa.DataFrameModel):
    event_id: int = pa.Field(ge=0)
    ts: pl.Datetime = pa.Field()
    kind: str = pa.Field(isin=["view", "click", "purchase"])
    amount: float = pa.Field(ge=0, nullable=True)

    class Config:
        strict = False
'''

READINGS_CONTRACT = '''
import pandas as pd
import pandera.pandas as pa


class ReadingSchema(pa.DataFrameModel):
    sensor: str = pa.Field(str_matches=r"^s-\\d+$")
    ts: pd.Timestamp = pa.Field()
    celsius: float = pa.Field(ge=-90, le=60)

    class Config:
        strict = True
'''

_SENSOR = re.compile(r"^s-\d+$")


def write_lake_files(root: Path) -> None:
    """Write ``lake.toml`` and the contracts package into a new lake root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "lake.toml").write_text(textwrap.dedent(LAKE_TOML))
    contracts = root / "contracts"
    contracts.mkdir(exist_ok=True)
    (contracts / "__init__.py").write_text("")
    (contracts / "events.py").write_text(textwrap.dedent(EVENTS_CONTRACT))
    (contracts / "readings.py").write_text(textwrap.dedent(READINGS_CONTRACT))


# -- the contracts as the reference model sees them (tests/model.py) -------------------------
def events_row_ok(row: dict[str, Any]) -> bool:
    """EventSchema's row checks."""
    amount = row.get("amount")
    return (row["event_id"] is not None and row["event_id"] >= 0 and row["kind"] in KINDS
            and (amount is None or (not math.isnan(amount) and amount >= 0)))


def readings_row_ok(row: dict[str, Any]) -> bool:
    """ReadingSchema's row checks (NaN counts as null, and celsius is not nullable)."""
    c = row.get("celsius")
    sensor = row.get("sensor")
    return (isinstance(sensor, str) and bool(_SENSOR.match(sensor)) and c is not None
            and not math.isnan(c) and -90 <= c <= 60)


def model_specs(model: Any) -> dict[str, Any]:
    """The ``TableSpec`` of each table, for ``model.simulate``."""
    spec = model.TableSpec
    return {
        "logs": spec("logs", "append", ("id",), "ts", "day"),
        "events": spec("events", "upsert", ("event_id",), "ts", "month",
                       row_check=events_row_ok),
        "snap": spec("snap", "replace_partition", (), "part", "identity"),
        "readings": spec("readings", "append", ("sensor", "ts"), "ts", "day",
                         on_invalid="drop_rows", row_check=readings_row_ok),
    }


# -- the spec change: partway through, `logs` goes from day to month partitions --------------
RESPEC_TABLE = "logs"
RESPEC_FROM = 'partition_by = { column = "ts", granularity = "day" }\nmerge = "append"'
RESPEC_TO = 'partition_by = { column = "ts", granularity = "month" }\nmerge = "append"'
RESPEC_MARKER = "respec.json"  # in the work folder: the chaos changed the spec


def respec_lake_files(root: Path, work: Path) -> None:
    """Change ``logs`` to month partitions in lake.toml (atomically: a command reading it
    sees the old file or the new one), noting it in the work folder first."""
    (work / RESPEC_MARKER).write_text(json.dumps({"table": RESPEC_TABLE, "to": RESPEC_TO}))
    path = root / "lake.toml"
    text = path.read_text()
    assert text.count(f"[tables.{RESPEC_TABLE}]\nprimary_key = [\"id\"]\n{RESPEC_FROM}") == 1
    tmp = path.with_name(path.name + ".respec")
    tmp.write_text(text.replace(f"[tables.{RESPEC_TABLE}]\nprimary_key = [\"id\"]\n"
                                f"{RESPEC_FROM}",
                                f"[tables.{RESPEC_TABLE}]\nprimary_key = [\"id\"]\n"
                                f"{RESPEC_TO}"))
    os.replace(tmp, path)


def respecced(work: Path) -> bool:
    """True when the chaos run changed the spec (then `lake repartition` must have run)."""
    return (work / RESPEC_MARKER).exists()


def respec_model_spec(model: Any) -> Any:
    """The ``TableSpec`` of ``logs`` after the change."""
    return model.TableSpec("logs", "append", ("id",), "ts", "month")


# -- good rows ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One good run of producer ``pid``: which table, how many rows and files."""

    seed: int
    pid: int
    seq: int
    table: str
    rows: int
    files: int
    abandon: bool  # the producer raises inside the run: never committed

    @property
    def key(self) -> str:
        """The idempotency key: a restarted producer retries the run with the same key."""
        return f"g{self.pid}-{self.seq}"


def plan_run(seed: int, pid: int, seq: int) -> Plan:
    """The good run number ``seq`` of producer ``pid`` (deterministic)."""
    rng = random.Random(f"chaos-plan:{seed}:{pid}:{seq}")
    table = rng.choices(TABLES, TABLE_WEIGHTS)[0]
    rows = rng.randint(1, 40)
    files = 2 if rows > 1 and rng.random() < 0.3 else 1
    return Plan(seed, pid, seq, table, rows, files, abandon=rng.random() < 0.04)


def key_base(pid: int, seq: int) -> int:
    return pid * KEY_SPACE + seq * SEQ_SPACE


def good_rows(plan: Plan) -> pa.Table:
    """The rows of a good run: valid for its table, keys unique to the producer."""
    rng = random.Random(f"chaos-rows:{plan.seed}:{plan.pid}:{plan.seq}")
    base, n, seq = key_base(plan.pid, plan.seq), plan.rows, plan.seq
    if plan.table == "logs":
        ids = [base + j for j in range(n)]
        return pa.table({
            "id": pa.array(ids, pa.int64()),
            "ts": pa.array([BASE_TS + dt.timedelta(hours=(seq * 7 + j) % 240) for j in range(n)],
                           pa.timestamp("us")),
            "msg": pa.array([f"p{plan.pid}s{seq}r{j}" for j in range(n)], pa.string()),
        })
    if plan.table == "events":
        keys = [plan.pid * KEY_SPACE + k for k in rng.sample(range(EVENT_KEY_POOL), n)]
        return pa.table({
            "event_id": pa.array(keys, pa.int64()),
            "ts": pa.array([BASE_TS + dt.timedelta(days=(k + seq) % 90) for k in keys],
                           pa.timestamp("us")),
            "kind": pa.array([KINDS[(k + seq) % 3] for k in keys], pa.string()),
            "amount": pa.array([float(seq) + j / 4 for j in range(n)], pa.float64()),
        })
    if plan.table == "snap":
        parts = rng.sample(range(SNAP_PARTS), 2 if n > 3 else 1)
        return pa.table({
            "part": pa.array([f"p{plan.pid}-{parts[j % len(parts)]}" for j in range(n)],
                             pa.string()),
            "id": pa.array([base + j for j in range(n)], pa.int64()),
            "val": pa.array([float(seq)] * n, pa.float64()),
        })
    return pa.table({
        "sensor": pa.array([f"s-{plan.pid}"] * n, pa.string()),
        "ts": pa.array([BASE_TS + dt.timedelta(seconds=seq * SEQ_SPACE + j) for j in range(n)],
                       pa.timestamp("us")),
        "celsius": pa.array([float((seq * 31 + j * 7) % 140 - 80) for j in range(n)],
                            pa.float64()),
    })


def split(data: pa.Table, files: int) -> list[pa.Table]:
    """The files a run's rows are written as (same split for the producer and the checker)."""
    if files < 2 or data.num_rows < 2:
        return [data]
    half = data.num_rows // 2
    return [data.slice(0, half), data.slice(half)]


# -- journals: what each producer process began and committed ---------------------------------
class Journal:
    """An append-only JSON-lines file per producer id (one process writes it at a time).

    Lines are written with one ``write`` on an ``O_APPEND`` descriptor: a SIGKILL loses none
    that was written (the kernel has it), and never leaves half a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **event: Any) -> None:
        os.write(self.fd, (json.dumps(event, default=str) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """The events of one journal (a torn last line, impossible by construction, is skipped)."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue
