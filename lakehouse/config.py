"""``lake.toml``: lake settings and table contracts, parsed into frozen dataclasses.

Every field is documented in ``docs/CONTRACTS.md``. A mistake raises :class:`ConfigError`
naming the table and key at fault (the CLI exits 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lakehouse.errors import ConfigError, UsageError
from lakehouse.layout import (
    OBJECT_STORE_SCHEMES,
    RESERVED_PREFIX,
    LakePaths,
    is_identifier,
    url_scheme,
)

MERGE_STRATEGIES = ("append", "upsert", "replace_partition")
ON_INVALID = ("quarantine", "drop_rows", "abort")
SCHEMA_EVOLUTION = ("freeze", "add_columns")
VALIDATION = ("grouped", "per_run")
GRANULARITIES = ("identity", "day", "month", "year")

CONFIG_TEMPLATE = """\
# Lake configuration: settings and one [tables.<name>] section per table.
# Every key is described in docs/CONTRACTS.md.

[lake]
retention_days = 7            # how long loaded runs stay in archive/; 0 deletes them
abandon_after_hours = 24      # uncommitted runs older than this are cleaned up

# [tables.events]
# schema = "contracts.events:EventSchema"   # a pandera schema or model, by import path
# primary_key = ["event_id"]
# partition_by = { column = "ts", granularity = "month" }   # identity | day | month | year
# partition_by = [{ column = "symbol" }, { column = "ts", granularity = "month" }]   # nested
# merge = "upsert"                # append | upsert | replace_partition
# on_invalid = "quarantine"       # quarantine | drop_rows | abort
# schema_evolution = "add_columns"   # freeze | add_columns
"""


@dataclass(frozen=True)
class PartitionSpec:
    """One partition column of a table: ``column``, truncated to ``granularity``."""

    column: str
    granularity: str = "identity"


MAX_PARTITION_COLUMNS = 4  # more nested folders than this is a layout no engine prunes well


CHECK_NAMES = ("freshness", "no_duplicate_keys", "max_row_drop", "no_gaps")
SEVERITIES = ("warn", "error")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class TableCheck:
    """One table-level check from ``checks = { ... }``, run after each load of the table.

    ``value``: freshness, the largest allowed age of the watermark in seconds; max_row_drop,
    the largest allowed shrink in one load (0.2 = 20 %); no_duplicate_keys and no_gaps, True.
    """

    name: str
    value: float | bool
    severity: str = "error"


@dataclass(frozen=True)
class TableContract:
    """One table's contract, from ``[tables.<name>]``."""

    name: str
    schema: str | None = None
    schema_file: str | None = None
    primary_key: tuple[str, ...] = ()
    # The partition columns in nesting order; None (never empty) for an unpartitioned table.
    partition_by: tuple[PartitionSpec, ...] | None = None
    merge: str = "append"
    on_invalid: str = "quarantine"
    schema_evolution: str = "freeze"
    validation: str = "grouped"
    checks: tuple[TableCheck, ...] = ()
    watermark_scope: str | None = None  # a column: one watermark per value, plus 'ALL'

    @property
    def partitions(self) -> tuple[PartitionSpec, ...]:
        """The partition columns in nesting order (empty for an unpartitioned table)."""
        return self.partition_by or ()


@dataclass(frozen=True)
class LakeSettings:
    """The ``[lake]`` section."""

    retention_days: int = 7
    abandon_after_hours: float = 24.0
    batch_max_rows: int = 1_000_000  # rows merged in one transaction at most
    batch_max_runs: int = 2_000  # runs merged in one transaction at most
    batch_max_bytes: int = 512 * 1024 * 1024  # decoded (Arrow) bytes merged in one transaction
    max_run_bytes: int = 1 << 30  # a run decoding to more (Arrow bytes) is quarantined too_large
    # Staging, archive and quarantine in an object store (an fsspec URL) instead of the root.
    staging_root: str | None = None
    staging_options: MappingProxyType[str, Any] = field(
        default_factory=lambda: MappingProxyType({}))
    # `lake cleanup` vacuums a Delta export's files unused this long (Delta's own default).
    export_retention_hours: int = 168


@dataclass(frozen=True)
class LakeConfig:
    """The whole parsed configuration of one lake root."""

    paths: LakePaths
    settings: LakeSettings = LakeSettings()
    tables: MappingProxyType[str, TableContract] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def root(self) -> Path:
        return self.paths.root

    def table(self, name: str) -> TableContract:
        """Return a table's contract.

        Raises:
            ConfigError: the table is not declared.
        """
        try:
            return self.tables[name]
        except KeyError:
            raise ConfigError(f"table {name!r} is not declared in lake.toml",
                              path=str(self.paths.config)) from None


_LAKE_KEYS = {f for f in LakeSettings.__dataclass_fields__}
_TABLE_KEYS = {"schema", "schema_file", "primary_key", "partition_by", "merge", "on_invalid",
               "schema_evolution", "validation", "checks", "watermark_scope"}


def load_config(root: str | Path) -> LakeConfig:
    """Read and check ``<root>/lake.toml``.

    Raises:
        UsageError: there is no lake.toml at the root (run `lake init`).
        ConfigError: the file is not valid TOML or a key is wrong.
    """
    paths = LakePaths.at(root)
    if not paths.config.is_file():
        raise UsageError(
            f"no {paths.config.name} in {paths.root}: run `lake --root {paths.root} init` "
            "or point --root / LAKE_ROOT at an existing lake"
        )
    try:
        doc = tomllib.loads(paths.config.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(paths.config)) from None
    return parse_config(doc, paths)


def parse_config(doc: dict[str, Any], paths: LakePaths) -> LakeConfig:
    """Build a :class:`LakeConfig` from a parsed TOML document."""
    where = str(paths.config)
    unknown = set(doc) - {"lake", "tables"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; expected [lake] and [tables.*]",
                          path=where)
    lake = doc.get("lake", {})
    if not isinstance(lake, dict):
        raise ConfigError("[lake] must be a table", path=where)
    for key in lake:
        if key not in _LAKE_KEYS:
            raise ConfigError(f"unknown key; expected one of {sorted(_LAKE_KEYS)}",
                              key=f"lake.{key}", path=where)
    settings = LakeSettings(
        retention_days=_number(lake, "retention_days", 7, where, integer=True, high=36_500),
        abandon_after_hours=float(_number(lake, "abandon_after_hours", 24.0, where,
                                          high=24 * 36_500)),
        batch_max_rows=_number(lake, "batch_max_rows", 1_000_000, where, integer=True, low=1),
        batch_max_runs=_number(lake, "batch_max_runs", 2_000, where, integer=True, low=1),
        batch_max_bytes=_number(lake, "batch_max_bytes", 512 * 1024 * 1024, where,
                                integer=True, low=1),
        max_run_bytes=_number(lake, "max_run_bytes", 1 << 30, where, integer=True, low=1),
        staging_root=_staging_root(lake.get("staging_root"), "lake.staging_root", where),
        staging_options=_options(lake.get("staging_options", {}), where),
        export_retention_hours=_number(lake, "export_retention_hours", 168, where,
                                       integer=True, high=24 * 36_500),
    )
    tables_doc = doc.get("tables", {})
    if not isinstance(tables_doc, dict):
        raise ConfigError("[tables] must hold [tables.<name>] sections", path=where)
    tables = {name: _parse_table(name, body, where) for name, body in tables_doc.items()}
    return LakeConfig(paths=paths, settings=settings, tables=MappingProxyType(tables))


def _parse_table(name: str, body: Any, where: str) -> TableContract:
    if not is_identifier(name) or name.lower().startswith(RESERVED_PREFIX):
        raise ConfigError(
            "table names must be letters, digits and '_' (at most 63, not starting with a digit)",
            table=name, path=where,
        )
    if not isinstance(body, dict):
        raise ConfigError("must be a table of keys", table=name, path=where)
    for key in body:
        if key not in _TABLE_KEYS:
            raise ConfigError(f"unknown key; expected one of {sorted(_TABLE_KEYS)}",
                              table=name, key=key, path=where)

    def text(key: str, default: str | None, choices: tuple[str, ...] | None = None) -> str | None:
        value = body.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", table=name, key=key, path=where)
        if choices and value not in choices:
            raise ConfigError(f"must be one of {list(choices)}, got {value!r}",
                              table=name, key=key, path=where)
        return value

    schema, schema_file = text("schema", None), text("schema_file", None)
    if schema and schema_file:
        raise ConfigError("give either schema or schema_file, not both", table=name, path=where)
    if schema is not None and ":" not in schema:
        raise ConfigError(f"must look like 'module.path:SchemaName', got {schema!r}",
                          table=name, key="schema", path=where)
    pk = body.get("primary_key", [])
    if isinstance(pk, str):
        # Refused, not wrapped: a string key is a slip, and a quiet guess would hide it.
        raise ConfigError(f"must be a list of column names: write primary_key = "
                          f"[{json.dumps(pk)}]", table=name, key="primary_key", path=where)
    if not isinstance(pk, list) or not all(isinstance(c, str) and is_identifier(c) for c in pk):
        raise ConfigError(f"must be a list of column names, got {pk!r}",
                          table=name, key="primary_key", path=where)
    if len({c.lower() for c in pk}) != len(pk):
        raise ConfigError("repeats a column", table=name, key="primary_key", path=where)
    partition = _parse_partition(name, body.get("partition_by"), where)
    merge = text("merge", "append", MERGE_STRATEGIES)
    if merge == "upsert" and not pk:
        raise ConfigError("merge = \"upsert\" needs a primary_key", table=name, key="merge",
                          path=where)
    if merge == "replace_partition" and partition is None:
        raise ConfigError("merge = \"replace_partition\" needs partition_by", table=name,
                          key="merge", path=where)
    scope = body.get("watermark_scope")
    if scope is not None and (not isinstance(scope, str) or not is_identifier(scope)):
        raise ConfigError(f"must be a column name, got {scope!r}", table=name,
                          key="watermark_scope", path=where)
    return TableContract(
        checks=_parse_checks(name, body.get("checks"), tuple(pk), partition, where),
        watermark_scope=scope,
        name=name, schema=schema, schema_file=schema_file, primary_key=tuple(pk),
        partition_by=partition, merge=merge or "append",
        on_invalid=text("on_invalid", "quarantine", ON_INVALID) or "quarantine",
        schema_evolution=text("schema_evolution", "freeze", SCHEMA_EVOLUTION) or "freeze",
        validation=text("validation", "grouped", VALIDATION) or "grouped",
    )


def _parse_partition(table: str, value: Any, where: str) -> tuple[PartitionSpec, ...] | None:
    """``partition_by``: one inline table (or a column name, for identity), or a list of them
    for nested partitions (``[{ column = "symbol" }, { column = "ts", granularity = "month" }]``).
    """
    if value is None:
        return None
    if isinstance(value, list):
        if not value:
            raise ConfigError("is an empty list; give at least one { column = \"...\" } or "
                              "leave partition_by out", table=table, key="partition_by",
                              path=where)
        if len(value) > MAX_PARTITION_COLUMNS:
            raise ConfigError(f"has {len(value)} columns; at most {MAX_PARTITION_COLUMNS} "
                              "partition columns are supported", table=table,
                              key="partition_by", path=where)
        specs = tuple(_partition_column(table, item, f"partition_by[{i}]", where)
                      for i, item in enumerate(value))
    else:
        specs = (_partition_column(table, value, "partition_by", where),)
    seen: set[str] = set()
    for spec in specs:
        if spec.column.lower() in seen:
            # Two granularities of one column (ts by year and by month) nest nothing new.
            raise ConfigError(f"names column {spec.column!r} twice; a column partitions once",
                              table=table, key="partition_by", path=where)
        seen.add(spec.column.lower())
    return specs


def _partition_column(table: str, value: Any, key: str, where: str) -> PartitionSpec:
    if isinstance(value, str):
        value = {"column": value}
    if not isinstance(value, dict) or set(value) - {"column", "granularity"}:
        raise ConfigError("must be { column = \"...\", granularity = \"...\" } or a list of "
                          "them", table=table, key=key, path=where)
    column = value.get("column")
    if not isinstance(column, str) or not is_identifier(column):
        raise ConfigError(f"column must be a column name, got {column!r}",
                          table=table, key=f"{key}.column", path=where)
    granularity = value.get("granularity", "identity")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"must be one of {list(GRANULARITIES)}, got {granularity!r}",
                          table=table, key=f"{key}.granularity", path=where)
    return PartitionSpec(column=column, granularity=granularity)


def _parse_checks(table: str, value: Any, primary_key: tuple[str, ...],
                  partition: tuple[PartitionSpec, ...] | None,
                  where: str) -> tuple[TableCheck, ...]:
    """``checks = { freshness = "2h", no_duplicate_keys = true, max_row_drop = 0.2,
    no_gaps = true }``; any value may be ``{ value = ..., severity = "warn" }``."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError("must be a table such as { freshness = \"2h\", no_gaps = true }",
                          table=table, key="checks", path=where)
    checks = []
    for name, raw in value.items():
        key = f"checks.{name}"
        if name not in CHECK_NAMES:
            raise ConfigError(f"unknown check; expected one of {list(CHECK_NAMES)}",
                              table=table, key=key, path=where)
        severity = "error"
        if isinstance(raw, dict):
            if set(raw) - {"value", "severity"} or "value" not in raw:
                raise ConfigError("must be a value or { value = ..., severity = \"warn\" }",
                                  table=table, key=key, path=where)
            severity = raw.get("severity", "error")
            if severity not in SEVERITIES:
                raise ConfigError(f"must be one of {list(SEVERITIES)}, got {severity!r}",
                                  table=table, key=f"{key}.severity", path=where)
            raw = raw["value"]
        parsed = _check_value(table, name, raw, primary_key, partition, where)
        if parsed is not False:
            checks.append(TableCheck(name, parsed, severity))
    return tuple(checks)


def _check_value(table: str, name: str, raw: Any, primary_key: tuple[str, ...],
                 partition: tuple[PartitionSpec, ...] | None, where: str) -> float | bool:
    key = f"checks.{name}"
    if name == "freshness":
        seconds = parse_duration(raw)
        if seconds is None:
            raise ConfigError(f"must be a duration such as \"90m\", \"2h\" or \"7d\", got "
                              f"{raw!r}", table=table, key=key, path=where)
        return seconds
    if name == "max_row_drop":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw < 1:
            raise ConfigError(f"must be a fraction from 0 to below 1 (0.2 = 20 %), got {raw!r}",
                              table=table, key=key, path=where)
        return float(raw)
    if not isinstance(raw, bool):
        raise ConfigError(f"must be true or false, got {raw!r}", table=table, key=key,
                          path=where)
    if raw and name == "no_duplicate_keys" and not primary_key:
        raise ConfigError("needs a primary_key", table=table, key=key, path=where)
    if raw and name == "no_gaps" and (partition is None or len(partition) != 1
                                      or partition[0].granularity not in ("day", "month",
                                                                          "year")):
        raise ConfigError("needs partition_by on one column, with granularity day, month or "
                          "year", table=table, key=key, path=where)
    return raw


def parse_duration(raw: Any) -> float | None:
    """Seconds in ``"90s"``, ``"30m"``, ``"2h"`` or ``"7d"`` (None if not a duration)."""
    if not isinstance(raw, str) or len(raw) < 2 or raw[-1] not in _DURATION_UNITS:
        return None
    try:
        amount = float(raw[:-1])
    except ValueError:
        return None
    if not math.isfinite(amount) or not 0 < amount <= _HIGH:
        return None
    return amount * _DURATION_UNITS[raw[-1]]


_HIGH = 2**40  # far beyond any sane setting, and safe for timedelta and SQL integers


def _staging_root(value: Any, key: str, where: str) -> str | None:
    """An fsspec URL for staging (``s3://bucket/lake``), or None for ``<root>/staging``."""
    if value is None:
        return None
    if not isinstance(value, str) or "://" not in value or value.startswith("file://"):
        raise ConfigError(f"must be an object store URL such as 's3://bucket/lake', got "
                          f"{value!r} (local staging always lives under the lake root)",
                          key=key, path=where)
    if url_scheme(value) not in OBJECT_STORE_SCHEMES:
        raise ConfigError(f"{value.split('://', 1)[0]}:// is not an object store Lake stages to; "
                          f"use one of {', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)}",
                          key=key, path=where)
    if not value.split("://", 1)[1].strip("/"):
        raise ConfigError(f"{value!r} is not a URL with a bucket or container", key=key,
                          path=where)
    return value.rstrip("/")


def _options(value: Any, where: str) -> MappingProxyType[str, Any]:
    """``[lake.staging_options]``: keyword arguments for the fsspec file system."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError("must be a table of fsspec options, e.g. { endpoint_url = \"...\" }",
                          key="lake.staging_options", path=where)
    return MappingProxyType(dict(value))


def with_staging_root(config: LakeConfig, url: str | None) -> LakeConfig:
    """``config`` with its staging root replaced (the CLI's ``--staging-root``).

    Raises:
        ConfigError: ``url`` is not an object store URL.
    """
    if url is None:
        return config
    root = _staging_root(url, "--staging-root", str(config.paths.config))
    return dataclasses.replace(config, settings=dataclasses.replace(config.settings,
                                                                    staging_root=root))


def _number(section: dict[str, Any], key: str, default: Any, where: str, *,
            integer: bool = False, low: float = 0, high: float = _HIGH) -> Any:
    value = section.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or not low <= value <= high:
        kind = "whole number" if integer else "number"
        raise ConfigError(f"must be a {kind} from {low:g} to {high:g}, got {value!r}",
                          key=f"lake.{key}", path=where)
    return value
