"""The `lake` command: thin click commands, one per job in loader/.

A command parses its options, resolves the root and config, calls one job, and prints the
returned report through loader/render.py (text, or JSON with --json); loader/exits.py maps
errors to the exit codes of DESIGN.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from lakehouse import failpoints
from lakehouse.errors import UsageError
from lakehouse.jsonable import json_default
from loader.exits import EXIT_BUSY, EXIT_ERROR, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, errors_to_exit
from loader.render import TABLE_MAX_ROWS, emit_json, log_line


class LakeContext:
    """What every command needs: the resolved root (and where staging lives, if elsewhere)."""

    def __init__(self, root: Path, staging_root: str | None = None,
                 triggered_by: str = "cli") -> None:
        self.root = root
        self.staging_root = staging_root
        self.triggered_by = triggered_by  # recorded in each run-log row of a writing job

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
@click.option("--triggered-by", envvar="LAKE_TRIGGERED_BY", default="cli", show_default=True,
              metavar="TEXT", callback=lambda _c, _p, v: _triggered_by(v),
              help="Who started this command (cron, airflow, a name), recorded in the run "
                   "log of jobs that change the lake (also LAKE_TRIGGERED_BY).")
@click.version_option(package_name="lake", prog_name="lake")
@click.pass_context
def cli(ctx: click.Context, root: Path, staging_root: str | None, triggered_by: str) -> None:
    """Lake: lock-free Parquet staging, one validating loader, partitioned DuckDB tables."""
    if _URL.match(str(root)):
        click.echo(f"lake: --root must be a local folder: it holds the warehouse, its lock and "
                   f"the published snapshot. To stage in an object store, keep --root local "
                   f"and pass --staging-root {str(root).replace(':/', '://', 1)} "
                   "(or set [lake] staging_root in lake.toml)", err=True)
        raise click.exceptions.Exit(EXIT_USAGE)
    ctx.obj = LakeContext(root, staging_root, triggered_by)


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
TRIGGERED_BY_MAX_CHARS = 200


def _triggered_by(value: str) -> str:
    """--triggered-by: a short line of text (it lands in meta.ingestion_runs)."""
    text = value.strip()
    if not text or len(text) > TRIGGERED_BY_MAX_CHARS or not text.isprintable():
        raise click.BadParameter(f"must be printable text of 1 to {TRIGGERED_BY_MAX_CHARS} "
                                 "characters, such as cron", param_hint="--triggered-by")
    return text


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
    from loader.render import init_as_dict, render_init

    with errors_to_exit():
        report = init_lake(obj.root)
    if as_json:
        emit_json(init_as_dict(report))
        return
    click.echo(render_init(report))


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
    from loader.render import Progress, render_load

    stop = StopFlag()
    progress = Progress(enabled=not as_json)
    options = LoadOptions(table=table, max_runs=max_runs, lock_timeout=lock_timeout,
                          dry_run=dry_run, progress=progress, on_discover=progress.start,
                          stop=stop, triggered_by=obj.triggered_by)
    try:
        with errors_to_exit(), _stop_on_signals(stop):
            config = obj.config()
            report = load_pending(config, options)
    finally:
        progress.close()
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(render_load(report))
    for message in report.refused.values():  # a changed spec: a config problem (exit 2)
        click.echo(f"lake: {message}", err=True)
    if report.refused:
        raise click.exceptions.Exit(EXIT_USAGE)
    if report.rejected:
        raise click.exceptions.Exit(EXIT_REJECTED)


@contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGTERM/SIGINT ask the job to stop at its next safe point."""
    def handler(signum: int, frame: Any) -> None:
        stop.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# -- health -------------------------------------------------------------------------------
@cli.command()
@json_option("Print the report as JSON.")
@click.pass_obj
def health(obj: LakeContext, as_json: bool) -> None:
    """Latest run per job, failures in 7 days, freshness, failing checks (read-only)."""
    from loader.health import check_health
    from loader.render import render_health

    with errors_to_exit():
        report = check_health(obj.root)
    if as_json:
        emit_json(report)
        return
    click.echo(render_health(report))


# -- audit --------------------------------------------------------------------------------
@cli.command()
@json_option("Print the payload as JSON.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON payload to this file (atomically).")
@click.option("--strict", is_flag=True, help="Exit 3 when a problem of severity error is found.")
@click.pass_obj
def audit(obj: LakeContext, as_json: bool, out: Path | None, strict: bool) -> None:
    """Health of files, tables, partitions, staging, quarantine and ledger (read-only, no lock)."""
    from lakehouse.fsio import atomic_write_bytes
    from loader.audit import audit_lake
    from loader.render import render_audit

    with errors_to_exit():
        report = audit_lake(obj.config())
        if out is not None:
            atomic_write_bytes(out, json.dumps(report.payload, indent=2,
                                               default=json_default).encode())
    if as_json:
        emit_json(report.payload)
    else:
        click.echo(render_audit(report))
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
    from loader.render import render_compact
    from loader.report import StopFlag

    stop = StopFlag()
    with errors_to_exit(), _stop_on_signals(stop):
        report = compact_warehouse(
            obj.config(), dry_run=dry_run, keep_backups=keep_backups, force=force,
            lock_timeout=lock_timeout, stop=stop,
            progress=None if as_json else log_line, triggered_by=obj.triggered_by)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(render_compact(report))


# -- repartition --------------------------------------------------------------------------
@cli.command()
@click.argument("table")
@click.option("--dry-run", is_flag=True,
              help="Print the partitions before and after and the disk space needed; "
                   "change nothing.")
@lock_timeout_option
@json_option("Print the report as JSON.")
@click.pass_obj
def repartition(obj: LakeContext, table: str, dry_run: bool, lock_timeout: float,
                as_json: bool) -> None:
    """Rebuild TABLE under the partition_by, primary_key and merge lake.toml gives it now,
    verified and swapped in one transaction (a load refuses the table until then).

    Exit 0 when done (or nothing to do), 2 for an undeclared table or a spec its columns
    cannot take, 3 when its data does not fit the new spec, 75 when the warehouse is busy.
    """
    from loader.render import render_repartition
    from loader.repartition import repartition_table
    from loader.report import StopFlag

    stop = StopFlag()
    with errors_to_exit(), _stop_on_signals(stop):
        report = repartition_table(obj.config(), table, dry_run=dry_run,
                                   lock_timeout=lock_timeout, stop=stop,
                                   triggered_by=obj.triggered_by,
                                   progress=None if as_json else log_line)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(render_repartition(report))


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
    from loader.render import render_cleanup

    with errors_to_exit():
        report = cleanup_lake(obj.config(), dry_run=dry_run, lock_timeout=lock_timeout,
                              grace=timedelta(minutes=grace_minutes),
                              triggered_by=obj.triggered_by)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(render_cleanup(report, dry_run))


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
    from loader.render import render_quarantine_list

    with errors_to_exit():
        runs = list_quarantine(obj.config(), table)
    if as_json:
        emit_json([r.as_dict() for r in runs])
        return
    click.echo(render_quarantine_list(runs))


@quarantine.command("replay")
@click.argument("run")
@click.option("--dry-run", is_flag=True, help="Say what would move; move nothing.")
@lock_timeout_option
@click.pass_obj
def quarantine_replay(obj: LakeContext, run: str, dry_run: bool, lock_timeout: float) -> None:
    """Move a quarantined run back to staging (after fixing the contract or the data)."""
    from loader.quarantine import replay_run
    from loader.render import render_replay

    with errors_to_exit():
        result = replay_run(obj.config(), run, dry_run=dry_run, lock_timeout=lock_timeout,
                            triggered_by=obj.triggered_by)
    click.echo(render_replay(result, dry_run))


# -- export -------------------------------------------------------------------------------
@cli.command("export")
@click.argument("table")
@click.option("--to", "to", required=True, metavar="DIR_OR_URL",
              help="Target folder or fsspec URL (s3://bucket/exports); the table goes to "
                   "<to>/<table>/.")
@click.option("--format", "export_format", type=click.Choice(["delta", "parquet"]),
              default=None,
              help="delta: a Delta Lake table; parquet: Hive folders and _latest.json. "
                   "Default: the format already at the target, delta for a new one.")
@click.option("--full", is_flag=True, help="Rewrite every partition, changed or not.")
@click.option("--dry-run", is_flag=True,
              help="Say which partitions would be written, carried over or removed; write "
                   "nothing (reads the published snapshot, takes no lock).")
@click.option("--keep-versions", type=click.IntRange(min=1), default=2, show_default=True,
              help="Export versions to keep under <to>/<table>/_v/ (the current one included).")
@lock_timeout_option
@json_option("Print the report as JSON.")
@click.pass_obj
def export(obj: LakeContext, table: str, to: str, export_format: str | None, full: bool,
           dry_run: bool, keep_versions: int, lock_timeout: float, as_json: bool) -> None:
    """Export TABLE as a Delta Lake table (or Hive-partitioned Parquet) to a folder or URL,
    atomically and incrementally (only changed partitions are rewritten).

    Exit 0 when exported (or already up to date), 2 for an unknown table or a bad target,
    75 when the warehouse is busy.
    """
    from loader.export import ExportOptions, export_table
    from loader.render import render_export

    options = ExportOptions(to=to, full=full, dry_run=dry_run, lock_timeout=lock_timeout,
                            keep_versions=keep_versions, format=export_format,
                            triggered_by=obj.triggered_by)
    with errors_to_exit():
        report = export_table(obj.config(), table, options)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(render_export(report))


# -- query --------------------------------------------------------------------------------
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
    from loader.render import write_csv_rows, write_json_rows, write_table_rows

    with errors_to_exit(), _quiet_broken_pipe(), run_query(obj.root, sql) as result:
        if fmt == "json":
            write_json_rows(result.columns, result.batches)
        elif fmt == "csv":
            write_csv_rows(result.columns, result.batches)
        else:
            write_table_rows(result.columns, result.batches)


# -- dashboard ----------------------------------------------------------------------------
@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True,
              help="The port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (0.0.0.0: every interface).")
@click.option("--refresh", type=click.FloatRange(min=0), default=30.0, show_default=True,
              metavar="SECONDS", help="Reread the published snapshot every SECONDS (0: only "
                                      "when the page is reloaded).")
@click.pass_obj
def dashboard(obj: LakeContext, port: int, host: str, refresh: float) -> None:
    """Serve the health dashboard (Streamlit) on the published snapshot (read-only, no lock)."""
    from loader.dashboard import require_streamlit, serve_dashboard
    from loader.render import render_dashboard_start

    with errors_to_exit():
        require_streamlit()  # before the line that says it serves
        log_line(render_dashboard_start(obj.root, host, port, refresh))
        serve_dashboard(obj.root, host=host, port=port, refresh=refresh)


@contextmanager
def _quiet_broken_pipe() -> Iterator[None]:
    """`lake query ... | head` is a normal way to stop reading: exit 0 and say nothing."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail again


if __name__ == "__main__":
    main()
