"""The `lake` command: thin click commands over lakehouse and loader functions.

A command parses its options, resolves the root and config, calls one library function,
prints the returned report (text, or JSON with --json) and exits with a code from DESIGN.md:
0 done; 2 usage or config error; 3 done, but something was rejected; 75 busy (lock held, or
stopped by a signal at a safe point: retry on the next tick); 1 unexpected error.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from lakehouse import failpoints
from lakehouse.errors import (
    ConfigError,
    LakehouseError,
    LoadAbortedError,
    LockHeldError,
    StopRequestedError,
    UsageError,
)
from lakehouse.jsonable import json_default

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED, EXIT_BUSY = 0, 1, 2, 3, 75


class LakeContext:
    """What every command needs: the resolved root (and where staging lives, if elsewhere)."""

    def __init__(self, root: Path, staging_root: str | None = None) -> None:
        self.root = root
        self.staging_root = staging_root

    def config(self) -> Any:
        from lakehouse.config import load_config, with_staging_root

        return with_staging_root(load_config(self.root), self.staging_root)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), envvar="LAKE_ROOT",
              default="data", show_default=True,
              help="The lake root (also LAKE_ROOT).")
@click.option("--staging-root", envvar="LAKE_STAGING_ROOT", metavar="URL",
              help="Read staging/, archive/ and quarantine/ from this object store URL "
                   "(s3://bucket/lake) instead of the root; overrides lake.toml's "
                   "[lake] staging_root (also LAKE_STAGING_ROOT).")
@click.version_option(package_name="lake", prog_name="lake")
@click.pass_context
def cli(ctx: click.Context, root: Path, staging_root: str | None) -> None:
    """Lake: lock-free Parquet staging, one validating loader, partitioned DuckDB tables."""
    if _URL.match(str(root)):
        click.echo(f"lake: --root must be a local folder: it holds the warehouse, its lock and "
                   f"the published snapshot. To stage in an object store, keep --root local "
                   f"and pass --staging-root {str(root).replace(':/', '://', 1)} "
                   "(or set [lake] staging_root in lake.toml)", err=True)
        raise click.exceptions.Exit(EXIT_USAGE)
    ctx.obj = LakeContext(root, staging_root)


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def main() -> None:
    """Console-script entry point: run the CLI and map errors to exit codes."""
    _exit_75_on_signals()
    try:
        # Tests and make chaos only: LAKE_TEST_CRASH_AT names the point to SIGKILL at.
        failpoints.arm_from_environment()
        code = _run()
    except UsageError as exc:  # a crash point no code hits: the test itself is wrong
        click.echo(f"lake: {exc}", err=True)
        code = EXIT_USAGE
    except SystemExit as exc:  # the signal handler above, or a library's sys.exit
        code = exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None \
            else EXIT_ERROR
    # The outcome is decided: from here a SIGTERM must not turn it into a bare -15. While
    # Python shuts down (tearing down duckdb, pandas and polars takes a while) it puts the
    # default action back for signals it handled, but leaves ignored ones ignored, in every
    # thread (found by make chaos: a load that had committed and printed its report
    # exited -15).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


def _run() -> int:
    """Run the command; return its exit code."""
    try:
        code = cli.main(standalone_mode=False, prog_name="lake")
    except click.exceptions.Abort:
        click.echo("lake: aborted", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if exc.exit_code == 2 else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return int(code or EXIT_OK)


def _exit_75_on_signals() -> None:
    """SIGTERM/SIGINT before a command installs its own handlers (``_stop_on_signals``, at
    its safe points) end the process with exit 75 and a line on stderr, not a bare -15: the
    first second of a command is imports and parsing, and cron or systemd must read the stop
    as "run again later" (found by make chaos, which sends SIGTERM at random moments)."""
    def handler(signum: int, _frame: Any) -> None:
        click.echo(f"lake: stopped by {signal.Signals(signum).name}; run the command again",
                   err=True)
        raise SystemExit(EXIT_BUSY)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def exit_code_for(exc: BaseException) -> int:
    """The exit code DESIGN.md gives an error."""
    if isinstance(exc, LockHeldError | StopRequestedError):
        return EXIT_BUSY
    if isinstance(exc, ConfigError | UsageError):
        return EXIT_USAGE
    if isinstance(exc, LoadAbortedError):
        return EXIT_REJECTED
    return EXIT_ERROR


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Print a one-line error to stderr and exit with the mapped code."""
    try:
        yield
    except LakehouseError as exc:
        click.echo(f"lake: {exc}", err=True)
        raise click.exceptions.Exit(exit_code_for(exc)) from None
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"lake: {exc.strerror or exc}{where} (check the path, free disk space and "
                   "permissions, then run the command again)", err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None


def emit_json(data: Any) -> None:
    """Print data as JSON (dates and decimals as text)."""
    click.echo(json.dumps(data, indent=2, default=json_default))


def lock_timeout_option(f: Any) -> Any:
    """--lock-timeout S: how long a writing command waits for a busy warehouse."""
    return click.option("--lock-timeout", type=click.FloatRange(min=0), default=0.0,
                        show_default=True,
                        help="Seconds to wait for a busy warehouse before exiting 75.")(f)


def json_option(help_text: str) -> Any:
    """--json: print the command's result as JSON."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


# -- init ---------------------------------------------------------------------------------
@cli.command()
@json_option("Print the result as JSON.")
@click.pass_obj
def init(obj: LakeContext, as_json: bool) -> None:
    """Create the root layout, a starter lake.toml and the warehouse schema (idempotent)."""
    from loader.init import init_lake

    with errors_to_exit():
        report = init_lake(obj.root)
    if as_json:
        emit_json({"root": str(report.root), "created": report.created,
                   "migrations_applied": report.migrations_applied,
                   "schema_version": report.schema_version, "tables": report.tables})
        return
    click.echo(f"lake root {report.root}")
    click.echo(f"  created: {', '.join(report.created) if report.created else 'nothing (exists)'}")
    click.echo(f"  warehouse schema version {report.schema_version}"
               + (f" (applied {report.migrations_applied})" if report.migrations_applied else ""))
    click.echo(f"  tables declared: {', '.join(report.tables) or 'none yet (edit lake.toml)'}")


# -- load ---------------------------------------------------------------------------------
@cli.command()
@click.option("--table", "-t", help="Load only this table.")
@click.option("--max-runs", type=click.IntRange(min=1), help="Load at most N runs (oldest first).")
@lock_timeout_option
@click.option("--dry-run", is_flag=True, help="Verify and validate; write and move nothing.")
@json_option("Print the summary as JSON.")
@click.pass_obj
def load(obj: LakeContext, table: str | None, max_runs: int | None, lock_timeout: float,
         dry_run: bool, as_json: bool) -> None:
    """Load every committed run in staging into the warehouse, oldest first, exactly once.

    Exit 0 when all loaded, 3 when a run (or some rows) went to quarantine, 75 when the
    warehouse is busy.
    """
    from loader.load import LoadOptions, StopFlag, load_pending

    stop = StopFlag()
    progress = _Progress(enabled=not as_json)
    options = LoadOptions(table=table, max_runs=max_runs, lock_timeout=lock_timeout,
                          dry_run=dry_run, progress=progress, on_discover=progress.start,
                          stop=stop)
    try:
        with errors_to_exit(), _stop_on_signals(stop):
            config = obj.config()
            report = load_pending(config, options)
    finally:
        progress.close()
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_load(report)
    if report.rejected:
        raise click.exceptions.Exit(EXIT_REJECTED)


class _Progress:
    """A progress bar on a terminal (stderr); plain log lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.counts: dict[str, int] = {}
        self.rows = 0
        self.bar: Any = None

    def start(self, total: int) -> None:
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
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGTERM/SIGINT ask the loader to stop at its next safe point."""
    def handler(signum: int, frame: Any) -> None:
        stop.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _print_load(report: Any) -> None:
    verb = "would load" if report.dry_run else "loaded"
    if report.dry_run:
        more = "".join(f", {n} {what}" for n, what in (
            (report.count("would_skip"), "would be skipped as repeats"),
            (report.count("would_recover"), "would only finish moving (already in the ledger)"))
            if n)
        click.echo(f"dry run: {report.count('would_load')} runs would load, "
                   f"{report.count('would_quarantine')} would be quarantined{more}")
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
            click.echo(line)
        return
    d = report.as_dict()
    click.echo(f"{verb} {d['runs_loaded']} runs ({d['rows_loaded']:,} rows); "
               f"quarantined {d['runs_quarantined']}; skipped {d['runs_skipped']}; "
               f"recovered {d['runs_recovered']} in {report.seconds:.2f}s")
    for r in report.runs:
        if r.status == "quarantined":
            click.echo(f"  quarantined {r.table}/{r.run_id}: [{r.reason_code}] {r.message}")
        elif r.rows_rejected:
            click.echo(f"  partly loaded {r.table}/{r.run_id}: {r.rows_loaded:,} rows loaded, "
                       f"{r.rows_rejected:,} invalid rows quarantined")
        elif r.status == "skipped":
            click.echo(f"  skipped {r.table}/{r.run_id}: [{r.reason_code}] {r.message}")
    if report.tables:
        click.echo("tables:")
        for name, t in sorted(report.tables.items()):
            click.echo(f"  {name:24} {t.rows:>12,} rows  {t.partitions:>6} partitions")


# -- health -------------------------------------------------------------------------------
@cli.command()
@json_option("Print the report as JSON.")
@click.pass_obj
def health(obj: LakeContext, as_json: bool) -> None:
    """Latest run per job, failures in 7 days, freshness, failing checks (read-only)."""
    from lakehouse.observability import health_report

    with errors_to_exit(), _read_snapshot(obj.root) as wh:
        report = health_report(wh)
    if as_json:
        emit_json(report)
        return
    titles = {"latest_runs": "Latest run per job", "failures_7d": "Failures, last 7 days",
              "freshness": "Freshness (watermarks)", "failing_checks": "Recent failing checks"}
    for key, rows in report.items():
        click.echo(f"{titles[key]}:")
        if not rows:
            click.echo("  (none)")
            continue
        click.echo(_format_table(list(rows[0].keys()), [list(r.values()) for r in rows],
                                 indent="  "))


@contextmanager
def _read_snapshot(root: Path) -> Iterator[Any]:
    from lakehouse.layout import LakePaths
    from lakehouse.publish import open_snapshot

    paths = LakePaths.at(root)
    if not paths.read_snapshot.exists():
        raise UsageError(f"no published snapshot at {paths.read_snapshot}: run `lake init` "
                         "and `lake load` first")
    wh = open_snapshot(paths)
    try:
        yield wh
    finally:
        wh.close()


# -- audit --------------------------------------------------------------------------------
@cli.command()
@json_option("Print the payload as JSON.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON payload to this file (atomically).")
@click.option("--strict", is_flag=True, help="Exit 3 when a problem of severity error is found.")
@click.pass_obj
def audit(obj: LakeContext, as_json: bool, out: Path | None, strict: bool) -> None:
    """Health of files, tables, partitions, staging, quarantine and ledger (read-only, no lock)."""
    from lakehouse.audit import audit_lake
    from lakehouse.fsio import atomic_write_bytes

    with errors_to_exit():
        report = audit_lake(obj.config())
        if out is not None:
            atomic_write_bytes(out, json.dumps(report.payload, indent=2,
                                               default=json_default).encode())
    if as_json:
        emit_json(report.payload)
    else:
        click.echo(report.format_text())
    if strict and report.has_errors:
        raise click.exceptions.Exit(EXIT_REJECTED)


# -- compact ------------------------------------------------------------------------------
@cli.command()
@click.option("--dry-run", is_flag=True, help="Report the expected gain; change nothing.")
@click.option("--keep-backups", type=click.IntRange(min=0), default=3, show_default=True,
              help="Timestamped backups to keep in warehouse/backups/.")
@click.option("--force", is_flag=True,
              help="Swap in the rebuilt file even when it is not smaller.")
@lock_timeout_option
@json_option("Print the report as JSON.")
@click.pass_obj
def compact(obj: LakeContext, dry_run: bool, keep_backups: int, force: bool,
            lock_timeout: float, as_json: bool) -> None:
    """Rebuild the warehouse into a fresh file, verified, swapped atomically with a backup."""
    from loader.compact import compact_warehouse
    from loader.report import StopFlag

    stop = StopFlag()
    with errors_to_exit(), _stop_on_signals(stop):
        report = compact_warehouse(
            obj.config(), dry_run=dry_run, keep_backups=keep_backups, force=force,
            lock_timeout=lock_timeout, stop=stop,
            progress=None if as_json else _log_line)
    data = report.as_dict()
    if as_json:
        emit_json(data)
        return
    mib = 1024 * 1024
    if report.dry_run:
        click.echo(f"dry run: warehouse {report.size_before / mib:,.1f} MiB; expected gain "
                   f"{report.expected_gain / mib:,.1f} MiB")
        return
    after = report.size_after or 0
    if not report.swapped:
        click.echo(f"kept the warehouse as it is: rebuilt {report.size_before / mib:,.1f} MiB "
                   f"-> {after / mib:,.1f} MiB is no gain; --force swaps anyway")
        return
    click.echo(f"compacted {report.size_before / mib:,.1f} MiB -> {after / mib:,.1f}"
               f" MiB in {report.seconds:.1f}s; backup {report.backup}")
    for name, t in sorted(report.tables.items()):
        click.echo(f"  {name:24} {t['rows']:>12,} rows  verified")


def _log_line(message: str) -> None:
    click.echo(message, err=True)


# -- cleanup ------------------------------------------------------------------------------
@cli.command()
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--grace-minutes", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Temp files younger than this are left alone (a writer may be busy).")
@lock_timeout_option
@json_option("Print the report as JSON.")
@click.pass_obj
def cleanup(obj: LakeContext, dry_run: bool, grace_minutes: float, lock_timeout: float,
            as_json: bool) -> None:
    """Remove stale temp files, quarantine abandoned runs, delete archive past retention."""
    from datetime import timedelta

    from loader.cleanup import cleanup_lake

    with errors_to_exit():
        report = cleanup_lake(obj.config(), dry_run=dry_run, lock_timeout=lock_timeout,
                              grace=timedelta(minutes=grace_minutes))
    if as_json:
        emit_json(report.as_dict())
        return
    verb = "would " if dry_run else ""
    click.echo(f"cleanup: {verb}remove {report.count('temp_file')} temp files, "
               f"{verb}quarantine {report.count('abandoned_run')} abandoned runs, "
               f"{verb}delete {report.count('expired_archive')} archived runs past retention")
    for action in report.actions:
        click.echo(f"  {action.kind:16} {action.path}  {action.detail}")


# -- quarantine ---------------------------------------------------------------------------
@cli.group()
def quarantine() -> None:
    """Inspect and retry rejected runs."""


@quarantine.command("list")
@click.option("--table", "-t", help="Only this table.")
@json_option("Print the list as JSON.")
@click.pass_obj
def quarantine_list(obj: LakeContext, table: str | None, as_json: bool) -> None:
    """List quarantined runs with their reasons, oldest first."""
    from loader.quarantine import list_quarantine

    with errors_to_exit():
        runs = list_quarantine(obj.config(), table)
    if as_json:
        emit_json([r.as_dict() for r in runs])
        return
    if not runs:
        click.echo("quarantine is empty")
        return
    click.echo(_format_table(
        ["table", "run", "kind", "code", "failures", "since", "message"],
        [[r.table, r.run_id, r.kind, r.code, r.failure_count, r.quarantined_at,
          (r.message or "")[:80]] for r in runs]))


@quarantine.command("replay")
@click.argument("run")
@click.option("--dry-run", is_flag=True, help="Say what would move; move nothing.")
@lock_timeout_option
@click.pass_obj
def quarantine_replay(obj: LakeContext, run: str, dry_run: bool, lock_timeout: float) -> None:
    """Move a quarantined run back to staging (after fixing the contract or the data)."""
    from loader.quarantine import replay_run

    with errors_to_exit():
        result = replay_run(obj.config(), run, dry_run=dry_run, lock_timeout=lock_timeout)
    verb = "would move" if dry_run else "moved"
    what = "rejected rows of" if result.kind == "rejected_rows" else "run"
    click.echo(f"{verb} {what} {result.quarantined} -> {result.staged}; "
               "the next `lake load` retries it")


# -- query --------------------------------------------------------------------------------
TABLE_MAX_ROWS = 1000  # the table format is for a terminal: more goes through csv or json


@cli.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True,
              help=f"Output format (table shows the first {TABLE_MAX_ROWS:,} rows; csv and "
                   "json stream every row).")
@click.pass_obj
def query(obj: LakeContext, sql: str, fmt: str) -> None:
    """Run one read-only SELECT on the published snapshot (no file access, no SET or PRAGMA)."""
    from loader.query import run_query

    with errors_to_exit(), _quiet_broken_pipe(), run_query(obj.root, sql) as result:
        if fmt == "json":
            _echo_json_rows(result.columns, result.batches)
        elif fmt == "csv":
            _echo_csv_rows(result.columns, result.batches)
        else:
            _echo_table_rows(result.columns, result.batches)


def _echo_csv_rows(columns: list[str], batches: Iterator[list[tuple[Any, ...]]]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerow(columns)
    click.echo(buf.getvalue(), nl=False)
    for rows in batches:
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        click.echo(buf.getvalue(), nl=False)


def _echo_json_rows(columns: list[str], batches: Iterator[list[tuple[Any, ...]]]) -> None:
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


def _echo_table_rows(columns: list[str], batches: Iterator[list[tuple[Any, ...]]]) -> None:
    shown: list[tuple[Any, ...]] = []
    more = False
    for rows in batches:
        room = TABLE_MAX_ROWS - len(shown)
        if len(rows) > room:  # batches are never empty: a full table plus one row is "more"
            shown += rows[:room]
            more = True
            break  # stop reading: closing the connection ends the query
        shown += rows
    click.echo(_format_table(columns, [list(r) for r in shown]))
    if more:
        click.echo(f"(first {TABLE_MAX_ROWS:,} rows shown; --format csv or json prints them all)")


@contextmanager
def _quiet_broken_pipe() -> Iterator[None]:
    """`lake query ... | head` is a normal way to stop reading: exit 0 and say nothing."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail again


def _format_table(columns: list[str], rows: list[list[Any]], indent: str = "") -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             indent + "  ".join("-" * w for w in widths)]
    lines += [indent + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
              for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


from loader.export import export_command  # noqa: E402  (see loader/export.py for why here)

cli.add_command(export_command)


if __name__ == "__main__":
    main()
