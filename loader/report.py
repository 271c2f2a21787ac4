"""What a load reports, and the options it takes (kept apart from the orchestration)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from lakehouse.errors import StopRequestedError


@dataclass
class StopFlag:
    """Set by a signal handler; the loader checks it between runs (safe points)."""

    signal_name: str | None = None

    def raise_if_set(self) -> None:
        if self.signal_name:
            raise StopRequestedError(self.signal_name)


@dataclass
class LoadOptions:
    """What `lake load` was asked to do."""

    table: str | None = None
    max_runs: int | None = None
    lock_timeout: float = 0.0
    dry_run: bool = False
    progress: Callable[[RunOutcome], None] | None = None  # called once per run handled
    on_discover: Callable[[int], None] | None = None  # called with the number of runs found
    stop: StopFlag = field(default_factory=StopFlag)
    triggered_by: str = "cli"  # recorded in the run log: `--triggered-by`, LAKE_TRIGGERED_BY


@dataclass
class RunOutcome:
    """What happened to one staged run."""

    table: str
    run_id: str
    # loaded | quarantined | skipped | recovered; a dry run says would_load,
    # would_quarantine, would_skip or would_recover
    status: str
    rows_loaded: int = 0
    rows_rejected: int = 0
    reason_code: str | None = None
    message: str | None = None


@dataclass
class TableSummary:
    """A data table after the load."""

    rows: int
    partitions: int


@dataclass
class LoadReport:
    """The result of `lake load`."""

    runs: list[RunOutcome] = field(default_factory=list)
    tables: dict[str, TableSummary] = field(default_factory=dict)
    dry_run: bool = False
    published: bool = False
    publish_seconds: float = 0.0
    publish_method: str = ""  # reflink | incremental | copy (lakehouse/publish.py)
    publish_reason: str = ""  # why not incremental, when it was a copy
    seconds: float = 0.0
    load_run_id: str | None = None
    # Tables refused because lake.toml changed their spec (table -> message): the CLI exits 2.
    refused: dict[str, str] = field(default_factory=dict)
    checks: list[Any] = field(default_factory=list)  # table-level CheckResults

    @property
    def failed_checks(self) -> list[Any]:
        """Table-level checks that failed, warn or error."""
        return [c for c in self.checks if not c.passed]

    def count(self, status: str) -> int:
        return sum(1 for r in self.runs if r.status == status)

    @property
    def rejected(self) -> bool:
        """True when any run (or part of one) was rejected, or a table-level check of
        severity error failed (the data is kept): the CLI exits 3."""
        return any(r.status in ("quarantined", "would_quarantine") or r.rows_rejected
                   for r in self.runs) or any(c.severity == "error"
                                              for c in self.failed_checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "load_run_id": self.load_run_id,
            "runs_loaded": self.count("loaded"),
            "runs_quarantined": self.count("quarantined"),
            "runs_skipped": self.count("skipped"),
            "runs_recovered": self.count("recovered"),
            "rows_loaded": sum(r.rows_loaded for r in self.runs),
            "rows_rejected": sum(r.rows_rejected for r in self.runs),
            "published": self.published,
            "publish_method": self.publish_method,
            "seconds": round(self.seconds, 3),
            "tables": {k: asdict(v) for k, v in self.tables.items()},
            "runs": [asdict(r) for r in self.runs],
            "tables_refused": dict(self.refused),
            "checks_failed": [{"table": c.table, "check": c.check, "severity": c.severity,
                               "message": c.message} for c in self.failed_checks],
        }


