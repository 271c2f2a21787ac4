"""Table contracts: resolve a table's pandera schema and validate a run against it.

A schema written with ``pandera.pandas`` is validated on a pandas DataFrame, one written with
``pandera.polars`` on a polars DataFrame (built from Arrow without a copy). Validation is lazy:
every failure is collected. Lake's own checks (key and partition columns present and not null,
keys unique within the run) run on Arrow first, without pandera.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.config import LakeConfig, TableContract
from lakehouse.errors import ConfigError, FailureRecord

# pandera failure checks that concern the frame's shape, not single rows.
_SCHEMA_LEVEL_PREFIXES = ("dtype(", "column_in_schema", "column_in_dataframe", "coerce_dtype",
                          "column_ordered", "multiple_dtypes", "add_missing_columns")


# Below this many rows per chunk on average, a table is made contiguous before polars sees it.
_SMALL_CHUNK_ROWS = 10_000


@dataclass(frozen=True)
class ResolvedSchema:
    """A loaded pandera schema and the backend that validates it.

    ``keyed_schema`` is the same schema without the uniqueness checks that a unique primary
    key implies (``None`` when it has none): used for rows whose keys Lake already found
    unique, where those checks cannot fail and would only hash every key again.
    """

    schema: Any
    backend: str  # "pandas" | "polars"
    keyed_schema: Any = None


@dataclass
class ValidationOutcome:
    """What validation found in one run."""

    failures: list[FailureRecord] = field(default_factory=list)
    total_failures: int = 0
    schema_level: bool = False  # a failure that no row filter can fix
    invalid_rows: set[int] = field(default_factory=set)
    warnings: list[FailureRecord] = field(default_factory=list)  # checks that pass with notes
    duplicate_keys: int = 0

    @property
    def ok(self) -> bool:
        return self.total_failures == 0

    def add(self, record: FailureRecord, *, schema_level: bool = False) -> None:
        self.total_failures += 1
        if len(self.failures) < 1000:
            self.failures.append(record)
        if schema_level:
            self.schema_level = True
        elif record.row is not None:
            self.invalid_rows.add(record.row)


class SchemaRegistry:
    """Loads each table's pandera schema once per registry (modules once per process)."""

    def __init__(self, config: LakeConfig) -> None:
        self.config = config
        self._cache: dict[str, ResolvedSchema | None] = {}

    def load_all(self) -> None:
        """Resolve every table's schema now, so a broken contract fails every load (exit 2),
        not only the load that meets a run of that table."""
        for contract in self.config.tables.values():
            self.get(contract)

    def get(self, contract: TableContract) -> ResolvedSchema | None:
        """Return the table's schema, or ``None`` when the contract names none.

        Raises:
            ConfigError: the schema cannot be imported or is not a pandera schema.
        """
        if contract.name not in self._cache:
            self._cache[contract.name] = resolve_schema(self.config, contract)
        return self._cache[contract.name]


def resolve_schema(config: LakeConfig, contract: TableContract) -> ResolvedSchema | None:
    """Import the pandera schema named by a contract.

    Raises:
        ConfigError: the schema cannot be loaded, is not a pandera schema, or cannot
            accept the table's key or partition column.
    """
    if contract.schema_file:
        return _schema_from_file(config, contract)
    if not contract.schema:
        return None
    module_name, _, attr = contract.schema.partition(":")
    try:
        module = import_contract_module(config, module_name)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return _as_resolved(obj, contract, config)
    except ConfigError:
        raise
    except KeyboardInterrupt:  # the operator's Ctrl-C stays a Ctrl-C
        raise
    except BaseException as exc:  # user code may raise anything, SystemExit included
        # (A signal cannot land here as SystemExit: `lake load` resolves contracts under
        # loader/cli.py's _stop_on_signals, whose handler only sets a flag.)
        raise ConfigError(
            f"cannot load {contract.schema!r}: module {module_name!r} raised "
            f"{_describe_exception(exc)} while loading; fix the module so that importing it "
            "only defines the schema",
            table=contract.name, key="schema", path=str(config.paths.config)) from None


def _describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line, short enough for an error line."""
    text = " ".join(str(exc).split())
    if isinstance(exc, SystemExit):
        text = f"exit code {exc.code!r}"
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _schema_from_file(config: LakeConfig, contract: TableContract) -> ResolvedSchema:
    from pandera.io import pandas_io  # pandera >= 0.35 keeps the (de)serializers here

    path = Path(contract.schema_file or "")
    if not path.is_absolute():
        path = config.root / path
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            schema = pandas_io.from_json(text)
        else:
            schema = pandas_io.from_yaml(text)
    except Exception as exc:
        raise ConfigError(f"cannot read pandera schema {str(path)!r}: {exc}",
                          table=contract.name, key="schema_file",
                          path=str(config.paths.config)) from None
    return _as_resolved(schema, contract, config)


def _as_resolved(obj: Any, contract: TableContract, config: LakeConfig) -> ResolvedSchema:
    if isinstance(obj, type) and hasattr(obj, "to_schema"):
        obj = obj.to_schema()  # a DataFrameModel class
    module = type(obj).__module__
    if module.startswith("pandera.api.polars"):
        _check_lake_columns(obj, contract, config)
        return ResolvedSchema(obj, "polars", without_key_uniqueness(obj, contract.primary_key))
    if module.startswith("pandera.api.pandas"):
        _check_lake_columns(obj, contract, config)
        return ResolvedSchema(obj, "pandas", without_key_uniqueness(obj, contract.primary_key))
    raise ConfigError(
        f"{contract.schema or contract.schema_file!r} is a {type(obj).__name__}, not a pandera "
        "DataFrameSchema or DataFrameModel (pandas or polars API)",
        table=contract.name, key="schema" if contract.schema else "schema_file",
        path=str(config.paths.config),
    )


def _check_lake_columns(schema: Any, contract: TableContract, config: LakeConfig) -> None:
    """Refuse a contract that can never accept the table's key or partition column.

    Every run must hold those columns (Lake checks that first), so a ``strict = True``
    schema that does not declare one would quarantine every run: that is a mistake in the
    configuration, reported before any run moves. A schema that is not strict (or is
    ``strict = "filter"``) accepts columns it does not declare, and a regex column may
    match the name; both are fine.

    Raises:
        ConfigError: naming the table, the key at fault and the column.
    """
    if getattr(schema, "strict", False) is not True:
        return
    columns = getattr(schema, "columns", None)
    if not isinstance(columns, dict):
        return
    patterns = [str(name) for name, col in columns.items() if getattr(col, "regex", False)]
    wanted = [(c, "primary_key") for c in contract.primary_key]
    if contract.partition_by is not None:
        wanted.append((contract.partition_by.column, "partition_by.column"))
    for column, key in wanted:
        if column in columns or any(_may_match(p, column) for p in patterns):
            continue
        raise ConfigError(
            f"column {column!r} is not in the strict contract "
            f"{contract.schema or contract.schema_file!r}, so every run would be rejected; "
            f"declare {column!r} in the schema or change {key}",
            table=contract.name, key=key, path=str(config.paths.config))


def _may_match(pattern: str, column: str) -> bool:
    """True when a regex column could match ``column`` (leniently: a search, not a match)."""
    try:
        return re.search(pattern, column) is not None
    except re.error:
        return True


def without_key_uniqueness(schema: Any, key: tuple[str, ...]) -> Any:
    """``schema`` minus the uniqueness checks implied by ``key`` being unique, or ``None``.

    Implied: a column-level ``unique`` on the one key column, and a frame-level ``unique``
    over a superset of the key columns. A schema that coerces the key keeps its checks, since
    coercion can make distinct stored values equal.
    """
    columns = getattr(schema, "columns", None)
    if not key or not isinstance(columns, dict) or getattr(schema, "coerce", False):
        return None
    key_columns = [columns.get(k) for k in key]
    if any(c is None or getattr(c, "regex", False) or getattr(c, "coerce", False)
           for c in key_columns):
        return None
    relaxed = schema
    try:
        if len(key) == 1 and getattr(key_columns[0], "unique", False):
            relaxed = schema.update_column(key[0], unique=False)  # returns a copy
        frame_unique = getattr(schema, "unique", None)
        if frame_unique and set(key) <= set(frame_unique):
            relaxed = copy.deepcopy(relaxed) if relaxed is schema else relaxed
            relaxed.unique = None
    except Exception:  # a schema pandera cannot copy or update: it keeps every check
        return None
    return None if relaxed is schema else relaxed


def contract_package(root: Path) -> str:
    """The private package name a lake root's contract modules are imported under.

    Derived from the root's path, so two roots in one process (tests) never share modules,
    and prefixed so no real top-level module can shadow a contract or be shadowed by one.
    """
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return f"_lake_contracts_{digest}"


def import_contract_module(config: LakeConfig, module_name: str) -> Any:
    """Import ``module_name`` (``contracts.events``) from files under the lake root.

    The root is never put on ``sys.path``: a file such as ``<root>/glob.py`` must not replace
    the standard library (or a package pandera probes) for the loader. Instead the module is
    imported as ``<private package>.contracts.events``, where the private package's only
    search location is the root, so packages, ``__init__.py`` files and relative imports
    (``from . import common``) work as usual. While contracts import, and only then, the
    top-level names that ``lake.toml``'s ``schema`` keys start with (``contracts``) also
    resolve to the root's copy, so ``from contracts import common`` keeps working; no other
    name does, and afterwards nothing of the root is importable by its plain name.
    """
    root = config.root
    parts = module_name.split(".")
    if not module_name or not all(p.isidentifier() for p in parts):
        raise ValueError(f"{module_name!r} is not a module path")
    package = _private_package(root)
    names = {top for top in _schema_tops(config) if _under_root(root, top)}
    importlib.invalidate_caches()  # files written since the last import must be seen
    with _aliases(package, names):
        return importlib.import_module(f"{package.__name__}.{module_name}")


def _private_package(root: Path) -> types.ModuleType:
    """The root's private package (created once per process), searched in the root only."""
    name = contract_package(root)
    existing = sys.modules.get(name)
    if isinstance(existing, types.ModuleType):
        return existing
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(root)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    return module


def _schema_tops(config: LakeConfig) -> set[str]:
    """The top-level module names of every table's ``schema`` reference, except names of
    the standard library (a contract module may be called ``pprint.py``, but an ``import
    pprint`` anywhere must still find the real one)."""
    return {top for c in config.tables.values() if c.schema
            for top in [c.schema.partition(":")[0].split(".")[0]]
            if top not in sys.stdlib_module_names}


def _under_root(root: Path, top: str) -> bool:
    return (root / top).is_dir() or (root / f"{top}.py").is_file()


@contextmanager
def _aliases(package: types.ModuleType, names: set[str]) -> Iterator[None]:
    """While the block runs, ``import <name>...`` for ``names`` gives the root's modules.

    Entries of those names already in ``sys.modules`` (another root's, or a real package
    of that name) are put aside and restored afterwards; the aliases are removed.
    """
    if not names:
        yield
        return
    finder = _AliasFinder(package.__name__, names)
    aside = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in names}
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for key in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[key]
        sys.modules.update(aside)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``contracts.x`` as the already-private ``<package>.contracts.x``."""

    def __init__(self, package: str, names: set[str]) -> None:
        self.package, self.names = package, names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] not in self.names:
            return None
        private = f"{self.package}.{fullname}"
        if importlib.util.find_spec(private) is None:
            return None  # not under the root: the usual finders report it missing
        module = importlib.import_module(private)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module),
                                              is_package=hasattr(module, "__path__"))


class _AliasLoader(importlib.abc.Loader):
    """Gives the import system an already-imported module under a second name."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec; keep the real one


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
    if contract.partition_by is not None:
        required.append(contract.partition_by.column)
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
        outcome.add(FailureRecord("contract_raised", None, _describe_exception(exc)),
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
