"""A table's spec: how it is partitioned, keyed and merged, recorded canonically in ``meta.tables``.

The warehouse keeps, per data table, the spec it was built with (``meta.tables.spec_json``,
migration 6). A load compares it with what ``lake.toml`` says now (:func:`spec_change`): a
table whose spec changed is refused until ``lake repartition TABLE`` rebuilds it (or, for a
change of key or merge strategy alone, checks it) and records the new spec. Without this, a
``partition_by`` changed from month to day would leave ``2026-01`` and ``2026-01-01``
partitions side by side in one table, with nothing said.

The canonical form is one JSON object, ``{"merge": ..., "partition_by": [{"column",
"granularity"}, ...], "primary_key": [...]}``: keys sorted, no spaces, column names in lower
case (DuckDB resolves names case-insensitively, so ``TS`` and ``ts`` are one column), and
``partition_by`` a list even for one column. :func:`canonical_spec` is the one function that
reads a contract's spec; everything else compares its output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lakehouse.config import TableContract
from lakehouse.db import Warehouse
from lakehouse.layout import RESERVED_PREFIX

Spec = dict[str, Any]
# `lake repartition` rebuilds a table under this name until its swap renames it; a reserved
# name (no declared table starts with `_lake_`), so a killed run's leftover is recognised.
BUILD_PREFIX = RESERVED_PREFIX + "build_"


def build_table_name(table: str) -> str:
    """The name ``table`` is rebuilt under by `lake repartition`."""
    return BUILD_PREFIX + table


def spec_of(partition_by: list[tuple[str, str]], primary_key: list[str] | tuple[str, ...],
            merge: str) -> Spec:
    """The canonical spec of a partition list ``[(column, granularity)]``, a key and a merge."""
    return {"partition_by": [{"column": c.lower(), "granularity": g} for c, g in partition_by],
            "primary_key": [c.lower() for c in primary_key], "merge": merge}


def canonical_spec(contract: TableContract) -> Spec:
    """The canonical spec ``lake.toml`` gives a table (the one reader of its partition spec)."""
    parts = [(s.column, s.granularity) for s in contract.partitions]
    return spec_of(parts, contract.primary_key, contract.merge)


def spec_text(spec: Spec) -> str:
    """The canonical JSON text of a spec (what ``meta.tables.spec_json`` holds)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def parse_spec(text: str | None) -> Spec | None:
    """A recorded ``spec_json`` read back (None: not recorded, or not readable)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def describe_partitions(spec: Spec) -> str:
    """``ts/month`` (or ``symbol/identity, ts/month``; ``none``) for messages."""
    parts = spec.get("partition_by") or []
    return ", ".join(f"{p.get('column')}/{p.get('granularity')}" for p in parts) or "none"


def describe_changes(old: Spec, new: Spec) -> list[str]:
    """What differs between two specs, one short phrase per part that changed."""
    changes = []
    if old.get("partition_by") != new.get("partition_by"):
        changes.append(f"partition_by {describe_partitions(old)} -> {describe_partitions(new)}")
    if old.get("primary_key") != new.get("primary_key"):
        changes.append(f"primary_key {old.get('primary_key')} -> {new.get('primary_key')}")
    if old.get("merge") != new.get("merge"):
        changes.append(f"merge {old.get('merge')} -> {new.get('merge')}")
    return changes


def needs_rebuild(old: Spec, new: Spec) -> bool:
    """True when the rows' ``_lake_partition`` changes (a key or merge change alone keeps
    every row where it is)."""
    return old.get("partition_by") != new.get("partition_by")


def record_spec(wh: Warehouse, contract: TableContract) -> None:
    """Insert or update the table's ``meta.tables`` row with the spec of ``contract``.

    ``partition_column`` / ``partition_granularity`` list the partition columns and their
    granularities with commas (names never hold one), for readers of the older columns."""
    spec = canonical_spec(contract)
    specs = contract.partitions
    wh.execute(
        "INSERT INTO meta.tables (table_name, partition_column, partition_granularity, merge, "
        "primary_key, created_at, updated_at, spec_json) VALUES (?, ?, ?, ?, ?, now(), now(), ?) "
        "ON CONFLICT (table_name) DO UPDATE SET partition_column = excluded.partition_column, "
        "partition_granularity = excluded.partition_granularity, merge = excluded.merge, "
        "primary_key = excluded.primary_key, spec_json = excluded.spec_json, "
        "updated_at = now()",
        [contract.name, ",".join(s.column for s in specs) or None,
         ",".join(s.granularity for s in specs) or None, contract.merge,
         ",".join(contract.primary_key), spec_text(spec)],
        action=f"recording the spec of table {contract.name}")


def recorded_specs(wh: Warehouse) -> dict[str, Spec | None]:
    """Every table's recorded spec by name (empty for a warehouse older than migration 6)."""
    if not any(name == "spec_json" for name, _ in wh.columns("meta", "tables")):
        return {}
    return {r[0]: parse_spec(r[1]) for r in wh.fetchall(
        "SELECT table_name, spec_json FROM meta.tables", action="reading meta.tables")}


@dataclass(frozen=True)
class SpecChange:
    """``lake.toml`` gives a table that holds data another spec than it was built with."""

    table: str
    recorded: Spec
    wanted: Spec

    @property
    def changes(self) -> list[str]:
        return describe_changes(self.recorded, self.wanted)

    @property
    def rebuild(self) -> bool:
        return needs_rebuild(self.recorded, self.wanted)

    def message(self) -> str:
        """One line: what changed, that the runs wait, and the command that resolves it."""
        return (f"table {self.table} refused: lake.toml changes its spec "
                f"({'; '.join(self.changes)}) but the table was built with the old one; its "
                f"runs stay in staging; run `lake repartition {self.table}` (see "
                "docs/OPERATIONS.md), or restore the old spec in lake.toml")


def spec_change(wh: Warehouse, contract: TableContract,
                recorded: dict[str, Spec | None] | None = None) -> SpecChange | None:
    """The change ``contract`` makes to its existing table's recorded spec, or None (the
    table does not exist yet, has no recorded spec, or is unchanged)."""
    if not wh.columns("main", contract.name):
        return None
    specs = recorded_specs(wh) if recorded is None else recorded
    old = specs.get(contract.name)
    new = canonical_spec(contract)
    if old is None or old == new:
        return None
    return SpecChange(contract.name, old, new)


__all__ = [
    "BUILD_PREFIX",
    "Spec",
    "SpecChange",
    "build_table_name",
    "canonical_spec",
    "describe_changes",
    "describe_partitions",
    "needs_rebuild",
    "parse_spec",
    "record_spec",
    "recorded_specs",
    "spec_change",
    "spec_of",
    "spec_text",
]
