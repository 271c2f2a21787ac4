"""The exception tree of Lake: every exception Lake defines lives here.

Every error stores its fields and builds a one-line message that says what happened and
what to do. Only ``loader/exits.py`` maps these to exit codes.

``RunRejectedError`` and its children are *terminal* for a run: the run is quarantined and
never retried automatically. ``LockHeldError`` is *transient*: nothing moved, retry later.
Three errors are not ``LakehouseError`` children, for their callers' sake:
``ManifestFormatError`` and ``StagingError`` are ``ValueError`` children and
``UnsafeFileError`` is an ``OSError``. Light (standard library and ``lakehouse.jsonable``
only): producers import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakehouse.jsonable import jsonable


class LakehouseError(Exception):
    """Root of every error Lake raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(LakehouseError):
    """``lake.toml`` or a contract it names is wrong (exit 2)."""

    def __init__(self, problem: str, *, table: str | None = None, key: str | None = None,
                 path: str | None = None) -> None:
        self.table, self.key, self.path, self.problem = table, key, path, problem
        where = []
        if path:
            where.append(str(path))
        if table:
            where.append(f"[tables.{table}]")
        if key:
            where.append(f"key '{key}'")
        prefix = " ".join(where)
        super().__init__(f"config error: {prefix + ': ' if prefix else ''}{problem}")


class UsageError(LakehouseError):
    """The command was called wrongly, e.g. the root was never initialised (exit 2)."""


class LockHeldError(LakehouseError):
    """Another process holds the warehouse (exit 75, retry on the next cron tick)."""

    def __init__(self, path: str, holder: dict[str, Any] | None, *, waited: float = 0.0,
                 detail: str = "") -> None:
        self.path, self.holder, self.waited = path, holder or {}, waited
        who = describe_holder(self.holder) if self.holder else "another process"
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"warehouse busy: {path} is held by {who}{extra}; waited {waited:.1f}s. "
            "Retry later, raise --lock-timeout, or stop that process if it is stuck."
        )


def describe_holder(holder: dict[str, Any]) -> str:
    """Render lock-holder metadata as ``pid 12 on host since T (command)``."""
    parts = [f"pid {holder.get('pid', '?')}"]
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    text = " ".join(parts)
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text


class WarehouseError(LakehouseError):
    """DuckDB failed in a way Lake did not expect; the message carries the driver's text."""

    # Driver error kinds caused by the data of a batch (not by the disk or the process):
    # the loader isolates the run that causes them and quarantines it.
    DATA_KINDS = frozenset({"ConversionException", "ConstraintException", "InvalidInputException",
                            "OutOfRangeException", "TypeMismatchException", "BinderException"})

    def __init__(self, action: str, detail: str, kind: str = "") -> None:
        self.action, self.detail, self.kind = action, detail, kind
        super().__init__(f"warehouse error while {action}: {detail}")

    @property
    def caused_by_data(self) -> bool:
        return self.kind in self.DATA_KINDS


class LoadAbortedError(LakehouseError):
    """A table with ``on_invalid = "abort"`` met an invalid run: the load stopped there."""

    def __init__(self, table: str, run_id: str, reason: str) -> None:
        self.table, self.run_id, self.reason = table, run_id, reason
        super().__init__(
            f"load aborted at run {run_id} of table {table}: {reason}. The run stays in "
            "staging; fix the data or the contract, then run `lake load` again."
        )


class StopRequestedError(LakehouseError):
    """A signal asked the loader to stop at the next safe point; nothing was lost."""

    def __init__(self, signal_name: str) -> None:
        self.signal_name = signal_name
        super().__init__(
            f"stopped by {signal_name} at a safe point; run the command again to go on")


class StagingUnavailableError(LakehouseError):
    """The object store holding staging could not be listed, read or written."""


class CompactionError(LakehouseError):
    """Compaction could not finish; the message says if the warehouse changed and what to do."""

    def __init__(self, problem: str, *, path: str | None = None) -> None:
        self.problem, self.path = problem, path
        super().__init__(problem)


class ExportError(LakehouseError):
    """An export could not finish; the message says whether the published export changed."""

    def __init__(self, problem: str, *, path: str | None = None) -> None:
        self.problem, self.path = problem, path
        super().__init__(problem)


class PartitionValueError(ExportError):
    """A partition value no Hive folder name carries to every reader (a data problem: the
    export writes nothing, and the previous one stays published)."""


class RepartitionError(LakehouseError):
    """A repartition could not finish; the message says whether the table changed."""

    def __init__(self, table: str, problem: str) -> None:
        self.table, self.problem = table, problem
        super().__init__(problem)


class RepartitionRefusedError(RepartitionError):
    """The table's data does not fit the new spec (a null partition value, a key that is not
    unique): nothing changed (exit 3, a data problem)."""


@dataclass
class FailureRecord:
    """One failed check of one run, as stored in ``_reason.json`` and ``meta.asset_checks``."""

    check: str
    column: str | None = None
    failure_case: Any = None
    row: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"check": self.check, "column": self.column,
                "failure_case": jsonable(self.failure_case), "row": self.row}


class RunRejectedError(LakehouseError):
    """A run cannot be loaded as it is. Terminal: the run goes to quarantine with this reason."""

    code = "rejected"

    def __init__(self, table: str, run_id: str, problem: str, *,
                 failures: list[FailureRecord] | None = None, total_failures: int | None = None,
                 path: str | None = None) -> None:
        self.table, self.run_id, self.problem, self.path = table, run_id, problem, path
        self.failures = failures or []
        self.total_failures = total_failures if total_failures is not None else len(self.failures)
        super().__init__(f"run {run_id} of table {table} rejected ({self.code}): {problem}")

    def reason(self) -> dict[str, Any]:
        """Return the structured reason written to ``_reason.json``."""
        return {
            "code": self.code,
            "table": self.table,
            "run_id": self.run_id,
            "message": self.problem,
            "failure_count": self.total_failures,
            "failure_sample": [f.as_dict() for f in self.failures[:SAMPLE_SIZE]],
        }


SAMPLE_SIZE = 20


class ManifestError(RunRejectedError):
    """The manifest is unreadable or does not match the files on disk."""

    code = "manifest_mismatch"


class CorruptFileError(RunRejectedError):
    """A data file is not readable Parquet."""

    code = "corrupt_file"


class TooLargeError(RunRejectedError):
    """The run's data decodes to more memory than ``[lake] max_run_bytes`` allows (a
    decompression bomb, or a run that should be split)."""

    code = "too_large"


class InvalidRunError(RunRejectedError):
    """The run's folder, table or names are not acceptable (hostile or unknown names, empty run)."""

    code = "invalid_run"


class EmptyRunError(InvalidRunError):
    """The run commits no rows."""

    code = "empty_run"


class InvalidColumnNameError(InvalidRunError):
    """A column name is unsafe, reserved, or repeats another ignoring case."""

    code = "invalid_column_name"


class SchemaChangeError(RunRejectedError):
    """The run's columns differ from the table's in a way the contract does not allow."""

    code = "schema_change"


class ContractViolation(RunRejectedError):
    """Validation against the table contract failed; carries every failure (pandera lazy)."""

    code = "contract_violation"

    def __init__(self, table: str, run_id: str, failures: list[FailureRecord], *,
                 total_failures: int | None = None, schema_level: bool = True) -> None:
        total = total_failures if total_failures is not None else len(failures)
        self.schema_level = schema_level
        # One entry per failed check (lakehouse.validation.CheckSummary), set by the screen.
        self.check_summaries: list[Any] = []
        super().__init__(table, run_id, summarize_failures(failures, total),
                         failures=failures, total_failures=total)


class KeyConflictError(RunRejectedError):
    """An ``append`` run repeats primary keys already in the table."""

    code = "key_conflict"


class MergeFailedError(RunRejectedError):
    """The warehouse refused the run's rows when merging them (e.g. a value DuckDB cannot
    convert); the load isolated the run and goes on without it."""

    code = "merge_failed"


class RunIdReusedError(RunRejectedError):
    """A run staged under the id of a run the ledger records as loaded, with another manifest.

    The ledger is keyed by (table, run id), so the run cannot load under that id; it is
    quarantined (never archived or deleted) and must be staged again under a new id.
    """

    code = "run_id_reused"

    def __init__(self, table: str, run_id: str, detail: str) -> None:
        super().__init__(
            table, run_id,
            f"its id belongs to a run already loaded into {table}, and this is another run "
            f"({detail}); it was not loaded. Stage its data again under a new run id "
            "(stage_run makes one): `lake quarantine replay` cannot load it under this id")


def summarize_failures(failures: list[FailureRecord], total: int, shown: int = 3) -> str:
    """One-line summary: failures grouped by column and check, ending '... and N more'."""
    if not failures:
        return "contract violated"
    groups: dict[tuple[str | None, str], list[FailureRecord]] = {}
    for f in failures:
        groups.setdefault((f.column, f.check), []).append(f)
    parts = []
    for (column, check), items in list(groups.items())[:shown]:
        where = f"column {column!r}" if column else "table"
        rows = [f.row for f in items if f.row is not None]
        count = f" in {len(items)} rows" if len(items) > 1 else (
            f" at row {rows[0]}" if rows else "")
        example = next((f.failure_case for f in items if f.failure_case is not None), None)
        case = "" if example is None else f" (e.g. {example!r})"
        parts.append(f"{where} failed {check}{count}{case}")
    text = "; ".join(parts)
    listed = sum(len(items) for items in list(groups.values())[:shown])
    if total > listed:
        text += f" ... and {total - listed} more"
    return text


class ManifestFormatError(ValueError):
    """The manifest text is not a valid Lake manifest."""


class StagingError(ValueError):
    """A producer called the staging API with something it cannot stage."""


class UnsafeFileError(OSError):
    """A file Lake was asked to read is not one it will read (see ``fsio.read_regular``)."""

    def __init__(self, path: str | Path, what: str, message: str) -> None:
        super().__init__(message)
        self.path = str(path)
        self.what = what  # what the file is, for a message naming it otherwise
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotRegularFileError(UnsafeFileError):
    """The path is a symlink, a FIFO, a device, a socket or a folder, not a regular file."""

    def __init__(self, path: str | Path, kind: str) -> None:
        what = f"{kind}, not a regular file"
        super().__init__(path, what, f"{path} is {what}; Lake never follows links or reads "
                                     "special files: remove it, or stage the data again "
                                     "with stage_run")
        self.kind = kind


class FileTooLargeError(UnsafeFileError):
    """The file holds more bytes than the reader allows for it."""

    def __init__(self, path: str | Path, size: int, max_bytes: int) -> None:
        what = f"{size} bytes, more than the {max_bytes} allowed for it"
        super().__init__(path, what, f"{path} is {what}")
        self.size = size
        self.max_bytes = max_bytes
