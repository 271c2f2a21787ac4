"""Validation: checking a run's rows against its table's contract.

A schema written with ``pandera.pandas`` is validated on a pandas DataFrame, one written with
``pandera.polars`` on a polars DataFrame (built from Arrow without a copy). Validation is lazy:
every failure is collected. Lake's own checks (key and partition columns present and not null,
keys unique within the run) run on Arrow first, without pandera.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.config import TableContract
from lakehouse.contracts import ResolvedSchema, describe_exception
from lakehouse.errors import FailureRecord
from lakehouse.partition_values import join_values

# pandera failure checks that concern the frame's shape, not single rows.
_SCHEMA_LEVEL_PREFIXES = ("dtype(", "column_in_schema", "column_in_dataframe", "coerce_dtype",
                          "column_ordered", "multiple_dtypes", "add_missing_columns")


# Below this many rows per chunk on average, a table is made contiguous before polars sees it.
_SMALL_CHUNK_ROWS = 10_000


# Example values kept per failed check (meta.asset_checks.examples_json).
MAX_EXAMPLES = 5


@dataclass
class CheckTally:
    """Every failure of one check on one column in one run: how many, a few examples, and
    the rows they are on (to tell whether they fall in one partition)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CheckSummary:
    """One failed check of a run, as one ``meta.asset_checks`` row."""

    check: str
    column: str | None
    failure_count: int
    examples: tuple[str, ...]
    partition_key: str | None  # set when every failure is in one partition


@dataclass
class ValidationOutcome:
    """What validation found in one run."""

    failures: list[FailureRecord] = field(default_factory=list)
    total_failures: int = 0
    schema_level: bool = False  # a failure that no row filter can fix
    invalid_rows: set[int] = field(default_factory=set)
    warnings: list[FailureRecord] = field(default_factory=list)  # checks that pass with notes
    duplicate_keys: int = 0
    tallies: dict[tuple[str, str | None], CheckTally] = field(default_factory=dict)
    summaries: list[CheckSummary] = field(default_factory=list)  # see summarize_checks

    @property
    def ok(self) -> bool:
        return self.total_failures == 0

    def add(self, record: FailureRecord, *, schema_level: bool = False) -> None:
        self.total_failures += 1
        tally = self.tallies.setdefault((record.check, record.column), CheckTally())
        tally.count += 1
        if len(tally.examples) < MAX_EXAMPLES and record.failure_case is not None:
            tally.examples.append(str(record.failure_case)[:200])
        if record.row is not None:
            tally.rows.append(record.row)
        if len(self.failures) < 1000:
            self.failures.append(record)
        if schema_level:
            self.schema_level = True
        elif record.row is not None:
            self.invalid_rows.add(record.row)


def check_run(table: pa.Table, contract: TableContract,
              resolved: ResolvedSchema | None) -> ValidationOutcome:
    """Validate one run's rows: Lake's own checks, then the pandera contract."""
    return check_runs([table], contract, resolved)[0]


def check_runs(tables: list[pa.Table], contract: TableContract,
               resolved: ResolvedSchema | None, *, group_unique: bool | None = None
               ) -> list[ValidationOutcome]:
    """Validate several runs of one schema; one outcome per run.

    With ``validation = "grouped"`` (the default) pandera sees the runs concatenated, once:
    its per-call cost (~5 ms for a polars schema) would otherwise dominate loads of many small
    runs. Row checks, nullability, dtypes and uniqueness that pass on the concatenation pass
    on every part, so a passing group is a pass for each run. When the group fails, every run
    is validated on its own, so failures are exact and attributed to their run.

    ``group_unique``: the caller already knows whether the group's keys repeat.
    """
    # One hash of the whole group's keys answers "no duplicates" for every run at once.
    if group_unique is None:
        group_unique = len(tables) > 1 and keys_unique(tables, contract.primary_key)
    outcomes = []
    for table in tables:
        outcome = ValidationOutcome()
        _check_keys_and_partition(table, contract, outcome, keys_known_unique=group_unique)
        outcomes.append(outcome)
    if resolved is None:
        return outcomes
    eligible = [i for i, o in enumerate(outcomes) if not o.schema_level]
    if contract.validation == "grouped" and len(eligible) > 1:
        group = ValidationOutcome()
        group_tables = [tables[i] for i in eligible]
        _check_pandera(pa.concat_tables(group_tables), resolved, group,
                       keys_checked=group_unique and _keys_present(group_tables, contract))
        if group.ok:
            return outcomes
    for i in eligible:
        # The run's own key check found no repeat (or the group's did): pandera's
        # uniqueness check on the key cannot fail.
        checked = ((group_unique or outcomes[i].duplicate_keys == 0)
                   and _keys_present([tables[i]], contract))
        _check_pandera(tables[i], resolved, outcomes[i], keys_checked=checked)
    return outcomes


def _keys_present(tables: list[pa.Table], contract: TableContract) -> bool:
    """True when every table has the key columns, without nulls (so ``keys_unique`` and
    ``duplicate_key_rows`` judged exactly the values pandera would compare)."""
    key = contract.primary_key
    return bool(key) and all(k in t.column_names and not t.column(k).null_count
                             for t in tables for k in key)


def _check_keys_and_partition(table: pa.Table, contract: TableContract,
                              outcome: ValidationOutcome, *, keys_known_unique: bool = False
                              ) -> None:
    names = set(table.column_names)
    required = list(contract.primary_key)
    required += [spec.column for spec in contract.partitions]
    for column in dict.fromkeys(required):
        if column not in names:
            outcome.add(FailureRecord("column_present", column), schema_level=True)
    if outcome.schema_level:
        return
    for column in dict.fromkeys(required):
        array = table.column(column)
        if array.null_count:
            check = "key_not_null" if column in contract.primary_key else "partition_not_null"
            rows = pc.indices_nonzero(pc.is_null(array)).to_pylist()
            for row in rows:
                outcome.add(FailureRecord(check, column, None, row))
    if contract.primary_key and table.num_rows and not keys_known_unique:
        dupes = duplicate_key_rows(table, contract.primary_key)
        outcome.duplicate_keys = len(dupes)
        if dupes and contract.merge == "upsert":
            # Upsert resolves in-run duplicates deterministically (the last row wins):
            # reported as a warning check, not a failure.
            outcome.warnings.append(FailureRecord(
                "key_unique_in_run", ",".join(contract.primary_key),
                f"{len(dupes)} rows share a key; the last row of each key wins", None))
        else:
            for row in dupes:
                outcome.add(FailureRecord("key_unique_in_run", ",".join(contract.primary_key),
                                          _key_text(table, contract.primary_key, row), row))


def keys_unique(tables: list[pa.Table], key: tuple[str, ...]) -> bool:
    """True when a single-column key never repeats across ``tables`` (False if unknown)."""
    if len(key) != 1 or not all(key[0] in t.column_names for t in tables):
        return False
    try:
        column = pa.chunked_array([c for t in tables for c in t.column(key[0]).chunks],
                                  type=tables[0].schema.field(key[0]).type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    total = sum(t.num_rows for t in tables)
    if total == 0:
        return False
    try:
        return strictly_increasing(column) or \
            pc.count_distinct(column, mode="all").as_py() == total
    except pa.ArrowNotImplementedError:  # a type without a distinct count (all-null): unknown
        return False


def strictly_increasing(column: pa.ChunkedArray | pa.Array) -> bool:
    """True when every value is greater than the one before (so none repeats), without nulls.

    Sequence keys usually arrive in order: one vectorised comparison (~1 ms per million
    rows) then answers "unique" without hashing every key (~60-90 ms per million).
    """
    if column.null_count:
        return False
    if len(column) < 2:
        return True
    try:
        greater = pc.greater(column[1:], column[:-1])
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return False  # a type without an order (a struct, say): hash it instead
    return pc.all(greater).as_py() is True


def duplicate_key_rows(table: pa.Table, key: tuple[str, ...]) -> list[int]:
    """Row numbers whose key occurs more than once in ``table`` (every occurrence)."""
    if len(key) == 1:
        # Fast paths: keys in increasing order, or a hash count of distinct values, answer
        # "no duplicates" without grouping.
        column = table.column(key[0])
        if strictly_increasing(column):
            return []
        distinct = pc.count_distinct(column, mode="all").as_py()
        if distinct == table.num_rows:
            return []
    keyed = table.select(list(key)).append_column(
        "__row", pa.array(range(table.num_rows), pa.int64()))
    counts = keyed.group_by(list(key)).aggregate([("__row", "count")])
    if counts.num_rows == table.num_rows:
        return []
    repeated = counts.filter(pc.greater(counts.column("__row_count"), 1)).select(list(key))
    hits = keyed.join(repeated, keys=list(key), join_type="inner")
    return sorted(hits.column("__row").to_pylist())


def _key_text(table: pa.Table, key: tuple[str, ...], row: int) -> str:
    return ",".join(str(table.column(k)[row].as_py()) for k in key)


def _check_pandera(table: pa.Table, resolved: ResolvedSchema, outcome: ValidationOutcome,
                   *, keys_checked: bool = False) -> None:
    """Validate with pandera; ``keys_checked``: Lake found the rows' keys unique and not null."""
    from pandera.errors import SchemaError, SchemaErrors

    schema = resolved.schema
    if keys_checked and resolved.keyed_schema is not None:
        schema = resolved.keyed_schema
    frame = _to_frame(table, resolved.backend)
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        _collect_failure_cases(exc.failure_cases, outcome)
    except SchemaError as exc:  # raised by some checks even under lazy=True
        outcome.add(FailureRecord(str(getattr(exc, "check", "schema")), None, str(exc)[:200]),
                    schema_level=True)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        # A check is user code: pandera records a check's Exception as a failure case, but
        # lets SystemExit and other BaseExceptions through, which ended `lake load` with
        # exit 0 having done nothing. The run fails validation, as with any raising check.
        outcome.add(FailureRecord("contract_raised", None, describe_exception(exc)),
                    schema_level=True)


def _to_frame(table: pa.Table, backend: str) -> Any:
    if backend == "polars":
        import polars as pl

        chunks = table.column(0).num_chunks if table.num_columns else 0
        if chunks > 1 and table.num_rows < chunks * _SMALL_CHUNK_ROWS:
            # pandera's polars checks pay per chunk: for a group of small runs one copy is
            # cheaper (2,000 runs of 100 rows: 60 ms in chunks, 20 ms contiguous).
            table = table.combine_chunks()
        return pl.from_arrow(table, rechunk=False)
    # Keep Arrow's time units (no nanosecond coercion: far-future timestamps would overflow).
    return table.to_pandas(coerce_temporal_nanoseconds=False)


def _collect_failure_cases(cases: Any, outcome: ValidationOutcome) -> None:
    if hasattr(cases, "to_dicts"):  # polars
        records = cases.to_dicts()
    else:  # pandas
        records = cases.to_dict("records")
    for rec in records:
        check = str(rec.get("check"))
        index = rec.get("index")
        row = None if index is None or index != index else int(index)  # NaN != NaN
        schema_level = row is None or check.startswith(_SCHEMA_LEVEL_PREFIXES)
        column = rec.get("column")
        outcome.add(FailureRecord(check, None if column is None else str(column),
                                  rec.get("failure_case"), None if schema_level else row),
                    schema_level=schema_level)


def summarize_checks(outcome: ValidationOutcome, table: pa.Table,
                     contract: TableContract) -> list[CheckSummary]:
    """One summary per failed (check, column) of a run, with its partition when every
    failure is on a row and those rows fall in one partition."""
    summaries = []
    for (check, column), tally in outcome.tallies.items():
        partition = None
        if tally.rows and len(tally.rows) == tally.count:
            partition = single_partition(table, contract, tally.rows)
        summaries.append(CheckSummary(check, column, tally.count, tuple(tally.examples),
                                      partition))
    return summaries


_PARTITION_FORMATS = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}


def single_partition(table: pa.Table, contract: TableContract, rows: list[int]) -> str | None:
    """The partition text (as the merge writes it) shared by ``rows``, or None when they
    span several partitions or it cannot be told (a null or missing partition column)."""
    specs = contract.partitions
    if not specs or any(s.column not in table.column_names for s in specs):
        return None
    texts = []
    for spec in specs:
        try:
            values = table.column(spec.column).take(pa.array(rows, pa.int64()))
            if values.null_count:
                return None
            if spec.granularity in _PARTITION_FORMATS:
                if pa.types.is_timestamp(values.type) and values.type.tz is not None:
                    values = values.cast(pa.timestamp(values.type.unit))  # UTC wall time
                values = pc.strftime(values, format=_PARTITION_FORMATS[spec.granularity])
            distinct = pc.unique(values)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, IndexError):
            return None
        if len(distinct) != 1:
            return None
        texts.append(str(distinct[0].as_py()))
    return join_values([s.column for s in specs], texts)
