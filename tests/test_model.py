"""Property tests: the warehouse after any sequence of runs equals the reference model.

Hypothesis generates sequences of runs (overlapping keys, keys repeated inside a run, empty
runs, null keys and partition values, timestamps on month and year boundaries, an added
nullable column, narrower types, repeated content and idempotency keys). Each example gets a
fresh lake root with real Parquet staged through ``staging.stage`` and real DuckDB files; the
runs are loaded in one ``load_pending``, one per run, or in a mixed schedule, with small
``batch_max_runs`` so batches split. The warehouse rows (with ``_lake_partition``), the ledger
(status, reason code, rows loaded) and the run folders are then compared with ``model.py``.

``LAKE_HYPOTHESIS_EXAMPLES`` raises the number of examples; ``-m slow`` runs a heavier variant.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import Lake, make_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import (
    PARTITION_COLUMN,
    RUN_KEY,
    STATUS_LOADED,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    ModelResult,
    StagedRun,
    TableSpec,
    simulate,
)

from staging import stage

EXAMPLES = int(os.environ.get("LAKE_HYPOTHESIS_EXAMPLES", "0"))
# Examples of the slow variant; CI bounds it (make test-slow SLOW_EXAMPLES=...).
SLOW_EXAMPLES = int(os.environ.get("LAKE_SLOW_EXAMPLES", "300"))
RUN_ID_COLUMN = "_lake_run_id"
TOKYO = "timestamp[us, tz=Asia/Tokyo]"  # stored as UTC instants; partitions are read in UTC

LAKE_TOML = """
[lake]
retention_days = 7
batch_max_runs = {batch_max_runs}

# append with a primary key, day partitions of an aware timestamp
[tables.ak]
primary_key = ["id"]
partition_by = {{ column = "ts", granularity = "day" }}
merge = "append"

# append without a key or a partition; new columns accepted
[tables.an]
merge = "append"
schema_evolution = "add_columns"

# upsert by id, month partitions
[tables.up]
primary_key = ["id"]
partition_by = {{ column = "ts", granularity = "month" }}
merge = "upsert"
schema_evolution = "add_columns"

# replace_partition, identity partitions of an integer column
[tables.rp]
partition_by = {{ column = "part", granularity = "identity" }}
merge = "replace_partition"

# a partitioned table with a user column named "p" (see test_a_column_named_p_loads)
[tables.pp]
partition_by = {{ column = "ts", granularity = "day" }}
merge = "append"

# append with a key and a pandera row check; invalid rows are dropped
[tables.dr]
schema = "contracts.model_dr:DropSchema"
primary_key = ["id"]
partition_by = {{ column = "ts", granularity = "year" }}
merge = "append"
on_invalid = "drop_rows"
schema_evolution = "add_columns"
"""

DR_CONTRACT = '''
import pandera.polars as pa

DropSchema = pa.DataFrameSchema(
    {"v": pa.Column(checks=pa.Check.ge(0), nullable=True)}, strict=False)
'''


def _v_not_negative(row: dict[str, Any]) -> bool:
    """The model of ``DropSchema``: ``v`` is null or >= 0."""
    return row["v"] is None or row["v"] >= 0


SPECS: dict[str, TableSpec] = {
    "ak": TableSpec("ak", "append", ("id",), "ts", "day"),
    "an": TableSpec("an", "append", schema_evolution="add_columns"),
    "up": TableSpec("up", "upsert", ("id",), "ts", "month", schema_evolution="add_columns"),
    "rp": TableSpec("rp", "replace_partition", (), "part", "identity"),
    "dr": TableSpec("dr", "append", ("id",), "ts", "year", on_invalid="drop_rows",
                    schema_evolution="add_columns", row_check=_v_not_negative),
    "pp": TableSpec("pp", "append", (), "ts", "day"),
}
PROPERTY_TABLES = ["ak", "an", "up", "rp", "dr"]

# Each table's columns: (name, arrow type, narrower arrow type).
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "ak": [("id", "int64", "int32"), ("ts", TOKYO, TOKYO), ("v", "double", "float")],
    "an": [("id", "int64", "int32"), ("ts", "timestamp[us]", "timestamp[us]"),
           ("v", "double", "float")],
    "up": [("id", "int64", "int32"), ("ts", "timestamp[us]", "timestamp[us]"),
           ("v", "double", "float")],
    "rp": [("part", "int64", "int32"), ("id", "int64", "int32"), ("v", "double", "float")],
    "dr": [("id", "int64", "int32"), ("ts", "timestamp[us]", "timestamp[us]"),
           ("v", "double", "float")],
    "pp": [("ts", "timestamp[us]", "timestamp[us]"), ("p", "int64", "int32")],
}

ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(), "int32": pa.int32(), "double": pa.float64(), "float": pa.float32(),
    "string": pa.string(), "timestamp[us]": pa.timestamp("us"),
    TOKYO: pa.timestamp("us", tz="Asia/Tokyo"),
}

# Instants on and around month, year and (for Asia/Tokyo) local-day boundaries, in UTC.
BOUNDARY_TIMES = [
    datetime(2025, 12, 31, 23, 30), datetime(2025, 12, 31, 23, 59, 59, 999999),
    datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 1, 0, 30),
    datetime(2026, 1, 31, 23, 59, 59), datetime(2026, 2, 1, 0, 0),
    datetime(2025, 12, 31, 14, 59, 59), datetime(2025, 12, 31, 15, 0),
    datetime(2024, 2, 29, 12, 0), datetime(2024, 3, 1, 0, 0, 0, 1),
]


def _nullable(values: st.SearchStrategy[Any], one_in: int = 10) -> st.SearchStrategy[Any]:
    """``values``, or None about once in ``one_in`` draws (shrinks towards a value)."""
    return st.tuples(st.integers(0, one_in - 1), values).map(
        lambda t: None if t[0] == one_in - 1 else t[1])


KEY_VALUES = st.integers(0, 7)
TIME_VALUES = st.one_of(st.sampled_from(BOUNDARY_TIMES),
                        st.datetimes(datetime(2025, 11, 1), datetime(2026, 3, 1)))
PART_VALUES = st.integers(0, 3)
VALUES = _nullable(st.integers(-8, 40).map(lambda i: i / 4))  # exact in float32 too
NOTES = _nullable(st.text(alphabet="ab-", max_size=3), 3)
IDEMPOTENCY_KEYS = st.sampled_from([None, None, None, "k1", "k2"])


def _flag(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in ``one_in`` draws; shrinks to False."""
    return st.integers(0, one_in - 1).map(lambda i: i == one_in - 1)


@st.composite
def new_run(draw: st.DrawFn, table: str, max_rows: int) -> StagedRun:
    """A run of fresh rows for ``table``, maybe narrower, reordered or with a new column."""
    narrow, with_note, reverse = draw(_flag(8)), draw(_flag(6)), draw(_flag(8))
    columns = [(name, narrow_type if narrow else wide)
               for name, wide, narrow_type in COLUMNS[table]]
    if with_note:
        columns.append(("note", "string"))
    if reverse:
        columns.reverse()
    n = draw(st.one_of(st.integers(0, 4), st.integers(0, max_rows)))
    # A "dirty" run has null keys and partition values; the others have none.
    one_in = 8 if draw(_flag(3)) else 0
    keys, times, parts = (_nullable(s, one_in) if one_in else s
                          for s in (KEY_VALUES, TIME_VALUES, PART_VALUES))
    if draw(_flag(3)):  # keys from a small range: repeats inside the run are likely
        ids: list[Any] = draw(st.lists(keys, min_size=n, max_size=n))
    else:  # distinct keys, overlapping other runs' keys (often, with the narrow range)
        top = draw(st.sampled_from([40, 12]))
        ids = draw(st.lists(st.integers(0, top), min_size=min(n, top + 1),
                            max_size=min(n, top + 1), unique=True))
        n = len(ids)
        if one_in:
            ids = [None if draw(_flag(one_in)) else i for i in ids]
    rows = []
    for i in range(n):
        values = {"id": ids[i], "ts": draw(times), "v": draw(VALUES), "part": draw(parts),
                  "note": draw(NOTES) if with_note else None}
        if table == "ak" and values["ts"] is not None:
            values["ts"] = values["ts"].replace(tzinfo=UTC)
        rows.append(tuple(values[name] for name, _ in columns))
    return StagedRun(table, tuple(columns), tuple(rows), draw(IDEMPOTENCY_KEYS))


@st.composite
def run_sequences(draw: st.DrawFn, tables: Sequence[str], max_runs: int = 6,
                  max_rows: int = 30) -> list[StagedRun]:
    """1..max_runs runs of ``tables``; some repeat an earlier run's content exactly."""
    runs: list[StagedRun] = []
    for _ in range(draw(st.integers(1, max_runs))):
        table = draw(st.sampled_from(tables))
        earlier = [r for r in runs if r.table == table]
        repeat: bool = draw(_flag(5))
        if earlier and repeat:
            original = draw(st.sampled_from(earlier))
            runs.append(StagedRun(table, original.columns, original.rows,
                                  draw(IDEMPOTENCY_KEYS)))
        else:
            runs.append(draw(new_run(table, max_rows)))
    return runs


@st.composite
def schedules(draw: st.DrawFn, runs: int) -> list[bool]:
    """After which runs a load happens: one load at the end, one per run, or a mix."""
    kind = draw(st.sampled_from(["one_load", "per_run", "mixed"]))
    if kind == "one_load":
        after = [False] * runs
    elif kind == "per_run":
        after = [True] * runs
    else:
        after = draw(st.lists(st.booleans(), min_size=runs, max_size=runs))
    after[-1] = True
    return after


@dataclass
class Scenario:
    """One example: the runs, when loads happen, and the batch size."""

    runs: list[StagedRun]
    load_after: list[bool]
    batch_max_runs: int


@st.composite
def scenarios(draw: st.DrawFn, tables: Sequence[str], max_runs: int = 6) -> Scenario:
    runs = draw(run_sequences(tables, max_runs))
    return Scenario(runs, draw(schedules(len(runs))), draw(st.sampled_from([2, 1, 3, 2000])))


@st.composite
def one_table_scenarios(draw: st.DrawFn, max_runs: int = 6) -> Scenario:
    """Every run goes to the same table, so runs interact (keys, partitions, schema)."""
    table = draw(st.sampled_from(PROPERTY_TABLES))
    return draw(scenarios([table], max_runs))


# -- running an example against the real loader -----------------------------------------------


def arrow_table(run: StagedRun) -> pa.Table:
    """The run as the Arrow table a producer stages."""
    return pa.table({name: pa.array([r[i] for r in run.rows], ARROW_TYPES[type_text])
                     for i, (name, type_text) in enumerate(run.columns)})


@dataclass
class Observed:
    """What the real lake holds after the scenario."""

    run_ids: list[str]
    checksums: list[str]
    tables: dict[str, tuple[set[str], list[dict[str, Any]]] | None]
    ledger: dict[str, tuple[str, str | None, int, int]]
    staged: dict[str, list[str]]
    archived: set[str]
    quarantined: set[str]
    reload_runs: int


def run_scenario(scenario: Scenario) -> Observed:
    """Stage and load the scenario in a fresh lake root; return what the lake holds."""
    tmp = Path(tempfile.mkdtemp(prefix="lake-model-"))
    try:
        lake = Lake(make_root(tmp / "lake",
                              LAKE_TOML.format(batch_max_runs=scenario.batch_max_runs),
                              contracts={"model_dr": DR_CONTRACT}))
        lake.init()
        run_ids, checksums = [], []
        for run, load_now in zip(scenario.runs, scenario.load_after, strict=True):
            manifest = stage(lake.root, run.table, arrow_table(run), producer="model",
                             key=run.key)
            assert manifest is not None
            run_ids.append(manifest.run_id)
            checksums.append(manifest.files[0].sha256)
            if load_now:
                lake.load()
        tables = {name: _table_rows(lake, name) for name in SPECS}
        ledger = {r[0]: (r[1], r[2], int(r[3] or 0), int(r[4] or 0)) for r in lake.rows(
            "SELECT run_id, status, reason_code, rows_loaded, rows_rejected "
            "FROM meta.staged_runs")}
        observed = Observed(
            run_ids, checksums, tables, ledger,
            staged={name: lake.staged(name) for name in SPECS},
            archived={r for name in SPECS for r in lake.archived(name)},
            quarantined={r for name in SPECS for r in lake.quarantined(name)},
            reload_runs=len(lake.load().runs))
        assert _canonical({name: _table_rows(lake, name) for name in SPECS}) == \
            _canonical(tables), "a further load changed a table"
        return observed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _table_rows(lake: Lake, table: str) -> tuple[set[str], list[dict[str, Any]]] | None:
    """The table's columns and rows (aware timestamps in UTC), or None if it does not exist."""
    if not lake.rows("SELECT count(*) FROM information_schema.tables "
                     f"WHERE table_schema = 'main' AND table_name = '{table}'")[0][0]:
        return None
    columns = [r[0] for r in lake.rows(f'DESCRIBE "{table}"')]
    rows = [dict(zip(columns, (_normal(v) for v in r), strict=True))
            for r in lake.rows(f'SELECT * FROM "{table}"')]
    return set(columns), rows


def _canonical(tables: dict[str, tuple[set[str], list[dict[str, Any]]] | None]
               ) -> dict[str, tuple[list[str], list[tuple[Any, ...]]] | None]:
    """Tables in a form that compares equal whatever order the rows came in."""
    out: dict[str, tuple[list[str], list[tuple[Any, ...]]] | None] = {}
    for name, table in tables.items():
        if table is None:
            out[name] = None
        else:
            columns = sorted(table[0])
            out[name] = (columns, _sorted(table[1], columns))
    return out


def _normal(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


def _sorted(rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    tuples = [tuple(r[c] for c in columns) for r in rows]
    return sorted(tuples, key=lambda t: [(v is None, str(v)) for v in t])


def assert_matches_model(scenario: Scenario, observed: Observed, expected: ModelResult) -> None:
    """Compare the lake with the model: run order, rows, ledger, folders."""
    runs, run_ids = scenario.runs, observed.run_ids
    assert run_ids == sorted(run_ids), "run ids must sort in staging order"
    for i, a in enumerate(runs):  # the model's notion of repeated content is the checksum's
        for j in range(i):
            same = a.content == runs[j].content
            assert same == (observed.checksums[i] == observed.checksums[j]), (i, j)

    want_ledger = {run_ids[i]: (o.status, o.reason_code, o.rows_loaded, o.rows_rejected)
                   for i, o in enumerate(expected.outcomes)}
    got_ledger = {r: observed.ledger.get(r) for r in run_ids}
    assert [(runs[i].table, got_ledger[r]) for i, r in enumerate(run_ids)] == \
        [(runs[i].table, want_ledger[r]) for i, r in enumerate(run_ids)], "ledger"

    for name, state in expected.tables.items():
        got = observed.tables[name]
        if not state.exists:
            assert got is None, f"{name}: no run loaded, but the table exists"
            continue
        assert got is not None, f"{name}: the table does not exist"
        got_columns, got_rows = got
        user = [*state.columns, PARTITION_COLUMN]
        assert got_columns == {*user, RUN_ID_COLUMN}, name
        want = [{**r, RUN_ID_COLUMN: run_ids[r[RUN_KEY]]} for r in state.rows]
        assert _sorted(got_rows, user) == _sorted(want, user), f"rows of {name}"
        assert _sorted(got_rows, [*user, RUN_ID_COLUMN]) == \
            _sorted(want, [*user, RUN_ID_COLUMN]), f"_lake_run_id of {name}"

    # Nothing leaves staging unaccounted for (DESIGN invariant 6).
    assert observed.staged == {name: [] for name in SPECS}
    assert observed.archived == {r for r, o in want_ledger.items()
                                 if o[0] in (STATUS_LOADED, STATUS_SKIPPED)}
    # quarantine/ holds the rejected runs, and the dropped rows of runs that loaded the rest.
    assert observed.quarantined == {r for r, o in want_ledger.items()
                                    if o[0] == STATUS_QUARANTINED or o[3] > 0}
    assert observed.reload_runs == 0, "a further load found runs to load"


def check(scenario: Scenario) -> None:
    """Run one example and compare it with the model."""
    expected = simulate(SPECS, scenario.runs)
    assert_matches_model(scenario, run_scenario(scenario), expected)


def _settings(default: int) -> settings:
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=True,
                    database=None, print_blob=False, report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


# -- properties -------------------------------------------------------------------------------


@_settings(30)
@given(scenario=one_table_scenarios())
def test_runs_of_one_table_match_the_model(scenario: Scenario) -> None:
    """Runs of one table, whatever the load schedule and batch size, give the model's table."""
    check(scenario)


@_settings(15)
@given(scenario=scenarios(PROPERTY_TABLES))
def test_runs_of_several_tables_match_the_model(scenario: Scenario) -> None:
    """Runs of several tables interleaved: each table as if loaded alone."""
    check(scenario)


@pytest.mark.slow
@settings(max_examples=max(EXAMPLES, SLOW_EXAMPLES), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(scenario=one_table_scenarios(max_runs=12))
def test_long_sequences_of_one_table_match_the_model(scenario: Scenario) -> None:
    """The heavy variant: longer sequences, more examples."""
    check(scenario)


# -- pinned examples: each one a case the properties found or were built to find -----------------


def _run(table: str, ids: Sequence[int], *, key: str | None = None, v: float = 1.0,
         note: bool = False) -> StagedRun:
    """A small run of ``table`` with one row per id (all in the first hour of 2026, UTC)."""
    columns = [(name, wide) for name, wide, _ in COLUMNS[table]]
    ts: datetime = datetime(2026, 1, 1, tzinfo=UTC) if table == "ak" else datetime(2026, 1, 1)
    values = {"id": None, "ts": ts, "v": v, "part": 0, "note": "n"}
    if note:
        columns.append(("note", "string"))
    return StagedRun(table, tuple(columns),
                     tuple(tuple({**values, "id": i}[c] for c, _ in columns) for i in ids), key)


PINNED = [
    pytest.param(
        Scenario([StagedRun("pp", (("ts", "timestamp[us]"), ("p", "int64")),
                            ((datetime(2025, 12, 31, 23, 59), 1), (datetime(2026, 1, 1), 2))),
                  StagedRun("pp", (("ts", "timestamp[us]"), ("p", "int64")),
                            ((datetime(2026, 1, 1, 12), 3),))], [False, True], 2),
        id="partitioned-table-with-a-column-named-p"),
    pytest.param(  # run 1 conflicts on id 1; run 2 reuses its idempotency key and must load
        Scenario([_run("ak", [1]), _run("ak", [1], key="k1", v=2.0), _run("ak", [2], key="k1")],
                 [True, False, True], 2),
        id="idempotency-key-of-a-run-rejected-for-key-conflict"),
    pytest.param(  # run 1 lacks the table's column note; run 2 reuses its key and must load
        Scenario([_run("an", [1], note=True), _run("an", [2], key="k1"),
                  _run("an", [3], key="k1", note=True)], [True, False, True], 1),
        id="idempotency-key-of-a-run-rejected-for-schema-change"),
    pytest.param(  # run 1 conflicts on id 1; run 2 has its content: quarantined, not skipped
        Scenario([_run("ak", [1]), _run("ak", [1, 3]), _run("ak", [1, 3])], [True, False, True], 2),
        id="content-of-a-run-rejected-for-key-conflict"),
    pytest.param(  # run 1 conflicts on id 1 and is rejected; id 2 of run 2 never loaded before
        Scenario([_run("ak", [1]), _run("ak", [1, 2]), _run("ak", [2])], [True, False, True], 2),
        id="key-of-an-earlier-rejected-run-of-the-batch"),
    pytest.param(  # the same runs, one load each: the reference behaviour
        Scenario([_run("ak", [1]), _run("ak", [1, 2]), _run("ak", [2])], [True, True, True], 2),
        id="key-of-an-earlier-rejected-run-loaded-one-by-one"),
]


@pytest.mark.parametrize("scenario", PINNED)
def test_pinned_examples_match_the_model(scenario: Scenario) -> None:
    """Small fixed sequences, kept as regression examples next to the properties."""
    check(scenario)
