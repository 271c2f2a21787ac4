"""The fixed cost of a cron tick (issue 17, part 3): what `lake load` imports before it
touches data.

A tick with nothing staged imports neither pandera nor polars (nor pandas): contracts are
imported only for the tables that have runs waiting. Each test runs the real `lake` CLI in a
subprocess with ``-X importtime`` (``PYTHONPROFILEIMPORTTIME``) and reads what it imported.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import Lake, hand_run_id, lake_cli, make_root, write_run_by_hand
from test_bad_input import logs_table

from lakehouse.config import load_config
from lakehouse.contracts import check_reference
from lakehouse.errors import ConfigError

HEAVY = ("pandera", "polars", "pandas")
READINGS = pa.table({"sensor": ["s-1"], "ts": pa.array([0], pa.timestamp("us")),
                     "celsius": [1.0]})


def imported(result: subprocess.CompletedProcess[str]) -> set[str]:
    """Every module the process imported, from its ``-X importtime`` lines on stderr."""
    names = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2}
    assert "duckdb" in names, result.stderr[-2000:]  # the lines were read at all
    return names


def load_with_importtime(root: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    result = lake_cli(root, "load", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result, imported(result)


def test_a_tick_with_nothing_staged_imports_neither_pandera_nor_polars(lake: Lake) -> None:
    """The empty tick used to import every table's contract: ~0.8 s of pandera and polars."""
    result, names = load_with_importtime(lake.root)

    assert "loaded 0 runs" in result.stdout
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_a_tick_imports_only_the_contracts_of_tables_with_runs_waiting(lake: Lake) -> None:
    """One run of `readings` (a pandas contract): its contract is imported, the polars one
    of `events` is not. (Contract modules are imported with importlib, which ``-X
    importtime`` does not log; what they import shows.)"""
    write_run_by_hand(lake.root, "readings", hand_run_id(1), {"part-00000.parquet": READINGS})

    _, names = load_with_importtime(lake.root)

    assert lake.ledger() == {hand_run_id(1): "loaded"}
    assert {"pandera", "pandas"} <= names
    assert "polars" not in names


def test_a_broken_contract_of_a_table_without_runs_waiting_does_not_stop_the_load(
        tmp_path: Path) -> None:
    """The price of importing only what is needed: a contract that names its schema but
    raises when imported is reported by the load that meets a run of its table (exit 2,
    nothing moves), not by every load."""
    broken = "class EventSchema:\n    pass\n\nraise ImportError('x')\n"
    lake = Lake(make_root(tmp_path / "lake", contracts={"events": broken}))
    lake.init()
    write_run_by_hand(lake.root, "logs", hand_run_id(1), {"part-00000.parquet":
                                                          logs_table([1, 2])})

    assert lake_cli(lake.root, "load").returncode == 0
    assert lake.ledger() == {hand_run_id(1): "loaded"}

    write_run_by_hand(lake.root, "events", hand_run_id(2), {"part-00000.parquet":
                                                            pa.table({"event_id": [1]})})
    write_run_by_hand(lake.root, "logs", hand_run_id(3), {"part-00000.parquet":
                                                          logs_table([3])})
    failed = lake_cli(lake.root, "load")
    assert failed.returncode == 2, failed.stderr
    assert "contracts.events" in failed.stderr
    assert lake.staged("events") == [hand_run_id(2)]
    assert lake.staged("logs") == [hand_run_id(3)]


@pytest.mark.parametrize(("source", "error"), [
    ("import pandera.polars as pa\nclass EventSchema(pa.DataFrameModel):\n    pass\n", None),
    ("from .common import Base as EventSchema\n", None),
    ("try:\n    from x import EventSchema\nexcept ImportError:\n    EventSchema = 1\n", None),
    ("if True:\n    EventSchema, Other = 1, 2\n", None),
    ("from .common import *\n", None),  # cannot tell without importing
    ("class Other:\n    pass\n", "defines no 'EventSchema'"),
    ("def f(:\n", "does not parse"),
], ids=["class", "import_as", "try_except", "tuple_in_if", "star_import", "missing", "syntax"])
def test_a_reference_is_checked_without_importing_the_module(
        tmp_path: Path, source: str, error: str | None) -> None:
    """``check_reference`` reads the module's source: the names it binds at top level."""
    root = make_root(tmp_path / "lake", contracts={"events": source})
    contract = load_config(root).tables["events"]
    if error is None:
        check_reference(load_config(root), contract)
        return
    with pytest.raises(ConfigError, match=error):
        check_reference(load_config(root), contract)


def test_a_missing_contract_module_is_named(tmp_path: Path) -> None:
    root = make_root(tmp_path / "lake")
    (root / "contracts" / "events.py").unlink()
    config = load_config(root)
    with pytest.raises(ConfigError, match=r"no module 'contracts.events'.*contracts/events.py"):
        check_reference(config, config.tables["events"])
