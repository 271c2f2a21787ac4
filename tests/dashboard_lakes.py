"""Fixture lakes for the dashboard's tests: healthy, failing checks, quarantined runs, empty.

Each is a real root produced by the real system: runs staged with the producer API (with
producer versions), loaded by the real loader with the table-level checks and the watermark
scope declared in lake.toml, and the other jobs run as the `lake` CLI (`compact --force`,
`cleanup`, `export --format parquet`, a `compact` SIGKILLed at a named crash point and closed
as killed by the next job). Every job publishes its own snapshot.

One hand edit, in :func:`failing_lake` and marked there: three rows that repeat keys of
``events``. A load refuses a key added to a table that repeats it, so duplicate keys in a
table can only come from outside the loader; the real ``no_duplicate_keys`` check then finds
them at the next load. Every other failure arises on its own: a freshness SLA shorter than the
events' age, a day missing from ``logs`` (``no_gaps``, severity warn), a run that breaks the
events contract (quarantined), and a null key in a table with ``on_invalid = "abort"`` (the
load fails with ``LoadAbortedError``).
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
from conftest import Lake, lake_cli, make_root

from lakehouse import failpoints
from lakehouse.errors import LoadAbortedError

# The healthy lake's contracts: every check passes.
DASHBOARD_TOML = """
[lake]
retention_days = 7

[tables.events]
schema = "contracts.events:EventSchema"
primary_key = ["event_id"]
partition_by = { column = "ts", granularity = "month" }
merge = "upsert"
watermark_scope = "kind"
checks = { freshness = "24h", no_duplicate_keys = true, max_row_drop = 0.2 }

[tables.logs]
primary_key = ["id"]
partition_by = { column = "ts", granularity = "day" }
merge = "append"
checks = { no_gaps = true }
"""

# The failing lake's: a 1 h SLA for events staged 2-3 h late; logs warn on a missing day and
# abort a load on an invalid run.
FAILING_TOML = """
[lake]
retention_days = 7

[tables.events]
schema = "contracts.events:EventSchema"
primary_key = ["event_id"]
partition_by = { column = "ts", granularity = "month" }
merge = "upsert"
watermark_scope = "kind"
checks = { freshness = "1h", no_duplicate_keys = true }

[tables.logs]
primary_key = ["id"]
partition_by = { column = "ts", granularity = "day" }
merge = "append"
on_invalid = "abort"
checks = { no_gaps = { value = true, severity = "warn" } }
"""

TABLES = ("events", "logs")


def now_naive() -> datetime:
    """Now as naive UTC, like ``meta``."""
    return datetime.now(UTC).replace(tzinfo=None)


def events(start: int, n: int, when: datetime, kind: str = "view") -> pa.Table:
    """``n`` events from id ``start``, an hour apart back from ``when`` (naive UTC)."""
    return pa.table({
        "event_id": pa.array(range(start, start + n), pa.int64()),
        "ts": pa.array([when - timedelta(hours=i) for i in range(n)], pa.timestamp("us")),
        "kind": [kind] * n, "amount": [1.5] * n})


def logs(start: int, n: int, when: datetime) -> pa.Table:
    """``n`` log lines from id ``start``, one a day back from ``when``."""
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()),
                     "ts": pa.array([when - timedelta(days=i) for i in range(n)],
                                    pa.timestamp("us")),
                     "line": [f"line {i}" for i in range(start, start + n)]})


def missing_log_day(now: datetime) -> str:
    """The day :func:`failing_lake` leaves out of ``logs`` (two days before ``now``)."""
    return f"{now - timedelta(days=2):%Y-%m-%d}"


def new_lake(root: Path, toml: str = DASHBOARD_TOML) -> Lake:
    """An initialised root (``lake init`` publishes the first snapshot): the lake before its
    first load."""
    lake = Lake(make_root(root, toml))
    lake.init()
    return lake


def loaded_lake(root: Path, toml: str = DASHBOARD_TOML) -> Lake:
    """Two real loads: 50 views and 3 log lines by producers at version 0.1.0, then 30 clicks
    by one at 0.2.0 (so the watermark has the scopes ``ALL``, ``view`` and ``click``)."""
    lake = new_lake(root, toml)
    now = now_naive()
    lake.stage("events", events(0, 50, now - timedelta(minutes=5)), producer="web-1",
               version="0.1.0")
    lake.stage("logs", logs(0, 3, now - timedelta(minutes=5)), producer="cron", version="0.1.0")
    lake.load()
    lake.stage("events", events(50, 30, now - timedelta(minutes=2), kind="click"),
               producer="web-2", version="0.2.0")
    lake.load()
    return lake


def cli(lake: Lake, *args: str, code: int = 0, crash_at: str | None = None) -> None:
    """Run `lake ARGS` on the lake as a subprocess; it must exit with ``code`` (a negative
    signal number when ``crash_at`` names a failpoint that SIGKILLs it)."""
    env = {failpoints.ENVIRONMENT_VARIABLE: crash_at} if crash_at else None
    done = lake_cli(lake.root, *args, env=env)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)


def healthy_lake(root: Path) -> Lake:
    """Two loads, every check passing, fresh within its 24 h SLA; then `lake compact
    --force`, `lake cleanup` and `lake export events --format parquet`, each a success."""
    lake = loaded_lake(root)
    cli(lake, "compact", "--force")
    cli(lake, "cleanup")
    cli(lake, "export", "events", "--to", str(root.parent / f"{root.name}-exports"),
        "--format", "parquet")
    return lake


def failing_lake(root: Path) -> Lake:
    """Events fail ``freshness`` (error: 2 h old against a 1 h SLA) in both loads and
    ``no_duplicate_keys`` (error) in the second, after passing it in the first; logs miss a
    day (``no_gaps``, warn). A compaction was killed, and the load that found it failed (a
    null key in logs, ``on_invalid = "abort"``): its run still waits in staging."""
    lake = new_lake(root, FAILING_TOML)
    now = now_naive()
    lake.stage("events", events(0, 50, now - timedelta(hours=3)), producer="web-1",
               version="0.1.0")
    lake.stage("logs", logs(0, 4, now - timedelta(minutes=5)).take([0, 1, 3]),
               producer="cron", version="0.1.0")  # no line two days ago: a gap
    lake.load()
    # THE ONE HAND EDIT: events 7, 8 and 9 twice each, written around the loader (see the
    # module's docstring); the next load's no_duplicate_keys check finds them.
    con = duckdb.connect(str(root / "warehouse" / "lake.duckdb"))
    try:
        con.execute("INSERT INTO events SELECT * FROM events WHERE event_id IN (7, 8, 9)")
    finally:
        con.close()
    lake.stage("events", events(50, 30, now - timedelta(hours=2), kind="click"),
               producer="web-2", version="0.2.0")
    lake.load()
    cli(lake, "compact", "--force", code=-signal.SIGKILL, crash_at="compact.after_copy")
    lake.stage("logs", pa.table({"id": pa.array([None, 9], pa.int64()),
                                 "ts": pa.array([now, now], pa.timestamp("us")),
                                 "line": ["lost", "kept"]}), producer="cron", version="0.1.0")
    try:  # closes the killed compaction, then aborts at the null key (and publishes)
        lake.load()
    except LoadAbortedError:
        pass
    else:
        raise AssertionError("the load of a null key into logs did not abort")
    return lake


def quarantined_lake(root: Path) -> Lake:
    """The healthy lake's two loads, then a run that breaks the events contract (an unknown
    kind): the load quarantines it."""
    lake = loaded_lake(root)
    lake.stage("events", events(100, 5, now_naive(), kind="bogus"), producer="web-3",
               version="0.2.0")
    lake.load()
    return lake
