"""A pure-Python reference model of what the warehouse holds after a sequence of runs and loads.

The model knows nothing of Lake's code: it applies the load semantics of ``docs/LOADING.md``
and ``docs/CONTRACTS.md`` one run at a time, in run-id order, to plain Python lists. The
property tests in ``test_model.py`` stage the same runs with the real producer API, load them
with the real loader (in one load, or one load per run, with small batches) and compare the
warehouse, the ledger and the run folders with :func:`simulate`.

Batches are not part of the model: a load that merges many runs in batches must end where
loading the same runs one at a time ends (batching saves transactions, it changes no result;
``tests/test_merge.py`` asserts the same for its hand-written cases). Nor is the validation
mode: ``validation = "per_run"`` and the default grouped validation give the same result for
row checks (CONTRACTS.md); a contract with a dataframe-wide check (``frame_check``) must use
``per_run``, and the model judges that check on one run's rows at a time.

Loads matter only through ``on_invalid = "abort"`` (LOADING.md section 6): a load processes
the runs still in staging in run-id order, and an abort is per table. When a run of an
``abort`` table fails validation, that table's load stops there: the run and every later run
of the table stay in staging untouched, with no ledger row (even a run that would be
quarantined or skipped without validation); the table's earlier runs keep what the load did;
the other tables load as usual; and the load reports the stop (``LoadAbortedError`` naming
the run, exit 3). The next load meets that run again.

What a run goes through, in this order (the first rule that applies decides):

1. no rows -> quarantined ``empty_run``;
2. its idempotency key was loaded before for its table -> skipped ``duplicate_key``;
3. repeated content (per file, by checksum): ``append`` drops every file whose content was
   loaded before (by another run); a run made only of such files is skipped
   ``duplicate_content``. ``upsert`` and ``replace_partition`` merge such files again and
   record the warning check ``content_not_repeated``. Two equal files of one run are not
   repeats of each other;
4. validation, on the rows left: a null key or partition value, a key repeated within the run
   (not for ``upsert``, where the last row of a key wins) or a row the contract's row check
   refuses makes the row invalid; a dataframe-wide check that fails fails the whole run.
   ``quarantine``: the run is quarantined ``contract_violation`` (every row rejected);
   ``drop_rows``: the invalid rows are dropped, and a run left with no rows, or failing a
   dataframe-wide check (no row filter fixes it), is quarantined; ``abort``: the table's
   load stops (see above);
5. schema, once the table exists: a column of the table missing from the run, a type that
   does not load losslessly, or a new column under ``freeze`` -> quarantined
   ``schema_change`` (whatever ``on_invalid`` says); under ``add_columns`` new columns are
   added (older rows read NULL);
6. ``append`` with a primary key: rows whose key is already in the table are a
   ``key_conflict`` (quarantined; only those rows dropped under ``drop_rows`` unless no
   row is left; under ``abort`` the table's load stops);
7. merge: ``append`` inserts; ``upsert`` replaces rows by key (last row of a key in the run,
   files in manifest order, wins); ``replace_partition`` replaces every partition the run's
   loaded rows touch with those rows.

Repartition (``lake repartition``, docs/OPERATIONS.md): a table keeps the spec it was built
with (partition column and granularity, key, merge). When the spec changes, loads refuse the
table (its runs stay in staging, untouched) until it is repartitioned; :func:`repartition`
then gives every row the partition the new spec computes, keeps every row and its run, and
refuses (changing nothing) when a row has no value in the new partition column or, for a
keyed merge, when the new key is null or not unique. Runs loaded after it merge under the new
spec.

"Loaded before" means by a run the ledger records as loaded: a run that was skipped,
quarantined or left in staging contributes no key, no content and no row. A loaded run's
files all count as loaded content (also files whose rows were all dropped).
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
    # Further partition columns nested under the first: ((column, granularity), ...).
    then_by: tuple[tuple[str, str], ...] = ()
    on_invalid: str = "quarantine"  # quarantine | drop_rows | abort
    schema_evolution: str = "freeze"  # freeze | add_columns
    row_check: Callable[[Row], bool] | None = None  # the pandera contract's row checks
    # A dataframe-wide check of the contract (sees every row of one run); needs per_run.
    frame_check: Callable[[list[Row]], bool] | None = None
    validation: str = "grouped"  # grouped | per_run: no effect on the result

    def __post_init__(self) -> None:
        assert self.frame_check is None or self.validation == "per_run", \
            "CONTRACTS.md: dataframe-wide checks that aggregate over rows need per_run"

    @property
    def partition_columns(self) -> list[str]:
        """Every partition column, outermost first."""
        if self.partition_column is None:
            return []
        return [self.partition_column, *(c for c, _ in self.then_by)]

    def partition_value(self, row: Row) -> str | None:
        """The ``_lake_partition`` text of a valid row: one column's text, or for several
        ``a=<text>/b=<text>`` with each text's ``%`` and ``/`` escaped (CONTRACTS.md)."""
        if self.partition_column is None:
            return None
        specs = [(self.partition_column, self.granularity), *self.then_by]
        texts = [partition_value(row[c], g) for c, g in specs]
        if len(texts) == 1:
            return texts[0]
        return "/".join(f"{c}={t.replace('%', '%25').replace('/', '%2F')}"
                        for (c, _), t in zip(specs, texts, strict=True))


@dataclass(frozen=True)
class StagedRun:
    """One committed producer run: its columns, its files' rows and its idempotency key.

    ``columns`` are ``(name, arrow type text)`` in file order; ``files`` holds each Parquet
    file's rows (in manifest order), each row a tuple aligned with ``columns``. Two files
    with equal :meth:`file_contents` are staged as byte-identical files.
    """

    table: str
    columns: tuple[tuple[str, str], ...]
    files: tuple[tuple[tuple[Any, ...], ...], ...]
    key: str | None = None

    @property
    def rows(self) -> tuple[tuple[Any, ...], ...]:
        """Every row of the run, files in manifest order."""
        return tuple(r for f in self.files for r in f)

    def file_contents(self) -> list[tuple[Any, ...]]:
        """What decides each staged file's bytes (and so its checksum)."""
        return [(self.columns, f) for f in self.files]

    def dicts(self, files: Sequence[int] | None = None) -> list[Row]:
        """The rows of ``files`` (default: all) as ``{column: value}``."""
        names = [n for n, _ in self.columns]
        chosen = range(len(self.files)) if files is None else files
        return [dict(zip(names, r, strict=True)) for i in chosen for r in self.files[i]]


def one_file_run(table: str, columns: tuple[tuple[str, str], ...],
                 rows: tuple[tuple[Any, ...], ...], key: str | None = None) -> StagedRun:
    """A run of one file (what ``staging.stage`` writes)."""
    return StagedRun(table, columns, (rows,), key)


@dataclass(frozen=True)
class Outcome:
    """What the ledger says about one run."""

    status: str
    reason_code: str | None = None
    rows_loaded: int = 0
    rows_rejected: int = 0  # loaded: rows dropped (drop_rows); quarantined: every row
    repeat_warning: bool = False  # a ``content_not_repeated`` warning check was recorded
    repeated_files: int = 0  # loaded: files whose content was loaded before (dropped: append)


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
    """The expected lake after the loads.

    ``outcomes``: one per run (input order), ``None`` for a run still in staging.
    ``aborts``: per load, the runs its tables stopped at (empty: it finished), with why
    (``contract_violation`` or ``key_conflict``).
    """

    tables: dict[str, TableState]
    outcomes: list[Outcome | None]
    aborts: list[list[tuple[int, str]]]

    @property
    def staged(self) -> list[int]:
        """The runs left in staging (after an abort), in run-id order."""
        return [i for i, o in enumerate(self.outcomes) if o is None]


class _Abort(Exception):
    """The run fails validation in an ``abort`` table: its table's load stops at it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # contract_violation | key_conflict


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


def simulate(specs: Mapping[str, TableSpec], runs: Sequence[StagedRun],
             load_after: Sequence[bool] | None = None, extra_loads: int = 0) -> ModelResult:
    """Stage ``runs`` (already in run-id order) into an empty lake, loading after each run
    whose ``load_after`` flag is set (default: one load after the last run), then
    ``extra_loads`` more loads; return the expected state."""
    if load_after is None:
        load_after = [i == len(runs) - 1 for i in range(len(runs))]
    tables = {name: TableState(spec) for name, spec in specs.items()}
    outcomes: list[Outcome | None] = [None] * len(runs)
    aborts: list[list[tuple[int, str]]] = []

    def load(staged: int) -> None:
        stops: list[tuple[int, str]] = []
        stopped: set[str] = set()
        for index in range(staged):
            table = runs[index].table
            if outcomes[index] is not None or table in stopped:
                continue  # in the ledger already, or behind an abort of its table
            try:
                outcomes[index] = _apply(tables[table], runs[index], index)
            except _Abort as stop:
                stops.append((index, stop.reason))
                stopped.add(table)  # this run and the table's later runs stay in staging
        aborts.append(stops)

    for index, load_now in enumerate(load_after):
        if load_now:
            load(index + 1)
    for _ in range(extra_loads):
        load(len(runs))
    return ModelResult(tables, outcomes, aborts)


def _apply(state: TableState, run: StagedRun, index: int) -> Outcome:
    """The outcome of one run; raises :class:`_Abort` before changing anything."""
    spec = state.spec
    total = len(run.rows)
    early = judged_before_validation(state, run)
    if early is not None:
        return early
    contents = run.file_contents()
    repeated = [c in state.loaded_contents for c in contents]
    kept_files = list(range(len(run.files)))
    if spec.merge == "append":
        kept_files = [i for i in kept_files if not repeated[i]]
    rows = run.dicts(kept_files)
    quarantined = Outcome(STATUS_QUARANTINED, "contract_violation", 0, total)

    invalid = _invalid_rows(spec, rows)
    frame_ok = spec.frame_check is None or spec.frame_check(rows)
    if invalid or not frame_ok:
        if spec.on_invalid == "abort":
            raise _Abort("contract_violation")
        if spec.on_invalid != "drop_rows" or not frame_ok or len(invalid) == len(rows):
            return quarantined
        rows = [r for i, r in enumerate(rows) if i not in invalid]
    dropped = len(invalid)

    run_types = {name: duckdb_type(t) for name, t in run.columns}
    if state.exists:
        missing = [c for c in state.columns if c not in run_types]
        conflicts = [c for c, t in run_types.items()
                     if c in state.columns and not compatible(t, state.columns[c])]
        new = [c for c in run_types if c not in state.columns]
        if missing or conflicts or (new and spec.schema_evolution != "add_columns"):
            return Outcome(STATUS_QUARANTINED, "schema_change", 0, total)

    if spec.merge == "append" and spec.primary_key:
        present = {_key(spec, r) for r in state.rows}
        conflicting = [r for r in rows if _key(spec, r) in present]
        if conflicting:
            if spec.on_invalid == "abort":
                raise _Abort("key_conflict")
            if spec.on_invalid != "drop_rows" or len(conflicting) == len(rows):
                return Outcome(STATUS_QUARANTINED, "key_conflict", 0, total)
            rows = [r for r in rows if _key(spec, r) not in present]
            dropped += len(conflicting)

    _merge(state, rows, run_types, index)
    if run.key is not None:
        state.loaded_keys.add(run.key)
    state.loaded_contents.update(contents)
    return Outcome(STATUS_LOADED, None, len(rows), dropped,
                   repeat_warning=spec.merge != "append" and any(repeated),
                   repeated_files=sum(repeated))


def judged_before_validation(state: TableState, run: StagedRun) -> Outcome | None:
    """Rules 1-3: the outcome of a run that is empty or a repeat, or None (it is validated)."""
    if not run.rows:
        return Outcome(STATUS_QUARANTINED, "empty_run")
    if run.key is not None and run.key in state.loaded_keys:
        return Outcome(STATUS_SKIPPED, "duplicate_key")
    if state.spec.merge == "append" and all(
            c in state.loaded_contents for c in run.file_contents()):
        return Outcome(STATUS_SKIPPED, "duplicate_content")
    return None


def _invalid_rows(spec: TableSpec, rows: list[Row]) -> set[int]:
    """Row numbers that fail Lake's own checks or the contract's row check."""
    required = [*spec.primary_key, *spec.partition_columns]
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


def _merge(state: TableState, rows: list[Row], run_types: dict[str, str], index: int) -> None:
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


def repartition_rows(spec: TableSpec, rows: list[Row]) -> list[Row]:
    """``rows`` with the ``_lake_partition`` ``spec`` gives them (every other value kept)."""
    return [{**r, PARTITION_COLUMN: spec.partition_value(r)} for r in rows]


class RepartitionRefused(Exception):
    """The table's rows do not fit the new spec; nothing changed."""


def repartition(state: TableState, spec: TableSpec) -> TableState:
    """The table after ``lake repartition`` under ``spec``; raises :class:`RepartitionRefused`
    when its rows do not fit it (the table keeps its old spec and rows)."""
    old = state.spec
    if spec.partition_column is not None and (old.partition_column, old.granularity) != (
            spec.partition_column, spec.granularity):
        if any(r.get(spec.partition_column) is None for r in state.rows):
            raise RepartitionRefused("a row has no partition value")
    if spec.primary_key and spec.merge in ("append", "upsert") and (
            spec.primary_key, spec.merge) != (old.primary_key, old.merge):
        keys = [_key(spec, r) for r in state.rows]
        if any(v is None for k in keys for v in k) or len(set(keys)) != len(keys):
            raise RepartitionRefused("the new key is null or repeated")
    return TableState(spec, dict(state.columns), repartition_rows(spec, state.rows),
                      set(state.loaded_keys), set(state.loaded_contents))


def _key(spec: TableSpec, row: Row) -> tuple[Any, ...]:
    return tuple(row[c] for c in spec.primary_key)


# -- the run log (meta.ingestion_runs; docs/OPERATIONS.md "The run log", "Killed runs") -----
# Which `lake` command records a run, under which job name. Read-only commands (query, audit,
# health, quarantine list) and every --dry-run record none.
RUN_LOG_JOBS = {"load": "load", "compact": "compact", "cleanup": "cleanup", "export": "export",
                "quarantine replay": "quarantine_replay", "repartition": "repartition"}
ANY_ERROR = "*"  # a failed row with any error_type but "killed"
NO_ROW = None


@dataclass(frozen=True)
class JobCall:
    """One `lake` command as it ended: its exit code, or None when it was SIGKILLed."""

    command: str  # "load", "compact", "quarantine replay", "audit", ...
    exit_code: int | None
    dry_run: bool = False


RowState = tuple[str, str | None] | None  # (status, error_type), or NO_ROW


def run_log_rows(call: JobCall) -> frozenset[RowState]:
    """What the run log may hold for ``call`` once a later job took the lock: NO_ROW, or the
    one row's (status, error_type). Never ``started``: a later job closes a dead one.

    - no writing job, or a dry run: no row;
    - exit 0: a success row;
    - exit 3 (load): success (runs were quarantined), or failed (an ``abort`` table stopped);
    - exit 75: no row (busy: the lock was never taken), or failed ``StopRequestedError``
      (a signal stopped it at a safe point after its run started);
    - exit 1 or 2: no row (it failed before its run started) or a failed row; a load that
      refused a table whose spec changed (exit 2) loaded the others: a success row too;
    - SIGKILL: no row (before the run started), a success row (after it closed, while
      publishing), or failed ``killed`` (closed by the next job).
    """
    if call.command not in RUN_LOG_JOBS or call.dry_run:
        return frozenset({NO_ROW})
    if call.exit_code is None:
        return frozenset({NO_ROW, ("success", None), ("failed", "killed")})
    if call.exit_code == 0:
        return frozenset({("success", None)})
    if call.exit_code == 3:
        return frozenset({("success", None), ("failed", ANY_ERROR)})
    if call.exit_code == 75:
        return frozenset({NO_ROW, ("failed", "StopRequestedError")})
    if call.exit_code == 2 and call.command == "load":
        return frozenset({NO_ROW, ("success", None), ("failed", ANY_ERROR)})
    return frozenset({NO_ROW, ("failed", ANY_ERROR)})


def row_state_allowed(state: RowState, allowed: frozenset[RowState]) -> bool:
    """``state`` (as read) is one of ``allowed`` (ANY_ERROR matches any error but killed)."""
    if state in allowed:
        return True
    return (state is not None and state[0] == "failed" and state[1] != "killed"
            and ("failed", ANY_ERROR) in allowed)


__all__ = ["ANY_ERROR", "NO_ROW", "PARTITION_COLUMN", "RUN_KEY", "RUN_LOG_JOBS",
           "STATUS_LOADED", "STATUS_QUARANTINED", "STATUS_SKIPPED", "JobCall", "ModelResult",
           "Outcome", "RepartitionRefused", "RowState", "StagedRun", "TableSpec", "TableState",
           "compatible", "duckdb_type", "judged_before_validation", "one_file_run",
           "partition_value", "repartition", "repartition_rows", "row_state_allowed",
           "run_log_rows", "simulate"]
