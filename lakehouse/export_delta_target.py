"""Where a Delta export lives: its delta-rs location, the format a target holds, vacuum.

delta-rs talks to object stores through its own client (Rust ``object_store``), so the fsspec
settings Lake uses everywhere else are translated here, once, for every Delta operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakehouse.errors import UsageError
from lakehouse.export_target import POINTER_NAME, ExportTarget

DELTA_LOG = "_delta_log"
FORMATS = ("delta", "parquet")
DEFAULT_FORMAT = "delta"  # for a target that holds no export yet


@dataclass(frozen=True)
class DeltaTarget:
    """Where delta-rs writes ``<to>/<table>``: its URI and object_store options."""

    uri: str
    storage_options: dict[str, str]
    shown: str  # as a user would type it

    def table(self, version: int | None = None) -> Any:
        """The ``DeltaTable`` (at ``version``, or the latest)."""
        from deltalake import DeltaTable

        return DeltaTable(self.uri, version=version, storage_options=self.storage_options or None)

    def exists(self) -> bool:
        """True when there is a Delta table here (a log with a first commit)."""
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(self.uri, self.storage_options or None))


def delta_target(target: ExportTarget) -> DeltaTarget:
    """The delta-rs location of an export target, with the same settings fsspec uses.

    delta-rs has its own object store client (Rust ``object_store``), so the fsspec file
    system's options (``FSSPEC_S3_ENDPOINT_URL``, ``key``/``secret``, a region) are handed
    over as its storage options; credentials in the environment (``AWS_*``, ``GOOGLE_*``,
    ``AZURE_*``) are read by both.

    Raises:
        UsageError: the store is one delta-rs cannot write (``memory://`` and the like).
    """
    if target.local:
        return DeltaTarget(target.base, {}, target.base)
    protocols = (target.fs.protocol,) if isinstance(target.fs.protocol, str) \
        else tuple(target.fs.protocol)
    options: dict[str, str] = {}
    given = dict(getattr(target.fs, "storage_options", {}) or {})
    if {"s3", "s3a"} & set(protocols):
        scheme = "s3"
        endpoint = given.get("endpoint_url") or (given.get("client_kwargs") or {}).get(
            "endpoint_url")
        if endpoint:
            options["AWS_ENDPOINT_URL"] = str(endpoint)
            if str(endpoint).startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        for ours, theirs in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"),
                             ("token", "AWS_SESSION_TOKEN")):
            if given.get(ours):
                options[theirs] = str(given[ours])
        region = (given.get("client_kwargs") or {}).get("region_name")
        if region:
            options["AWS_REGION"] = str(region)
    elif {"gs", "gcs"} & set(protocols):
        scheme = "gs"
    elif {"az", "abfs", "abfss"} & set(protocols):
        scheme = "az"
    else:
        raise UsageError(f"--format delta cannot write to {target.base_url}: delta-rs writes "
                         "local folders, s3://, gs:// and az:// only; use --format parquet "
                         "there")
    return DeltaTarget(f"{scheme}://{target.base.strip('/')}", options, target.base_url)


def is_delta_table(target: ExportTarget) -> bool:
    """True when ``<to>/<table>/`` holds a Delta log (whatever wrote it)."""
    log = target.join(DELTA_LOG)
    if target.local:
        return Path(log).is_dir()
    try:
        return bool(target.fs.exists(log))
    except OSError:
        return False


def vacuum(target: DeltaTarget, retention_hours: int, *, dry_run: bool = False) -> list[str]:
    """Delete files no version younger than ``retention_hours`` needs; return them.

    The latest version's files are never deleted, whatever the retention; a reader on an
    older version keeps working while that version is within the retention. ``full`` mode
    also deletes files of killed exports that no version ever referenced (once that old).
    """
    return list(target.table().vacuum(retention_hours=retention_hours, dry_run=dry_run,
                                       enforce_retention_duration=False, full=True))


def choose_format(requested: str | None, target: ExportTarget) -> str:
    """The format to export in: ``requested``, or (None) the one already at the target, or
    ``DEFAULT_FORMAT`` for a new target. A cron line written before Delta export existed
    keeps exporting Parquet to the target it always did.

    Raises:
        UsageError: ``requested`` is unknown or differs from the export already there.
    """
    if requested is not None and requested not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {requested!r}")
    delta = is_delta_table(target)
    parquet = _has_pointer(target)
    found = "delta" if delta else "parquet" if parquet else None
    if requested is None:
        return found or DEFAULT_FORMAT
    if found is not None and found != requested:
        raise UsageError(f"{target.display()} holds a {found} export; export with --format "
                         f"{found} there, or use another --to for --format {requested}")
    return requested


def _has_pointer(target: ExportTarget) -> bool:
    if target.local:
        return Path(target.pointer).exists()
    try:
        return bool(target.fs.exists(target.join(POINTER_NAME)))
    except OSError:
        return False
