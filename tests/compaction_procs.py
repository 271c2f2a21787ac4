"""Helper processes for the compaction tests (run as scripts, never imported by Lake).

    python tests/compaction_procs.py hold-lock   ROOT   # hold the warehouse lock as `lake load`
    python tests/compaction_procs.py hold-duckdb ROOT   # hold lake.duckdb open read-only
    python tests/compaction_procs.py compact     ROOT [POINT]

The holders print ``ready`` once they hold what they hold, then wait until their stdin closes
(the test closes it, or kills them). ``compact`` runs the library function, optionally with a
crash point armed (``compact.after_copy``: see lakehouse/failpoints.py), and prints the report
as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def hold_lock(root: Path) -> None:
    """Hold the warehouse lock the way a running load does."""
    from lakehouse.layout import LakePaths
    from lakehouse.lock import WarehouseLock

    with WarehouseLock(LakePaths.at(root), "lake load"):
        print("ready", flush=True)
        sys.stdin.read()


def hold_duckdb(root: Path) -> None:
    """Hold DuckDB's own file lock on the warehouse, as a misbehaving analyst would."""
    import duckdb

    con = duckdb.connect(str(root / "warehouse" / "lake.duckdb"), read_only=True)
    try:
        print("ready", flush=True)
        sys.stdin.read()
    finally:
        con.close()


def compact(root: Path, point: str | None) -> None:
    """Run one compaction (it SIGKILLs itself at the crash point ``point``)."""
    from lakehouse import failpoints
    from lakehouse.config import load_config
    from loader.compact import compact_warehouse

    failpoints.arm(point)
    report = compact_warehouse(load_config(root))
    print(json.dumps(report.as_dict()))


def main(argv: list[str]) -> None:
    command, root = argv[0], Path(argv[1])
    if command == "hold-lock":
        hold_lock(root)
    elif command == "hold-duckdb":
        hold_duckdb(root)
    elif command == "compact":
        compact(root, argv[2] if len(argv) > 2 else None)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
