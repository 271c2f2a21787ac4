"""Staged runs the ledger already knows: finish the move it recorded, or treat them as new.

The ledger is keyed by (table, run id), but a run id is only a folder name: anyone who can
write into staging can reuse one. So the ledger's row is taken to describe the staged run
only when the staged manifest is the one the ledger recorded (its SHA-256,
``meta.staged_runs.manifest_sha256``) and every other file there is one it lists, with its
checksum (files may be missing: an object store deletes a moved run's data before its
manifest). The load and its dry run both decide here:

| ledger says | staged run | action |
| --- | --- | --- |
| loaded or skipped | the recorded run | ``FINISH``: a crash cut its move short; finish it |
| loaded | anything else, or a manifest not readable | ``REUSED``: quarantine as ``run_id_reused`` |
| skipped | anything else | ``AFRESH``: a new run; forget the row, load it as any other |
| quarantined | its manifest already in quarantine | ``FINISH``: a move cut short (object store) |
| quarantined | anything else | ``AFRESH`` |

A skipped or quarantined run put no rows in the table, so verifying and loading whatever is
staged under its id now is safe; a run whose quarantine move a crash interrupted fails again
the same way and ends in quarantine, under the one ledger row. A loaded run's id cannot take
a second run (the ledger key), so that run is kept in quarantine, never archived or deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lakehouse.areas import StagingArea
from lakehouse.errors import ManifestFormatError, RunIdReusedError, RunRejectedError
from lakehouse.fsio import bytes_digest
from lakehouse.layout import ABANDONED_NAME, MANIFEST_NAME, REASON_NAME, is_temp_name
from lakehouse.ledger import STATUS_LOADED, STATUS_QUARANTINED, LedgerEntry
from lakehouse.manifest import Manifest
from lakehouse.staged import RunRef, read_run_file

FINISH = "finish"  # the run the ledger recorded: only finish its move
REUSED = "reused"  # another run under a loaded run's id: quarantine it as run_id_reused
AFRESH = "afresh"  # another run (or a retry) under a skipped or quarantined id: load it


@dataclass(frozen=True)
class Recovery:
    """What to do with one staged run the ledger knows."""

    ref: RunRef
    entry: LedgerEntry
    action: str
    rows: int = 0  # rows the staged manifest claims (0 when it cannot be read)
    detail: str = ""  # for REUSED: how the staged manifest differs

    def error(self) -> RunIdReusedError:
        """The quarantine reason of a ``REUSED`` run."""
        return RunIdReusedError(self.ref.table, self.ref.run_id, self.detail)


def judge(area: StagingArea, ref: RunRef, entry: LedgerEntry) -> Recovery:
    """Decide what the load does with a staged run that the ledger has a row for.

    Raises:
        StagingUnavailableError: the object store holding staging did not answer.
    """
    try:
        manifest = read_run_file(ref, MANIFEST_NAME)
    except RunRejectedError as exc:
        manifest, unreadable = None, exc.problem
    rows = _rows(manifest)
    if entry.status == STATUS_QUARANTINED:
        if manifest is not None and area.in_quarantine(ref.table, ref.run_id, manifest):
            return Recovery(ref, entry, FINISH, rows)
        return Recovery(ref, entry, AFRESH, rows)
    if manifest is None:
        detail = f"its manifest cannot be read: {unreadable}"
    elif entry.manifest_sha256 is None:
        detail = "the ledger recorded no manifest checksum to compare"
    elif (digest := bytes_digest(manifest)) != entry.manifest_sha256:
        detail = f"manifest sha256 {digest}, the loaded run's {entry.manifest_sha256}"
    else:
        detail = _foreign_files(ref, manifest)
    if not detail:
        return Recovery(ref, entry, FINISH, rows)
    if entry.status == STATUS_LOADED:
        return Recovery(ref, entry, REUSED, rows, detail)
    return Recovery(ref, entry, AFRESH, rows)  # skipped: nothing of it is in the table


def _foreign_files(ref: RunRef, manifest: bytes) -> str:
    """Why the files beside the recorded manifest are not the recorded run's ("" when each
    one is a file the manifest lists, with its size and checksum)."""
    try:
        listed = {f.name: f for f in Manifest.from_json(manifest).files}
    except ManifestFormatError as exc:
        return str(exc)
    if ref.store is not None:
        names = [name for name, _ in ref.listing]
    else:
        try:
            names = [n for n in os.listdir(ref.local_path) if not is_temp_name(n)]
        except OSError as exc:
            return f"its folder cannot be listed: {exc}"
    for name in sorted(set(names) - {MANIFEST_NAME, REASON_NAME, ABANDONED_NAME}):
        entry = listed.get(name)
        if entry is None:
            return f"the manifest is the loaded run's, but {name} is not one of its files"
        try:
            data = read_run_file(ref, name, entry.bytes)
        except RunRejectedError as exc:
            return f"the manifest is the loaded run's, but {exc.problem}"
        if len(data) != entry.bytes or bytes_digest(data) != entry.sha256:
            return f"the manifest is the loaded run's, but {name} is not the file it lists"
    return ""


def _rows(manifest: bytes | None) -> int:
    if manifest is None:
        return 0
    try:
        return Manifest.from_json(manifest).rows
    except ManifestFormatError:
        return 0


__all__ = ["AFRESH", "FINISH", "REUSED", "Recovery", "judge"]
