"""Producer API: stage Parquet runs into a lake root without locks.

>>> from staging import stage_run, stage
>>> with stage_run("data", "events", producer="web-1") as run:
...     run.write(table)
"""

from __future__ import annotations

from lakehouse.errors import StagingError
from staging.writer import StagedRun, stage, stage_run, to_arrow

__all__ = ["StagedRun", "StagingError", "stage", "stage_run", "to_arrow"]
