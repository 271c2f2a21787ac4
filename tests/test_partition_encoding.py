"""Partition values in export folder names: every engine reads back the value Lake wrote.

Folders are escaped as Spark and Hive escape them (ASCII specials as ``%XX``, UTF-8 kept);
values not every engine carries are refused at export (exit 3, nothing written). Readers:
DuckDB (``hive_partitioning``), pyarrow.dataset (hive flavor), polars (``scan_parquet`` with
hive partitioning) in-process, and a real Spark in a separate interpreter (``-m slow``; see
:func:`spark_python`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner
from conftest import REPO, Lake, make_root

from lakehouse.errors import PartitionValueError
from lakehouse.export_plan import hive_key
from lakehouse.partition_values import escape_hive
from loader.cli import cli
from loader.export import ExportOptions, export_table

# Non-ASCII, the characters a path or a Hive folder gives meaning to, and ones a URL decoder
# might (``+``): each must come back as it went in.
HOSTILE = ["Zürich", "東京", "a/b", "a=b", "50%", "%41", "a%2Fb", "two words", " lead",
           "a+b", "x#y?z", "c:d", "e\\f", "'\"", "[x]*", "..", ".", "~", "💡", "tab\tx"]
TWO_COLUMNS = '[{ column = "city" }, { column = "zone" }]'


def cities_lake(tmp_path: Path, partition_by: str = '{ column = "city" }') -> Lake:
    toml = f'[tables.cities]\npartition_by = {partition_by}\nmerge = "append"\n'
    lake = Lake(make_root(tmp_path / "lake", toml))
    lake.init()
    return lake


def load_cities(lake: Lake, cities: list[str], zones: list[str] | None = None) -> None:
    data = {"id": list(range(len(cities))), "city": cities}
    if zones is not None:
        data["zone"] = zones
    lake.stage("cities", pa.table(data))
    assert lake.load().count("loaded") == 1


def export(lake: Lake, to: Path) -> Any:
    return export_table(lake.config(), "cities", ExportOptions(to=str(to), format="parquet"))


def read_duckdb(folder: Path, keys: list[str]) -> list[tuple[Any, ...]]:
    depth = "/".join("*" for _ in keys)
    types = ", ".join(f"'{k}': 'VARCHAR'" for k in keys)
    return sorted(duckdb.connect().execute(
        f"SELECT id, {', '.join(keys)} FROM read_parquet('{folder}/{depth}/*.parquet', "
        f"hive_partitioning = true, hive_types = {{{types}}})").fetchall())


def read_pyarrow(folder: Path, keys: list[str]) -> list[tuple[Any, ...]]:
    schema = pa.schema([(k, pa.string()) for k in keys])
    table = ds.dataset(folder, format="parquet",
                       partitioning=ds.partitioning(schema, flavor="hive")).to_table()
    return sorted(zip(*(table[c].to_pylist() for c in ["id", *keys]), strict=True))


def read_polars(folder: Path, keys: list[str]) -> list[tuple[Any, ...]]:
    frame = pl.scan_parquet(f"{folder}/**/*.parquet", hive_partitioning=True,
                            hive_schema={k: pl.String for k in keys}).collect()
    return sorted(frame.select(["id", *keys]).iter_rows())


def test_folder_names_escape_what_spark_escapes_and_keep_utf8() -> None:
    assert escape_hive("Zürich") == "Zürich"  # DuckDB's own COPY writes Z%C3%BCrich
    assert escape_hive("a/b=c") == "a%2Fb%3Dc"
    assert escape_hive("50% off") == "50%25 off"
    assert escape_hive("x#y?z:w*v") == "x%23y%3Fz%3Aw%2Av"
    assert escape_hive("'\"\\{[]^") == "%27%22%5C%7B%5B%5D%5E"
    assert escape_hive("tab\tnl\n\x7f") == "tab%09nl%0A%7F"
    assert escape_hive("a+b ~.-_") == "a+b ~.-_"


def test_a_hive_key_never_starts_with_an_underscore() -> None:
    """Spark and pyarrow skip folders whose names start with ``_`` (or ``.``)."""
    assert hive_key("_src", "identity", ["_src"]) == "lake__src_identity"
    assert hive_key("src", "identity", ["src"]) == "src_identity"


def test_hostile_values_read_back_the_same_in_duckdb_pyarrow_and_polars(tmp_path: Path) -> None:
    lake = cities_lake(tmp_path)
    load_cities(lake, HOSTILE)
    report = export(lake, tmp_path / "out")
    assert sorted(report.written) == sorted(HOSTILE)
    current = tmp_path / "out" / "cities" / "current"
    assert (current / "city_identity=Zürich").is_dir()
    expected = sorted((i, v) for i, v in enumerate(HOSTILE))
    keys = ["city_identity"]
    assert read_duckdb(current, keys) == expected
    assert read_pyarrow(current, keys) == expected
    assert read_polars(current, keys) == expected


def test_hostile_values_in_nested_folders_read_back_the_same(tmp_path: Path) -> None:
    lake = cities_lake(tmp_path, TWO_COLUMNS)
    zones = list(reversed(HOSTILE))
    load_cities(lake, HOSTILE, zones)
    export(lake, tmp_path / "out")
    current = tmp_path / "out" / "cities" / "current"
    assert (current / "city_identity=Zürich" / "zone_identity=tab%09x").is_dir()
    expected = sorted((i, c, z) for i, (c, z) in enumerate(zip(HOSTILE, zones, strict=True)))
    keys = ["city_identity", "zone_identity"]
    assert read_duckdb(current, keys) == expected
    assert read_pyarrow(current, keys) == expected
    assert read_polars(current, keys) == expected


@pytest.mark.parametrize(("value", "needle"), [
    ("", "an empty partition value"),
    ("__HIVE_DEFAULT_PARTITION__", "read back as NULL"),
    ("x" * 250, "too long for a folder name"),
], ids=["empty", "hive_null_marker", "too_long"])
def test_a_value_not_every_engine_carries_is_refused_with_exit_3(tmp_path: Path, value: str,
                                                                 needle: str) -> None:
    lake = cities_lake(tmp_path)
    load_cities(lake, ["Bern"])
    to = tmp_path / "out"
    first = export(lake, to)
    doc = (to / "cities" / "_latest.json").read_text()
    load_cities(lake, [value])

    with pytest.raises(PartitionValueError):
        export(lake, to)
    result = CliRunner().invoke(cli, ["--root", str(lake.root), "export", "cities", "--to",
                                      str(to)])
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert "\n" not in line and needle in line and "city_identity" in line
    assert "export again" in line
    # Nothing was written: the previous export is still the published one, alone.
    assert (to / "cities" / "_latest.json").read_text() == doc
    assert os.listdir(to / "cities" / "_v") == [first.export_id]
    dry = CliRunner().invoke(cli, ["--root", str(lake.root), "export", "cities", "--to",
                                   str(to), "--dry-run"])
    assert dry.exit_code == 3 and needle in dry.stderr


def test_an_export_escaped_by_an_older_lake_is_rewritten_in_the_new_names(tmp_path: Path) -> None:
    """The disk state an older Lake leaves: DuckDB's escaping (``Z%C3%BCrich``) in folder
    names and the pointer. The next export rewrites those partitions; an ASCII one, named
    alike by both, is carried over."""
    lake = cities_lake(tmp_path)
    load_cities(lake, ["Zürich", "Bern"])
    to = tmp_path / "out"
    first = export(lake, to)
    version = to / "cities" / "_v" / str(first.export_id)
    (version / "city_identity=Zürich").rename(version / "city_identity=Z%C3%BCrich")
    pointer = to / "cities" / "_latest.json"
    doc = json.loads(pointer.read_text())
    for p in doc["partitions"]:
        p["folder"] = p["folder"].replace("Zürich", "Z%C3%BCrich")
    pointer.write_text(json.dumps(doc))

    second = export(lake, to)

    assert second.written == ["Zürich"] and second.carried_over == ["Bern"]
    current = to / "cities" / "current"
    assert sorted(p.name for p in current.iterdir()) == ["city_identity=Bern",
                                                         "city_identity=Zürich"]
    assert read_pyarrow(current, ["city_identity"]) == [(0, "Zürich"), (1, "Bern")]


# -- a real Spark -------------------------------------------------------------------------------
SPARK_READER = r"""
import json, sys
from pyspark.sql import SparkSession

spark = (SparkSession.builder.master("local[1]").appName("lake-encoding")
         .config("spark.ui.enabled", "false")
         .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
out = {}
for name, folder in json.loads(sys.argv[1]).items():
    df = spark.read.parquet(folder)
    keys = [c for c in df.columns if c.endswith("_identity")]
    out[name] = sorted([r["id"], *(r[k] for k in keys)] for r in df.collect())
spark.stop()
print(json.dumps(out))
"""


def spark_python() -> str | None:
    """An interpreter with pyspark: ``LAKE_SPARK_PYTHON``, else ``.venv-spark`` in the repo
    (``make spark``). Not Lake's own venv: pandera imports pyspark.pandas whenever pyspark
    is installed, which slows every `lake` command and prints a warning to stderr."""
    candidates = [os.environ.get("LAKE_SPARK_PYTHON"), str(REPO / ".venv-spark" / "bin" /
                                                           "python")]
    for python in candidates:
        if python and Path(python).exists() and subprocess.run(
                [python, "-c", "import pyspark"], capture_output=True).returncode == 0:
            return python
    return None


@pytest.mark.slow
def test_spark_reads_the_values_duckdb_pyarrow_and_polars_read(tmp_path: Path) -> None:
    python = spark_python()
    if python is None or shutil.which("java") is None:
        pytest.skip("pyspark is not installed: run `make spark` (a .venv-spark with pyspark) or "
                    "set LAKE_SPARK_PYTHON; Spark also needs java on PATH")
    one = cities_lake(tmp_path / "one")
    load_cities(one, HOSTILE)
    export(one, tmp_path / "one" / "out")
    two = cities_lake(tmp_path / "two", TWO_COLUMNS)
    zones = list(reversed(HOSTILE))
    load_cities(two, HOSTILE, zones)
    export(two, tmp_path / "two" / "out")
    # The old way, for contrast: DuckDB's own COPY ... PARTITION_BY names the folders.
    old = tmp_path / "duckdb_copy"
    duckdb.connect().execute(
        f"COPY (SELECT * FROM (VALUES (0, 'Zürich')) t(id, city_identity)) TO '{old}' "
        "(FORMAT parquet, PARTITION_BY (city_identity))")
    folders = {"one": str(tmp_path / "one" / "out" / "cities" / "current"),
               "two": str(tmp_path / "two" / "out" / "cities" / "current"), "old": str(old)}

    started = time.monotonic()
    proc = subprocess.run([python, "-c", SPARK_READER, json.dumps(folders)], capture_output=True,
                          text=True, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    assert got["one"] == sorted([i, v] for i, v in enumerate(HOSTILE))
    assert got["two"] == sorted([i, c, z] for i, (c, z) in enumerate(zip(HOSTILE, zones,
                                                                         strict=True)))
    assert got["old"] == [[0, "ZÃ¼rich"]]  # why Lake names the folders itself
    print(f"spark read both exports in {seconds:.1f} s")
