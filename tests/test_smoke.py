"""End to end through the public API: stage, load, query; a second load changes nothing."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa


def test_stage_load_twice_changes_nothing(lake):
    t0 = dt.datetime(2026, 1, 31, 23, 0)
    lake.stage("events", pa.table({"event_id": [1, 2], "ts": [t0, t0 + dt.timedelta(hours=2)],
                                   "kind": ["view", "click"], "amount": [None, 1.5]}))
    report = lake.load()
    assert report.count("loaded") == 1 and not report.rejected
    assert lake.rows("SELECT event_id, _lake_partition FROM events ORDER BY 1") == [
        (1, "2026-01"), (2, "2026-02")]
    again = lake.load()
    assert again.runs == []
    assert lake.rows("SELECT count(*) FROM events") == [(2,)]
    assert (lake.root / "warehouse" / "lake.read.duckdb").exists()
