"""Table contracts: resolve a table's pandera schema, once, and refuse one that can never pass.

A contract names its schema as ``module:attribute`` (imported by
``lakehouse/contract_import.py``) or as a pandera YAML or JSON file. A schema written with
``pandera.pandas`` is validated on a pandas DataFrame, one written with ``pandera.polars`` on a
polars DataFrame; validating runs against it is ``lakehouse/validation.py``'s.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakehouse.config import LakeConfig, TableContract
from lakehouse.contract_import import import_contract_module
from lakehouse.errors import ConfigError


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

    def load_waiting(self, tables: Iterable[str]) -> None:
        """Resolve the schemas of the tables that have runs waiting, and check the other
        tables' references without importing them (:func:`check_reference`).

        A broken contract of a waiting table fails the load (exit 2) before any run moves.
        Importing only these keeps a tick with nothing staged free of pandera and polars
        (~0.8 s of every cron tick); a module or attribute that does not exist is still
        reported by every load. Tables not in ``lake.toml`` are skipped: their runs are
        quarantined as unknown.

        Raises:
            ConfigError: a schema cannot be loaded, or a reference names nothing.
        """
        waiting = set(tables)
        for name, contract in sorted(self.config.tables.items()):
            if name in waiting:
                self.get(contract)
            elif name not in self._cache:
                check_reference(self.config, contract)

    def get(self, contract: TableContract) -> ResolvedSchema | None:
        """Return the table's schema, or ``None`` when the contract names none.

        Raises:
            ConfigError: the schema cannot be imported or is not a pandera schema.
        """
        if contract.name not in self._cache:
            self._cache[contract.name] = resolve_schema(self.config, contract)
        return self._cache[contract.name]


def check_reference(config: LakeConfig, contract: TableContract) -> None:
    """Check, without importing anything, that a contract's schema can be found: the module
    file (or ``schema_file``) exists under the root and the module binds the attribute's
    name at top level. A module whose names cannot be read from its source (star imports,
    ``__getattr__``, ``globals()``) passes; importing it will tell.

    Raises:
        ConfigError: the module or file does not exist, does not parse, or binds no such
            name.
    """
    where = {"table": contract.name, "path": str(config.paths.config)}
    if contract.schema_file:
        path = Path(contract.schema_file)
        path = path if path.is_absolute() else config.root / path
        if not path.is_file():
            raise ConfigError(f"cannot read pandera schema {str(path)!r}: no such file",
                              key="schema_file", **where)
        return
    if not contract.schema:
        return
    module_name, _, attr = contract.schema.partition(":")
    base = config.root.joinpath(*module_name.split("."))
    source_path = next((p for p in (base.with_suffix(".py"), base / "__init__.py")
                        if p.is_file()), None)
    if source_path is None:
        if base.is_dir():
            return  # a namespace package: nothing to read
        raise ConfigError(f"cannot load {contract.schema!r}: no module {module_name!r} under "
                          f"the lake root ({base.relative_to(config.root)}.py); fix the "
                          "schema key or add the module", key="schema", **where)
    text = source_path.read_text(errors="replace")
    if "import *" in text or "__getattr__" in text or "globals()" in text:
        return
    try:
        tree = ast.parse(text, str(source_path))
    except (SyntaxError, ValueError) as exc:
        raise ConfigError(f"cannot load {contract.schema!r}: module {module_name!r} does not "
                          f"parse ({describe_exception(exc)})", key="schema", **where) from None
    name = attr.split(".")[0]
    if name not in _bound_names(tree.body):
        raise ConfigError(f"cannot load {contract.schema!r}: module {module_name!r} defines "
                          f"no {name!r}; fix the schema key or the module",
                          key="schema", **where)


def _bound_names(body: list[ast.stmt]) -> set[str]:
    """Names a module's top-level statements bind (descending into if/try/with blocks)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        for field in ("body", "orelse", "finalbody"):
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names |= _bound_names(getattr(node, field, []) or [])
        for handler in getattr(node, "handlers", []) or []:
            names |= _bound_names(handler.body)
    return names


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
            f"{describe_exception(exc)} while loading; fix the module so that importing it "
            "only defines the schema",
            table=contract.name, key="schema", path=str(config.paths.config)) from None


def describe_exception(exc: BaseException) -> str:
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
    wanted += [(spec.column, "partition_by.column") for spec in contract.partitions]
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
