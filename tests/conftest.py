"""Shared fixtures: real lake roots under tmp_path, real DuckDB files, real Parquet.

Fixtures build their inputs without the code under test where the test is about that code
(see ``write_run_by_hand``); the ``lake`` fixture uses the public API to set a root up.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# Property tests are judged on what they find, not on time: a loaded CI machine (or eight
# test sessions at once) must not turn a slow example into a DeadlineExceeded failure.
settings.register_profile("lake", deadline=None)
settings.load_profile("lake")

LAKE_TOML = """
[lake]
retention_days = 7

[tables.events]
schema = "contracts.events:EventSchema"
primary_key = ["event_id"]
partition_by = { column = "ts", granularity = "month" }
merge = "upsert"
schema_evolution = "add_columns"

[tables.logs]
primary_key = ["id"]
partition_by = { column = "ts", granularity = "day" }
merge = "append"

[tables.plain]
merge = "append"

[tables.snap]
partition_by = { column = "day", granularity = "identity" }
merge = "replace_partition"

[tables.readings]
schema = "contracts.readings:ReadingSchema"
primary_key = ["sensor", "ts"]
partition_by = { column = "ts", granularity = "day" }
merge = "append"
on_invalid = "drop_rows"

[tables.strict]
schema = "contracts.readings:ReadingSchema"
merge = "append"
on_invalid = "abort"
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


def make_root(root: Path, toml: str = LAKE_TOML, contracts: dict[str, str] | None = None) -> Path:
    """Write lake.toml and contract modules into ``root`` (no lake code involved)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "lake.toml").write_text(textwrap.dedent(toml))
    cdir = root / "contracts"
    cdir.mkdir(exist_ok=True)
    (cdir / "__init__.py").write_text("")
    files = {"events": EVENTS_CONTRACT, "readings": READINGS_CONTRACT, **(contracts or {})}
    for name, text in files.items():
        (cdir / f"{name}.py").write_text(textwrap.dedent(text))
    return root


@dataclass
class Lake:
    """A test lake root with helpers that go through the public API."""

    root: Path

    def init(self) -> Any:
        from loader.init import init_lake

        return init_lake(self.root)

    def config(self) -> Any:
        from lakehouse.config import load_config

        return load_config(self.root)

    def stage(self, table: str, data: Any, **kw: Any) -> Any:
        from staging import stage

        return stage(self.root, table, data, **kw)

    def load(self, **kw: Any) -> Any:
        from loader.load import LoadOptions, load_pending

        return load_pending(self.config(), LoadOptions(**kw))

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Query the warehouse file read-only (no loader may be running)."""
        con = duckdb.connect(str(self.root / "warehouse" / "lake.duckdb"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def table_rows(self, table: str, order_by: str) -> list[dict[str, Any]]:
        con = duckdb.connect(str(self.root / "warehouse" / "lake.duckdb"), read_only=True)
        try:
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                [table]).fetchone()[0]
            if not exists:
                return []
            cur = con.execute(
                f'SELECT * EXCLUDE (_lake_run_id) FROM "{table}" ORDER BY {order_by}')
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        finally:
            con.close()

    def ledger(self) -> dict[str, str]:
        return dict(self.rows("SELECT run_id, status FROM meta.staged_runs"))

    def staged(self, table: str) -> list[str]:
        d = self.root / "staging" / table
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def quarantined(self, table: str) -> list[str]:
        d = self.root / "quarantine" / table
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def archived(self, table: str) -> list[str]:
        d = self.root / "archive" / table
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def reason(self, table: str, run_id: str) -> dict[str, Any]:
        return json.loads((self.root / "quarantine" / table / run_id / "_reason.json").read_text())


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """An initialised lake root with the test contracts (tables: events, logs, plain, snap,
    readings, strict)."""
    lk = Lake(make_root(tmp_path / "lake"))
    lk.init()
    return lk


def write_run_by_hand(root: Path, table: str, run_id: str, files: dict[str, bytes | pa.Table],
                      *, manifest: dict[str, Any] | bytes | None = None,
                      commit: bool = True) -> Path:
    """Build a staged run without the staging package: for tests of bad input.

    ``files`` maps names to raw bytes or Arrow tables (written as Parquet). The manifest is
    computed from what was written unless ``manifest`` overrides it (a dict is merged over the
    computed one; bytes are written as they are).
    """
    run = root / "staging" / table / run_id
    run.mkdir(parents=True, exist_ok=True)
    entries, schema = [], []
    for name, content in files.items():
        if isinstance(content, pa.Table):
            pq.write_table(content, run / name)
            rows = content.num_rows
            schema = [{"name": f.name, "type": str(f.type)} for f in content.schema]
        else:
            (run / name).write_bytes(content)
            rows = 0
        data = (run / name).read_bytes()
        entries.append({"name": name, "rows": rows, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    if not commit:
        return run
    if isinstance(manifest, bytes):
        (run / "_manifest.json").write_bytes(manifest)
        return run
    doc = {"format": "lake.manifest/1", "table": table, "run_id": run_id, "producer": "hand",
           "key": None, "created_at": "2026-01-01T00:00:00+00:00",
           "committed_at": "2026-01-01T00:00:00+00:00",
           "rows": sum(e["rows"] for e in entries), "bytes": sum(e["bytes"] for e in entries),
           "files": entries, "schema": schema, "extra": {}}
    doc.update(manifest or {})
    (run / "_manifest.json").write_text(json.dumps(doc))
    return run


def hand_run_id(n: int, producer: str = "hand") -> str:
    """A valid run id that sorts by ``n``."""
    return f"20260101T000000.{n:06d}Z-{producer}-{n:08x}"


@contextmanager
def holding_the_lock(root: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the warehouse lock as `lake load` for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from lakehouse.lock import WarehouseLock;"
         "from lakehouse.layout import LakePaths;"
         "held = WarehouseLock(LakePaths.at(sys.argv[1]), 'lake load').acquire();"
         "print('held', flush=True); time.sleep(20)", str(root)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def lake_cli(root: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `lake` CLI in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "loader.cli", "--root", str(root), *args],
                          capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=str(root.parent))
