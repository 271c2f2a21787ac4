"""`lake.toml` mistakes: the CLI exits 2 with one stderr line naming the table and key at fault.

Every case writes a real lake root (``make_root``), initialises it while the file is still valid,
then replaces ``lake.toml`` and runs the real `lake load` in a subprocess. A staged run of the
table at fault must stay in staging: a config error is not the run's fault.
"""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from pathlib import Path

import pandera.pandas as pa_pandas
import pyarrow as pa
import pytest
from conftest import LAKE_TOML, Lake, hand_run_id, lake_cli, make_root, write_run_by_hand

T0 = dt.datetime(2026, 3, 1, 12, 0)

BASE = """
[lake]
retention_days = 7

[tables.logs]
primary_key = ["id"]
partition_by = { column = "ts", granularity = "day" }
merge = "append"
"""

NOT_A_SCHEMA = '''
SCHEMA_DICT = {"sensor": "str"}


class NotAModel:
    """Looks like a contract, is not pandera."""
'''


def logs_rows(ids: list[int]) -> pa.Table:
    """A valid run for ``logs``."""
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "ts": pa.array([T0 + dt.timedelta(hours=i) for i in range(len(ids))], pa.timestamp("us")),
        "msg": pa.array([f"m{i}" for i in ids], pa.string()),
    })


def lake_with(tmp_path: Path, toml: str) -> Lake:
    """An initialised root (valid config) whose lake.toml is then replaced by ``toml``."""
    lake = Lake(make_root(tmp_path / "lake", BASE, contracts={"notschema": NOT_A_SCHEMA}))
    lake.init()
    (lake.root / "lake.toml").write_text(textwrap.dedent(toml))
    return lake


def assert_config_error(result: object, *needles: str) -> str:
    """Exit 2, nothing on stdout, one stderr line holding every needle; return that line."""
    rc, out, err = result.returncode, result.stdout, result.stderr  # type: ignore[attr-defined]
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


CASES: list[tuple[str, str, tuple[str, ...]]] = [
    ("unknown_table_key", BASE + """
[tables.events]
merge = "append"
primry_key = ["id"]
""", ("[tables.events]", "primry_key")),
    ("merge_wrong_type", BASE + """
[tables.events]
merge = 5
""", ("[tables.events]", "'merge'")),
    ("merge_unknown_value", BASE + """
[tables.events]
merge = "merge"
""", ("[tables.events]", "'merge'", "upsert")),
    ("upsert_without_primary_key", BASE + """
[tables.events]
merge = "upsert"
""", ("[tables.events]", "merge", "primary_key")),
    ("replace_partition_without_partition_by", BASE + """
[tables.snap]
merge = "replace_partition"
""", ("[tables.snap]", "merge", "partition_by")),
    ("bad_granularity", BASE + """
[tables.events]
partition_by = { column = "ts", granularity = "week" }
""", ("[tables.events]", "granularity", "week")),
    ("invalid_table_name", BASE + """
[tables."bad-name"]
merge = "append"
""", ("bad-name",)),
    ("unknown_lake_key", """
[lake]
retention_dayz = 3
""" + BASE.replace("[lake]\nretention_days = 7\n", ""), ("retention_dayz",)),
    ("lake_key_wrong_type", BASE.replace("retention_days = 7", 'retention_days = "a week"'),
     ("retention_days",)),
    ("not_toml", "this is [not toml\n = = =\n", ("lake.toml", "TOML")),
]


@pytest.mark.parametrize(("toml", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_lake_toml_exits_2_with_one_line(tmp_path: Path, toml: str,
                                             needles: tuple[str, ...]) -> None:
    """Each mistake exits 2, names what is at fault on one line and moves no run."""
    lake = lake_with(tmp_path, BASE)
    run_id = hand_run_id(1)
    write_run_by_hand(lake.root, "logs", run_id, {"part-00000.parquet": logs_rows([1, 2])})
    (lake.root / "lake.toml").write_text(textwrap.dedent(toml))

    line = assert_config_error(lake_cli(lake.root, "load"), *needles)

    assert line.startswith("lake: ")
    assert lake.staged("logs") == [run_id]
    assert lake.ledger() == {}


SCHEMA_CASES = [
    ("import_path_missing", 'schema = "contracts.nope:Missing"', "contracts.nope"),
    ("attribute_missing", 'schema = "contracts.readings:NoSuchSchema"', "NoSuchSchema"),
    ("not_pandera_class", 'schema = "contracts.notschema:NotAModel"', "NotAModel"),
    ("not_pandera_object", 'schema = "contracts.notschema:SCHEMA_DICT"', "SCHEMA_DICT"),
    ("schema_file_missing", 'schema_file = "contracts/nope.yaml"', "nope.yaml"),
]


def schema_toml(line: str) -> str:
    """BASE plus a table ``sensors`` whose contract is ``line``."""
    return BASE + f"""
[tables.sensors]
{line}
merge = "append"
"""


@pytest.mark.parametrize(("line", "needle"), [c[1:] for c in SCHEMA_CASES],
                         ids=[c[0] for c in SCHEMA_CASES])
def test_bad_schema_reference_exits_2_and_keeps_the_run(tmp_path: Path, line: str,
                                                        needle: str) -> None:
    """A schema that cannot be loaded is a config error, never a quarantined run."""
    lake = lake_with(tmp_path, schema_toml(line))
    run_id = hand_run_id(1)
    data = pa.table({"sensor": ["s-1"], "celsius": [1.0]})
    write_run_by_hand(lake.root, "sensors", run_id, {"part-00000.parquet": data})

    out = assert_config_error(lake_cli(lake.root, "load"), "[tables.sensors]", needle)

    assert "schema" in out
    assert lake.staged("sensors") == [run_id]
    assert lake.quarantined("sensors") == []
    assert lake.ledger() == {}


NAMES_NOTHING = [c for c in SCHEMA_CASES if c[0] in ("import_path_missing", "attribute_missing",
                                                     "schema_file_missing")]


@pytest.mark.parametrize(("line", "needle"), [c[1:] for c in NAMES_NOTHING],
                         ids=[c[0] for c in NAMES_NOTHING])
def test_bad_schema_reference_is_caught_with_nothing_staged(tmp_path: Path, line: str,
                                                            needle: str) -> None:
    """A reference that names nothing is caught even when no run of that table is waiting,
    without importing the module (issue 17: a tick imports only the contracts of tables
    with runs waiting; one that imports but is not a pandera schema, `not_pandera_class`,
    is reported by the load that meets a run, as test_bad_schema_reference_exits_2_...)."""
    lake = lake_with(tmp_path, schema_toml(line))

    assert_config_error(lake_cli(lake.root, "load"), "[tables.sensors]", needle)


def test_no_lake_toml_says_run_lake_init(tmp_path: Path) -> None:
    """A root without lake.toml exits 2 and tells the user to run `lake init`."""
    root = tmp_path / "empty"
    root.mkdir()

    line = assert_config_error(lake_cli(root, "load"), "no lake.toml", "init")

    assert str(root) in line
    assert re.search(r"run `lake (--root \S+ )?init`", line), line
    assert not (root / "warehouse").exists()


def test_valid_config_loads_with_exit_0(tmp_path: Path) -> None:
    """The control: the same root with the base config loads and exits 0."""
    lake = lake_with(tmp_path, BASE)
    write_run_by_hand(lake.root, "logs", hand_run_id(1), {"part-00000.parquet": logs_rows([1])})

    result = lake_cli(lake.root, "load")

    assert result.returncode == 0, result.stderr
    assert lake.ledger() == {hand_run_id(1): "loaded"}


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_schema_file_validates_end_to_end(tmp_path: Path, suffix: str) -> None:
    """A pandera YAML (or JSON) serialization named by ``schema_file`` validates runs."""
    schema = pa_pandas.DataFrameSchema({
        "sensor": pa_pandas.Column(str, pa_pandas.Check.str_matches(r"^s-\d+$")),
        "celsius": pa_pandas.Column(float, pa_pandas.Check.in_range(-90, 60)),
    })
    toml = LAKE_TOML + f"""
[tables.yreadings]
schema_file = "contracts/readings.{suffix}"
merge = "append"
"""
    lake = Lake(make_root(tmp_path / "lake", toml))
    text = schema.to_yaml() if suffix == "yaml" else schema.to_json()
    assert isinstance(text, str)
    (lake.root / "contracts" / f"readings.{suffix}").write_text(text)
    lake.init()
    good, bad = hand_run_id(1), hand_run_id(2)
    write_run_by_hand(lake.root, "yreadings", good, {"part-00000.parquet": pa.table(
        {"sensor": ["s-1", "s-2"], "celsius": [1.5, 20.0]})})
    write_run_by_hand(lake.root, "yreadings", bad, {"part-00000.parquet": pa.table(
        {"sensor": ["s-3", "oops"], "celsius": [99.0, 2.0]})})

    result = lake_cli(lake.root, "load")

    assert result.returncode == 3, result.stderr
    assert lake.ledger() == {good: "loaded", bad: "quarantined"}
    assert lake.rows("SELECT sensor, celsius FROM yreadings ORDER BY sensor") == [
        ("s-1", 1.5), ("s-2", 20.0)]
    reason = lake.reason("yreadings", bad)
    assert reason["code"] == "contract_violation"
    assert {f["column"] for f in reason["failure_sample"]} == {"sensor", "celsius"}
