"""Tables partitioned by several columns: ``partition_by = [{ column = "symbol" }, ...]``.

Real lake roots under tmp_path, real DuckDB files and Parquet; the CLI through CliRunner. Each
part that works per partition is driven once: the config, load with every merge strategy, the
run log, audit, compaction, the dry run, and the export as nested Hive folders.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner
from conftest import Lake, make_root

from lakehouse.config import PartitionSpec, parse_config
from lakehouse.errors import ConfigError
from lakehouse.layout import LakePaths
from lakehouse.partition_values import join_values, split_values
from loader.cli import cli
from loader.export import ExportOptions, export_table

PARTITION_BY = '[{ column = "symbol" }, { column = "ts", granularity = "month" }]'


def quotes_lake(tmp_path: Path, merge: str = "append", key: str = "") -> Lake:
    toml = f'[tables.quotes]\npartition_by = {PARTITION_BY}\nmerge = "{merge}"\n{key}\n'
    lake = Lake(make_root(tmp_path / "lake", toml))
    lake.init()
    return lake


def quotes(rows: list[tuple[int, str, str, float]]) -> pa.Table:
    """(id, symbol, YYYY-MM-DD, price) rows; ts at noon of that day."""
    return pa.table({
        "id": pa.array([r[0] for r in rows], pa.int64()),
        "symbol": pa.array([r[1] for r in rows], pa.string()),
        "ts": pa.array([datetime.fromisoformat(r[2]).replace(hour=12) for r in rows],
                       pa.timestamp("us")),
        "price": pa.array([r[3] for r in rows], pa.float64()),
    })


BASE_ROWS = [(1, "AAPL", "2026-01-05", 1.0), (2, "AAPL", "2026-02-05", 2.0),
             (3, "MSFT", "2026-01-05", 3.0), (4, "MSFT", "2026-02-05", 4.0)]


def table(lake: Lake) -> list[tuple[Any, ...]]:
    return lake.rows("SELECT id, symbol, strftime(ts, '%Y-%m-%d'), price, _lake_partition "
                     "FROM quotes ORDER BY id")


def run(root: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--root", str(root), *args])


# -- the config ------------------------------------------------------------------------------
def config_of(body: str) -> Any:
    doc = {"tables": {"t": body}}
    return parse_config(doc, LakePaths.at("/nowhere")).tables["t"]


def test_partition_by_takes_a_list_and_a_single_table_stays_valid() -> None:
    nested = config_of({"partition_by": [{"column": "symbol"},
                                         {"column": "ts", "granularity": "month"}]})
    assert nested.partition_by == (PartitionSpec("symbol"), PartitionSpec("ts", "month"))
    single = config_of({"partition_by": {"column": "ts", "granularity": "day"}})
    assert single.partition_by == (PartitionSpec("ts", "day"),)
    assert config_of({"partition_by": "day"}).partition_by == (PartitionSpec("day"),)
    assert config_of({}).partition_by is None and config_of({}).partitions == ()


@pytest.mark.parametrize(("value", "key", "needle"), [
    ([], "partition_by", "empty list"),
    ([{"column": "ts"}, {"column": "TS", "granularity": "day"}], "partition_by", "twice"),
    ([{"column": "symbol"}, 3], "partition_by[1]", "a list of them"),
    ([{"column": "symbol"}, {"column": "ts", "granularity": "week"}],
     "partition_by[1].granularity", "week"),
    ([{"column": "a; DROP TABLE x"}], "partition_by[0].column", "column name"),
    ([{"column": c} for c in "abcde"], "partition_by", "at most 4"),
], ids=["empty", "repeated_column", "not_a_table", "bad_granularity", "bad_column", "too_many"])
def test_a_bad_partition_list_is_a_config_error_naming_the_key(value: Any, key: str,
                                                               needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_of({"partition_by": value})
    message = str(info.value)
    assert f"'{key}'" in message and needle in message and "\n" not in message


def test_the_cli_exits_2_on_a_bad_partition_list(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path)
    (lake.root / "lake.toml").write_text('[tables.quotes]\npartition_by = []\n')
    result = run(lake.root, "load")
    assert result.exit_code == 2
    assert "[tables.quotes] key 'partition_by': is an empty list" in result.stderr


def test_partition_text_splits_back_into_its_values() -> None:
    values = ("a/b=c", "50% é")
    text = join_values(["symbol", "ts"], values)
    assert text == "symbol=a%2Fb=c/ts=50%25 é"
    assert split_values(text, 2) == values
    assert split_values("AAPL", 1) == ("AAPL",)
    with pytest.raises(ValueError):
        split_values("AAPL", 2)


# -- load and the merge strategies -----------------------------------------------------------
def test_append_writes_one_partition_per_symbol_and_month(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path)
    lake.stage("quotes", quotes(BASE_ROWS))
    assert lake.load().count("loaded") == 1
    assert [r[4] for r in table(lake)] == [
        "symbol=AAPL/ts=2026-01", "symbol=AAPL/ts=2026-02",
        "symbol=MSFT/ts=2026-01", "symbol=MSFT/ts=2026-02"]
    assert lake.rows("SELECT partition_column, partition_granularity FROM meta.tables") == [
        ("symbol,ts", "identity,month")]
    # The run log has one asset row per pair, with the month's event range.
    assets = lake.rows("SELECT partition_key, rows_inserted, min_event_ts FROM "
                       "meta.ingestion_run_assets ORDER BY partition_key")
    assert [(a[0], a[1]) for a in assets] == [
        ("symbol=AAPL/ts=2026-01", 1), ("symbol=AAPL/ts=2026-02", 1),
        ("symbol=MSFT/ts=2026-01", 1), ("symbol=MSFT/ts=2026-02", 1)]
    assert assets[0][2] == datetime(2026, 1, 5, 12)
    assert lake.rows("SELECT watermark_ts FROM meta.asset_watermarks") == [
        (datetime(2026, 2, 5, 12),)]


def test_replace_partition_replaces_exactly_the_pairs_a_run_touches(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path, "replace_partition")
    lake.stage("quotes", quotes(BASE_ROWS))
    lake.load()
    # (AAPL, January) again, and a new pair (IBM, February): (AAPL, February) and
    # (MSFT, January) share a value with the run's rows and must stay.
    lake.stage("quotes", quotes([(10, "AAPL", "2026-01-20", 10.0),
                                 (11, "AAPL", "2026-01-21", 11.0),
                                 (12, "IBM", "2026-02-01", 12.0)]))
    report = lake.load()
    assert report.count("loaded") == 1
    assert [r[0] for r in table(lake)] == [2, 3, 4, 10, 11, 12]
    assert lake.rows("SELECT _lake_partition, count(*) FROM quotes GROUP BY 1 ORDER BY 1") == [
        ("symbol=AAPL/ts=2026-01", 2), ("symbol=AAPL/ts=2026-02", 1),
        ("symbol=IBM/ts=2026-02", 1), ("symbol=MSFT/ts=2026-01", 1),
        ("symbol=MSFT/ts=2026-02", 1)]


def test_replace_partition_within_one_batch_keeps_the_last_run_per_pair(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path, "replace_partition")
    lake.stage("quotes", quotes(BASE_ROWS))
    lake.stage("quotes", quotes([(20, "AAPL", "2026-01-01", 0.5)]))
    lake.load()
    assert [r[0] for r in table(lake)] == [2, 3, 4, 20]


def test_upsert_moves_a_row_to_its_new_pair(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path, "upsert", 'primary_key = ["id"]')
    lake.stage("quotes", quotes(BASE_ROWS))
    lake.load()
    lake.stage("quotes", quotes([(1, "MSFT", "2026-03-01", 9.0)]))
    lake.load()
    assert table(lake)[0] == (1, "MSFT", "2026-03-01", 9.0, "symbol=MSFT/ts=2026-03")
    assert len(table(lake)) == 4


def test_append_with_a_key_refuses_a_repeated_key_across_pairs(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path, "append", 'primary_key = ["id"]')
    lake.stage("quotes", quotes(BASE_ROWS))
    lake.load()
    lake.stage("quotes", quotes([(1, "IBM", "2026-05-01", 1.0)]))
    report = lake.load()
    assert report.count("quarantined") == 1 and len(table(lake)) == 4


def test_a_second_column_the_granularity_cannot_use_quarantines_the_run(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path)
    bad = pa.table({"id": [1], "symbol": ["AAPL"], "ts": ["2026-01-01"], "price": [1.0]})
    lake.stage("quotes", bad)
    report = lake.load()
    assert report.count("quarantined") == 1
    run_id = lake.quarantined("quotes")[0]
    reason = lake.reason("quotes", run_id)
    assert reason["code"] == "schema_change"
    assert "partition column 'ts' is VARCHAR; granularity 'month' needs a DATE or TIMESTAMP" \
        in reason["message"]


def test_a_null_in_either_partition_column_is_rejected(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path)
    lake.stage("quotes", pa.table({"id": [1], "symbol": pa.array([None], pa.string()),
                                   "ts": [datetime(2026, 1, 1)], "price": [1.0]}))
    assert lake.load().count("quarantined") == 1


# -- audit, compaction, dry run ------------------------------------------------------------
def test_audit_lists_the_pairs_and_the_columns(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path)
    lake.stage("quotes", quotes(BASE_ROWS))
    lake.load()
    result = run(lake.root, "audit", "--json")
    doc = json.loads(result.stdout)
    info = doc["tables"]["quotes"]
    assert info["partition_columns"] == ["symbol", "ts"]
    assert info["partition_column"] == "ts"  # the range column: the month's
    assert info["partition_count"] == 4
    assert [p["partition"] for p in info["partitions"]][:2] == [
        "symbol=AAPL/ts=2026-01", "symbol=AAPL/ts=2026-02"]
    assert info["partition_min"].startswith("2026-01-05")


def test_compaction_keeps_every_row_and_the_pair_order(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path, "upsert", 'primary_key = ["id"]')
    for rows in (BASE_ROWS, [(5, "AAPL", "2026-01-09", 5.0)], [(3, "IBM", "2026-02-01", 3.5)]):
        lake.stage("quotes", quotes(rows))
        lake.load()
    query = "SELECT * EXCLUDE (_lake_run_id) FROM quotes ORDER BY id"
    before = lake.rows(query)
    result = run(lake.root, "compact")
    assert result.exit_code == 0, result.output
    assert lake.rows(query) == before
    # Rows sit in partition order, so row groups prune by pair.
    order = lake.rows("SELECT _lake_partition FROM quotes")
    assert [r[0] for r in order] == sorted(r[0] for r in order)


def test_dry_run_says_what_would_load_and_what_not(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path, "append", 'primary_key = ["id"]')
    lake.stage("quotes", quotes(BASE_ROWS))
    lake.load()
    lake.stage("quotes", quotes([(9, "AAPL", "2026-03-01", 1.0)]))
    lake.stage("quotes", quotes([(1, "IBM", "2026-03-01", 1.0)]))
    lake.stage("quotes", pa.table({"id": [7], "symbol": ["X"], "ts": ["soon"], "price": [1.0]}))
    result = run(lake.root, "load", "--dry-run", "--json")
    doc = json.loads(result.stdout)
    assert [(r["status"], r.get("reason_code")) for r in doc["runs"]] == [
        ("would_load", None), ("would_quarantine", "key_conflict"),
        ("would_quarantine", "schema_change")]
    assert len(lake.staged("quotes")) == 3 and len(table(lake)) == 4


# -- export ------------------------------------------------------------------------------------
def test_export_writes_nested_hive_folders_every_reader_understands(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path, "upsert", 'primary_key = ["id"]')
    lake.stage("quotes", quotes(BASE_ROWS))
    lake.load()
    to = tmp_path / "exports"
    report = export_table(lake.config(), "quotes", ExportOptions(to=str(to), format="parquet"))
    assert report.partition_key == "symbol_identity/ts_month"
    current = to / "quotes" / "current"
    assert sorted(p.relative_to(current).as_posix() for p in current.rglob("*.parquet")) == [
        f"symbol_identity={s}/ts_month={m}/data_0.parquet"
        for s in ("AAPL", "MSFT") for m in ("2026-01", "2026-02")]
    doc = json.loads((to / "quotes" / "_latest.json").read_text())
    assert doc["partition_by"] == [{"column": "symbol", "granularity": "identity"},
                                   {"column": "ts", "granularity": "month"}]
    assert doc["partition_keys"] == ["symbol_identity", "ts_month"]
    assert doc["partitions"][0]["value"] == "symbol=AAPL/ts=2026-01"
    assert doc["partitions"][0]["folder"] == "symbol_identity=AAPL/ts_month=2026-01"

    expected = sorted((r[0], r[1], r[1], r[2][:7]) for r in BASE_ROWS)
    text = pa.schema([("symbol_identity", pa.string()), ("ts_month", pa.string())])
    arrow = ds.dataset(current, format="parquet",
                       partitioning=ds.partitioning(text, flavor="hive")).to_table()
    assert sorted(zip(*(arrow[c].to_pylist() for c in ("id", "symbol", "symbol_identity",
                                                       "ts_month")), strict=True)) == expected
    duck = duckdb.connect().execute(
        f"SELECT id, symbol, symbol_identity, ts_month FROM read_parquet('{current}/*/*/*.parquet'"
        ", hive_partitioning = true) WHERE ts_month = '2026-01' ORDER BY id").fetchall()
    assert duck == [e for e in expected if e[3] == "2026-01"]
    polars = pl.scan_parquet(f"{current}/**/*.parquet", hive_partitioning=True).filter(
        pl.col("symbol_identity") == "MSFT").select("id").collect()
    assert sorted(polars["id"].to_list()) == [3, 4]

    # An upsert into one pair rewrites that folder only.
    lake.stage("quotes", quotes([(3, "MSFT", "2026-01-06", 30.0)]))
    lake.load()
    second = export_table(lake.config(), "quotes", ExportOptions(to=str(to), format="parquet"))
    assert second.written == ["symbol=MSFT/ts=2026-01"] and len(second.carried_over) == 3


def test_delta_export_partitions_by_every_column_and_replaces_one_pair(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    lake = quotes_lake(tmp_path, "upsert", 'primary_key = ["id"]')
    lake.stage("quotes", quotes([*BASE_ROWS, (5, "a/b=c", "2026-01-02", 5.0)]))
    lake.load()
    to = tmp_path / "delta"
    uri = str(to / "quotes")
    first = export_table(lake.config(), "quotes", ExportOptions(to=str(to), format="delta"))
    assert first.delta_version == 0 and first.full
    dt = DeltaTable(uri)
    assert dt.metadata().partition_columns == ["symbol_identity", "ts_month"]
    assert sorted((p["symbol_identity"], p["ts_month"]) for p in dt.partitions()) == sorted(
        {(r[1], r[2][:7]) for r in [*BASE_ROWS, (5, "a/b=c", "2026-01-02", 5.0)]})

    def delta_rows(version: int | None = None) -> list[tuple[Any, ...]]:
        rows = DeltaTable(uri, version=version).to_pyarrow_table().to_pylist()
        return sorted((r["id"], r["symbol"], r["ts"].strftime("%Y-%m-%d"), r["price"],
                       r["symbol_identity"], r["ts_month"]) for r in rows)

    def duck_rows() -> list[tuple[Any, ...]]:
        return sorted((r[0], r[1], r[2], r[3], r[1], r[2][:7]) for r in table(lake))

    assert delta_rows() == duck_rows()
    before = duck_rows()
    # An upsert moves id 3 within MSFT's January: only that pair is rewritten, in one commit.
    lake.stage("quotes", quotes([(3, "MSFT", "2026-01-06", 30.0)]))
    lake.load()
    second = export_table(lake.config(), "quotes", ExportOptions(to=str(to), format="delta"))
    assert second.delta_version == 1 and second.written == ["symbol=MSFT/ts=2026-01"]
    assert delta_rows() == duck_rows() != before
    assert delta_rows(version=0) == before  # time travel to the previous export


def test_export_to_an_object_store_nests_folders_and_carries_pairs_over(tmp_path: Path) -> None:
    lake = quotes_lake(tmp_path, "upsert", 'primary_key = ["id"]')
    lake.stage("quotes", quotes([*BASE_ROWS, (5, "Zürich AG", "2026-01-02", 5.0)]))
    lake.load()
    name = f"lake-multipart-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    try:
        export_table(lake.config(), "quotes", ExportOptions(to=f"memory://{name}/x",
                                                          format="parquet"))
        lake.stage("quotes", quotes([(1, "AAPL", "2026-01-07", 1.5)]))
        lake.load()
        second = export_table(lake.config(), "quotes", ExportOptions(to=f"memory://{name}/x",
                                                          format="parquet"))
        assert second.written == ["symbol=AAPL/ts=2026-01"] and len(second.carried_over) == 4
        doc = json.loads(fs.cat_file(f"/{name}/x/quotes/_latest.json"))
        version = f"/{name}/x/quotes/{doc['path']}"
        assert sorted(f[len(version) + 1:] for f in fs.find(version)) == sorted(
            f"symbol_identity={s}/ts_month={m}/data_0.parquet" for s, m in [
                ("AAPL", "2026-01"), ("AAPL", "2026-02"), ("MSFT", "2026-01"),
                ("MSFT", "2026-02"), ("Zürich AG", "2026-01")])
        text = pa.schema([("symbol_identity", pa.string()), ("ts_month", pa.string())])
        rows = ds.dataset(version, filesystem=fs, format="parquet",
                          partitioning=ds.partitioning(text, flavor="hive")).to_table()
        assert sorted(zip(rows["id"].to_pylist(), rows["symbol_identity"].to_pylist(),
                          strict=True)) == [(1, "AAPL"), (2, "AAPL"), (3, "MSFT"), (4, "MSFT"),
                                            (5, "Zürich AG")]
    finally:
        fs.rm(f"/{name}", recursive=True)
