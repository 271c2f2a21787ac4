"""Hostile contracts and configuration (issue 12, items 5, 6 and 10).

- A contract module that exits (``raise SystemExit(0)``) or raises any BaseException while it
  is imported is a config error: exit 2, one line naming the module; nothing moves.
- The lake root is never put on ``sys.path``: a ``<root>/hypothesis.py`` (or ``glob.py``,
  ``pprint.py``) is never imported by the loader; contracts are imported by path under a
  private package name, and sibling imports inside a contracts package keep working.
- ``primary_key = "id"`` (a string) and unknown URL schemes (``memory://``) for staging are
  refused (exit 2, or :class:`StagingError` for a producer).
- A strict contract that does not declare the key or partition column is a config error
  at load start, instead of quarantining every run.

Real lake roots, real contract modules on disk, the real `lake` CLI in a subprocess.
"""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
from conftest import LAKE_TOML, Lake, hand_run_id, lake_cli, make_root, write_run_by_hand
from test_bad_input import events_table, logs_table
from test_config import BASE, assert_config_error, lake_with

from lakehouse.config import load_config
from lakehouse.contracts import resolve_schema
from staging import StagingError, stage

SENSORS = pa.table({"sensor": ["s-1"], "celsius": [1.0]})


def sensors_lake(tmp_path: Path, module: str, contract: str, attr: str = "SensorSchema",
                 extra: str = "") -> Lake:
    """A lake whose table ``sensors`` uses ``contracts.<module>:<attr>``, with a run of
    ``sensors`` and one of ``logs`` staged."""
    lake = lake_with(tmp_path, BASE + f"""
[tables.sensors]
schema = "contracts.{module}:{attr}"
merge = "append"
{extra}
""")
    (lake.root / "contracts" / f"{module}.py").write_text(textwrap.dedent(contract))
    write_run_by_hand(lake.root, "sensors", hand_run_id(1), {"part-00000.parquet": SENSORS})
    write_run_by_hand(lake.root, "logs", hand_run_id(2), {"part-00000.parquet":
                                                          logs_table([1, 2])})
    return lake


def assert_nothing_moved(lake: Lake) -> None:
    """Every staged run is still in staging and the ledger is empty."""
    assert lake.staged("sensors") == [hand_run_id(1)]
    assert lake.staged("logs") == [hand_run_id(2)]
    assert lake.quarantined("sensors") == lake.quarantined("logs") == []
    assert lake.ledger() == {}


# -- item 5: a contract that exits -----------------------------------------------------------

EXITS = {
    "system_exit_0": "raise SystemExit(0)",
    "sys_exit_message": "import sys\nsys.exit('contract says bye')",
    "os_style_exit_3": "raise SystemExit(3)",
    "generator_exit": "raise GeneratorExit",
    "base_exception_subclass": "class Boom(BaseException):\n    pass\nraise Boom('boom')",
}


@pytest.mark.parametrize("body", list(EXITS.values()), ids=list(EXITS))
def test_a_contract_that_exits_while_imported_is_a_config_error(tmp_path: Path,
                                                                body: str) -> None:
    """`raise SystemExit(0)` in a contract made `lake load` exit 0 having done nothing."""
    lake = sensors_lake(tmp_path, "leaving", "import pandera.pandas as pa\n" + body + "\n")

    line = assert_config_error(lake_cli(lake.root, "load"), "[tables.sensors]",
                               "'contracts.leaving'", "fix the module")

    assert type_name(body) in line
    assert_nothing_moved(lake)


def type_name(body: str) -> str:
    """The exception type a body from ``EXITS`` raises."""
    for name in ("SystemExit", "GeneratorExit", "Boom"):
        if name in body or (name == "SystemExit" and "sys.exit" in body):
            return name
    raise AssertionError(body)


def test_an_exit_in_a_schema_models_class_body_is_a_config_error(tmp_path: Path) -> None:
    """Code that runs when the model becomes a schema is user code too."""
    lake = sensors_lake(tmp_path, "late", """
        import pandera.pandas as pa

        class SensorSchema(pa.DataFrameModel):
            sensor: str

            @classmethod
            def to_schema(cls):
                raise SystemExit(0)
        """)

    assert_config_error(lake_cli(lake.root, "load"), "[tables.sensors]", "SystemExit")
    assert_nothing_moved(lake)


def test_a_check_that_exits_during_validation_quarantines_the_run(tmp_path: Path) -> None:
    """pandera turns a check's Exception into a failure case but let SystemExit through:
    `lake load` exited 0 with nothing done. Now the run fails validation like any raising
    check, and the other table's run loads."""
    lake = sensors_lake(tmp_path, "exiting_check", """
        import pandera.pandas as pa

        def leave(series):
            raise SystemExit(0)

        SensorSchema = pa.DataFrameSchema({"sensor": pa.Column(str, pa.Check(leave))})
        """)

    result = lake_cli(lake.root, "load")

    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "contract_raised" in result.stderr and "SystemExit" in result.stderr
    assert lake.quarantined("sensors") == [hand_run_id(1)]
    assert lake.reason("sensors", hand_run_id(1))["code"] == "contract_violation"
    assert lake.archived("logs") == [hand_run_id(2)]


def test_ctrl_c_while_a_contract_imports_stays_a_keyboard_interrupt(tmp_path: Path) -> None:
    """KeyboardInterrupt is the one exception not turned into a config error."""
    lake = sensors_lake(tmp_path, "interrupted", "raise KeyboardInterrupt\n")
    config = load_config(lake.root)

    with pytest.raises(KeyboardInterrupt):
        resolve_schema(config, config.table("sensors"))


# -- item 6: the lake root never shadows a module ---------------------------------------------

SHADOWS = ("hypothesis", "glob", "pprint", "typing_extensions", "polars", "pandera")


def shadowing_root(tmp_path: Path, contracts: dict[str, str] | None = None,
                   names: tuple[str, ...] = SHADOWS) -> Lake:
    """The standard test lake plus top-level modules that leave a marker when imported."""
    lake = Lake(make_root(tmp_path / "lake", contracts=contracts))
    for name in names:
        (lake.root / f"{name}.py").write_text(textwrap.dedent(f"""\
            import pathlib
            pathlib.Path(__file__).with_suffix(".imported").write_text("imported")
            raise ImportError("{name} from the lake root must never be imported")
            """))
    return lake


def markers(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.imported"))


@pytest.mark.parametrize("name", SHADOWS)
def test_modules_in_the_lake_root_are_never_imported_by_the_loader(tmp_path: Path,
                                                                   name: str) -> None:
    """Before: the root went first on sys.path, and pandera's probe imported hypothesis.py
    (and a polars.py or pandera.py in the root broke every load)."""
    lake = shadowing_root(tmp_path, names=(name,))
    lake.init()
    write_run_by_hand(lake.root, "events", hand_run_id(1),
                      {"part-00000.parquet": events_table([1, 2])})
    write_run_by_hand(lake.root, "events", hand_run_id(2),
                      {"part-00000.parquet": events_table([3], kind="bogus")})

    result = lake_cli(lake.root, "load")

    assert result.returncode == 3, result.stderr  # the bogus run: the contract did run
    assert markers(lake.root) == []
    assert lake.archived("events") == [hand_run_id(1)]
    assert lake.quarantined("events") == [hand_run_id(2)]
    assert lake.reason("events", hand_run_id(2))["code"] == "contract_violation"


def test_loading_contracts_leaves_nothing_of_the_root_importable(tmp_path: Path) -> None:
    """In process: no root entry on sys.path, no plain `contracts` module left behind, and
    the contract lives under a private name."""
    lake = shadowing_root(tmp_path)
    lake.init()
    write_run_by_hand(lake.root, "events", hand_run_id(1),
                      {"part-00000.parquet": events_table([1])})
    path_before, had_contracts = list(sys.path), "contracts" in sys.modules

    report = lake.load()

    assert [o.status for o in report.runs] == ["loaded"]
    assert sys.path == path_before
    assert not any(str(lake.root) in entry for entry in sys.path)
    assert ("contracts" in sys.modules) == had_contracts
    events = lake.root / "contracts" / "events.py"
    names = [name for name, module in list(sys.modules.items())
             if getattr(module, "__file__", None) == str(events)]
    assert len(names) == 1 and names[0].startswith("_lake_contracts_"), names
    assert markers(lake.root) == []


@pytest.fixture
def real_contracts_module() -> Iterator[types.ModuleType]:
    """A module named `contracts` that is not the lake's, as if installed in site-packages."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "contracts"}
    real = types.ModuleType("contracts")
    sys.modules["contracts"] = real
    try:
        yield real
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] == "contracts"]:
            del sys.modules[key]
        sys.modules.update(saved)


def test_contracts_neither_shadow_nor_are_shadowed_by_a_real_module(
        tmp_path: Path, real_contracts_module: types.ModuleType) -> None:
    """Two roots and a real `contracts` module in one process: each gets its own."""
    first = Lake(make_root(tmp_path / "one", contracts={"shared": "LIMIT = 1\n"}))
    second = Lake(make_root(tmp_path / "two", contracts={"shared": "LIMIT = 2\n"}))
    for lake, limit in ((first, 1), (second, 2), (first, 1)):
        contract = textwrap.dedent(f"""\
            import pandera.pandas as pa
            from contracts.shared import LIMIT
            assert LIMIT == {limit}
            LogSchema = pa.DataFrameSchema({{"id": pa.Column(int, pa.Check.le({limit}))}})
            """)
        (lake.root / "contracts" / "limits.py").write_text(contract)
        (lake.root / "lake.toml").write_text(BASE.replace(
            'merge = "append"', 'merge = "append"\nschema = "contracts.limits:LogSchema"'))
        config = load_config(lake.root)
        resolved = resolve_schema(config, config.table("logs"))
        assert resolved is not None
        assert resolved.schema.columns["id"].checks[0].statistics["max_value"] == limit
        assert sys.modules["contracts"] is real_contracts_module


LAYOUTS = {
    "top_level_module": ("sensor_contract", {"sensor_contract.py": "BODY"}),
    "namespace_package": ("nspkg.sensors", {"nspkg/sensors.py": "BODY"}),
    "nested_package": ("pkg.sub.sensors", {"pkg/__init__.py": "", "pkg/sub/__init__.py": "",
                                           "pkg/sub/sensors.py": "from .. import sub\nBODY"}),
}


@pytest.mark.parametrize(("module", "files"), list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_contract_modules_are_found_by_their_path_under_the_root(
        tmp_path: Path, module: str, files: dict[str, str]) -> None:
    """A top-level module, a package without __init__.py, a nested package."""
    lake = lake_with(tmp_path, BASE + f"""
[tables.sensors]
schema = "{module}:SensorSchema"
""")
    body = 'import pandera.pandas as pa\nSensorSchema = pa.DataFrameSchema({"sensor": ' \
           'pa.Column(str)})\n'
    for name, text in files.items():
        (lake.root / name).parent.mkdir(parents=True, exist_ok=True)
        (lake.root / name).write_text(text.replace("BODY", body))
    config = load_config(lake.root)

    resolved = resolve_schema(config, config.table("sensors"))

    assert resolved is not None and list(resolved.schema.columns) == ["sensor"]
    assert module.split(".")[0] not in sys.modules


SIBLING_IMPORTS = {
    "relative_module": "from . import common\nKINDS = common.KINDS",
    "relative_name": "from .common import KINDS",
    "absolute_from": "from contracts import common\nKINDS = common.KINDS",
    "absolute_import": "import contracts.common\nKINDS = contracts.common.KINDS",
}


@pytest.mark.parametrize("imports", list(SIBLING_IMPORTS.values()), ids=list(SIBLING_IMPORTS))
def test_a_contract_imports_a_sibling_module_of_its_package(tmp_path: Path,
                                                           imports: str) -> None:
    """`schema = "contracts.events:EventSchema"` with the allowed kinds in contracts/common.py:
    relative and absolute sibling imports both work (docs/CONTRACTS.md)."""
    contract = imports + textwrap.dedent("""
        import polars as pl
        import pandera.polars as pa

        class EventSchema(pa.DataFrameModel):
            event_id: int = pa.Field(ge=0)
            ts: pl.Datetime = pa.Field()
            kind: str = pa.Field(isin=KINDS)
            amount: float = pa.Field(ge=0, nullable=True)
        """)
    lake = shadowing_root(tmp_path, {"common": 'KINDS = ["view", "special"]\n',
                                     "events": contract})
    lake.init()
    write_run_by_hand(lake.root, "events", hand_run_id(1),
                      {"part-00000.parquet": events_table([1], kind="special")})
    write_run_by_hand(lake.root, "events", hand_run_id(2),
                      {"part-00000.parquet": events_table([2], kind="click")})

    result = lake_cli(lake.root, "load")

    assert result.returncode == 3, result.stderr
    assert lake.archived("events") == [hand_run_id(1)]
    assert lake.quarantined("events") == [hand_run_id(2)]
    assert markers(lake.root) == []


def test_a_contract_missing_a_sibling_says_so(tmp_path: Path) -> None:
    """An absolute import of a sibling that does not exist is a config error naming it."""
    lake = sensors_lake(tmp_path, "needy", "from contracts import nowhere\n")

    assert_config_error(lake_cli(lake.root, "load"), "'contracts.needy'", "nowhere")
    assert_nothing_moved(lake)


# -- item 10a: a string key and unknown URL schemes -------------------------------------------

def test_a_primary_key_written_as_a_string_is_refused(tmp_path: Path) -> None:
    """`primary_key = "id"` was wrapped silently; it is a slip, and the fix is one line."""
    lake = lake_with(tmp_path, BASE)
    write_run_by_hand(lake.root, "logs", hand_run_id(1),
                      {"part-00000.parquet": logs_table([1, 2])})
    (lake.root / "lake.toml").write_text(BASE.replace('primary_key = ["id"]',
                                                      'primary_key = "id"'))

    assert_config_error(lake_cli(lake.root, "load"), "[tables.logs]", "'primary_key'",
                        'primary_key = ["id"]')
    assert lake.staged("logs") == [hand_run_id(1)]
    assert lake.ledger() == {}


BAD_STAGING_URLS = ("memory://lake", "http://example.com/lake", "ftp://host/lake",
                    "simplecache::s3://bucket/lake", "S3://bucket/lake")
URL_IDS = ["memory", "http", "ftp", "chained", "upper_case"]


@pytest.mark.parametrize("url", BAD_STAGING_URLS, ids=URL_IDS)
def test_an_unknown_staging_url_scheme_is_refused_in_lake_toml(tmp_path: Path,
                                                               url: str) -> None:
    """`staging_root = "memory://lake"` gave a loader that looks at an empty memory store."""
    lake = lake_with(tmp_path, BASE)
    write_run_by_hand(lake.root, "logs", hand_run_id(1),
                      {"part-00000.parquet": logs_table([1])})
    (lake.root / "lake.toml").write_text(BASE.replace(
        "[lake]\n", f'[lake]\nstaging_root = "{url}"\n', 1))

    assert_config_error(lake_cli(lake.root, "load"), "lake.staging_root", "s3://")
    assert lake.staged("logs") == [hand_run_id(1)]


@pytest.mark.parametrize("url", BAD_STAGING_URLS[:2], ids=URL_IDS[:2])
def test_an_unknown_staging_url_scheme_is_refused_on_the_command_line(tmp_path: Path,
                                                                      url: str) -> None:
    """--staging-root and LAKE_STAGING_ROOT go through the same check."""
    lake = lake_with(tmp_path, BASE)

    assert_config_error(lake_cli(lake.root, "--staging-root", url, "load"),
                        "--staging-root", "s3://")
    assert_config_error(lake_cli(lake.root, "load", env={"LAKE_STAGING_ROOT": url}),
                        "--staging-root", "s3://")


def test_a_producer_cannot_stage_to_an_unknown_scheme(tmp_path: Path) -> None:
    """stage("memory://lake", ...) committed a run into the producer's own memory."""
    memory = fsspec.filesystem("memory")
    with pytest.raises(StagingError, match=r"memory:// is not a store .* s3://"):
        stage("memory://lake-h12", "logs", logs_table([1]))
    assert not memory.exists("/lake-h12")

    # A local folder, as a path or a file:// URL, still stages.
    lake = Lake(make_root(tmp_path / "lake"))
    lake.init()
    manifest = stage(f"file://{lake.root}", "logs", logs_table([1]))
    assert manifest is not None and lake.staged("logs") == [manifest.run_id]


# -- item 10b: key or partition column the contract cannot accept -----------------------------

STRICT = """
    import pandera.pandas as pa

    SensorSchema = pa.DataFrameSchema(
        {"sensor": pa.Column(str), "celsius": pa.Column(float), "id_.*": pa.Column(int, regex=True,
                                                                             required=False)},
        strict=STRICTNESS,
    )
    """


@pytest.mark.parametrize(("extra", "key", "column"), [
    ('primary_key = ["reading_id"]', "primary_key", "reading_id"),
    ('primary_key = ["sensor", "reading_id"]', "primary_key", "reading_id"),
    ('partition_by = { column = "day" }', "partition_by.column", "day"),
], ids=["key", "second_key_column", "partition"])
def test_a_key_the_strict_contract_lacks_is_a_config_error(tmp_path: Path, extra: str,
                                                           key: str, column: str) -> None:
    """Before: every run of the table was quarantined (column_present or column_in_schema)."""
    lake = sensors_lake(tmp_path, "strict_sensors", STRICT.replace("STRICTNESS", "True"),
                        extra=extra)

    assert_config_error(lake_cli(lake.root, "load"), "[tables.sensors]", f"'{key}'",
                        f"'{column}'", "strict")
    assert_nothing_moved(lake)  # like any config error: no table's runs load


@pytest.mark.parametrize(("strictness", "extra"), [
    ("False", 'primary_key = ["reading_id"]'),
    ('"filter"', 'primary_key = ["reading_id"]'),
    ("True", 'primary_key = ["id_reading"]'),  # matched by the regex column
    ("True", 'primary_key = ["sensor"]\npartition_by = { column = "sensor" }'),
], ids=["not_strict", "strict_filter", "regex_column", "declared"])
def test_a_contract_that_can_accept_the_key_is_fine(tmp_path: Path, strictness: str,
                                                    extra: str) -> None:
    """Only a contract that could never accept the column is refused."""
    lake = sensors_lake(tmp_path, "open_sensors", STRICT.replace("STRICTNESS", strictness),
                        extra=extra)
    config = load_config(lake.root)

    assert resolve_schema(config, config.table("sensors")) is not None


def test_a_table_without_a_schema_has_no_contract_to_check(tmp_path: Path) -> None:
    """logs has no schema: its key is Lake's own check, never a config error."""
    lake = Lake(make_root(tmp_path / "lake", LAKE_TOML.replace(
        'primary_key = ["id"]', 'primary_key = ["nothing_like_it"]')))
    config = load_config(lake.root)

    assert resolve_schema(config, config.table("logs")) is None
