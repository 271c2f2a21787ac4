"""Synthetic event data and the contract the benchmarks validate it with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

KINDS = ["view", "click", "purchase", "signup", "refund"]
EPOCH = np.datetime64("2026-01-01T00:00:00", "us")

CONTRACT = '''
import polars as pl
import pandera.polars as pa


class EventSchema(pa.DataFrameModel):
    """Benchmark contract: a uniqueness, a range and an isin check."""

    id: int = pa.Field(unique=True)
    ts: pl.Datetime
    value: float = pa.Field(ge=0, le=1_000_000)
    kind: str = pa.Field(isin=["view", "click", "purchase", "signup", "refund"])
    note: str = pa.Field(nullable=True)
'''


def lake_toml(merge: str) -> str:
    """A lake.toml with one benchmark table ``events`` using ``merge``."""
    return f"""
[lake]
retention_days = 7

[tables.events]
schema = "contracts.bench:EventSchema"
primary_key = ["id"]
partition_by = {{ column = "ts", granularity = "month" }}
merge = "{merge}"
"""


def write_root(root: Path, merge: str) -> None:
    """Write lake.toml and the contract into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "lake.toml").write_text(lake_toml(merge))
    (root / "contracts").mkdir(exist_ok=True)
    (root / "contracts" / "__init__.py").write_text("")
    (root / "contracts" / "bench.py").write_text(CONTRACT)


def events(start: int, rows: int, seed: int) -> pa.Table:
    """``rows`` events with ids ``start .. start+rows-1``: int64 key, timestamp, double,
    a low-cardinality string and a mostly-null nullable string."""
    rng = np.random.default_rng(seed)
    ts = EPOCH + rng.integers(0, 86_400 * 180, rows).astype("timedelta64[s]")
    note = np.where(rng.random(rows) < 0.05, "note", None)
    return pa.table({
        "id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
        "ts": pa.array(ts.astype("datetime64[us]")),
        "value": pa.array(rng.random(rows) * 1000.0),
        "kind": pa.array(np.array(KINDS)[rng.integers(0, len(KINDS), rows)]),
        "note": pa.array(note, pa.string()),
    })
