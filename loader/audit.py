"""`lake audit`: a read-only health report of files, tables, staging, quarantine and ledger.

The audit never takes the warehouse lock and never opens ``lake.duckdb``: DuckDB's file lock
would block the loader even for a read-only open. It reads the published snapshot
``lake.read.duckdb`` (``lakehouse.facts``) and only ``stat``s the live file. The payload is
stable JSON, documented key by key in ``docs/AUDIT.md``; every problem has a severity, a code
and a fix. ``loader/render.py`` draws it as text. Staging, quarantine and archive come from
one look at the staging area, local or an object store (``lakehouse.listing``), and each
check is written once over it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lakehouse import facts, layout
from lakehouse.areas import staging_area
from lakehouse.config import LakeConfig
from lakehouse.db import Warehouse, quote
from lakehouse.errors import LakehouseError, StagingUnavailableError
from lakehouse.facts import as_utc, iso_utc, json_value
from lakehouse.ledger import ledger_entries
from lakehouse.listing import (
    UNKNOWN_REASON,
    AreaListing,
    RunFolder,
    list_area,
    list_temp_files,
)
from lakehouse.lock import read_holder
from lakehouse.merge import range_column
from lakehouse.migrations import LATEST_VERSION, schema_version
from lakehouse.publish import open_snapshot
from lakehouse.table_spec import BUILD_PREFIX, canonical_spec, describe_changes, recorded_specs
from loader.health import HEALTH_QUERIES
from loader.render import mebibytes

AUDIT_VERSION = 1
AUDIT_KEYS = ("audit_version", "generated_at", "root", "staging_root", "warehouse", "tables",
              "staging", "quarantine", "ledger", "runs", "meta", "problems", "summary")
SEVERITIES = ("error", "warn", "info")
PROBLEM_KEYS = ("severity", "code", "message", "fix")
# Every code the audit emits, with its severity; docs/AUDIT.md lists the same (a test checks).
PROBLEM_CODES = {
    "snapshot_missing": "error", "snapshot_unreadable": "error", "warehouse_missing": "error",
    "duplicate_keys": "error", "archive_not_in_ledger": "error", "schema_outdated": "warn",
    "snapshot_behind": "warn", "stale_table": "warn", "loader_stale": "warn", "backlog": "warn",
    "abandoned_runs": "warn", "stray_temp_files": "warn", "quarantined_runs": "warn",
    "ledger_unfinished_move": "warn", "failed_runs_7d": "warn", "free_space": "warn",
    "undeclared_table": "warn", "table_empty": "info", "staging_unavailable": "error",
    "partition_spec_mismatch": "error", "repartition_unfinished": "warn",
}
_KEYED_MERGES = ("append", "upsert")  # replace_partition makes no promise about keys


@dataclass(frozen=True)
class AuditThresholds:
    """When a finding becomes a problem (abandoned runs use ``abandon_after_hours``)."""

    stale_table_hours: float = 48.0  # hours since the table last loaded a run
    loader_stale_hours: float = 24.0  # hours since the last successful load
    backlog_hours: float = 1.0  # a committed run waiting longer than this
    temp_file_hours: float = 1.0  # a *.tmp-* file older than this is stray
    free_ratio: float = 0.5  # free blocks / total blocks above this ...
    compact_min_bytes: int = 64 * 1024 * 1024  # ... in a file larger than this: compact
    # Staging in an object store: an archived object's time is the store's clock and the
    # snapshot's mtime the loader's, so a run archived this close before the snapshot may be
    # newer than it (snapshot_behind), not missing from its ledger (archive_not_in_ledger).
    clock_skew_minutes: float = 5.0


@dataclass
class AuditReport:
    """The audit's JSON payload, with what the CLI asks of it."""

    payload: dict[str, Any]

    @property
    def problems(self) -> list[dict[str, Any]]:
        """Every problem found, errors first."""
        return list(self.payload["problems"])

    @property
    def has_errors(self) -> bool:
        """True when a problem of severity error was found (`--strict` exits 3)."""
        return self.payload["summary"]["error"] > 0


def audit_lake(config: LakeConfig, *, now: datetime | None = None,
               thresholds: AuditThresholds | None = None) -> AuditReport:
    """Audit a lake root read-only, from the published snapshot and the files on disk (and
    the object store holding staging, if ``[lake] staging_root`` names one)."""
    when = now or datetime.now(UTC)
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return _Audit(config, when, thresholds or AuditThresholds()).run()


@dataclass
class _Audit:
    config: LakeConfig
    now: datetime
    limits: AuditThresholds
    problems: list[dict[str, Any]] = field(default_factory=list)
    area: AreaListing = field(default_factory=lambda: AreaListing("", in_store=False))

    def problem(self, code: str, message: str, fix: str, **context: Any) -> None:
        self.problems.append({"severity": context.pop("severity", PROBLEM_CODES[code]),
                              "code": code, "message": message, "fix": fix, **context})

    def rel(self, path: Path) -> str:
        return path.relative_to(self.config.paths.root).as_posix()

    def hours(self, since: datetime | None) -> float | None:
        return None if since is None else self.age(since)

    def age(self, since: datetime) -> float:
        return round((self.now - as_utc(since)).total_seconds() / 3600, 2)

    def folder_age(self, since: datetime) -> float:
        """The age of a time read from the staging area: in an object store never below 0
        (the store's clock may run ahead of ours)."""
        return max(self.age(since), 0.0) if self.area.in_store else self.age(since)

    def run(self) -> AuditReport:
        paths = self.config.paths
        # The snapshot's mtime is read BEFORE it is opened: if a load publishes in between, we
        # read a newer file than the mtime says, so runs archived since look "newer than the
        # snapshot" (a warning), never like runs missing from the ledger (an error).
        # lake.read.duckdb links to the current snapshot version: stat that version. Opening
        # resolves the link again, so a publish in between gives a newer file, as above.
        snap_file = Path(os.path.realpath(paths.read_snapshot))
        live, snap = _stat(paths.warehouse), _stat(snap_file)
        snap_path = self.rel(paths.read_snapshot)
        warehouse: dict[str, Any] = {
            "path": self.rel(paths.warehouse), "size_bytes": live.st_size if live else None,
            "modified_at": iso_utc(_mtime(live)), "lock_holder": read_holder(paths),
            "snapshot": {"path": snap_path, "exists": snap is not None,
                         "size_bytes": snap.st_size if snap else None,
                         "published_at": iso_utc(_mtime(snap)),
                         "age_hours": self.hours(_mtime(snap))},
            "database": None, "schema_version": None, "latest_schema_version": LATEST_VERSION}
        area = staging_area(self.config)
        try:
            self.area = list_area(area)
        except StagingUnavailableError as exc:  # audited as empty, with the problem
            self.area = AreaListing(area.description, in_store=True)
            self.problem("staging_unavailable", str(exc), "check the staging_root URL, "
                         "the store's credentials and the network; lake audit again",
                         path=area.description)
        staged = [f for f in self.area.of(layout.STAGING_DIR) if f.committed]
        inside: dict[str, Any] = {"tables": {}, "ledger": {"checked": False}, "runs": {},
                                  "meta": {}}
        if snap is None:
            self.problem("snapshot_missing", f"no published snapshot at {snap_path}: the "
                         "warehouse's contents cannot be audited", "lake init", path=snap_path)
        else:
            try:
                wh = open_snapshot(paths)
            except LakehouseError as exc:
                self.problem("snapshot_unreadable", str(exc),
                             f"rm {snap_path} && lake init  (republishes it)", path=snap_path)
            else:
                try:
                    inside = self.read_snapshot(wh, warehouse, staged, _mtime(snap), live)
                finally:
                    wh.close()
            if live is None:
                self.problem("warehouse_missing", "the snapshot exists but the warehouse is "
                             "missing", f"cp {snap_path} {warehouse['path']}  (or restore from "
                             "warehouse/backups/)", path=warehouse["path"])
        moving = {m["run_id"] for m in inside["ledger"].get("unfinished_moves", [])}
        payload = {"audit_version": AUDIT_VERSION, "generated_at": iso_utc(self.now),
                   "root": str(paths.root), "staging_root": self.config.settings.staging_root,
                   "warehouse": warehouse, "tables": inside["tables"],
                   "staging": self.staging([f for f in staged if f.run_id not in moving]),
                   "quarantine": self.quarantine(), "ledger": inside["ledger"],
                   "runs": inside["runs"], "meta": inside["meta"]}
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        self.problems.sort(key=lambda x: (rank[x["severity"]], x["code"], x.get("table") or "",
                                          x.get("run_id") or "", x.get("path") or ""))
        counts = {s: sum(1 for x in self.problems if x["severity"] == s) for s in SEVERITIES}
        status = "error" if counts["error"] else "warn" if counts["warn"] else "ok"
        payload.update(problems=self.problems, summary={**counts, "status": status})
        return AuditReport(payload)

    def read_snapshot(self, wh: Warehouse, warehouse: dict[str, Any], staged: list[RunFolder],
                      snap_time: datetime | None, live: os.stat_result | None) -> dict[str, Any]:
        """Everything read from the snapshot: blocks, schema, tables, ledger, runs."""
        blocks = warehouse["database"] = facts.database_blocks(wh)
        ratio, total = blocks["free_ratio"], blocks["total_blocks"]
        # The snapshot is a byte copy: its blocks are the live file's as of the last publish.
        file_bytes = live.st_size if live else warehouse["snapshot"]["size_bytes"]
        if ratio > self.limits.free_ratio and file_bytes > self.limits.compact_min_bytes:
            self.problem("free_space", f"{ratio:.0%} of the warehouse's {total} blocks are free "
                         f"({mebibytes(file_bytes)}); DuckDB never gives them back",
                         "lake compact", free_ratio=ratio, size_bytes=file_bytes)
        version = warehouse["schema_version"] = schema_version(wh)
        if version < LATEST_VERSION:
            self.problem("schema_outdated", f"the snapshot has schema v{version}, this Lake "
                         f"needs v{LATEST_VERSION}", "lake init", schema_version=version)
        if not facts.has_ledger(wh):
            return {"tables": self.tables(wh, {}, {}), "ledger": {"checked": False}, "runs": {},
                    "meta": meta_tables(wh)}
        return {"tables": self.tables(wh, facts.watermarks(wh), facts.last_loads(wh)),
                "ledger": self.ledger(wh, staged, snap_time, warehouse["lock_holder"]),
                "runs": self.runs(wh, live, snap_time), "meta": meta_tables(wh)}

    def tables(self, wh: Warehouse, marks: dict[str, tuple[Any, Any]],
               loads: dict[str, datetime]) -> dict[str, Any]:
        """Rows, partitions, key range, watermark, staleness and duplicate keys per table."""
        present = facts.base_tables(wh)
        # A killed repartition's build table: never a table of its own (the next
        # `lake repartition` of that table drops it).
        for build in sorted(n for n in present if n.startswith(BUILD_PREFIX)):
            table = build[len(BUILD_PREFIX):]
            self.problem("repartition_unfinished", f"a repartition of {table} was killed "
                         f"before its swap: {build} is left over; {table} is unchanged",
                         f"lake repartition {table}", table=table)
        present = {n for n in present if not n.startswith(BUILD_PREFIX)}
        specs = recorded_specs(wh)
        out: dict[str, Any] = {}
        for name in sorted(set(self.config.tables) | present):
            contract = self.config.tables.get(name)
            spec = range_column(contract) if contract else None
            mark = marks.get(name, (None, None))
            info = out[name] = {
                "declared": contract is not None, "exists": name in present,
                "merge": contract.merge if contract else None,
                "primary_key": list(contract.primary_key) if contract else [],
                "partition_column": spec.column if spec else None,
                "partition_columns": [s.column for s in contract.partitions] if contract else [],
                "rows": None,
                "partition_count": None, "partitions": [], "partition_min": None,
                "partition_max": None, "watermark": iso_utc(mark[0]),
                "watermark_updated_at": iso_utc(mark[1]),
                "hours_since_watermark": self.hours(mark[0]),
                "last_loaded_at": iso_utc(loads.get(name)),
                "hours_since_load": self.hours(loads.get(name)), "duplicate_keys": None,
                "spec_matches": None}
            if contract is None:
                self.problem("undeclared_table", f"table {name} is in the warehouse but not in "
                             "lake.toml", f"declare [tables.{name}] in lake.toml", table=name)
            if name not in present:
                self.problem("table_empty", f"table {name} has no data yet",
                             f"stage runs for {name}, then lake load", table=name)
                continue
            recorded = specs.get(name)
            if contract is not None and recorded is not None:
                wanted = canonical_spec(contract)
                info["spec_matches"] = recorded == wanted
                if recorded != wanted:
                    self.problem("partition_spec_mismatch", f"lake.toml changes the spec of "
                                 f"{name} ({'; '.join(describe_changes(recorded, wanted))}): "
                                 "loads refuse the table and its runs wait in staging",
                                 f"lake repartition {name} --dry-run, then lake repartition "
                                 f"{name} (or restore the old spec in lake.toml)", table=name)
            keys = list(contract.primary_key) if contract and \
                contract.merge in _KEYED_MERGES else []
            found = facts.table_facts(wh, name, spec.column if spec else None, keys)
            info.update(rows=found.rows, partitions=found.partitions,
                        partition_count=found.partition_count,
                        partition_min=json_value(found.partition_min),
                        partition_max=json_value(found.partition_max),
                        duplicate_keys=found.duplicate_keys)
            if found.duplicate_keys:
                key_sql, q = ", ".join(quote(k) for k in keys), quote(name)
                self.problem("duplicate_keys", f"{found.duplicate_keys} primary key(s) "
                             f"({', '.join(keys)}) of {name} have more than one row",
                             f"lake query 'SELECT {key_sql}, count(*) FROM {q} GROUP BY ALL "
                             "HAVING count(*) > 1'", table=name, count=found.duplicate_keys)
            age = info["hours_since_load"]
            if age is not None and age > self.limits.stale_table_hours:
                self.problem("stale_table", f"table {name} last loaded a run {age:.1f} h ago",
                             f"check the producers of {name}; lake load --table {name}",
                             table=name, hours_since_load=age)
        return out

    def ledger(self, wh: Warehouse, staged: list[RunFolder], snap_time: datetime | None,
               holder: dict[str, Any] | None) -> dict[str, Any]:
        """Compare the snapshot's ledger with staging/ and archive/."""
        by_status, newest = facts.ledger_counts(wh)
        entries = ledger_entries(wh, [(f.table, f.run_id) for f in staged])
        unfinished = [{"table": f.table, "run_id": f.run_id,
                       "status": entries[(f.table, f.run_id)].status, "path": f.location}
                      for f in staged if (f.table, f.run_id) in entries]
        for item in unfinished:
            self.problem("ledger_unfinished_move", f"the ledger says run {item['run_id']} was "
                         f"{item['status']}, but it is still in staging", "lake load", **item)
        archived = self.area.of(layout.ARCHIVE_DIR)
        known = ledger_entries(wh, sorted({(f.table, f.run_id) for f in archived}))
        # A run placed in archive/ after the snapshot was copied is one the snapshot cannot
        # know yet (a load is running, or did not publish). Locally a rename sets the
        # folder's ctime, and the same clock tick (timestamps are coarse) may be newer; in a
        # store its time is the store's clock, allowed clock_skew_minutes.
        skew = timedelta(minutes=self.limits.clock_skew_minutes if self.area.in_store else 0)
        missing: list[dict[str, Any]] = []
        behind: list[dict[str, Any]] = []
        for f in archived:
            if (f.table, f.run_id) in known or f.placed_at is None:  # None: gone meanwhile
                continue
            item = {"table": f.table, "run_id": f.run_id, "path": f.location}
            late = snap_time is not None and f.placed_at >= snap_time - skew
            (behind if late else missing).append(item)
        for item in missing:
            target = self.area.location(layout.STAGING_DIR, item["table"], item["run_id"])
            fix = (f"copy every object of {item['path']}/ to {target}/ (_manifest.json last), "
                   "delete the archived copy, then lake load" if self.area.in_store
                   else f"mv {item['path']} {target} && lake load")
            self.problem("archive_not_in_ledger", f"archived run {item['run_id']} is not in the "
                         "ledger: its rows may be missing from the warehouse", fix, **item)
        if behind:  # a load that has not published yet
            self.problem("snapshot_behind", f"{len(behind)} archived run(s) are newer than the "
                         "snapshot" + ("; a load is running" if holder else ""),
                         "wait for the load to publish; if it persists: "
                         "rm warehouse/lake.read.duckdb && lake init",
                         severity="info" if holder else "warn", count=len(behind), **behind[0])
        return {"checked": True, "runs_by_status": by_status, "newest_recorded_at": iso_utc(newest),
                "archived_runs": len(archived), "unfinished_moves": unfinished,
                "archive_not_in_ledger": missing, "archived_after_snapshot": behind}

    def runs(self, wh: Warehouse, live: os.stat_result | None,
             snap_time: datetime | None) -> dict[str, Any]:
        """Latest run per job and failures in 7 days (the health queries), loader staleness."""
        out: dict[str, Any] = {}
        for key, name in (("latest", "latest_runs"), ("failures_7d", "failures_7d")):
            rows = facts.query_records(wh, HEALTH_QUERIES[name], f"running health query {name}")
            out[key] = [{c: json_value(v) for c, v in r.items()} for r in rows]
        # The query's window follows the database clock; keep it consistent with `now` too.
        since = iso_utc(self.now - timedelta(days=7)) or ""
        out["failures_7d"] = [r for r in out["failures_7d"] if (r["started_at"] or "") >= since]
        last, first = facts.load_times(wh)
        out.update(last_successful_load_at=iso_utc(last),
                   hours_since_successful_load=self.hours(last))
        if out["failures_7d"]:
            latest = out["failures_7d"][0]
            self.problem("failed_runs_7d", f"{len(out['failures_7d'])} failed run(s) in 7 days; "
                         f"latest: {latest['error_type']}: {str(latest['error_message'])[:200]}",
                         "lake health", count=len(out["failures_7d"]))
        # Loads that change something or fail republish the snapshot; one that succeeds with
        # nothing to do only writes the live file. A live file written after the snapshot,
        # and recently, therefore means the loader still runs and succeeds.
        limit, written = self.limits.loader_stale_hours, _mtime(live)
        quiet = written and snap_time and written > snap_time and self.age(written) <= limit
        age = self.hours(last or first)  # never succeeded: since the first attempt
        if age is not None and age > limit and not quiet:
            self.problem("loader_stale", f"no successful load for {age:.1f} h", "check the cron "
                         "job that runs lake load, and lake health", hours=age)
        return out

    def staging(self, waiting: list[RunFolder]) -> dict[str, Any]:
        """Committed runs waiting, uncommitted runs, stray temp files."""
        limit = self.limits.backlog_hours
        # Waiting since its manifest was written (the commit); gone meanwhile: just loaded.
        ages = sorted([(self.folder_age(f.committed_at), f) for f in waiting if f.committed_at],
                      key=lambda x: -x[0])
        late = [(a, f) for a, f in ages if a > limit]
        if late:
            self.problem("backlog", f"{len(late)} committed run(s) waited over {limit:g} h "
                         f"(oldest {late[0][0]:.1f} h)", "lake load", count=len(late),
                         table=late[0][1].table, run_id=late[0][1].run_id)
        by_table = Counter(f.table for _, f in ages)
        # A run folder without a manifest; its age is its last write, temp files included (as
        # `lake cleanup` counts it); without any time it was moved meanwhile.
        uncommitted: list[dict[str, Any]] = [
            {"table": f.table, "run_id": f.run_id, "path": f.location,
             "age_hours": self.folder_age(f.modified_at),
             "abandoned_marker": layout.ABANDONED_NAME in f.markers}
            for f in self.area.of(layout.STAGING_DIR)
            if not f.committed and f.modified_at is not None]
        uncommitted.sort(key=lambda u: (-u["age_hours"], u["path"]))
        abandon = self.config.settings.abandon_after_hours
        old = [u for u in uncommitted if u["age_hours"] > abandon]
        if old:
            self.problem("abandoned_runs", f"{len(old)} uncommitted run(s) untouched for over "
                         f"{abandon:g} h", "lake cleanup", count=len(old), path=old[0]["path"])
        # Every *.tmp-* file or folder, oldest first, where `lake cleanup` looks.
        temps: list[dict[str, Any]] = [
            {"path": t.path, "bytes": t.size, "age_hours": self.age(t.modified_at)}
            for t in list_temp_files(self.config.paths)]
        temps.sort(key=lambda t: (-t["age_hours"], t["path"]))
        stray = [t for t in temps if t["age_hours"] > self.limits.temp_file_hours]
        if stray:
            self.problem("stray_temp_files", f"{len(stray)} temp file(s) older than "
                         f"{self.limits.temp_file_hours:g} h (their writer died)", "lake cleanup",
                         count=len(stray), path=stray[0]["path"])
        return {"committed": {"count": len(ages), "by_table": dict(sorted(by_table.items())),
                              "oldest_run_id": ages[0][1].run_id if ages else None,
                              "oldest_age_hours": ages[0][0] if ages else None},
                "uncommitted": {"count": len(uncommitted), "runs": uncommitted, "oldest_age_hours":
                                uncommitted[0]["age_hours"] if uncommitted else None},
                "temp_files": {"count": len(temps), "files": temps,
                               "oldest_age_hours": temps[0]["age_hours"] if temps else None}}

    def quarantine(self) -> dict[str, Any]:
        """Quarantined runs per table: count, oldest, reason codes; a problem per table."""
        tables: dict[str, Any] = {}
        for f in self.area.of(layout.QUARANTINE_DIR):
            entry = tables.setdefault(f.table, {"runs": 0, "oldest_run_id": None,
                                                "oldest_age_hours": None, "reasons": {}})
            entry["runs"] += 1
            code = f.reason if f.reason is not None else UNKNOWN_REASON
            entry["reasons"][code] = entry["reasons"].get(code, 0) + 1
            parts = layout.parse_run_id(f.run_id)
            since = parts.created_at if parts else f.modified_at
            age = None if since is None else self.folder_age(since)
            if age is not None and age > (entry["oldest_age_hours"] or -1.0):
                entry["oldest_run_id"], entry["oldest_age_hours"] = f.run_id, age
        for table, entry in tables.items():
            self.problem("quarantined_runs", f"{entry['runs']} run(s) of {table} in quarantine "
                         f"({', '.join(sorted(entry['reasons']))})", "lake quarantine list",
                         table=table, count=entry["runs"])
        return {"count": sum(e["runs"] for e in tables.values()),
                "tables": dict(sorted(tables.items()))}


# The column that says when a meta table's row was written, in order of preference.
_META_TIME_COLUMNS = ("recorded_at", "checked_at", "updated_at", "ended_at", "started_at",
                      "loaded_at", "applied_at")


def meta_tables(wh: Warehouse) -> dict[str, dict[str, Any]]:
    """Row count and newest row time of every ``meta`` table (issue 14): an operator sees at a
    glance which parts of the run log are written, and how recently."""
    cols: dict[str, list[str]] = {}
    for table, column in wh.fetchall(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'meta' ORDER BY table_name, ordinal_position",
            action="listing meta tables"):
        cols.setdefault(str(table), []).append(str(column))
    out: dict[str, dict[str, Any]] = {}
    for table, names in sorted(cols.items()):
        time_column = next((c for c in _META_TIME_COLUMNS if c in names), None)
        newest = f"max({quote(time_column)})" if time_column else "NULL"
        row = wh.fetchone(f"SELECT count(*), {newest} FROM meta.{quote(table)}",
                          action=f"counting meta.{table}")
        out[table] = {"rows": int(row[0]) if row else 0, "time_column": time_column,
                      "newest": iso_utc(row[1]) if row and row[1] is not None else None}
    return out


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:  # moved meanwhile by a loader or cleanup
        return None


def _mtime(info: os.stat_result | None) -> datetime | None:
    return None if info is None else datetime.fromtimestamp(info.st_mtime, UTC)


__all__ = ["AUDIT_KEYS", "AUDIT_VERSION", "PROBLEM_CODES", "PROBLEM_KEYS", "SEVERITIES",
           "AuditReport", "AuditThresholds", "audit_lake"]
