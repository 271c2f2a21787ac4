"""`lake dashboard`: the Streamlit health dashboard's launcher and what its pages read.

The app (``loader/dashboard_app.py``, the only module that imports Streamlit) asks this job
for each page's data on every refresh:

- :func:`open_view` resolves ``lake.read.duckdb`` again and opens the version it names
  read-only, never ``lake.duckdb``, so the dashboard never blocks a load; the connection is
  closed before the page is drawn, so a superseded version is not held open;
- :func:`staging_backlog` and :func:`quarantined_runs` list folders (staging and quarantine
  are not in the snapshot): what waits, and what ``lake quarantine replay`` would act on.

:func:`serve_dashboard` replaces the process with ``streamlit run`` on the app.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lakehouse.areas import staging_area
from lakehouse.config import LakeConfig, load_config
from lakehouse.db import Warehouse
from lakehouse.errors import LakehouseError, UsageError
from lakehouse.layout import LakePaths, parse_run_id
from lakehouse.publish import open_snapshot

APP = Path(__file__).with_name("dashboard_app.py")
INSTALL_HINT = "pip install 'lake[dashboard]'"


class NothingToShowError(UsageError):
    """The lake has no snapshot to show yet (or it vanished while being read): the page
    shows the message instead of its data."""


@dataclass
class View:
    """One open snapshot version, for one refresh of one page."""

    wh: Warehouse
    config: LakeConfig
    version: str  # the version file lake.read.duckdb named when it was opened
    published_at: datetime  # UTC


def utcnow_naive() -> datetime:
    """Now, as naive UTC (how ``meta`` stores times)."""
    return datetime.now(UTC).replace(tzinfo=None)


def lake_config(root: str | Path) -> LakeConfig:
    """The lake's config, or :class:`NothingToShowError` naming ``lake init``."""
    paths = LakePaths.at(root)
    if not paths.config.is_file():
        raise NothingToShowError(
            f"No lake at {paths.root}: create one with `lake --root {shlex.quote(str(paths.root))}"
            " init`, declare tables in lake.toml, then `lake load`.")
    return load_config(paths.root)


@contextmanager
def open_view(root: str | Path) -> Iterator[View]:
    """Open the current read snapshot of ``root`` read-only (resolving the link anew).

    Raises:
        NothingToShowError: no lake, no snapshot yet, or the snapshot was replaced and
            deleted while it was being opened.
    """
    config = lake_config(root)
    paths = config.paths
    if not paths.read_snapshot.exists():
        raise NothingToShowError(
            f"Nothing is published yet at {paths.root}: run `lake --root "
            f"{shlex.quote(str(paths.root))} init`, then `lake load`; the dashboard reads only "
            "the published snapshot.")
    target = Path(os.path.realpath(paths.read_snapshot))
    try:
        wh = open_snapshot(paths)
    except LakehouseError as exc:
        if Path(os.path.realpath(paths.read_snapshot)).exists():
            raise  # not a replaced snapshot: the page shows the error
        raise NothingToShowError(
            f"The snapshot was replaced while the page read it ({exc}); it is read again "
            "on the next refresh.") from None
    try:
        published = datetime.fromtimestamp(target.stat().st_mtime, UTC)
    except OSError:  # deleted after we opened it: our open file still holds it
        published = datetime.now(UTC)
    try:
        yield View(wh, config, target.name, published)
    finally:
        wh.close()


@dataclass(frozen=True)
class Backlog:
    """Committed runs waiting in staging."""

    runs: int
    oldest_age_seconds: float | None


def staging_backlog(config: LakeConfig, now: datetime) -> Backlog:
    """How many committed runs wait in staging, and the oldest one's age (by its run id)."""
    refs = staging_area(config).discover()
    created = [p.created_at.replace(tzinfo=None) for r in refs
               if (p := parse_run_id(r.run_id)) is not None]
    oldest = min(created, default=None)
    return Backlog(len(refs), (now - oldest).total_seconds() if oldest else None)


def replay_command(root: Path, path: str) -> str:
    """The exact command that replays a quarantined folder (its path is unique)."""
    return (f"lake --root {shlex.quote(str(root))} quarantine replay "
            f"{shlex.quote(path)}")


def quarantined_runs(config: LakeConfig, now: datetime) -> list[dict[str, Any]]:
    """Quarantined folders, newest first: table, run, reason code, message, age, the
    replay command."""
    from loader.quarantine import list_quarantine

    out = []
    for q in list_quarantine(config):
        try:
            when = datetime.fromisoformat(q.quarantined_at).astimezone(UTC).replace(tzinfo=None)
            age: float | None = (now - when).total_seconds()
        except (TypeError, ValueError):
            when, age = None, None
        out.append({"table": q.table, "run_id": q.run_id, "kind": q.kind, "code": q.code,
                    "message": q.message, "failures": q.failure_count, "quarantined_at": when,
                    "age_seconds": age, "path": q.path,
                    "replay": replay_command(config.paths.root, q.path)})
    return sorted(out, key=lambda r: r["quarantined_at"] or datetime.min, reverse=True)


def read_every_page(root: str | Path, now: datetime | None = None) -> dict[str, int]:
    """Run every page's reads once, as refreshes of all five pages would (``make bench``
    times it); returns how many records each read gave."""
    from lakehouse import dashboard_queries as dq

    now = now or utcnow_naive()
    counts: dict[str, int] = {}
    with open_view(root) as view:
        wh = view.wh
        declared = {name: c.checks for name, c in view.config.tables.items()}
        overview = dq.overview(wh, declared, now)
        counts["tiles"] = len(overview.tiles)
        counts["backlog"] = staging_backlog(view.config, now).runs
        counts["quarantined"] = len(quarantined_runs(view.config, now))
        counts["latest_runs"] = len(dq.latest_runs(wh))
        counts["timeline_30d"] = len(dq.load_timeline(wh, dq.days_ago(now, 30)))
        counts["failed_30d"] = len(dq.failed_runs(wh, dq.days_ago(now, 30)))
        counts["producer_versions_30d"] = len(dq.producer_versions(wh, dq.days_ago(now, 30)))
        failing = dq.failing_checks(wh, declared)
        counts["failing_checks"] = len(failing)
        known = wh.fetchall("SELECT DISTINCT asset_key, check_name FROM meta.asset_checks "
                            "ORDER BY 1, 2", action="listing checks")
        if known:
            counts["check_history"] = len(dq.check_history(wh, known[0][0], known[0][1]))
        for tile in overview.tiles:
            if tile.exists:
                counts[f"{tile.table}.partitions"] = len(dq.partition_rows(wh, tile.table))
                counts[f"{tile.table}.watermarks"] = len(dq.watermarks(wh, tile.table))
                counts[f"{tile.table}.columns"] = len(dq.table_schema(wh, tile.table))
    return counts


def require_streamlit() -> None:
    """Raise :class:`UsageError` naming the extra when Streamlit is not installed."""
    if importlib.util.find_spec("streamlit") is None:
        raise UsageError(f"the dashboard needs Streamlit, which is not installed: "
                         f"run {INSTALL_HINT}")


def streamlit_command(root: Path, *, host: str, port: int, refresh: float) -> list[str]:
    """The ``streamlit run`` command line for the app (no telemetry, no browser opened)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--global.developmentMode", "false", "--server.fileWatcherType", "none",
            "--theme.base", "light", "--client.toolbarMode", "viewer",
            "--", "--root", str(root.resolve()), "--refresh", str(refresh)]


def serve_dashboard(root: Path, *, host: str, port: int, refresh: float) -> None:
    """Replace this process with Streamlit serving the dashboard of ``root`` (never returns).

    Raises:
        UsageError: Streamlit is not installed (the message names the extra).
    """
    require_streamlit()
    command = streamlit_command(root, host=host, port=port, refresh=refresh)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
