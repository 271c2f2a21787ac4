"""How the CLI shows a job's report: text for people, or JSON with --json.

Report renderers return the text (``render_<job>``); the query writers stream rows as they
come (``write_<format>_rows``); :class:`Progress` and :func:`log_line` speak on stderr while a
job runs. Every table is drawn by :func:`draw_table`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from lakehouse.jsonable import json_default

if TYPE_CHECKING:
    from loader.audit import AuditReport

TABLE_MAX_ROWS = 1000  # the table format is for a terminal: more goes through csv or json
_MIB = 1024 * 1024


# -- shared -------------------------------------------------------------------------------
def draw_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, indent: str = "",
               missing: str = "NULL", rule: bool = True, strip: bool = False,
               empty: str | None = None) -> list[str]:
    """Rows as left-aligned columns under their headers, one line each.

    Args:
        indent: put before every line (a table under a section title).
        missing: how a None shows.
        rule: draw a line of dashes under the headers.
        strip: drop the trailing spaces of each line.
        empty: with no rows, this one line (indented) instead of the headers.
    """
    if not rows and empty is not None:
        return [indent + empty]
    cells = [[_cell(v, missing) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(headers)]
    lines = [list(headers), *([["-" * w for w in widths]] if rule else []), *cells]
    text = [indent + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
            for r in lines]
    return [line.rstrip() for line in text] if strip else text


def _cell(value: Any, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def emit_json(data: Any) -> None:
    """Print data as JSON (dates and decimals as text)."""
    click.echo(json.dumps(data, indent=2, default=json_default))


def log_line(message: str) -> None:
    """One progress line on stderr (stdout keeps only the report)."""
    click.echo(message, err=True)


# -- init ---------------------------------------------------------------------------------
def render_init(report: Any) -> str:
    """`lake init`: what was created, the schema version and the declared tables."""
    applied = f" (applied {report.migrations_applied})" if report.migrations_applied else ""
    return "\n".join([
        f"lake root {report.root}",
        f"  created: {', '.join(report.created) if report.created else 'nothing (exists)'}",
        f"  warehouse schema version {report.schema_version}{applied}",
        f"  tables declared: {', '.join(report.tables) or 'none yet (edit lake.toml)'}"])


def init_as_dict(report: Any) -> dict[str, Any]:
    """`lake init --json`."""
    return {"root": str(report.root), "created": report.created,
            "migrations_applied": report.migrations_applied,
            "schema_version": report.schema_version, "tables": report.tables}


# -- load ---------------------------------------------------------------------------------
class Progress:
    """A load's progress: a bar on a terminal (stderr); plain log lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.counts: dict[str, int] = {}
        self.rows = 0
        self.bar: Any = None

    def start(self, total: int) -> None:
        """Called with the number of runs found: open the bar."""
        if self.tty and total:
            self.bar = click.progressbar(length=total, label="loading runs", file=sys.stderr,
                                         item_show_func=self._describe)
            self.bar.__enter__()

    def _describe(self, _item: Any) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return f"{parts}; {self.rows:,} rows" if parts else ""

    def __call__(self, outcome: Any) -> None:
        if not self.enabled:
            return
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        self.rows += outcome.rows_loaded
        if self.bar is not None:
            self.bar.update(1, outcome)
        elif not self.tty and outcome.status != "loaded":
            click.echo(f"{outcome.status} {outcome.table}/{outcome.run_id}"
                       + (f" [{outcome.reason_code}] {outcome.message}" if outcome.message else ""),
                       err=True)
        elif not self.tty and self.counts["loaded"] % 500 == 0:
            click.echo(f"loaded {self.counts['loaded']} runs, {self.rows:,} rows", err=True)

    def close(self) -> None:
        """Close the bar (if one is open)."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def render_load(report: Any) -> str:
    """`lake load` (and `--dry-run`): counts, then one line per run that needs a look."""
    if report.dry_run:
        more = "".join(f", {n} {what}" for n, what in (
            (report.count("would_skip"), "would be skipped as repeats"),
            (report.count("would_recover"), "would only finish moving (already in the ledger)"))
            if n)
        lines = [f"dry run: {report.count('would_load')} runs would load, "
                 f"{report.count('would_quarantine')} would be quarantined{more}"]
        for r in report.runs:
            line = f"  {r.status:17} {r.table}/{r.run_id}"
            if r.status == "would_load":
                line += f"  {r.rows_loaded:,} rows"
                if r.rows_rejected:
                    line += f", {r.rows_rejected:,} dropped: [{r.reason_code}] {r.message}"
            elif r.reason_code is None:
                line += f"  {r.message}"
            else:
                line += f"  [{r.reason_code}] {r.message}"
            lines.append(line)
        return "\n".join(lines)
    d = report.as_dict()
    lines = [f"loaded {d['runs_loaded']} runs ({d['rows_loaded']:,} rows); "
             f"quarantined {d['runs_quarantined']}; skipped {d['runs_skipped']}; "
             f"recovered {d['runs_recovered']} in {report.seconds:.2f}s"]
    for r in report.runs:
        if r.status == "quarantined":
            lines.append(f"  quarantined {r.table}/{r.run_id}: [{r.reason_code}] {r.message}")
        elif r.rows_rejected:
            lines.append(f"  partly loaded {r.table}/{r.run_id}: {r.rows_loaded:,} rows loaded, "
                         f"{r.rows_rejected:,} invalid rows quarantined")
        elif r.status == "skipped":
            lines.append(f"  skipped {r.table}/{r.run_id}: [{r.reason_code}] {r.message}")
    for c in report.failed_checks:
        lines.append(f"  check failed ({c.severity}) {c.table}.{c.check}: {c.message}")
    if report.tables:
        lines.append("tables:")
        for name, t in sorted(report.tables.items()):
            lines.append(f"  {name:24} {t.rows:>12,} rows  {t.partitions:>6} partitions")
    return "\n".join(lines)


# -- repartition --------------------------------------------------------------------------
REPARTITION_SHOWN = 20  # partitions listed per side in text; --json gives all


def render_repartition(report: Any) -> str:
    """`lake repartition` (and `--dry-run`): the change, partitions before and after, space."""
    name = report.table
    if report.up_to_date:
        tail = "; dropped a killed repartition's build table" if report.leftover_dropped else ""
        return f"{name}: already built with the spec in lake.toml; nothing to do{tail}"
    verb = "would" if report.dry_run else "did"
    what = "rebuild the table" if report.rebuild else "record the new spec (no row moves)"
    lines = [f"{name}: {'; '.join(report.changes)}",
             f"  {verb} {what}: {report.rows:,} rows, {len(report.partitions_before)} -> "
             f"{len(report.partitions_after)} partitions"]
    if report.rebuild and report.dry_run:
        lines.append(f"  space needed about {mebibytes(report.space_needed)} "
                     f"(table {mebibytes(report.table_bytes)}); "
                     f"free {mebibytes(report.disk_free)}")
        for title, parts in (("before", report.partitions_before),
                             ("after", report.partitions_after)):
            shown = [(p["partition"], f"{p['rows']:,}") for p in parts[:REPARTITION_SHOWN]]
            lines.append(f"  partitions {title}:")
            lines += draw_table(["partition", "rows"], shown, indent="    ", empty="(none)")
            if len(parts) > REPARTITION_SHOWN:
                lines.append(f"    ... and {len(parts) - REPARTITION_SHOWN} more (--json)")
    if not report.dry_run:
        if report.checksum is not None:
            lines.append(f"  parity: {report.rows:,} rows, checksum {report.checksum} equal")
        lines.append(f"  {'swapped in' if report.swapped else 'recorded'}; "
                     f"published: {'yes' if report.published else 'no'} "
                     f"in {report.seconds:.2f}s")
    return "\n".join(lines)


# -- health -------------------------------------------------------------------------------
_HEALTH_TITLES = {"latest_runs": "Latest run per job", "failures_7d": "Failures, last 7 days",
                  "freshness": "Freshness (watermarks)", "failing_checks": "Recent failing checks",
                  "last_run_per_job": "Run log by job (last run; killed runs: error_type killed)",
                  "producer_versions": "Producer versions, last 30 days",
                  "table_checks": "Table checks (latest result)",
                  "check_failures_7d": "Failed checks, last 7 days"}


def render_health(report: dict[str, list[dict[str, Any]]]) -> str:
    """`lake health`: one titled table per health query."""
    lines = []
    for key, rows in report.items():
        lines.append(f"{_HEALTH_TITLES.get(key, key)}:")
        lines += draw_table(list(rows[0].keys()) if rows else [],
                            [list(r.values()) for r in rows], indent="  ", empty="(none)")
    return "\n".join(lines)


# -- audit --------------------------------------------------------------------------------
def mebibytes(n: int | None) -> str:
    """A file's size in MiB ("missing" when there is no file)."""
    return "missing" if n is None else f"{n / 2**20:.1f} MiB"


def hours(value: float | None) -> str:
    """An age in hours ("-" when unknown)."""
    return "-" if value is None else f"{value:.1f} h"


def render_audit(report: AuditReport) -> str:
    """`lake audit`'s text report: warehouse, tables, staging, quarantine, problems."""
    p, s = report.payload, report.payload["summary"]
    wh, snap, db = p["warehouse"], p["warehouse"]["snapshot"], p["warehouse"]["database"]
    blocks = (f"{db['free_blocks']}/{db['total_blocks']} blocks free ({db['free_ratio']:.0%})"
              if db else "blocks unknown")
    st = p["staging"]
    waiting = [f"{title} {st[k]['count']} (oldest {hours(st[k]['oldest_age_hours'])})"
               for k, title in (("committed", "committed runs waiting:"),
                                ("uncommitted", "uncommitted runs:"),
                                ("temp_files", "temp files:"))]
    staged_in = f" (staging in {p['staging_root']})" if p["staging_root"] else ""
    return "\n".join([
        f"Lake audit of {p['root']}{staged_in} at {p['generated_at']}: {s['error']} error(s), "
        f"{s['warn']} warning(s), {s['info']} info",
        "warehouse:", f"  {wh['path']} {mebibytes(wh['size_bytes'])}; {snap['path']} "
        f"{mebibytes(snap['size_bytes'])}, published {hours(snap['age_hours'])} ago; {blocks}; "
        f"schema v{wh['schema_version']}",
        "tables:", *_section(["table", "rows", "partitions", "min", "max", "watermark",
                             "since load", "dup keys"],
                            [[n, t["rows"], t["partition_count"], t["partition_min"],
                              t["partition_max"], t["watermark"], hours(t["hours_since_load"]),
                              t["duplicate_keys"]] for n, t in p["tables"].items()]),
        "staging:", *[f"  {line}" for line in waiting],
        "quarantine:", *_section(["table", "runs", "oldest run", "reasons"],
                                [[n, q["runs"], q["oldest_run_id"], json.dumps(q["reasons"])]
                                 for n, q in p["quarantine"]["tables"].items()]),
        "meta:", *_section(["table", "rows", "newest"],
                           [[n, m["rows"], m["newest"]] for n, m in p.get("meta", {}).items()]),
        "problems:", *_section(["severity", "code", "message", "fix"],
                              [[x["severity"], x["code"], x["message"], x["fix"]]
                               for x in p["problems"]])])


def _section(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """An audit table under its section title: "-" for a missing value, no rule under the
    headers, no trailing spaces, "(none)" for no rows."""
    return draw_table(headers, rows, indent="  ", missing="-", rule=False, strip=True,
                      empty="(none)")


# -- compact ------------------------------------------------------------------------------
def render_compact(report: Any) -> str:
    """`lake compact` (and `--dry-run`): sizes before and after, and the verified tables."""
    if report.dry_run:
        return (f"dry run: warehouse {report.size_before / _MIB:,.1f} MiB; expected gain "
                f"{report.expected_gain / _MIB:,.1f} MiB")
    after = report.size_after or 0
    if not report.swapped:
        return (f"kept the warehouse as it is: rebuilt {report.size_before / _MIB:,.1f} MiB "
                f"-> {after / _MIB:,.1f} MiB is no gain; --force swaps anyway")
    return "\n".join([f"compacted {report.size_before / _MIB:,.1f} MiB -> {after / _MIB:,.1f}"
                      f" MiB in {report.seconds:.1f}s; backup {report.backup}",
                      *(f"  {name:24} {t['rows']:>12,} rows  verified"
                        for name, t in sorted(report.tables.items()))])


# -- cleanup and quarantine ---------------------------------------------------------------
def render_cleanup(report: Any, dry_run: bool) -> str:
    """`lake cleanup`: the counts, then one line per action."""
    verb = "would " if dry_run else ""
    return "\n".join([
        f"cleanup: {verb}remove {report.count('temp_file')} temp files, "
        f"{verb}quarantine {report.count('abandoned_run')} abandoned runs, "
        f"{verb}delete {report.count('expired_archive')} archived runs past retention",
        *(f"  {action.kind:16} {action.path}  {action.detail}" for action in report.actions)])


def render_quarantine_list(runs: list[Any]) -> str:
    """`lake quarantine list`: one row per quarantined run."""
    if not runs:
        return "quarantine is empty"
    return "\n".join(draw_table(
        ["table", "run", "kind", "code", "failures", "since", "message"],
        [[r.table, r.run_id, r.kind, r.code, r.failure_count, r.quarantined_at,
          (r.message or "")[:80]] for r in runs]))


def render_replay(result: Any, dry_run: bool) -> str:
    """`lake quarantine replay`: what moved back to staging."""
    verb = "would move" if dry_run else "moved"
    what = "rejected rows of" if result.kind == "rejected_rows" else "run"
    return (f"{verb} {what} {result.quarantined} -> {result.staged}; "
            "the next `lake load` retries it")


def render_dashboard_start(root: Any, host: str, port: int, refresh: float) -> str:
    """`lake dashboard`: where it serves, and what it reads."""
    every = f"every {refresh:g} s" if refresh else "on each page reload"
    return (f"lake dashboard: serving {root}'s published snapshot at http://{host}:{port} "
            f"(reread {every}; Ctrl-C stops it)")


# -- export -------------------------------------------------------------------------------
def render_export(report: Any) -> str:
    """`lake export` (and `--dry-run`): partitions written, carried over, removed; where to read."""
    lines = []
    if report.dry_run:
        if report.up_to_date:
            return (f"dry run: {report.table} is up to date at {report.target} "
                    f"(export {report.export_id})")
        lines.append(f"dry run: {report.table} -> {report.target}: would write "
                     f"{len(report.written)} partitions ({report.rows_written:,} rows), carry "
                     f"over {len(report.carried_over)}, remove {len(report.removed)} "
                     f"[{report.reason}]")
    elif report.up_to_date:
        lines.append(f"{report.table} is up to date at {report.target} (export "
                     f"{report.export_id}, {report.rows:,} rows): nothing changed")
    else:
        lines.append(f"exported {report.table} -> {report.path} in {report.seconds:.2f}s: "
                     f"{len(report.written)} partitions written ({report.rows_written:,} rows, "
                     f"{report.bytes_written / _MIB:,.1f} MiB), {len(report.carried_over)} "
                     f"carried over, {len(report.removed)} removed; {report.rows:,} rows, "
                     f"{report.bytes / _MIB:,.1f} MiB in all [{report.reason}]")
    for label, values in (("written", report.written), ("removed", report.removed)):
        if values and len(values) <= 20:
            lines.append(f"  {label}: {', '.join('NULL' if v is None else v for v in values)}")
    if not report.dry_run and getattr(report, "format", "parquet") == "delta":
        lines.append(f"  read it at {report.target} (Delta table, version "
                     f"{report.delta_version}; export {report.export_id})")
    elif not report.dry_run:
        where = report.current or report.path
        key = f" (Hive partitioning on {report.partition_key})" if report.partition_key else ""
        lines.append(f"  read it at {where}{key}, or through {report.pointer}")
    return "\n".join(lines)


# -- query --------------------------------------------------------------------------------
def write_csv_rows(columns: list[str], batches: Iterator[list[tuple[Any, ...]]]) -> None:
    """The rows as CSV with a header line, written as they come."""
    buf = io.StringIO()
    csv.writer(buf).writerow(columns)
    click.echo(buf.getvalue(), nl=False)
    for rows in batches:
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        click.echo(buf.getvalue(), nl=False)


def write_json_rows(columns: list[str], batches: Iterator[list[tuple[Any, ...]]]) -> None:
    """The rows as one JSON array of objects, written as they come: the same text as
    ``emit_json`` of the whole list, without holding the list."""
    row_text = _json_row_writer(columns)
    first = True
    for rows in batches:
        chunk = ",\n".join(row_text(r) for r in rows)
        click.echo(("[\n" if first else ",\n") + chunk, nl=False)
        first = False
    click.echo("[]" if first else "\n]")


def _json_row_writer(columns: list[str]) -> Callable[[tuple[Any, ...]], str]:
    """One row as an indented member of the array. Scalars go through the C encoder (the
    indenting one is pure Python and ten times slower); containers, duplicate column names
    and empty rows take json.dumps's own path, so the text is always what it would write."""
    if not columns or len(set(columns)) != len(columns):
        return lambda r: "  " + json.dumps(dict(zip(columns, r, strict=True)), indent=2,
                                           default=json_default).replace("\n", "\n  ")
    keys = ["    " + json.dumps(c) + ": " for c in columns]
    flat = json.JSONEncoder(default=json_default).encode

    def value(v: Any) -> str:
        if isinstance(v, list | tuple | dict) and v:
            return json.dumps(v, indent=2, default=json_default).replace("\n", "\n    ")
        return flat(v)

    return lambda r: "  {\n" + ",\n".join(k + value(v) for k, v in zip(keys, r, strict=True)) \
        + "\n  }"


def write_table_rows(columns: list[str], batches: Iterator[list[tuple[Any, ...]]]) -> None:
    """The first TABLE_MAX_ROWS rows as a table (reading stops there), and a note if more."""
    shown: list[tuple[Any, ...]] = []
    more = False
    for rows in batches:
        room = TABLE_MAX_ROWS - len(shown)
        if len(rows) > room:  # batches are never empty: a full table plus one row is "more"
            shown += rows[:room]
            more = True
            break  # stop reading: closing the connection ends the query
        shown += rows
    click.echo("\n".join(draw_table(columns, [list(r) for r in shown])))
    if more:
        click.echo(f"(first {TABLE_MAX_ROWS:,} rows shown; --format csv or json prints them all)")
