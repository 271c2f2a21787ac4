"""The load's last stage: the table-level checks of every table the load touched.

A part (``lakehouse/table_checks.py``) runs each check; this stage records every result as a
``meta.asset_checks`` row in its own transaction, after the batches committed, and returns
them for the report: a failing ``error`` check makes `lake load` exit 3, with the data kept.
"""

from __future__ import annotations

from lakehouse.config import LakeConfig
from lakehouse.db import Warehouse
from lakehouse.ledger import utcnow
from lakehouse.observability import RunLogger
from lakehouse.table_checks import CheckResult, run_table_checks, table_rows


def rows_before_load(wh: Warehouse, config: LakeConfig) -> dict[str, int | None]:
    """Row counts of the tables with a ``max_row_drop`` check, before anything is loaded."""
    return {name: table_rows(wh, name) for name, contract in config.tables.items()
            if any(c.name == "max_row_drop" for c in contract.checks)}


def check_touched_tables(wh: Warehouse, config: LakeConfig, logger: RunLogger,
                         rows_before: dict[str, int | None]) -> list[CheckResult]:
    """Run and record the checks of each declared table this load wrote rows to."""
    now = utcnow()
    results: list[CheckResult] = []
    for name in sorted(logger.assets_touched()):
        contract = config.tables.get(name)
        if contract is None or not contract.checks or not wh.columns("main", name):
            continue
        results += run_table_checks(wh, contract, rows_before=rows_before.get(name), now=now)
    if not results:
        return results
    for r in results:
        logger.log_check(r.table, r.check, passed=r.passed, severity=r.severity,
                         message=r.message, metrics=r.metrics, column_name=r.column,
                         failure_count=r.failure_count,
                         examples=list(r.examples) if r.examples else None)
    with wh.transaction("recording table checks"):
        logger.flush()
    return results
