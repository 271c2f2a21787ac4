"""Bad input never stops the loader (DESIGN invariant 7).

Each bad run is built by hand (``write_run_by_hand``, raw bytes, pyarrow) with a good run of the
same table staged before and after it. The bad run must land in ``quarantine/<table>/<run_id>/``
with a ``_reason.json`` of the expected code, the ledger must say ``quarantined``, none of its
rows may reach the warehouse, the good runs must load, and the report must say that something
was rejected.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Lake, hand_run_id, lake_cli, write_run_by_hand

from lakehouse.errors import LoadAbortedError

T0 = dt.datetime(2026, 3, 1, 12, 0)
HOSTILE_TABLE = "x;DROP TABLE y"
HOSTILE_COLUMN = 'a"; DROP TABLE events; --'


# ---------------------------------------------------------------- data


def logs_table(ids: list[int | None], msg: str = "ok") -> pa.Table:
    """Rows for ``logs`` (append, pk id, day partition on ts)."""
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "ts": pa.array([T0 + dt.timedelta(hours=i or 0) for i in range(len(ids))],
                       pa.timestamp("us")),
        "msg": pa.array([f"{msg}-{i}" for i in range(len(ids))], pa.string()),
    })


def events_table(ids: list[int], kind: str = "view", **extra: pa.Array) -> pa.Table:
    """Rows for ``events`` (upsert on event_id, polars schema, month partition on ts)."""
    data: dict[str, Any] = {
        "event_id": pa.array(ids, pa.int64()),
        "ts": pa.array([T0 + dt.timedelta(days=i) for i in range(len(ids))], pa.timestamp("us")),
        "kind": pa.array([kind] * len(ids), pa.string()),
        "amount": pa.array([float(i) for i in range(len(ids))], pa.float64()),
    }
    data.update(extra)
    return pa.table(data)


def readings_table(rows: list[tuple[str, dt.datetime, float]]) -> pa.Table:
    """Rows for ``readings`` / ``strict`` (pandas schema: sensor s-N, celsius in [-90, 60])."""
    return pa.table({
        "sensor": pa.array([r[0] for r in rows], pa.string()),
        "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
        "celsius": pa.array([r[2] for r in rows], pa.float64()),
    })


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise ``table`` as Parquet with pyarrow."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# ---------------------------------------------------------------- lake helpers


def edit_manifest(run: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a hand-built run's manifest after ``change`` edited its JSON."""
    path = run / "_manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def warehouse_tables(lake: Lake) -> set[str]:
    """Names of the data tables in the warehouse's main schema."""
    return {r[0] for r in lake.rows(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")}


def rows_of_run(lake: Lake, table: str, run_id: str) -> int:
    """How many warehouse rows came from ``run_id`` (0 when the table does not exist)."""
    if table not in warehouse_tables(lake):
        return 0
    return lake.rows(f'SELECT count(*) FROM "{table}" WHERE _lake_run_id = \'{run_id}\'')[0][0]


def outcome(report: Any, run_id: str) -> Any:
    """The report's outcome for ``run_id``."""
    found = [r for r in report.runs if r.run_id == run_id]
    assert len(found) == 1, report.runs
    return found[0]


def assert_quarantined(lake: Lake, report: Any, table: str, run_id: str,
                       code: str) -> dict[str, Any]:
    """The run is in quarantine with ``code``, in the ledger as quarantined, not in the tables."""
    assert report.rejected
    out = outcome(report, run_id)
    assert (out.status, out.reason_code) == ("quarantined", code), out
    assert run_id not in lake.staged(table)
    assert run_id in lake.quarantined(table)
    reason = lake.reason(table, run_id)
    assert reason["code"] == code, reason
    assert reason["run_id"] == run_id and reason["table"] == table
    assert isinstance(reason["message"], str) and reason["message"]
    assert isinstance(reason["failure_sample"], list)
    assert lake.ledger()[run_id] == "quarantined"
    code_in_ledger = lake.rows(
        f"SELECT reason_code FROM meta.staged_runs WHERE run_id = '{run_id}'")
    assert code_in_ledger == [(code,)]
    for name in warehouse_tables(lake):
        assert rows_of_run(lake, name, run_id) == 0
    return reason


def assert_loaded(lake: Lake, report: Any, table: str, run_id: str, rows: int) -> None:
    """The run loaded whole: archived, in the ledger, its rows in the table."""
    out = outcome(report, run_id)
    assert (out.status, out.rows_loaded) == ("loaded", rows), out
    assert run_id in lake.archived(table)
    assert lake.ledger()[run_id] == "loaded"
    assert rows_of_run(lake, table, run_id) == rows


# ---------------------------------------------------------------- the bad runs


def truncated_parquet(root: Path, run_id: str) -> None:
    data = parquet_bytes(logs_table([100, 101, 102]))
    write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": data[: len(data) // 2]})


def random_bytes(root: Path, run_id: str) -> None:
    junk = hashlib.sha512(b"not parquet").digest() * 20
    write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": junk})


def checksum_mismatch(root: Path, run_id: str) -> None:
    run = write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": logs_table([100, 101])})
    edit_manifest(run, lambda d: d["files"][0].update(sha256="0" * 64))


def row_count_mismatch(root: Path, run_id: str) -> None:
    run = write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": logs_table([100, 101])})

    def change(doc: dict[str, Any]) -> None:
        doc["files"][0]["rows"] = 3
        doc["rows"] = 3

    edit_manifest(run, change)


def listed_file_missing(root: Path, run_id: str) -> None:
    run = write_run_by_hand(root, "logs", run_id, {
        "part-00000.parquet": logs_table([100, 101]),
        "part-00001.parquet": logs_table([102, 103]),
    })
    (run / "part-00001.parquet").unlink()


def unlisted_extra_file(root: Path, run_id: str) -> None:
    run = write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": logs_table([100, 101])})
    pq.write_table(logs_table([102]), run / "part-00001.parquet")


def manifest_not_json(root: Path, run_id: str) -> None:
    write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": logs_table([100, 101])},
                      manifest=b"{this is not json")


def null_in_key(root: Path, run_id: str) -> None:
    write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": logs_table([100, None, 102])})


def duplicate_key_in_append_run(root: Path, run_id: str) -> None:
    write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": logs_table([100, 101, 100])})


def empty_run(root: Path, run_id: str) -> None:
    write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": logs_table([]).slice(0, 0)})


def symlink_outside_root(root: Path, run_id: str) -> None:
    """A listed data file that is a symlink to a Parquet file outside the lake root."""
    run = write_run_by_hand(root, "logs", run_id, {"part-00000.parquet": logs_table([100, 101])})
    outside = root.parent / "outside.parquet"
    (run / "part-00000.parquet").rename(outside)
    (run / "part-00000.parquet").symlink_to(outside)


def wrong_column_type(root: Path, run_id: str) -> None:
    bad = events_table([0, 1]).set_column(0, "event_id", pa.array(["a", "b"], pa.string()))
    write_run_by_hand(root, "events", run_id, {"part-00000.parquet": bad})


def hostile_column_name(root: Path, run_id: str) -> None:
    bad = events_table([100, 101], **{HOSTILE_COLUMN: pa.array(["x", "y"], pa.string())})
    write_run_by_hand(root, "events", run_id, {"part-00000.parquet": bad})


BAD_RUNS: list[tuple[str, Callable[[Path, str], None], str, str]] = [
    ("truncated_parquet", truncated_parquet, "logs", "corrupt_file"),
    ("random_bytes", random_bytes, "logs", "corrupt_file"),
    ("checksum_mismatch", checksum_mismatch, "logs", "manifest_mismatch"),
    ("row_count_mismatch", row_count_mismatch, "logs", "manifest_mismatch"),
    ("listed_file_missing", listed_file_missing, "logs", "manifest_mismatch"),
    ("unlisted_extra_file", unlisted_extra_file, "logs", "manifest_mismatch"),
    ("manifest_not_json", manifest_not_json, "logs", "manifest_mismatch"),
    ("null_in_key", null_in_key, "logs", "contract_violation"),
    ("duplicate_key_in_append_run", duplicate_key_in_append_run, "logs", "contract_violation"),
    ("empty_run", empty_run, "logs", "empty_run"),
    ("symlink_outside_root", symlink_outside_root, "logs", "invalid_run"),
    ("wrong_column_type", wrong_column_type, "events", "contract_violation"),
    ("hostile_column_name", hostile_column_name, "events", "invalid_column_name"),
]


def good_run(root: Path, table: str, n: int) -> tuple[str, int]:
    """Stage a valid run of ``table`` by hand (keys distinct per ``n``); return its id, rows."""
    run_id = hand_run_id(n)
    keys = [n * 10, n * 10 + 1]
    data = logs_table(list(keys)) if table == "logs" else events_table(keys)
    write_run_by_hand(root, table, run_id, {"part-00000.parquet": data})
    return run_id, 2


@pytest.mark.parametrize(("build", "table", "code"), [b[1:] for b in BAD_RUNS],
                         ids=[b[0] for b in BAD_RUNS])
def test_bad_run_is_quarantined_and_good_runs_load(
        lake: Lake, build: Callable[[Path, str], None], table: str, code: str) -> None:
    """The bad run is quarantined with its code; good runs before and after it load."""
    before, before_rows = good_run(lake.root, table, 1)
    bad = hand_run_id(2)
    build(lake.root, bad)
    after, after_rows = good_run(lake.root, table, 3)

    report = lake.load()

    assert_quarantined(lake, report, table, bad, code)
    assert_loaded(lake, report, table, before, before_rows)
    assert_loaded(lake, report, table, after, after_rows)
    assert lake.staged(table) == []


def test_symlinked_target_outside_root_is_untouched(lake: Lake) -> None:
    """Quarantining a run that holds a symlink neither reads into nor moves its target."""
    bad = hand_run_id(2)
    symlink_outside_root(lake.root, bad)
    outside = lake.root.parent / "outside.parquet"
    content = outside.read_bytes()

    lake.load()

    assert outside.read_bytes() == content
    link = lake.root / "quarantine" / "logs" / bad / "part-00000.parquet"
    assert link.is_symlink()


def test_hostile_column_name_leaves_tables_alone(lake: Lake) -> None:
    """A column named like SQL is never spliced into SQL: the events table survives."""
    good, _ = good_run(lake.root, "events", 1)
    hostile_column_name(lake.root, hand_run_id(2))

    report = lake.load()

    reason = assert_quarantined(lake, report, "events", hand_run_id(2), "invalid_column_name")
    assert HOSTILE_COLUMN in json.dumps(reason) or HOSTILE_COLUMN in reason["message"]
    assert "events" in warehouse_tables(lake)
    cols = {r[0] for r in lake.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'events'")}
    assert HOSTILE_COLUMN not in cols
    assert rows_of_run(lake, "events", good) == 2


@pytest.mark.parametrize("table", [HOSTILE_TABLE, "ghost"], ids=["hostile_name", "undeclared"])
def test_bad_table_folder_is_quarantined(lake: Lake, table: str) -> None:
    """A hostile or undeclared table folder: invalid_run; no such table; other tables load."""
    good, rows = good_run(lake.root, "logs", 1)
    bad = hand_run_id(2)
    write_run_by_hand(lake.root, table, bad, {"part-00000.parquet": logs_table([100, 101])})

    report = lake.load()

    assert_quarantined(lake, report, table, bad, "invalid_run")
    assert (lake.root / "quarantine" / table / bad / "part-00000.parquet").is_file()
    assert warehouse_tables(lake) == {"logs"}
    assert_loaded(lake, report, "logs", good, rows)


def test_upsert_duplicate_keys_last_row_wins_with_warning(lake: Lake) -> None:
    """Duplicate keys in one upsert run load (last row wins) with a warn check."""
    run_id = hand_run_id(1)
    data = pa.table({
        "event_id": pa.array([1, 2, 1], pa.int64()),
        "ts": pa.array([T0, T0, T0 + dt.timedelta(hours=1)], pa.timestamp("us")),
        "kind": pa.array(["view", "view", "purchase"], pa.string()),
        "amount": pa.array([1.0, 2.0, 9.5], pa.float64()),
    })
    write_run_by_hand(lake.root, "events", run_id, {"part-00000.parquet": data})

    report = lake.load()

    assert outcome(report, run_id).status == "loaded"
    assert lake.ledger()[run_id] == "loaded"
    assert lake.rows("SELECT event_id, kind, amount FROM events ORDER BY event_id") == [
        (1, "purchase", 9.5), (2, "view", 2.0)]
    checks = lake.rows("SELECT severity, status, metrics_json FROM meta.asset_checks "
                       "WHERE check_name = 'key_unique_in_run' AND asset_key = 'events'")
    assert len(checks) == 1
    severity, status, metrics = checks[0]
    assert (severity, status) == ("warn", "fail")
    assert json.loads(metrics)["run_id"] == run_id


def test_append_repeating_loaded_keys_is_key_conflict(lake: Lake) -> None:
    """An append run repeating keys already in ``logs`` is quarantined (key_conflict)."""
    first, _ = good_run(lake.root, "logs", 1)  # keys 10, 11
    assert outcome(lake.load(), first).status == "loaded"
    bad = hand_run_id(2)
    write_run_by_hand(lake.root, "logs", bad,
                      {"part-00000.parquet": logs_table([11, 500], msg="again")})
    after, rows = good_run(lake.root, "logs", 3)

    report = lake.load()

    reason = assert_quarantined(lake, report, "logs", bad, "key_conflict")
    assert reason["failure_sample"] and reason["failure_sample"][0]["failure_case"] == "11"
    assert_loaded(lake, report, "logs", after, rows)
    assert lake.rows("SELECT id, msg FROM logs WHERE id IN (11, 500)") == [(11, "ok-1")]


def test_new_column_under_freeze_is_schema_change(lake: Lake) -> None:
    """``logs`` (freeze) refuses a run with a new column; the table keeps its columns."""
    good_run(lake.root, "logs", 1)
    lake.load()
    bad = hand_run_id(2)
    wider = logs_table([100, 101]).append_column("extra", pa.array(["a", "b"], pa.string()))
    write_run_by_hand(lake.root, "logs", bad, {"part-00000.parquet": wider})
    after, rows = good_run(lake.root, "logs", 3)

    report = lake.load()

    reason = assert_quarantined(lake, report, "logs", bad, "schema_change")
    assert "extra" in reason["message"]
    assert_loaded(lake, report, "logs", after, rows)
    cols = [r[0] for r in lake.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'logs'")]
    assert "extra" not in cols


def test_new_nullable_column_under_add_columns_loads(lake: Lake) -> None:
    """``events`` (add_columns) accepts a new column; old rows read it as NULL."""
    good_run(lake.root, "events", 1)  # ids 10, 11
    lake.load()
    wider_id = hand_run_id(2)
    wider = events_table([20, 21], extra=pa.array(["a", None], pa.string()))
    write_run_by_hand(lake.root, "events", wider_id, {"part-00000.parquet": wider})

    report = lake.load()

    assert not report.rejected
    assert_loaded(lake, report, "events", wider_id, 2)
    assert lake.rows("SELECT event_id, extra FROM events ORDER BY event_id") == [
        (10, None), (11, None), (20, "a"), (21, None)]


def test_drop_rows_loads_valid_rows_and_quarantines_the_rest(lake: Lake) -> None:
    """``readings`` (drop_rows): valid rows load; invalid ones go to _rejected_rows.parquet."""
    run_id = hand_run_id(1)
    data = readings_table([
        ("s-1", T0, 20.0),
        ("bad", T0 + dt.timedelta(minutes=1), 10.0),
        ("s-2", T0 + dt.timedelta(minutes=2), 100.0),
        ("s-3", T0 + dt.timedelta(minutes=3), 5.0),
    ])
    write_run_by_hand(lake.root, "readings", run_id, {"part-00000.parquet": data})

    report = lake.load()

    assert report.rejected
    out = outcome(report, run_id)
    assert (out.status, out.rows_loaded, out.rows_rejected) == ("loaded", 2, 2)
    assert lake.ledger()[run_id] == "loaded"
    assert lake.rows("SELECT sensor, celsius FROM readings ORDER BY sensor") == [
        ("s-1", 20.0), ("s-3", 5.0)]
    folder = lake.root / "quarantine" / "readings" / run_id
    rejected = pq.read_table(folder / "_rejected_rows.parquet")
    assert sorted(rejected.column("sensor").to_pylist()) == ["bad", "s-2"]
    reason = lake.reason("readings", run_id)
    assert reason["code"] == "rows_dropped"
    assert reason["message"] and reason["failure_sample"]
    assert {f["row"] for f in reason["failure_sample"]} == {1, 2}


def test_abort_raises_and_leaves_the_bad_run_in_staging(lake: Lake) -> None:
    """``strict`` (abort): the load raises, the bad run stays staged, earlier loads stay."""
    earlier = hand_run_id(1)
    write_run_by_hand(lake.root, "strict", earlier,
                      {"part-00000.parquet": readings_table([("s-1", T0, 1.0)])})
    assert outcome(lake.load(), earlier).status == "loaded"
    bad = hand_run_id(2)
    write_run_by_hand(lake.root, "strict", bad,
                      {"part-00000.parquet": readings_table([("s-1", T0, 999.0)])})

    with pytest.raises(LoadAbortedError) as info:
        lake.load()

    assert info.value.run_id == bad and info.value.table == "strict"
    assert lake.staged("strict") == [bad]
    assert lake.quarantined("strict") == []
    assert bad not in lake.ledger()
    assert lake.ledger()[earlier] == "loaded"
    assert lake.rows("SELECT _lake_run_id, celsius FROM strict") == [(earlier, 1.0)]


def test_abort_keeps_runs_staged_before_it_in_the_same_load(lake: Lake) -> None:
    """The load stops AT the bad run: runs committed before it (oldest first) still load."""
    other, rows = good_run(lake.root, "logs", 0)
    earlier = hand_run_id(1)
    write_run_by_hand(lake.root, "strict", earlier,
                      {"part-00000.parquet": readings_table([("s-1", T0, 1.0)])})
    bad = hand_run_id(2)
    write_run_by_hand(lake.root, "strict", bad,
                      {"part-00000.parquet": readings_table([("s-1", T0, 999.0)])})

    with pytest.raises(LoadAbortedError):
        lake.load()

    assert lake.ledger().get(other) == "loaded" and rows_of_run(lake, "logs", other) == rows
    assert lake.staged("strict") == [bad]
    assert lake.ledger().get(earlier) == "loaded"
    assert lake.rows("SELECT _lake_run_id, celsius FROM strict") == [(earlier, 1.0)]


def test_reason_has_message_count_and_failure_sample(lake: Lake) -> None:
    """A contract violation's reason says what failed, how often, with sample rows."""
    bad = hand_run_id(1)
    data = events_table([1, 2, 3, 4], kind="refund")
    write_run_by_hand(lake.root, "events", bad, {"part-00000.parquet": data})

    report = lake.load()

    reason = assert_quarantined(lake, report, "events", bad, "contract_violation")
    assert "kind" in reason["message"]
    assert reason["failure_count"] == 4
    sample = reason["failure_sample"]
    assert len(sample) == 4
    assert {s["column"] for s in sample} == {"kind"}
    assert {s["failure_case"] for s in sample} == {"refund"}
    assert {s["row"] for s in sample} == {0, 1, 2, 3}


def test_bad_run_never_blocks_later_loads(lake: Lake) -> None:
    """After quarantine the bad run is gone from staging; later loads load only new runs."""
    bad = hand_run_id(1)
    random_bytes(lake.root, bad)
    first = lake.load()
    assert_quarantined(lake, first, "logs", bad, "corrupt_file")

    good, rows = good_run(lake.root, "logs", 2)
    second = lake.load()

    assert [r.run_id for r in second.runs] == [good]
    assert not second.rejected
    assert_loaded(lake, second, "logs", good, rows)
    third = lake.load()
    assert third.runs == [] and not third.rejected
    assert lake.quarantined("logs") == [bad]


def test_cli_load_exits_3_when_a_run_is_rejected(lake: Lake) -> None:
    """The CLI loads the good run, quarantines the bad one and exits 3."""
    good, _ = good_run(lake.root, "logs", 1)
    bad = hand_run_id(2)
    random_bytes(lake.root, bad)

    result = lake_cli(lake.root, "load")

    assert result.returncode == 3, result.stderr
    assert bad in result.stderr and "corrupt_file" in result.stderr
    assert lake.ledger() == {good: "loaded", bad: "quarantined"}
    assert lake.reason("logs", bad)["code"] == "corrupt_file"
    again = lake_cli(lake.root, "load")
    assert again.returncode == 0, again.stderr


def test_symlinked_run_folder_is_not_followed(lake: Lake) -> None:
    """A run folder that is itself a symlink to a folder outside the root never loads."""
    outside = lake.root.parent / "elsewhere"
    write_run_by_hand(outside, "logs", hand_run_id(2),
                      {"part-00000.parquet": logs_table([100, 101])})
    target = outside / "staging" / "logs" / hand_run_id(2)
    (lake.root / "staging" / "logs").mkdir(parents=True, exist_ok=True)
    os.symlink(target, lake.root / "staging" / "logs" / hand_run_id(2))
    good, rows = good_run(lake.root, "logs", 3)

    report = lake.load()

    assert_loaded(lake, report, "logs", good, rows)
    assert rows_of_run(lake, "logs", hand_run_id(2)) == 0
    assert lake.ledger().get(hand_run_id(2)) != "loaded"
    assert (target / "part-00000.parquet").is_file()  # never moved out from under its owner


def test_abort_stops_only_its_table_and_leaves_its_later_runs_untouched(lake: Lake) -> None:
    """An abort is per table: the other tables load whatever order they are visited in, and
    the aborting table's later runs stay staged even when they would be rejected or skipped
    without validation (an empty run, a repeat): found by the reference model."""
    before, rows_before = good_run(lake.root, "logs", 0)
    earlier, bad, empty, repeat = (hand_run_id(n) for n in (1, 2, 3, 4))
    good_readings = readings_table([("s-1", T0, 1.0)])
    write_run_by_hand(lake.root, "strict", earlier, {"part-00000.parquet": good_readings})
    write_run_by_hand(lake.root, "strict", bad,
                      {"part-00000.parquet": readings_table([("s-1", T0, 999.0)])})
    write_run_by_hand(lake.root, "strict", empty, {"part-00000.parquet": good_readings.slice(0, 0)})
    write_run_by_hand(lake.root, "strict", repeat, {"part-00000.parquet": good_readings})
    after, rows_after = good_run(lake.root, "logs", 1)  # (hand run ids sort first)

    with pytest.raises(LoadAbortedError) as info:
        lake.load()

    assert (info.value.table, info.value.run_id) == ("strict", bad)
    ledger = lake.ledger()
    assert ledger.get(before) == ledger.get(after) == ledger.get(earlier) == "loaded"
    assert rows_of_run(lake, "logs", before) == rows_before
    assert rows_of_run(lake, "logs", after) == rows_after
    assert lake.staged("strict") == [bad, empty, repeat]
    assert not {bad, empty, repeat} & set(ledger)
    assert lake.quarantined("strict") == [] and lake.archived("strict") == [earlier]
