"""`lake init`: a lake root's folders, a starter ``lake.toml``, the warehouse and its schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lakehouse.config import CONFIG_TEMPLATE, load_config
from lakehouse.db import open_warehouse
from lakehouse.fsio import atomic_write_bytes
from lakehouse.layout import LakePaths
from lakehouse.lock import WarehouseLock
from lakehouse.migrations import migrate, schema_version
from lakehouse.publish import publish_snapshot


@dataclass
class InitReport:
    """What `lake init` did (nothing, when run again)."""

    root: Path
    created: list[str] = field(default_factory=list)
    migrations_applied: list[int] = field(default_factory=list)
    schema_version: int = 0
    tables: list[str] = field(default_factory=list)


def init_lake(root: str | Path, *, lock_timeout: float = 0.0) -> InitReport:
    """Create the layout, a starter lake.toml if none, and migrate the warehouse. Idempotent.

    Raises:
        LockHeldError: a load or compaction holds the warehouse.
        ConfigError: an existing lake.toml is invalid.
    """
    paths = LakePaths.at(root)
    report = InitReport(paths.root)
    for folder in [paths.root, *paths.folders()]:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            report.created.append(str(folder.relative_to(paths.root)) or ".")
    if not paths.config.exists():
        atomic_write_bytes(paths.config, CONFIG_TEMPLATE.encode())
        report.created.append(paths.config.name)
    config = load_config(paths.root)  # an invalid existing file fails here, exit 2
    report.tables = sorted(config.tables)
    with WarehouseLock(paths, "lake init", lock_timeout):
        wh = open_warehouse(paths.warehouse, lock_timeout=lock_timeout)
        try:
            report.migrations_applied = migrate(wh)
            report.schema_version = schema_version(wh)
            wh.checkpoint()
        finally:
            wh.close()
        if report.migrations_applied or not paths.read_snapshot.exists():
            publish_snapshot(paths)
    return report
