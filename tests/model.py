"""A pure-Python reference model of what the warehouse holds after a sequence of runs.

The model knows nothing of Lake's code: it applies the load semantics of ``docs/LOADING.md``
and ``docs/CONTRACTS.md`` one run at a time, in run-id order, to plain Python lists. The
property tests in ``test_model.py`` stage the same runs with the real producer API, load them
with the real loader (in one load, or one load per run, with small batches) and compare the
warehouse and the ledger with :func:`simulate`.

Batches are not part of the model: a load that merges many runs in batches must end where
loading the same runs one at a time ends (batching saves transactions, it changes no result;
``tests/test_merge.py`` asserts the same for its hand-written cases). Each run is one file, so
"every file of the run repeats loaded content" is "the run's content was loaded before".

What a run goes through, in this order (the first rule that applies decides):

1. no rows -> quarantined ``empty_run``;
2. its idempotency key was loaded before for its table -> skipped ``duplicate_key``;
3. ``append`` only: its content (its one file) was loaded before -> skipped
   ``duplicate_content``;
4. validation: a null key or partition value, a key repeated within the run (not for
   ``upsert``, where the last row of a key wins) or a row the table's row check refuses makes
   the row invalid. ``quarantine``: the run is quarantined ``contract_violation``;
   ``drop_rows``: the invalid rows are dropped, and a run left with no rows is quarantined;
5. schema, once the table exists: a column of the table missing from the run, a type that
   does not load losslessly, or a new column under ``freeze`` -> quarantined
   ``schema_change``; under ``add_columns`` new columns are added (older rows read NULL);
6. ``append`` with a primary key: rows whose key is already in the table are a
   ``key_conflict`` (quarantined, or only those rows dropped under ``drop_rows`` unless no
   row is left);
7. merge: ``append`` inserts; ``upsert`` replaces rows by key (last row of a key in the run
   wins); ``replace_partition`` replaces every partition the run touches with its rows.

"Loaded before" means by a run the ledger records as loaded: a run that was skipped or
quarantined contributes no key, no content and no row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

PARTITION_COLUMN = "_lake_partition"

STATUS_LOADED = "loaded"
STATUS_SKIPPED = "skipped"
STATUS_QUARANTINED = "quarantined"

_FORMATS = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}

# DuckDB's types for the Arrow types the tests stage (``str(pyarrow type)`` -> DuckDB type).
_DUCKDB_TYPES = {
    "int8": "TINYINT", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT",
    "float": "FLOAT", "double": "DOUBLE", "string": "VARCHAR", "large_string": "VARCHAR",
    "bool": "BOOLEAN", "date32[day]": "DATE",
}
_INT_RANK = {"TINYINT": 1, "SMALLINT": 2, "INTEGER": 3, "BIGINT": 4}

Row = dict[str, Any]


@dataclass(frozen=True)
class TableSpec:
    """The parts of a ``[tables.<name>]`` contract that decide what the table holds."""

    name: str
    merge: str = "append"  # append | upsert | replace_partition
    primary_key: tuple[str, ...] = ()
    partition_column: str | None = None
    granularity: str = "identity"  # identity | day | month | year
    on_invalid: str = "quarantine"  # quarantine | drop_rows
    schema_evolution: str = "freeze"  # freeze | add_columns
    row_check: Callable[[Row], bool] | None = None  # the pandera contract's row checks

    def partition_value(self, row: Row) -> str | None:
        """The ``_lake_partition`` text of a valid row."""
        if self.partition_column is None:
            return None
        return partition_value(row[self.partition_column], self.granularity)


@dataclass(frozen=True)
class StagedRun:
    """One committed producer run of one Parquet file: its columns, rows and idempotency key.

    ``columns`` are ``(name, arrow type text)`` in file order; each row is a tuple aligned
    with them. Two runs with equal ``content`` are staged as byte-identical files.
    """

    table: str
    columns: tuple[tuple[str, str], ...]
    rows: tuple[tuple[Any, ...], ...]
    key: str | None = None

    @property
    def content(self) -> tuple[Any, ...]:
        """What decides the staged file's bytes (and so its checksum)."""
        return (self.columns, self.rows)

    def dicts(self) -> list[Row]:
        """The rows as ``{column: value}``."""
        names = [n for n, _ in self.columns]
        return [dict(zip(names, r, strict=True)) for r in self.rows]


@dataclass(frozen=True)
class Outcome:
    """What the ledger says about one run."""

    status: str
    reason_code: str | None = None
    rows_loaded: int = 0
    rows_rejected: int = 0  # loaded: rows dropped (drop_rows); quarantined: every row


@dataclass
class TableState:
    """One warehouse table: its columns (DuckDB types) and rows.

    Each row holds every table column, ``_lake_partition``, and under ``RUN_KEY`` the index
    of the run that wrote it (the model's ``_lake_run_id``).
    """

    spec: TableSpec
    columns: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    loaded_keys: set[str] = field(default_factory=set)
    loaded_contents: set[tuple[Any, ...]] = field(default_factory=set)

    @property
    def exists(self) -> bool:
        return bool(self.columns)


RUN_KEY = "_model_run"


@dataclass
class ModelResult:
    """The expected warehouse: every table's state and one outcome per run (input order)."""

    tables: dict[str, TableState]
    outcomes: list[Outcome]


def duckdb_type(arrow_type: str) -> str:
    """DuckDB's column type for an Arrow type (only the types the tests stage)."""
    if arrow_type.startswith("timestamp["):
        return "TIMESTAMP WITH TIME ZONE" if "tz=" in arrow_type else "TIMESTAMP"
    return _DUCKDB_TYPES[arrow_type]


def compatible(run_type: str, table_type: str) -> bool:
    """True when a run column loads into a table column (CONTRACTS.md: narrower integers,
    FLOAT into DOUBLE, another unit of a naive timestamp)."""
    if run_type == table_type:
        return True
    if run_type in _INT_RANK and table_type in _INT_RANK:
        return _INT_RANK[run_type] <= _INT_RANK[table_type]
    return run_type == "FLOAT" and table_type == "DOUBLE"


def partition_value(value: Any, granularity: str) -> str:
    """``YYYY-MM-DD`` / ``YYYY-MM`` / ``YYYY`` of a date or timestamp (aware ones in UTC), or
    the value as text for ``identity``."""
    if granularity == "identity":
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.astimezone(UTC)
    assert isinstance(value, date), f"{granularity} partitions need a date, got {value!r}"
    return value.strftime(_FORMATS[granularity])


def simulate(specs: Mapping[str, TableSpec], runs: Sequence[StagedRun]) -> ModelResult:
    """Apply ``runs`` (already in run-id order) to empty tables; return the expected state."""
    tables = {name: TableState(spec) for name, spec in specs.items()}
    outcomes = [_apply(tables[run.table], run, index) for index, run in enumerate(runs)]
    return ModelResult(tables, outcomes)


def _apply(state: TableState, run: StagedRun, index: int) -> Outcome:
    spec = state.spec
    rows = run.dicts()
    staged = len(rows)
    if not rows:
        return Outcome(STATUS_QUARANTINED, "empty_run")
    if run.key is not None and run.key in state.loaded_keys:
        return Outcome(STATUS_SKIPPED, "duplicate_key")
    if spec.merge == "append" and run.content in state.loaded_contents:
        return Outcome(STATUS_SKIPPED, "duplicate_content")

    invalid = _invalid_rows(spec, rows)
    if invalid:
        if spec.on_invalid != "drop_rows" or len(invalid) == len(rows):
            return Outcome(STATUS_QUARANTINED, "contract_violation", 0, staged)
        rows = [r for i, r in enumerate(rows) if i not in invalid]

    run_types = {name: duckdb_type(t) for name, t in run.columns}
    if state.exists:
        missing = [c for c in state.columns if c not in run_types]
        conflicts = [c for c, t in run_types.items()
                     if c in state.columns and not compatible(t, state.columns[c])]
        new = [c for c in run_types if c not in state.columns]
        if missing or conflicts or (new and spec.schema_evolution != "add_columns"):
            return Outcome(STATUS_QUARANTINED, "schema_change", 0, staged)

    if spec.merge == "append" and spec.primary_key:
        present = {_key(spec, r) for r in state.rows}
        conflicting = [r for r in rows if _key(spec, r) in present]
        if conflicting:
            if spec.on_invalid != "drop_rows" or len(conflicting) == len(rows):
                return Outcome(STATUS_QUARANTINED, "key_conflict", 0, staged)
            rows = [r for r in rows if _key(spec, r) not in present]

    _merge(state, run, rows, run_types, index)
    if run.key is not None:
        state.loaded_keys.add(run.key)
    state.loaded_contents.add(run.content)
    return Outcome(STATUS_LOADED, None, len(rows), staged - len(rows))


def _invalid_rows(spec: TableSpec, rows: list[Row]) -> set[int]:
    """Row numbers that fail Lake's own checks or the contract's row check."""
    required = [*spec.primary_key]
    if spec.partition_column is not None:
        required.append(spec.partition_column)
    invalid = {i for i, r in enumerate(rows) if any(r[c] is None for c in required)}
    if spec.primary_key and spec.merge != "upsert":
        # Every occurrence of a repeated key is invalid (a null key counts as a value here,
        # but such rows are invalid anyway).
        counts: dict[tuple[Any, ...], int] = {}
        for r in rows:
            counts[_key(spec, r)] = counts.get(_key(spec, r), 0) + 1
        invalid |= {i for i, r in enumerate(rows) if counts[_key(spec, r)] > 1}
    if spec.row_check is not None:
        invalid |= {i for i, r in enumerate(rows) if not spec.row_check(r)}
    return invalid


def _merge(state: TableState, run: StagedRun, rows: list[Row], run_types: dict[str, str],
           index: int) -> None:
    spec = state.spec
    if not state.exists:
        state.columns = dict(run_types)
    for name, type_text in run_types.items():
        if name not in state.columns:  # add_columns: older rows read NULL
            state.columns[name] = type_text
            for r in state.rows:
                r[name] = None
    new_rows = [{**{c: r.get(c) for c in state.columns},
                 PARTITION_COLUMN: spec.partition_value(r), RUN_KEY: index} for r in rows]
    if spec.merge == "upsert":
        last: dict[tuple[Any, ...], Row] = {}
        for r in new_rows:
            last[_key(spec, r)] = r  # the last row of a key in the run wins
        state.rows = [r for r in state.rows if _key(spec, r) not in last]
        new_rows = list(last.values())
    elif spec.merge == "replace_partition":
        touched = {r[PARTITION_COLUMN] for r in new_rows}
        state.rows = [r for r in state.rows if r[PARTITION_COLUMN] not in touched]
    state.rows.extend(new_rows)


def _key(spec: TableSpec, row: Row) -> tuple[Any, ...]:
    return tuple(row[c] for c in spec.primary_key)


__all__ = ["PARTITION_COLUMN", "RUN_KEY", "STATUS_LOADED", "STATUS_QUARANTINED",
           "STATUS_SKIPPED", "ModelResult", "Outcome", "StagedRun", "TableSpec", "TableState",
           "compatible", "duckdb_type", "partition_value", "simulate"]
