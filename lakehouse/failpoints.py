"""Named crash points: where tests and `make chaos` SIGKILL a job to prove it crash-safe.

Every point a job can be killed at is named here, once, as ``<job>.<moment>``. Code hits a
point by its name (``failpoints.hit("load.after_commit")``); nothing else in the code knows
about crashing. A point is armed once per process, at the CLI edge, from the environment
variable ``LAKE_TEST_CRASH_AT`` (``arm_from_environment``), or by a test that runs a job
in a process of its own (``arm``). An unknown name is an error in both places, so a test can
never arm a point that no code hits.

This is the one module-level mutable value in ``lakehouse``: a test hook, set before a job
starts and never changed while it runs.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

from lakehouse.errors import UsageError

ENVIRONMENT_VARIABLE = "LAKE_TEST_CRASH_AT"

POINTS: dict[str, str] = {
    # lake load (loader/load.py)
    "load.after_lock": "the warehouse lock is held; nothing read yet",
    "load.after_verify": "a run was verified; nothing of its batch committed",
    "load.before_commit": "a batch's rows and ledger rows are written, not committed",
    "load.after_commit": "a batch committed; its runs not moved yet",
    "load.mid_archive": "the first run of a committed batch was moved, the others not",
    "load.after_archive": "every run moved; the snapshot not published",
    "load.before_publish": "about to publish the snapshot",
    # lake compact
    "compact.after_lock": "the lock is held; nothing copied",
    "compact.after_copy": "the rebuilt file is written, not verified",
    "compact.after_verify": "the rebuilt file is verified, not swapped",
    "compact.after_backup": "the backup link exists; the swap not done",
    "compact.after_swap": "the rebuilt file is in place; not published",
    "compact.before_publish": "about to publish the snapshot",
    # lake export
    "export.after_lock": "the lock is held; nothing written",
    "export.after_write": "the export's files are written under a temp name",
    "export.before_pointer": "the version is in place; the pointer not switched",
    "export.after_pointer": "the pointer is switched; meta.exports not written",
    "export.after_record": "meta.exports written; old versions not pruned",
    # lake repartition (loader/repartition.py)
    "repartition.after_lock": "the lock is held; nothing read yet",
    "repartition.after_build": "the rebuilt table is committed under its build name; old "
                               "table untouched",
    "repartition.after_parity": "the rebuilt table passed the parity check; not swapped",
    "repartition.before_commit": "the swap (drop, rename, new spec) is written, not committed",
    "repartition.after_swap": "the swap committed; the snapshot not published",
    "repartition.before_publish": "about to publish the snapshot",
    # lake export --format delta (loader/export_delta.py)
    "export.delta_mid_write": "delta-rs is writing data files; the Delta log not touched",
    "export.delta_after_commit": "the Delta commit is in the log; meta.exports not written",
    "export.delta_after_record": "meta.exports written; the snapshot not republished",
    # lake cleanup
    "cleanup.after_record": "an abandoned run's ledger row committed; the run not moved",
    "cleanup.mid_expire": "some expired archive runs deleted, not all",
    # lake quarantine replay
    "replay.after_forget": "the ledger row is forgotten; the run not moved back",
    # publishing the read snapshot (lakehouse/publish.py), whichever job publishes
    "publish.after_copy": "a full copy is written under a temp name; not renamed",
    "publish.mid_sync": "a superseded version has the changes applied, not committed",
    "publish.after_sync": "a superseded version is synced and checkpointed; not renamed",
    "publish.after_rename": "the new version has its name; the link not switched",
    "publish.after_switch": "the link is switched; the pending note not removed",
    # moves in an object store (staging_root), whichever job makes them
    "store.mid_copy": "some of a run's objects copied, not all",
    "store.copied": "every object of a run copied; none deleted",
    "store.mid_delete": "some of a moved run's objects deleted, not all",
    "store.reason": "a run copied to quarantine; its _reason.json not written",
}

_armed: str | None = None


def check(name: str) -> str:
    """``name`` if it is a registered point.

    Raises:
        UsageError: no code hits a point of that name.
    """
    if name not in POINTS:
        raise UsageError(f"unknown crash point {name!r}; the points are: {', '.join(POINTS)}")
    return name


def arm(name: str | None) -> None:
    """SIGKILL this process when it reaches ``name`` (None disarms).

    Raises:
        UsageError: ``name`` is not a registered point.
    """
    global _armed
    _armed = None if name is None else check(name)


def arm_from_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Arm the point named by ``LAKE_TEST_CRASH_AT``, if it is set (the CLI edge calls this).

    Raises:
        UsageError: it names no registered point.
    """
    arm(environ.get(ENVIRONMENT_VARIABLE) or None)


def named(job: str) -> tuple[str, ...]:
    """The points of one job (``"load"`` gives ``("load.after_lock", ...)``), in order."""
    return tuple(name for name in POINTS if name.split(".", 1)[0] == job)


def hit(name: str) -> None:
    """A job reached ``name``: die here, as a SIGKILL would, if this point is armed."""
    if _armed is not None and _armed == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif name not in POINTS:
        raise KeyError(f"crash point {name!r} is not in lakehouse.failpoints.POINTS")


__all__ = ["ENVIRONMENT_VARIABLE", "POINTS", "arm", "arm_from_environment", "check", "hit",
           "named"]
