"""The upsert's delete and insert (issue 17, part 2): a semi join on the key, the partition
text computed after the partition sort.

Guards for the forms the faster SQL takes: a table's own name can never capture the
delete's subquery (which would delete every row), composite keys match on every column,
and rows still land in partition order.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import Lake, make_root

D = dt.datetime

TOML = """
[lake]
retention_days = 0

[tables.{name}]
primary_key = ["id"]
partition_by = {{ column = "ts", granularity = "month" }}
merge = "upsert"

[tables.pairs]
primary_key = ["sensor", "ts"]
partition_by = {{ column = "ts", granularity = "day" }}
merge = "upsert"
"""


def rows(ids: list[int], months: list[int], tag: str) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "ts": pa.array([D(2026, m, 1 + i % 27) for i, m in enumerate(months)],
                                    pa.timestamp("us")),
                     "tag": [tag] * len(ids)})


def new_lake(tmp_path: Path, name: str = "events") -> Lake:
    lake = Lake(make_root(tmp_path / "lake", TOML.format(name=name)))
    lake.init()
    return lake


@pytest.mark.parametrize("name", ["b", "t", "source"])
def test_a_table_named_like_an_alias_keeps_its_other_rows(tmp_path: Path, name: str) -> None:
    """Unaliased, ``DELETE FROM b WHERE EXISTS (SELECT 1 FROM lake_batch b WHERE b.id =
    b.id)`` compares the batch with itself and deletes every row of the table. The merge's
    aliases start with ``_lake_``, which no table name may (config.py)."""
    lake = new_lake(tmp_path, name)
    lake.stage(name, rows([1, 2, 3], [1, 2, 3], "first"))
    lake.load()
    lake.stage(name, rows([1, 3], [5, 6], "second"))  # key bounds 1..3 span key 2
    report = lake.load()

    assert report.count("loaded") == 1
    assert lake.rows(f'SELECT id, tag, _lake_partition FROM "{name}" ORDER BY id') == [
        (1, "second", "2026-05"), (2, "first", "2026-02"), (3, "second", "2026-06")]


def test_a_composite_key_replaces_only_rows_that_match_on_every_column(tmp_path: Path) -> None:
    lake = new_lake(tmp_path)
    first = pa.table({"sensor": ["a", "a", "b"],
                      "ts": pa.array([D(2026, 1, 1), D(2026, 1, 2), D(2026, 1, 1)],
                                     pa.timestamp("us")),
                      "v": [1.0, 2.0, 3.0]})
    lake.stage("pairs", first)
    lake.load()
    # (a, Jan 2) and (b, Jan 1) each share one column with another row, but not both.
    lake.stage("pairs", pa.table({"sensor": ["b", "c"],
                                  "ts": pa.array([D(2026, 1, 2), D(2026, 1, 1)],
                                                 pa.timestamp("us")),
                                  "v": [9.0, 8.0]}))
    lake.stage("pairs", pa.table({"sensor": ["a"], "ts": pa.array([D(2026, 1, 2)],
                                                                  pa.timestamp("us")),
                                  "v": [7.0]}))
    lake.load()

    assert lake.rows("SELECT sensor, day(ts), v FROM pairs ORDER BY ALL") == [
        ("a", 1, 1.0), ("a", 2, 7.0), ("b", 1, 3.0), ("b", 2, 9.0), ("c", 1, 8.0)]


def test_an_upsert_batch_lands_in_partition_order_with_its_partition_text(
        tmp_path: Path) -> None:
    """The partition text is computed after the sort: rows must still be clustered by
    partition, each with its own month's text."""
    lake = new_lake(tmp_path)
    months = [(i * 7) % 12 + 1 for i in range(600)]
    lake.stage("events", rows(list(range(300)), months[:300], "a"))
    lake.stage("events", rows(list(range(150, 600)), months[150:], "b"))
    lake.load()

    by_rowid = lake.rows("SELECT _lake_partition, strftime(ts, '%Y-%m'), id FROM events "
                         "ORDER BY rowid")
    assert [r[0] for r in by_rowid] == sorted(r[0] for r in by_rowid)
    assert all(r[0] == r[1] for r in by_rowid)
    assert sorted(r[2] for r in by_rowid) == list(range(600))
    assert lake.rows("SELECT count(*) FROM events WHERE tag = 'b'") == [(450,)]
