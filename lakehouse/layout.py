"""The lake root's layout: folder and marker names, run ids, safe names.

This module is light (standard library only) because producers import it. It is the only
place that formats or parses a ``run_id``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

CONFIG_NAME = "lake.toml"
STAGING_DIR = "staging"
QUARANTINE_DIR = "quarantine"
ARCHIVE_DIR = "archive"
WAREHOUSE_DIR = "warehouse"
BACKUPS_DIR = "backups"
SNAPSHOTS_DIR = "snapshots"  # the read snapshot's versions; lake.read.duckdb links to one
TRASH_DIR = ".trash"  # under archive/: runs renamed out of staging/ before they are deleted

WAREHOUSE_FILE = "lake.duckdb"
READ_SNAPSHOT_FILE = "lake.read.duckdb"
LOCK_FILE = "lake.lock"
LOCK_INFO_FILE = "lake.lock.json"
PUBLISH_PENDING_NAME = "publish.pending"  # a commit happened; the snapshot is behind

MANIFEST_NAME = "_manifest.json"  # written last: its presence commits a run
REASON_NAME = "_reason.json"  # beside a quarantined run: why it was rejected
ABANDONED_NAME = "_abandoned.json"  # written by a producer whose run raised
REJECTED_ROWS_NAME = "_rejected_rows.parquet"  # drop_rows: the rows that were not loaded
SYMLINK_NAME = "_symlink"  # a quarantined run folder that was a symlink, moved as it was
TMP_MARKER = ".tmp-"  # every file is first written as <name>.tmp-<uuid>
DATA_SUFFIX = ".parquet"

# URL schemes of the object stores staging may live in (fsspec protocols of s3fs, gcsfs and
# adlfs: the `lake[s3]`, `lake[gcs]` and `lake[azure]` extras). Any other scheme is refused:
# e.g. `memory://` would stage into one process's memory, where no loader ever sees it.
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
LOCAL_SCHEMES = ("file",)

# Column names Lake adds to every data table; user columns may not use the prefix.
RESERVED_PREFIX = "_lake_"
PARTITION_COLUMN = "_lake_partition"
RUN_ID_COLUMN = "_lake_run_id"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PRODUCER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# The UTC time that starts run ids, backup, snapshot and export names, which sort by it.
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
STAMP_PATTERN = r"\d{8}T\d{6}\.\d{6}Z"  # what STAMP_FORMAT writes, as a regular expression
_RUN_ID = re.compile(r"^(" + STAMP_PATTERN + r")-([A-Za-z0-9_][A-Za-z0-9_.-]{0,63})-([0-9a-f]{8})$")


def is_identifier(name: str) -> bool:
    """True when ``name`` is a safe SQL identifier and a safe single path component."""
    return bool(_IDENTIFIER.match(name))


def url_scheme(location: str) -> str | None:
    """The scheme of ``scheme://...`` as written (fsspec's are lower case), or None for a
    plain path."""
    scheme, sep, _ = location.partition("://")
    return scheme if sep else None


def is_producer_name(name: str) -> bool:
    """True when ``name`` may be embedded in a run id."""
    return bool(_PRODUCER.match(name)) and ".." not in name


def new_run_id(producer: str, now: datetime | None = None) -> str:
    """Return a run id that sorts by creation time: ``<UTC time>-<producer>-<8 hex>``.

    Raises:
        ValueError: the producer name is not safe to embed.
    """
    if not is_producer_name(producer):
        raise ValueError(
            f"producer name {producer!r} is not allowed: use letters, digits, '_', '-', '.' "
            "(at most 64, starting with a letter, digit or '_')"
        )
    return f"{utc_stamp(now)}-{producer}-{secrets.token_hex(4)}"


def utc_stamp(now: datetime | None = None) -> str:
    """``now`` (the current time by default) in UTC as ``20261123T192453.123456Z``
    (``STAMP_FORMAT``): the time in run ids and in backup, snapshot and export names."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime(STAMP_FORMAT)


@dataclass(frozen=True)
class RunIdParts:
    """The parsed pieces of a run id."""

    created_at: datetime
    producer: str
    suffix: str


def parse_run_id(run_id: str) -> RunIdParts | None:
    """Parse a run id; ``None`` when it is not one of ours."""
    match = _RUN_ID.match(run_id)
    if not match:
        return None
    t = match.group(1)  # 20261123T192453.123456Z; the fields by position (strptime is ~10x slower)
    try:
        created = datetime(int(t[0:4]), int(t[4:6]), int(t[6:8]), int(t[9:11]), int(t[11:13]),
                           int(t[13:15]), int(t[16:22]), tzinfo=UTC)
    except ValueError:
        return None
    return RunIdParts(created, match.group(2), match.group(3))


def run_id_of_folder(name: str) -> str:
    """The run id of a run folder's name: a second folder of the same run (evidence is never
    overwritten) is ``<run_id>.N``, and ``N`` is dropped; any other name is returned as it is.

    Never a manifest's run id: a manifest that names another run may be why the run was
    quarantined (found by the chaos runner)."""
    head, _, tail = name.rpartition(".")
    if tail.isdigit() and parse_run_id(head) is not None:
        return head
    return name


def is_temp_name(name: str) -> bool:
    """True for in-progress files (``<name>.tmp-<uuid>``), which every reader skips."""
    return TMP_MARKER in name


@dataclass(frozen=True)
class LakePaths:
    """Where everything lives under one lake root (a local folder)."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> LakePaths:
        """Build the paths for ``root`` (made absolute, so a chdir cannot move it)."""
        return cls(Path(root).expanduser().absolute())

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def staging(self) -> Path:
        return self.root / STAGING_DIR

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE_DIR

    @property
    def archive(self) -> Path:
        return self.root / ARCHIVE_DIR

    @property
    def trash(self) -> Path:
        return self.archive / TRASH_DIR

    @property
    def warehouse_dir(self) -> Path:
        return self.root / WAREHOUSE_DIR

    @property
    def warehouse(self) -> Path:
        return self.warehouse_dir / WAREHOUSE_FILE

    @property
    def read_snapshot(self) -> Path:
        return self.warehouse_dir / READ_SNAPSHOT_FILE

    @property
    def backups(self) -> Path:
        return self.warehouse_dir / BACKUPS_DIR

    @property
    def snapshots(self) -> Path:
        return self.warehouse_dir / SNAPSHOTS_DIR

    @property
    def lock(self) -> Path:
        return self.warehouse_dir / LOCK_FILE

    @property
    def lock_info(self) -> Path:
        return self.warehouse_dir / LOCK_INFO_FILE

    def staged_run(self, table: str, run_id: str) -> Path:
        return self.staging / table / run_id

    def archived_run(self, table: str, run_id: str) -> Path:
        return self.archive / table / run_id

    def quarantined_run(self, table: str, run_id: str) -> Path:
        return self.quarantine / table / run_id

    def folders(self) -> list[Path]:
        """The folders ``lake init`` creates."""
        return [self.staging, self.quarantine, self.archive, self.warehouse_dir, self.backups]
