"""`lake audit`: a read-only health report of files, tables, staging, quarantine and ledger.

The audit never takes the warehouse lock and never opens ``lake.duckdb``: DuckDB's file lock
would block the loader even for a read-only open. It reads the published snapshot
``lake.read.duckdb`` and only ``stat``s the live file. The payload is stable JSON, documented
key by key in ``docs/AUDIT.md``; every problem carries a severity, a code and a fix.

With staging in an object store (``[lake] staging_root``) the staging, quarantine and archive
parts come from three listings of the bucket (with each object's last-modified time, where
the local audit reads mtimes and ctimes) and one concurrent read of the quarantine reasons;
their paths are URLs. The warehouse part is local as always.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from lakehouse import layout
from lakehouse.areas import staging_area
from lakehouse.config import LakeConfig
from lakehouse.db import Warehouse, quote
from lakehouse.errors import LakehouseError
from lakehouse.fsio import MARKER_MAX_BYTES, read_regular
from lakehouse.ledger import ledger_entries
from lakehouse.lock import read_holder
from lakehouse.migrations import LATEST_VERSION, schema_version
from lakehouse.object_area import ObjectArea
from lakehouse.object_store import StagingUnavailableError, StoredObject
from lakehouse.observability import HEALTH_QUERIES
from lakehouse.publish import open_snapshot
from lakehouse.staged import RunRef, discover_runs, uncommitted_runs

AUDIT_VERSION = 1
AUDIT_KEYS = ("audit_version", "generated_at", "root", "staging_root", "warehouse", "tables",
              "staging", "quarantine", "ledger", "runs", "problems", "summary")
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
    """The audit's JSON payload, with helpers for the CLI."""

    payload: dict[str, Any]

    @property
    def problems(self) -> list[dict[str, Any]]:
        """Every problem found, errors first."""
        return list(self.payload["problems"])

    @property
    def has_errors(self) -> bool:
        """True when a problem of severity error was found (`--strict` exits 3)."""
        return self.payload["summary"]["error"] > 0

    def format_text(self) -> str:
        """A human-readable report: warehouse, tables, staging, quarantine, problems."""
        p, s = self.payload, self.payload["summary"]
        wh, snap, db = p["warehouse"], p["warehouse"]["snapshot"], p["warehouse"]["database"]
        blocks = (f"{db['free_blocks']}/{db['total_blocks']} blocks free ({db['free_ratio']:.0%})"
                  if db else "blocks unknown")
        st = p["staging"]
        waiting = [f"{title} {st[k]['count']} (oldest {_age(st[k]['oldest_age_hours'])})"
                   for k, title in (("committed", "committed runs waiting:"),
                                    ("uncommitted", "uncommitted runs:"),
                                    ("temp_files", "temp files:"))]
        staged_in = f" (staging in {p['staging_root']})" if p["staging_root"] else ""
        return "\n".join([
            f"Lake audit of {p['root']}{staged_in} at {p['generated_at']}: {s['error']} error(s), "
            f"{s['warn']} warning(s), {s['info']} info",
            "warehouse:", f"  {wh['path']} {_size(wh['size_bytes'])}; {snap['path']} "
            f"{_size(snap['size_bytes'])}, published {_age(snap['age_hours'])} ago; {blocks}; "
            f"schema v{wh['schema_version']}",
            "tables:", *_grid(["table", "rows", "partitions", "min", "max", "watermark",
                               "since load", "dup keys"],
                              [[n, t["rows"], t["partition_count"], t["partition_min"],
                                t["partition_max"], t["watermark"], _age(t["hours_since_load"]),
                                t["duplicate_keys"]] for n, t in p["tables"].items()]),
            "staging:", *[f"  {line}" for line in waiting],
            "quarantine:", *_grid(["table", "runs", "oldest run", "reasons"],
                                  [[n, q["runs"], q["oldest_run_id"], json.dumps(q["reasons"])]
                                   for n, q in p["quarantine"]["tables"].items()]),
            "problems:", *_grid(["severity", "code", "message", "fix"],
                                [[x["severity"], x["code"], x["message"], x["fix"]]
                                 for x in p["problems"]])])


def audit_lake(config: LakeConfig, *, now: datetime | None = None,
               thresholds: AuditThresholds | None = None) -> AuditReport:
    """Audit a lake root read-only, from the published snapshot and the files on disk (and
    the object store holding staging, if ``[lake] staging_root`` names one)."""
    when = now or datetime.now(UTC)
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return _Audit(config, when, thresholds or AuditThresholds()).run()


@dataclass
class _Bucket:
    """One look at staging, quarantine and archive in an object store: each a listing of
    (table, run folder) -> objects, plus the quarantine reasons' text."""

    store: ObjectArea
    staging: dict[tuple[str, str], dict[str, StoredObject]] = field(default_factory=dict)
    quarantine: dict[tuple[str, str], dict[str, StoredObject]] = field(default_factory=dict)
    archive: dict[tuple[str, str], dict[str, StoredObject]] = field(default_factory=dict)
    reasons: dict[str, bytes | OSError] = field(default_factory=dict)  # or why not read

    def read(self) -> None:
        """List the three folders (one paginated listing each) and read every reason at once.

        Raises:
            StagingUnavailableError: the store did not answer.
        """
        store = self.store
        self.staging = store.runs_detail(layout.STAGING_DIR)
        self.quarantine = {k: v for k, v in store.runs_detail(layout.QUARANTINE_DIR).items()
                           if not layout.is_temp_name(k[1])}
        self.archive = {k: v for k, v in store.runs_detail(layout.ARCHIVE_DIR).items()
                        if not layout.is_temp_name(k[1])}
        self.reasons = dict(store.read_many({
            f"{store.folder(layout.QUARANTINE_DIR, t, r)}/{layout.REASON_NAME}":
                names[layout.REASON_NAME].size
            for (t, r), names in self.quarantine.items() if layout.REASON_NAME in names}))

    def time(self, kind: str, table: str, run: str, name: str | None = None) -> datetime | None:
        """When one object of a listed run (``name``), or its newest, was last modified."""
        objects = getattr(self, kind).get((table, run), {})
        return self.store.newest(self.store.folder(kind, table, run), objects, name)


@dataclass
class _Audit:
    config: LakeConfig
    now: datetime
    limits: AuditThresholds
    problems: list[dict[str, Any]] = field(default_factory=list)
    bucket: _Bucket | None = None  # staging in an object store: what the audit listed there

    def problem(self, code: str, message: str, fix: str, **context: Any) -> None:
        self.problems.append({"severity": context.pop("severity", PROBLEM_CODES[code]),
                              "code": code, "message": message, "fix": fix, **context})

    def rel(self, path: Path) -> str:
        return path.relative_to(self.config.paths.root).as_posix()

    def hours(self, since: datetime | None) -> float | None:
        return None if since is None else self.age(since)

    def age(self, since: datetime) -> float:
        return round((self.now - _aware(since)).total_seconds() / 3600, 2)

    def store_age(self, since: datetime) -> float:
        """The age of a store's time: never below 0 (its clock may run ahead of ours)."""
        return max(self.age(since), 0.0)

    def where(self, ref: RunRef) -> str:
        """A staged run's path: relative to the root, or its URL in an object store."""
        if ref.store is None:
            return self.rel(ref.local_path)
        url: str = ref.store.url(str(ref.path))
        return url

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
            "modified_at": _iso(_mtime(live)), "lock_holder": read_holder(paths),
            "snapshot": {"path": snap_path, "exists": snap is not None,
                         "size_bytes": snap.st_size if snap else None,
                         "published_at": _iso(_mtime(snap)), "age_hours": self.hours(_mtime(snap))},
            "database": None, "schema_version": None, "latest_schema_version": LATEST_VERSION}
        area = staging_area(self.config)
        if isinstance(area, ObjectArea):
            self.bucket = _Bucket(area)
            try:
                self.bucket.read()
            except StagingUnavailableError as exc:
                self.bucket = _Bucket(area)  # audited as empty, with the problem
                self.problem("staging_unavailable", str(exc), "check the staging_root URL, "
                             "the store's credentials and the network; lake audit again",
                             path=area.description)
            staged = area.committed(self.bucket.staging)
        else:
            staged = discover_runs(paths)
        inside: dict[str, Any] = {"tables": {}, "ledger": {"checked": False}, "runs": {}}
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
        payload = {"audit_version": AUDIT_VERSION, "generated_at": _iso(self.now),
                   "root": str(paths.root), "staging_root": self.config.settings.staging_root,
                   "warehouse": warehouse, "tables": inside["tables"],
                   "staging": self.staging([r for r in staged if r.run_id not in moving]),
                   "quarantine": self.quarantine(), "ledger": inside["ledger"],
                   "runs": inside["runs"]}
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        self.problems.sort(key=lambda x: (rank[x["severity"]], x["code"], x.get("table") or "",
                                          x.get("run_id") or "", x.get("path") or ""))
        counts = {s: sum(1 for x in self.problems if x["severity"] == s) for s in SEVERITIES}
        status = "error" if counts["error"] else "warn" if counts["warn"] else "ok"
        payload.update(problems=self.problems, summary={**counts, "status": status})
        return AuditReport(payload)

    def read_snapshot(self, wh: Warehouse, warehouse: dict[str, Any], staged: list[RunRef],
                      snap_time: datetime | None, live: os.stat_result | None) -> dict[str, Any]:
        """Everything read from the snapshot: blocks, schema, tables, ledger, runs."""
        cols, rows = wh.query("SELECT * FROM pragma_database_size()", action="reading sizes")
        size = dict(zip(cols, rows[0], strict=True)) if rows else {}
        total, free = int(size.get("total_blocks") or 0), int(size.get("free_blocks") or 0)
        used = int(size.get("used_blocks") or (total - free))
        # 1 - used/total: free_blocks can also count blocks past the end of the file.
        ratio = round(max(total - used, 0) / total, 4) if total else 0.0
        warehouse["database"] = {"block_size": size.get("block_size"), "total_blocks": total,
                                 "used_blocks": size.get("used_blocks"), "free_blocks": free,
                                 "free_ratio": ratio}
        # The snapshot is a byte copy: its blocks are the live file's as of the last publish.
        file_bytes = live.st_size if live else warehouse["snapshot"]["size_bytes"]
        if ratio > self.limits.free_ratio and file_bytes > self.limits.compact_min_bytes:
            self.problem("free_space", f"{ratio:.0%} of the warehouse's {total} blocks are free "
                         f"({_size(file_bytes)}); DuckDB never gives them back", "lake compact",
                         free_ratio=ratio, size_bytes=file_bytes)
        version = warehouse["schema_version"] = schema_version(wh)
        if version < LATEST_VERSION:
            self.problem("schema_outdated", f"the snapshot has schema v{version}, this Lake "
                         f"needs v{LATEST_VERSION}", "lake init", schema_version=version)
        if not wh.columns("meta", "staged_runs"):
            return {"tables": self.tables(wh, {}, {}), "ledger": {"checked": False}, "runs": {}}
        marks = {r[0]: r[1:] for r in wh.fetchall(
            "SELECT asset_key, watermark_ts, updated_at FROM meta.asset_watermarks "
            "WHERE scope_key = 'ALL'")}
        loads = dict(wh.fetchall("SELECT table_name, max(recorded_at) FROM meta.staged_runs "
                                 "WHERE status = 'loaded' GROUP BY 1"))
        return {"tables": self.tables(wh, marks, loads),
                "ledger": self.ledger(wh, staged, snap_time, warehouse["lock_holder"]),
                "runs": self.runs(wh, live, snap_time)}

    def tables(self, wh: Warehouse, marks: dict[str, tuple[Any, ...]],
               loads: dict[str, datetime]) -> dict[str, Any]:
        """Rows, partitions, key range, watermark, staleness and duplicate keys per table."""
        present = {r[0] for r in wh.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_type = 'BASE TABLE'")}
        out: dict[str, Any] = {}
        for name in sorted(set(self.config.tables) | present):
            contract = self.config.tables.get(name)
            spec = contract.partition_by if contract else None
            mark = marks.get(name, (None, None))
            info = out[name] = {
                "declared": contract is not None, "exists": name in present,
                "merge": contract.merge if contract else None,
                "primary_key": list(contract.primary_key) if contract else [],
                "partition_column": spec.column if spec else None, "rows": None,
                "partition_count": None, "partitions": [], "partition_min": None,
                "partition_max": None, "watermark": _iso(mark[0]),
                "watermark_updated_at": _iso(mark[1]), "hours_since_watermark": self.hours(mark[0]),
                "last_loaded_at": _iso(loads.get(name)),
                "hours_since_load": self.hours(loads.get(name)), "duplicate_keys": None}
            if contract is None:
                self.problem("undeclared_table", f"table {name} is in the warehouse but not in "
                             "lake.toml", f"declare [tables.{name}] in lake.toml", table=name)
            if name not in present:
                self.problem("table_empty", f"table {name} has no data yet",
                             f"stage runs for {name}, then lake load", table=name)
                continue
            q, columns = quote(name), {c.lower() for c, _ in wh.columns("main", name)}
            info["rows"] = int((wh.fetchone(f"SELECT count(*) FROM {q}") or (0,))[0])
            if layout.PARTITION_COLUMN in columns:
                parts = wh.fetchall(f"SELECT {layout.PARTITION_COLUMN}, count(*) FROM {q} "
                                    f"WHERE {layout.PARTITION_COLUMN} IS NOT NULL "
                                    "GROUP BY 1 ORDER BY 1")
                info["partitions"] = [{"partition": k, "rows": int(n)} for k, n in parts]
                info["partition_count"] = len(parts)
            if spec and spec.column.lower() in columns:
                col = quote(spec.column)
                low, high = wh.fetchone(f"SELECT min({col}), max({col}) FROM {q}") or (None, None)
                info["partition_min"], info["partition_max"] = _json(low), _json(high)
            keys = list(contract.primary_key) if contract else []
            if contract and keys and contract.merge in _KEYED_MERGES and \
                    all(k.lower() in columns for k in keys):
                key_sql = ", ".join(quote(k) for k in keys)
                dups = int((wh.fetchone(f"SELECT count(*) FROM (SELECT 1 FROM {q} GROUP BY "
                                        f"{key_sql} HAVING count(*) > 1)") or (0,))[0])
                info["duplicate_keys"] = dups
                if dups:
                    self.problem("duplicate_keys", f"{dups} primary key(s) ({', '.join(keys)}) "
                                 f"of {name} have more than one row", f"lake query 'SELECT "
                                 f"{key_sql}, count(*) FROM {q} GROUP BY ALL HAVING count(*) > 1'",
                                 table=name, count=dups)
            age = info["hours_since_load"]
            if age is not None and age > self.limits.stale_table_hours:
                self.problem("stale_table", f"table {name} last loaded a run {age:.1f} h ago",
                             f"check the producers of {name}; lake load --table {name}",
                             table=name, hours_since_load=age)
        return out

    def ledger(self, wh: Warehouse, staged: list[RunRef], snap_time: datetime | None,
               holder: dict[str, Any] | None) -> dict[str, Any]:
        """Compare the snapshot's ledger with staging/ and archive/."""
        by_status = dict(wh.fetchall("SELECT status, count(*) FROM meta.staged_runs "
                                     "GROUP BY 1 ORDER BY 1"))
        newest = (wh.fetchone("SELECT max(recorded_at) FROM meta.staged_runs") or (None,))[0]
        entries = ledger_entries(wh, [(r.table, r.run_id) for r in staged])
        unfinished = [{"table": r.table, "run_id": r.run_id,
                       "status": entries[(r.table, r.run_id)].status,
                       "path": self.where(r)} for r in staged
                      if (r.table, r.run_id) in entries]
        for item in unfinished:
            self.problem("ledger_unfinished_move", f"the ledger says run {item['run_id']} was "
                         f"{item['status']}, but it is still in staging", "lake load", **item)
        if self.bucket is not None:
            return self.ledger_in_store(wh, self.bucket, by_status, newest, unfinished,
                                        snap_time, holder)
        archived = _run_folders(self.config.paths.archive)
        known = ledger_entries(wh, sorted({(table, run_id) for table, run_id, _ in archived}))
        missing: list[dict[str, Any]] = []
        behind: list[dict[str, Any]] = []
        for table, run_id, path in archived:
            info = _stat(path)
            if (table, run_id) in known or info is None:
                continue
            item = {"table": table, "run_id": run_id, "path": self.rel(path)}
            # A rename sets ctime: a run moved into archive/ after the snapshot was copied is
            # one the snapshot cannot know yet (a load is running, or did not publish).
            moved = datetime.fromtimestamp(info.st_ctime, UTC)
            # Same clock tick (timestamps are coarse): it may be newer, so not an error yet.
            (behind if snap_time is not None and moved >= snap_time else missing).append(item)
        for item in missing:
            self.problem("archive_not_in_ledger", f"archived run {item['run_id']} is not in the "
                         "ledger: its rows may be missing from the warehouse",
                         f"mv {item['path']} staging/{item['table']}/{item['run_id']} && "
                         "lake load", **item)
        self.report_behind(behind, holder)
        return {"checked": True, "runs_by_status": by_status, "newest_recorded_at": _iso(newest),
                "archived_runs": len(archived), "unfinished_moves": unfinished,
                "archive_not_in_ledger": missing, "archived_after_snapshot": behind}

    def ledger_in_store(self, wh: Warehouse, bucket: _Bucket, by_status: dict[str, int],
                        newest: datetime | None, unfinished: list[dict[str, Any]],
                        snap_time: datetime | None, holder: dict[str, Any] | None
                        ) -> dict[str, Any]:
        """The archive half of :meth:`ledger` for an object store: a run's archive time is
        its archived manifest's last-modified time (copied last by the move), where the local
        audit reads the folder's ctime."""
        store = bucket.store
        archived = [(t, _run_id_of_folder(r), r) for t, r in sorted(bucket.archive)]
        known = ledger_entries(wh, sorted({(table, run_id) for table, run_id, _ in archived}))
        missing: list[dict[str, Any]] = []
        behind: list[dict[str, Any]] = []
        for table, run_id, name in archived:
            if (table, run_id) in known:
                continue
            moved = (bucket.time(layout.ARCHIVE_DIR, table, name, layout.MANIFEST_NAME)
                     or bucket.time(layout.ARCHIVE_DIR, table, name))  # no manifest yet: copying
            if moved is None:
                continue
            item = {"table": table, "run_id": run_id,
                    "path": store.url(store.folder(layout.ARCHIVE_DIR, table, name))}
            skew = timedelta(minutes=self.limits.clock_skew_minutes)
            late = snap_time is not None and moved >= snap_time - skew
            (behind if late else missing).append(item)
        for item in missing:
            target = store.url(store.folder(layout.STAGING_DIR, item["table"], item["run_id"]))
            self.problem("archive_not_in_ledger", f"archived run {item['run_id']} is not in the "
                         "ledger: its rows may be missing from the warehouse",
                         f"copy every object of {item['path']}/ to {target}/ (_manifest.json "
                         "last), delete the archived copy, then lake load", **item)
        self.report_behind(behind, holder)
        return {"checked": True, "runs_by_status": by_status, "newest_recorded_at": _iso(newest),
                "archived_runs": len(archived), "unfinished_moves": unfinished,
                "archive_not_in_ledger": missing, "archived_after_snapshot": behind}

    def report_behind(self, behind: list[dict[str, Any]], holder: dict[str, Any] | None) -> None:
        """Archived runs newer than the snapshot: a load that has not published yet."""
        if behind:
            self.problem("snapshot_behind", f"{len(behind)} archived run(s) are newer than the "
                         "snapshot" + ("; a load is running" if holder else ""),
                         "wait for the load to publish; if it persists: "
                         "rm warehouse/lake.read.duckdb && lake init",
                         severity="info" if holder else "warn", count=len(behind), **behind[0])

    def runs(self, wh: Warehouse, live: os.stat_result | None,
             snap_time: datetime | None) -> dict[str, Any]:
        """Latest run per job and failures in 7 days (the health queries), loader staleness."""
        out: dict[str, Any] = {}
        for key, name in (("latest", "latest_runs"), ("failures_7d", "failures_7d")):
            cols, rows = wh.query(HEALTH_QUERIES[name], action=f"running health query {name}")
            out[key] = [{c: _json(v) for c, v in zip(cols, r, strict=True)} for r in rows]
        # The query's window follows the database clock; keep it consistent with `now` too.
        since = _iso(self.now - timedelta(days=7)) or ""
        out["failures_7d"] = [r for r in out["failures_7d"] if (r["started_at"] or "") >= since]
        last, first = wh.fetchone(
            "SELECT max(ended_at) FILTER (WHERE status = 'success'), min(started_at) "
            "FROM meta.ingestion_runs WHERE job_name = 'load'") or (None, None)
        out.update(last_successful_load_at=_iso(last), hours_since_successful_load=self.hours(last))
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

    def staging(self, waiting: list[RunRef]) -> dict[str, Any]:
        """Committed runs waiting, uncommitted runs, stray temp files."""
        limit = self.limits.backlog_hours
        if self.bucket is not None:
            # Waiting since its manifest was PUT (the commit), by the store's clock.
            bucket = self.bucket
            stamped = [(bucket.time(layout.STAGING_DIR, r.table, r.run_id, layout.MANIFEST_NAME),
                        r) for r in waiting]
            ages = sorted([(self.store_age(t), r) for t, r in stamped if t], key=lambda x: -x[0])
        else:
            # Waiting since its manifest was written (the commit); gone meanwhile: just loaded.
            stamped = [(_mtime(_stat(r.local_path / layout.MANIFEST_NAME)), r) for r in waiting]
            ages = sorted([(self.age(t), r) for t, r in stamped if t], key=lambda x: -x[0])
        late = [(a, r) for a, r in ages if a > limit]
        if late:
            self.problem("backlog", f"{len(late)} committed run(s) waited over {limit:g} h "
                         f"(oldest {late[0][0]:.1f} h)", "lake load", count=len(late),
                         table=late[0][1].table, run_id=late[0][1].run_id)
        by_table = Counter(r.table for _, r in ages)
        uncommitted = (self.uncommitted_in_store(self.bucket) if self.bucket is not None
                       else self.uncommitted_on_disk())
        uncommitted.sort(key=lambda u: (-u["age_hours"], u["path"]))
        abandon = self.config.settings.abandon_after_hours
        old = [u for u in uncommitted if u["age_hours"] > abandon]
        if old:
            self.problem("abandoned_runs", f"{len(old)} uncommitted run(s) untouched for over "
                         f"{abandon:g} h", "lake cleanup", count=len(old), path=old[0]["path"])
        temps = self.temp_files()
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

    def uncommitted_on_disk(self) -> list[dict[str, Any]]:
        """Run folders in ``staging/`` without a manifest, with the age of their last write."""
        uncommitted: list[dict[str, Any]] = []
        for folder in uncommitted_runs(self.config.paths):
            # Its age is its last activity, temp files included (as `lake cleanup` counts it).
            seen = [t for t in (_mtime(_stat(p)) for p in [folder, *_entries(folder)]) if t]
            if seen:  # gone meanwhile: a loader or cleanup moved it
                uncommitted.append({
                    "table": folder.parent.name, "run_id": folder.name, "path": self.rel(folder),
                    "age_hours": self.age(max(seen)),
                    "abandoned_marker": _stat(folder / layout.ABANDONED_NAME) is not None})
        return uncommitted

    def uncommitted_in_store(self, bucket: _Bucket) -> list[dict[str, Any]]:
        """Run folders in the bucket's staging without a manifest; a run's age is its newest
        object's (its last PUT), as `lake cleanup` counts it."""
        found: list[dict[str, Any]] = []
        for (table, run_id), names in bucket.staging.items():
            last = (None if layout.MANIFEST_NAME in names
                    else bucket.time(layout.STAGING_DIR, table, run_id))
            if last is not None:
                found.append({
                    "table": table, "run_id": run_id,
                    "path": bucket.store.url(bucket.store.folder(layout.STAGING_DIR, table,
                                                                 run_id)),
                    "age_hours": self.store_age(last),
                    "abandoned_marker": layout.ABANDONED_NAME in names})
        return found

    def temp_files(self) -> list[dict[str, Any]]:
        """Every ``*.tmp-*`` file or folder, oldest first, where `lake cleanup` looks."""
        found: list[dict[str, Any]] = []
        paths = self.config.paths
        for base in (paths.staging, paths.warehouse_dir, paths.quarantine, paths.archive):
            for folder, dirs, files in os.walk(base):
                for name in [*dirs, *files]:
                    info = _stat(Path(folder, name)) if layout.is_temp_name(name) else None
                    if info is not None:
                        found.append({"path": self.rel(Path(folder, name)), "bytes": info.st_size,
                                      "age_hours": self.age(_mtime(info) or self.now)})
                dirs[:] = [d for d in dirs if not layout.is_temp_name(d)]  # counted once
        return sorted(found, key=lambda t: (-t["age_hours"], t["path"]))

    def quarantine(self) -> dict[str, Any]:
        """Quarantined runs per table: count, oldest, reason codes."""
        if self.bucket is not None:
            return self.quarantine_in_store(self.bucket)
        tables: dict[str, Any] = {}
        for table, run_id, path in _run_folders(self.config.paths.quarantine):
            entry = tables.setdefault(table, {"runs": 0, "oldest_run_id": None,
                                              "oldest_age_hours": None, "reasons": {}})
            entry["runs"] += 1
            # Never through a link, never blocking on a FIFO, never more than a marker's cap:
            # what a producer left in an abandoned run ends up here. Unreadable: "unknown".
            code = "unknown"
            if not path.is_symlink():
                try:
                    code = _reason_code(read_regular(path / layout.REASON_NAME,
                                                     MARKER_MAX_BYTES))
                except OSError:
                    pass
            entry["reasons"][code] = entry["reasons"].get(code, 0) + 1
            parts = layout.parse_run_id(run_id)
            age = self.hours(parts.created_at if parts else _mtime(_stat(path)))
            if age is not None and age > (entry["oldest_age_hours"] or -1.0):
                entry["oldest_run_id"], entry["oldest_age_hours"] = run_id, age
        return self.report_quarantine(tables)

    def quarantine_in_store(self, bucket: _Bucket) -> dict[str, Any]:
        """:meth:`quarantine` from the bucket's listing and the reasons read with it."""
        tables: dict[str, Any] = {}
        for table, name in sorted(bucket.quarantine):
            run_id = _run_id_of_folder(name)
            entry = tables.setdefault(table, {"runs": 0, "oldest_run_id": None,
                                              "oldest_age_hours": None, "reasons": {}})
            entry["runs"] += 1
            reason_path = (f"{bucket.store.folder(layout.QUARANTINE_DIR, table, name)}/"
                           f"{layout.REASON_NAME}")
            code = _reason_code(bucket.reasons.get(reason_path))
            entry["reasons"][code] = entry["reasons"].get(code, 0) + 1
            parts = layout.parse_run_id(run_id)
            since = parts.created_at if parts else bucket.time(layout.QUARANTINE_DIR, table, name)
            age = None if since is None else self.store_age(since)
            if age is not None and age > (entry["oldest_age_hours"] or -1.0):
                entry["oldest_run_id"], entry["oldest_age_hours"] = run_id, age
        return self.report_quarantine(tables)

    def report_quarantine(self, tables: dict[str, Any]) -> dict[str, Any]:
        """One ``quarantined_runs`` problem per table, and the section's payload."""
        for table, entry in tables.items():
            self.problem("quarantined_runs", f"{entry['runs']} run(s) of {table} in quarantine "
                         f"({', '.join(sorted(entry['reasons']))})", "lake quarantine list",
                         table=table, count=entry["runs"])
        return {"count": sum(e["runs"] for e in tables.values()),
                "tables": dict(sorted(tables.items()))}


def _run_folders(base: Path) -> list[tuple[str, str, Path]]:
    """(table, run id, path) of every run folder under archive/ or quarantine/."""
    found = []
    for table_dir in _children(base):
        if table_dir.is_dir() and not table_dir.is_symlink():
            for run in _children(table_dir):
                found.append((table_dir.name, _run_id_of_folder(run.name), run))
    return found


def _reason_code(data: bytes | OSError | None) -> str:
    """The code in a ``_reason.json``'s bytes; "unknown" when it was not read or holds none."""
    if not isinstance(data, bytes):
        return "unknown"
    try:
        return str(json.loads(data)["code"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return "unknown"


def _run_id_of_folder(name: str) -> str:
    """A run folder's run id: a second copy of a run is kept as ``<run_id>.N`` (evidence is
    never overwritten)."""
    if layout.parse_run_id(name) is None and name.rpartition(".")[2].isdigit():
        return name.rpartition(".")[0]
    return name


def _children(folder: Path) -> list[Path]:
    """Entries of a folder without hidden and temp names."""
    return [p for p in _entries(folder)
            if not p.name.startswith(".") and not layout.is_temp_name(p.name)]


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:  # gone meanwhile, or not a folder
        return []


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:  # moved meanwhile by a loader or cleanup
        return None


def _mtime(info: os.stat_result | None) -> datetime | None:
    return None if info is None else datetime.fromtimestamp(info.st_mtime, UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # DuckDB holds naive UTC


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _aware(value).isoformat()


def _json(value: Any) -> Any:
    """A JSON-ready form of a value read from DuckDB."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return _iso(value)
    return value.isoformat() if isinstance(value, date) else str(value)


def _size(n: int | None) -> str:
    return "missing" if n is None else f"{n / 2**20:.1f} MiB"


def _age(hours: float | None) -> str:
    return "-" if hours is None else f"{hours:.1f} h"


def _grid(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Rows as left-aligned columns, indented under a section title."""
    if not rows:
        return ["  (none)"]
    cells = [headers, *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]


__all__ = ["AUDIT_KEYS", "AUDIT_VERSION", "PROBLEM_CODES", "PROBLEM_KEYS", "AuditReport",
           "AuditThresholds", "audit_lake"]
